/* test_chat.c - the chat module (chat.h) and grammar-constrained sampling:
 * tool-call parsing of recorded outputs of the Llama 3.x, Qwen 2.5/3,
 * Mistral, Hermes and gpt-oss formats (table-driven, each with the model's
 * own template from the pinned llama.cpp), partial outputs, bad input,
 * JSON schemas and GBNF that do not compile, and a random-weight model
 * forced by a JSON schema: 100 samples at temperature 1, each validated
 * against the schema with jansson. Prints render and parse cost per turn. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "chat.h"
#include "engine.h"
#include "err.h"
#include "testutil.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static ic_engine *g_engine; /* stories260K (else the tiny generated model), for all tests */

static const char WEATHER_TOOLS[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
    "\"description\":\"Current weather in a city\",\"parameters\":{\"type\":\"object\","
    "\"properties\":{\"city\":{\"type\":\"string\"},\"days\":{\"type\":\"integer\"}},"
    "\"required\":[\"city\"]}}}]";

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static char *read_template(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.jinja", IC_TEMPLATES_DIR, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fprintf(stderr, "cannot read %s\n", path);
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
    text[n] = '\0';
    fclose(f);
    return text;
}

static ic_chat *chat_for_engine(ic_engine *eng, const char *template_name)
{
    char *tmpl = read_template(template_name);
    char err[512] = "";
    ic_chat *c = NULL;
    int rc = ic_chat_create(eng, tmpl, &c, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "%s: %s\n", template_name, err);
    assert_int_equal(rc, 0);
    free(tmpl);
    return c;
}

static ic_chat *chat_for(const char *template_name) { return chat_for_engine(g_engine, template_name); }

static ic_chat_prompt *render_user(const ic_chat *c, const char *text, const char *tools,
                                   const char *schema)
{
    ic_chat_message msgs[] = { { .role = "system", .content = "Be brief." },
                               { .role = "user", .content = text } };
    ic_chat_render_opts o = ic_chat_render_opts_default();
    o.tools_json = tools;
    o.json_schema = schema;
    ic_chat_prompt *p = NULL;
    char err[512] = "";
    int rc = ic_chat_render(c, msgs, 2, &o, &p, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "render: %s\n", err);
    assert_int_equal(rc, 0);
    return p;
}

/* Asserts that JSON texts a and b hold equal values. */
static void assert_json_equal(const char *a, const char *b)
{
    json_t *ja = json_loads(a, 0, NULL), *jb = json_loads(b, 0, NULL);
    if (!ja || !jb || !json_equal(ja, jb))
        fprintf(stderr, "JSON differs: %s vs %s\n", a, b);
    assert_non_null(ja);
    assert_non_null(jb);
    assert_true(json_equal(ja, jb));
    json_decref(ja);
    json_decref(jb);
}

/* ---- tool-call parsing of recorded outputs ---- */

typedef struct parse_case {
    const char *template_name;
    const char *output;       /* what the model generated after the prompt */
    const char *content;      /* expected */
    const char *reasoning;    /* expected */
    int n_calls;
    const char *name, *arguments, *id; /* the first call's */
} parse_case;

static const parse_case parse_cases[] = {
    /* Llama 3.1/3.3: a bare JSON object with "parameters" (built-in tools
     * go through <|python_tag|>, not offered here). */
    { "meta-llama-Llama-3.1-8B-Instruct", "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
      "", "", 1, "get_weather", "{\"city\":\"Paris\"}", "" },
    { "meta-llama-Llama-3.3-70B-Instruct",
      "{\"type\": \"function\", \"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\", \"days\": 2}}",
      "", "", 1, "get_weather", "{\"city\":\"Rome\",\"days\":2}", "" },
    { "meta-llama-Llama-3.1-8B-Instruct", "It is sunny.", "It is sunny.", "", 0, NULL, NULL, NULL },
    /* Qwen 2.5: Hermes-style <tool_call> JSON. */
    { "Qwen-Qwen2.5-7B-Instruct",
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
      "", "", 1, "get_weather", "{\"city\":\"Paris\"}", "" },
    { "Qwen-Qwen2.5-7B-Instruct", "Sunny, 18 C.", "Sunny, 18 C.", "", 0, NULL, NULL, NULL },
    /* Qwen 3: a <think> block, then the call. */
    { "Qwen-Qwen3-0.6B",
      "<think>\nThe user wants the weather.\n</think>\n\n<tool_call>\n"
      "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
      "", "The user wants the weather.\n", 1, "get_weather", "{\"city\":\"Oslo\"}", "" },
    { "Qwen-Qwen3-0.6B", "<think>\nEasy.\n</think>\n\nHello!", "Hello!", "Easy.\n", 0, NULL, NULL, NULL },
    /* Mistral Nemo: [TOOL_CALLS] with an id of the model's. */
    { "mistralai-Mistral-Nemo-Instruct-2407",
      "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"a1b2c3d4e\"}]",
      "", "", 1, "get_weather", "{\"city\":\"Paris\"}", "a1b2c3d4e" },
    /* Hermes 2 Pro / 3: text before the call is content. */
    { "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
      "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lima\"}}</tool_call>",
      "Let me check.", "", 1, "get_weather", "{\"city\":\"Lima\"}", "" },
    { "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Kyiv\", \"days\": 3}}\n</tool_call>",
      "", "", 1, "get_weather", "{\"city\":\"Kyiv\",\"days\":3}", "" },
    /* gpt-oss: the analysis channel is reasoning, the call names its
     * recipient. */
    { "openai-gpt-oss-120b",
      "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
      "to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}",
      "", "Need the weather.", 1, "get_weather", "{\"city\":\"Paris\"}", "" },
    { "openai-gpt-oss-120b",
      "<|channel|>analysis<|message|>Simple.<|end|><|start|>assistant<|channel|>final<|message|>Hi there.",
      "Hi there.", "Simple.", 0, NULL, NULL, NULL },
};

static void parse_recorded_outputs(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof parse_cases / sizeof parse_cases[0]; i++) {
        const parse_case *pc = &parse_cases[i];
        ic_chat *c = chat_for(pc->template_name);
        assert_true(ic_chat_supports_tools(c));
        ic_chat_prompt *p = render_user(c, "Weather?", WEATHER_TOOLS, NULL);
        assert_non_null(strstr(p->prompt, "get_weather")); /* the tools reached the prompt */
        ic_chat_parsed *r = NULL;
        char err[512] = "";
        int rc = ic_chat_parse(p, pc->output, strlen(pc->output), false, &r, err, sizeof err);
        if (rc != 0)
            fprintf(stderr, "case %zu (%s): %s\n", i, pc->template_name, err);
        assert_int_equal(rc, 0);
        if (strcmp(r->content, pc->content) != 0 || strcmp(r->reasoning_content, pc->reasoning) != 0 ||
            (int)r->n_tool_calls != pc->n_calls)
            fprintf(stderr, "case %zu (%s): content '%s' reasoning '%s' calls %zu\n", i, pc->template_name,
                    r->content, r->reasoning_content, r->n_tool_calls);
        assert_string_equal(r->content, pc->content);
        assert_string_equal(r->reasoning_content, pc->reasoning);
        assert_int_equal(r->n_tool_calls, pc->n_calls);
        if (pc->n_calls > 0) {
            assert_string_equal(r->tool_calls[0].name, pc->name);
            assert_json_equal(r->tool_calls[0].arguments, pc->arguments);
            assert_string_equal(r->tool_calls[0].id, pc->id);
        }
        ic_chat_parsed_free(r);
        ic_chat_prompt_free(p);
        ic_chat_destroy(c);
    }
}

/* A streamed output cut anywhere parses as partial without error and never
 * reports more than the finished output; whole, it is the one call. */
static void partial_outputs_parse_at_every_cut(void **state)
{
    (void)state;
    ic_chat *c = chat_for("Qwen-Qwen3-0.6B");
    ic_chat_prompt *p = render_user(c, "Weather?", WEATHER_TOOLS, NULL);
    const char *out = "<think>\nHm.\n</think>\n\nSure.<tool_call>\n"
                      "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    size_t len = strlen(out);
    for (size_t cut = 0; cut <= len; cut++) {
        ic_chat_parsed *r = NULL;
        char err[512] = "";
        int rc = ic_chat_parse(p, out, cut, true, &r, err, sizeof err);
        if (rc != 0)
            fprintf(stderr, "cut %zu: %s\n", cut, err);
        assert_int_equal(rc, 0);
        assert_true(r->n_tool_calls <= 1);
        assert_null(strstr(r->content, "<tool_call>")); /* markup never leaks as content */
        assert_null(strstr(r->content, "Hm."));         /* nor reasoning */
        ic_chat_parsed_free(r);
    }
    ic_chat_parsed *r = NULL;
    assert_int_equal(ic_chat_parse(p, out, len, false, &r, NULL, 0), 0);
    assert_string_equal(r->content, "Sure.");
    assert_int_equal(r->n_tool_calls, 1);
    ic_chat_parsed_free(r);
    ic_chat_prompt_free(p);
    ic_chat_destroy(c);
}

/* ---- refusals ---- */

static void bad_input_is_refused_with_a_reason(void **state)
{
    (void)state;
    ic_chat *c = chat_for("Qwen-Qwen2.5-7B-Instruct");
    ic_chat_prompt *p = NULL;
    char err[512];
    ic_chat_render_opts o = ic_chat_render_opts_default();

    ic_chat_message bad_role[] = { { .role = "wizard", .content = "hi" } };
    assert_int_equal(ic_chat_render(c, bad_role, 1, &o, &p, err, sizeof err), IC_ERR_INVAL);
    assert_non_null(strstr(err, "wizard"));
    assert_null(p);

    ic_chat_message empty[] = { { .role = "user" } };
    assert_int_equal(ic_chat_render(c, empty, 1, &o, &p, err, sizeof err), IC_ERR_INVAL);

    ic_chat_message user[] = { { .role = "user", .content = "hi" } };
    o.tools_json = "[{\"type\":\"function\"}]"; /* no function */
    assert_int_equal(ic_chat_render(c, user, 1, &o, &p, err, sizeof err), IC_ERR_INVAL);
    assert_non_null(strstr(err, "tools"));
    o.tools_json = "not json";
    assert_int_equal(ic_chat_render(c, user, 1, &o, &p, err, sizeof err), IC_ERR_INVAL);

    o = ic_chat_render_opts_default();
    o.tool_choice = "sometimes";
    assert_int_equal(ic_chat_render(c, user, 1, &o, &p, err, sizeof err), IC_ERR_INVAL);

    o = ic_chat_render_opts_default();
    o.json_schema = "{\"type\":\"string\"}";
    o.grammar = "root ::= \"a\"";
    assert_int_equal(ic_chat_render(c, user, 1, &o, &p, err, sizeof err), IC_ERR_INVAL);
    assert_non_null(strstr(err, "both"));

    o = ic_chat_render_opts_default();
    o.json_schema = "{\"$ref\": \"#/definitions/missing\"}";
    assert_int_equal(ic_chat_render(c, user, 1, &o, &p, err, sizeof err), IC_ERR_INVAL);
    assert_non_null(strstr(err, "json_schema does not compile"));
    assert_null(p);
    ic_chat_destroy(c);

    /* A template that raises (gemma 2's roles must alternate) is a
     * template error carrying the template's own message. */
    c = chat_for("google-gemma-2-2b-it");
    ic_chat_message order[] = { { .role = "user", .content = "a" }, { .role = "user", .content = "b" } };
    o = ic_chat_render_opts_default();
    assert_int_equal(ic_chat_render(c, order, 2, &o, &p, err, sizeof err), IC_ERR_TEMPLATE);
    assert_non_null(strstr(err, "alternate"));
    ic_chat_destroy(c);

    /* A template that does not parse. */
    ic_chat *broken = NULL;
    assert_int_equal(ic_chat_create(g_engine, "{% if %}", &broken, err, sizeof err), IC_ERR_TEMPLATE);
    assert_null(broken);
}

static void bad_schema_and_gbnf_are_refused(void **state)
{
    (void)state;
    char *gbnf = NULL, err[512];
    assert_int_equal(ic_chat_schema_to_grammar("{\"type\": ", &gbnf, err, sizeof err), IC_ERR_INVAL);
    assert_non_null(strstr(err, "not JSON"));
    assert_int_equal(ic_chat_schema_to_grammar("{\"$ref\": \"#/definitions/missing\"}", &gbnf, err, sizeof err),
                     IC_ERR_INVAL);
    assert_non_null(strstr(err, "does not compile"));
    assert_null(gbnf);
    assert_int_equal(ic_chat_schema_to_grammar("{\"type\": \"integer\"}", &gbnf, err, sizeof err), 0);
    assert_non_null(strstr(gbnf, "root ::="));

    ic_sample_params sp = ic_sample_params_default();
    ic_sampler *s = NULL;
    ic_grammar g = { .gbnf = gbnf };
    assert_int_equal(ic_engine_sampler_create_constrained(g_engine, &sp, &g, &s, err, sizeof err), 0);
    ic_engine_sampler_destroy(s);
    free(gbnf);

    static const char *const bad[] = {
        "root ::= undefined-rule",   /* a rule that is not defined */
        "root ::= \"a",              /* unterminated literal */
        "start ::= \"a\"",           /* no root */
        "root ::= root \"a\"",       /* left recursion */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        g.gbnf = bad[i];
        s = NULL;
        err[0] = '\0';
        assert_int_equal(ic_engine_sampler_create_constrained(g_engine, &sp, &g, &s, err, sizeof err),
                         IC_ERR_INVAL);
        assert_null(s);
        assert_non_null(strstr(err, "grammar does not compile"));
        fprintf(stderr, "  refused %-28s %s\n", bad[i], err);
    }
    /* A prefill the grammar cannot take. */
    g.gbnf = "root ::= \"yes\" | \"no\"";
    g.prefill = "no no"; /* after the first token (see grammar_prefill), " no" does not fit */
    assert_int_equal(ic_engine_sampler_create_constrained(g_engine, &sp, &g, &s, err, sizeof err),
                     IC_ERR_INVAL);
    assert_null(s);
}

/* ---- schema-forced sampling ---- */

static const char PERSON_SCHEMA[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"name\":{\"type\":\"string\",\"maxLength\":8},"
    "\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":150},"
    "\"ok\":{\"type\":\"boolean\"},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":4},\"maxItems\":3}},"
    "\"required\":[\"name\",\"age\",\"ok\"],\"additionalProperties\":false}";

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* Checks text against PERSON_SCHEMA; returns NULL or what is wrong. */
static const char *person_invalid(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, 0, &jerr);
    const char *why = NULL;
    if (!v)
        return "not JSON";
    json_t *name = json_object_get(v, "name"), *age = json_object_get(v, "age");
    json_t *ok = json_object_get(v, "ok"), *tags = json_object_get(v, "tags");
    const char *key;
    json_t *val;
    if (!json_is_object(v))
        why = "not an object";
    else if (!json_is_string(name) || utf8_chars(json_string_value(name)) > 8)
        why = "name";
    else if (!json_is_integer(age) || json_integer_value(age) < 0 || json_integer_value(age) > 150)
        why = "age";
    else if (!json_is_boolean(ok))
        why = "ok";
    else if (tags && (!json_is_array(tags) || json_array_size(tags) > 3))
        why = "tags";
    json_object_foreach(v, key, val) {
        if (!why && strcmp(key, "name") && strcmp(key, "age") && strcmp(key, "ok") && strcmp(key, "tags"))
            why = "additional property";
    }
    for (size_t i = 0; !why && tags && i < json_array_size(tags); i++)
        if (!json_is_string(json_array_get(tags, i)) || utf8_chars(json_string_value(json_array_get(tags, i))) > 4)
            why = "tag";
    json_decref(v);
    return why;
}

/* Samples one answer to prompt under g; returns the malloc'd text. */
static char *sample_constrained(ic_engine *eng, const char *prompt, const ic_grammar *g, uint32_t seed, int max_tokens)
{
    ic_sample_params sp = ic_sample_params_default();
    sp.temperature = 1.0f;
    sp.top_k = 0;
    sp.top_p = 1.0f;
    sp.min_p = 0.0f;
    sp.seed = seed;
    ic_sampler *s = NULL;
    char err[512] = "";
    int rc = ic_engine_sampler_create_constrained(eng, &sp, g, &s, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "sampler: %s\n", err);
    assert_int_equal(rc, 0);
    ic_token *toks;
    int n;
    assert_int_equal(ic_engine_tokenize(eng, prompt, strlen(prompt), true, true, &toks, &n), 0);
    ic_engine_seq_rm(eng, 0, 0, -1);
    ic_engine_batch_clear(eng);
    int idx = 0;
    for (int i = 0; i < n; i++)
        idx = ic_engine_batch_add(eng, toks[i], i, 0, i == n - 1);
    assert_int_equal(ic_engine_decode(eng), 0);
    ic_buf out = {0};
    int pos = n, produced = 0;
    for (; produced < max_tokens; produced++) {
        ic_token t = ic_engine_sample(eng, s, idx);
        if (ic_engine_token_is_eog(eng, t))
            break;
        assert_int_equal(ic_engine_token_piece(eng, t, &out), 0);
        ic_engine_batch_clear(eng);
        idx = ic_engine_batch_add(eng, t, pos++, 0, true);
        assert_int_equal(ic_engine_decode(eng), 0);
    }
    assert_true(produced < max_tokens); /* the grammar ended the answer */
    free(toks);
    ic_engine_sampler_destroy(s);
    char *text = calloc(1, out.len + 1);
    assert_non_null(text);
    memcpy(text, out.data, out.len);
    ic_buf_free(&out);
    return text;
}

static void schema_forces_valid_json_100_samples(void **state)
{
    (void)state;
    char *gbnf = NULL, err[512];
    assert_int_equal(ic_chat_schema_to_grammar(PERSON_SCHEMA, &gbnf, err, sizeof err), 0);
    ic_grammar g = { .gbnf = gbnf };
    int with_tags = 0;
    double t0 = now_us();
    for (uint32_t i = 0; i < 100; i++) {
        char *text = sample_constrained(g_engine, "A person:", &g, 1000 + i, 400);
        const char *why = person_invalid(text);
        if (why)
            fprintf(stderr, "sample %u invalid (%s): %s\n", i, why, text);
        assert_null(why);
        with_tags += strstr(text, "\"tags\"") != NULL;
        if (i < 3)
            fprintf(stderr, "  sample %u: %s\n", i, text);
        free(text);
    }
    fprintf(stderr, "  100 schema-forced samples valid (%d with the optional tags), %.0f ms each\n",
            with_tags, (now_us() - t0) / 1e3 / 100);
    free(gbnf);
}

/* The template's own grammar for a schema (Qwen 3: the reasoning block,
 * then the JSON), prefilled with the generation prompt, then the output
 * through the template's parser: the content validates. */
/* A random-weight model with a real vocabulary, made by ic-mkmodel. */
static ic_engine *model_with_vocab(const char *vocab, char *path, size_t path_size)
{
    const char *mk = getenv("IC_MKMODEL");
    if (!mk)
        return NULL;
    snprintf(path, path_size, "/tmp/ic-test-chat-%d-%s.gguf", (int)getpid(), vocab);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "'%s' --out '%s' --vocab '%s/../ggml-vocab-%s.gguf' --embd 32 --heads 2 --kv-heads 1 "
             "--ff 64 --layers 1 2>/dev/null",
             mk, path, IC_TEMPLATES_DIR, vocab);
    assert_int_equal(system(cmd), 0);
    ic_engine_opts o = ic_engine_opts_default();
    o.model_path = path;
    o.n_ctx_tokens = 2048;
    o.n_threads = 1; /* spinning OpenMP workers crawl on a shared machine */
    ic_engine *e = NULL;
    const char *why = NULL;
    assert_int_equal(ic_engine_create(&o, &e, &why), 0);
    return e;
}

static void schema_through_the_template(void **state)
{
    (void)state;
    /* Qwen's own vocabulary: <|im_start|> is one special token, as the
     * template's grammar (which starts with the generation prompt) needs. */
    char path[512];
    ic_engine *qe = model_with_vocab("qwen2", path, sizeof path);
    if (!qe)
        skip();
    ic_chat *c = chat_for_engine(qe, "Qwen-Qwen3-0.6B");
    ic_chat_prompt *p = render_user(c, "Describe a person.", NULL, PERSON_SCHEMA);
    assert_non_null(p->grammar);
    assert_false(p->grammar_lazy);
    ic_grammar g = ic_chat_prompt_grammar(p);
    assert_ptr_equal(g.prefill, p->generation_prompt);
    for (uint32_t i = 0; i < 5; i++) {
        char *text = sample_constrained(qe, p->prompt, &g, 7 + i, 600);
        if (i == 0)
            fprintf(stderr, "  through the Qwen 3 template: %s\n", text);
        ic_chat_parsed *r = NULL;
        char err[512] = "";
        int rc = ic_chat_parse(p, text, strlen(text), false, &r, err, sizeof err);
        if (rc != 0 || person_invalid(r->content))
            fprintf(stderr, "output %s -> %s\n", text, rc ? err : r->content);
        assert_int_equal(rc, 0);
        assert_null(person_invalid(r->content));
        ic_chat_parsed_free(r);
        free(text);
    }
    /* A tool-call grammar is lazy, with the template's trigger, and builds. */
    ic_chat_prompt *t = render_user(c, "Weather?", WEATHER_TOOLS, NULL);
    assert_true(t->grammar_lazy);
    assert_true(t->n_triggers > 0);
    ic_grammar tg = ic_chat_prompt_grammar(t);
    assert_null(tg.prefill);
    ic_sample_params sp = ic_sample_params_default();
    ic_sampler *s = NULL;
    assert_int_equal(ic_engine_sampler_create_constrained(qe, &sp, &tg, &s, NULL, 0), 0);
    ic_engine_sampler_destroy(s);
    ic_chat_prompt_free(t);
    ic_chat_prompt_free(p);
    ic_chat_destroy(c);
    ic_engine_destroy(qe);
    unlink(path);
}

/* ---- cost ---- */

static void render_and_parse_cost_per_turn(void **state)
{
    (void)state;
    static const char *const names[] = { "Qwen-Qwen3-0.6B", "meta-llama-Llama-3.1-8B-Instruct",
                                         "openai-gpt-oss-120b", "google-gemma-4-31B-it" };
    ic_chat_message msgs[11] = { { .role = "system", .content = "You are a helpful assistant." } };
    for (int i = 1; i < 11; i++) {
        msgs[i].role = i % 2 ? "user" : "assistant";
        msgs[i].content = i % 2 ? "What is the weather like in Paris today, roughly?"
                                : "It is mild, around 18 degrees, with some clouds.";
    }
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        ic_chat *c = chat_for(names[k]);
        ic_chat_render_opts o = ic_chat_render_opts_default();
        o.tools_json = WEATHER_TOOLS;
        const int reps = 50;
        ic_chat_prompt *p = NULL;
        double t0 = now_us();
        for (int r = 0; r < reps; r++) {
            ic_chat_prompt_free(p);
            assert_int_equal(ic_chat_render(c, msgs, 11, &o, &p, NULL, 0), 0);
        }
        double render_us = (now_us() - t0) / reps;
        const char *out = "Sure, it is sunny and warm in Paris today, about 24 degrees.";
        t0 = now_us();
        for (int r = 0; r < reps; r++) {
            ic_chat_parsed *res = NULL;
            assert_int_equal(ic_chat_parse(p, out, strlen(out), false, &res, NULL, 0), 0);
            ic_chat_parsed_free(res);
        }
        double parse_us = (now_us() - t0) / reps;
        fprintf(stderr, "  %-36s render 11 msgs + tools %7.0f us, parse %5.0f us (%zu prompt bytes)\n",
                names[k], render_us, parse_us, strlen(p->prompt));
        ic_chat_prompt_free(p);
        ic_chat_destroy(c);
    }
}

static int setup(void **state)
{
    (void)state;
    ic_engine_global_init();
    ic_engine_opts o = ic_engine_opts_default();
    o.model_path = test_model_path(); /* stories260K: a 512-token vocabulary keeps grammar checks cheap */
    o.n_ctx_tokens = 2048;
    o.n_threads = 1; /* spinning OpenMP workers crawl on a shared machine */
    const char *why = NULL;
    int rc = ic_engine_create(&o, &g_engine, &why);
    if (rc != 0)
        fprintf(stderr, "load %s: %s\n", o.model_path, why);
    return rc;
}

static int teardown(void **state)
{
    (void)state;
    ic_engine_destroy(g_engine);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parse_recorded_outputs),
        cmocka_unit_test(partial_outputs_parse_at_every_cut),
        cmocka_unit_test(bad_input_is_refused_with_a_reason),
        cmocka_unit_test(bad_schema_and_gbnf_are_refused),
        cmocka_unit_test(schema_forces_valid_json_100_samples),
        cmocka_unit_test(schema_through_the_template),
        cmocka_unit_test(render_and_parse_cost_per_turn),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
