/* test_openai.c - OpenAI request bodies to C (every field, every refusal
 * naming its field), and the answers' JSON and SSE shapes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "err.h"
#include "openai.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int parse(enum ic_oai_endpoint e, const char *body, ic_oai_request *r, ic_oai_error *err)
{
    return ic_oai_parse_request(e, body, strlen(body), r, err);
}

static void chat_request_with_every_field(void **state)
{
    (void)state;
    const char *body =
        "{\"model\":\"m1\",\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hel\"},"
        "{\"type\":\"text\",\"text\":\"lo\"}],\"name\":\"ann\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\","
        "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"42\"}],"
        "\"max_completion_tokens\":7,\"temperature\":0,\"top_p\":0.5,\"seed\":-1,"
        "\"stop\":\"END\",\"presence_penalty\":0.5,\"frequency_penalty\":-1,"
        "\"logit_bias\":{\"15\":-100,\"7\":2.5},\"n\":1,\"user\":\"u\","
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
        "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}},"
        "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\","
        "\"schema\":{\"type\":\"object\"}}},\"logprobs\":true,\"top_logprobs\":3,"
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"priority\":\"high\","
        "\"top_k\":5,\"min_p\":0.1,\"repeat_penalty\":1.1,\"ignore_eos\":true,"
        "\"unknown_field\":{\"ignored\":1}}";
    ic_oai_request r;
    ic_oai_error err;
    assert_int_equal(parse(IC_OAI_CHAT, body, &r, &err), 0);
    assert_string_equal(r.model, "m1");
    assert_int_equal(r.n_messages, 4);
    assert_int_equal(r.messages[0].role, IC_OAI_ROLE_SYSTEM);
    assert_string_equal(r.messages[1].content, "Hello");
    assert_string_equal(r.messages[1].name, "ann");
    assert_string_equal(r.messages[2].content, "");
    assert_non_null(strstr(r.messages[2].tool_calls_json, "\"c1\""));
    assert_string_equal(r.messages[3].tool_call_id, "c1");
    assert_int_equal(r.max_tokens, 7);
    assert_true(r.has_temperature && r.temperature == 0);
    assert_int_equal(r.n_stop, 1);
    assert_string_equal(r.stop[0], "END");
    assert_int_equal(r.n_logit_bias, 2);
    /* a named function: "required" over that one tool */
    assert_string_equal(r.tool_choice, "required");
    assert_string_equal(r.tools_json, "[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]");
    assert_int_equal(r.parallel_tool_calls, -1);
    assert_int_equal(r.messages[2].n_tool_calls, 1);
    assert_string_equal(r.messages[2].tool_calls[0].id, "c1");
    assert_string_equal(r.messages[2].tool_calls[0].name, "f");
    assert_string_equal(r.messages[2].tool_calls[0].arguments, "{}");
    assert_int_equal(r.format, IC_OAI_FORMAT_JSON_SCHEMA);
    assert_string_equal(r.schema_json, "{\"type\":\"object\"}");
    assert_true(r.stream && r.include_usage && r.logprobs && r.ignore_eos);
    assert_int_equal(r.top_logprobs, 3);
    assert_true(r.has_priority && r.priority == IC_PRIORITY_HIGH);
    assert_int_equal(r.seed, UINT32_MAX);

    ic_gen_params g;
    ic_oai_gen_params(&r, IC_PRIORITY_NORMAL, &g);
    assert_int_equal(g.priority, IC_PRIORITY_NORMAL); /* capped by the client's limit */
    assert_int_equal(g.max_tokens, 7);
    assert_true(g.sample.temperature == 0 && g.sample.top_p == 0.5f);
    assert_int_equal(g.sample.top_k, 5);
    assert_true(g.ignore_eos && g.sample.ban_eog);
    assert_string_equal(g.stop[0], "END");
    ic_oai_request_free(&r);
}

static void openai_defaults_not_protocol_ones(void **state)
{
    (void)state;
    ic_oai_request r;
    ic_oai_error err;
    assert_int_equal(parse(IC_OAI_COMPLETIONS, "{\"prompt\":\"Once\"}", &r, &err), 0);
    assert_null(r.model);
    assert_string_equal(r.prompt, "Once");
    ic_gen_params g;
    ic_oai_gen_params(&r, IC_PRIORITY_HIGH, &g);
    assert_true(g.sample.temperature == 1.0f && g.sample.top_p == 1.0f);
    assert_int_equal(g.sample.top_k, 0);
    assert_int_equal(g.priority, IC_PRIORITY_NORMAL);
    assert_true(g.max_tokens > 1000000); /* only the context bounds it */
    ic_oai_request_free(&r);
}

/* Each bad body: the status, the param the error names, a word of the message. */
static void refusals_name_the_field(void **state)
{
    (void)state;
    static const struct {
        enum ic_oai_endpoint e;
        const char *body, *param, *word;
    } cases[] = {
        {IC_OAI_CHAT, "{\"messages\":[", "", "not valid JSON"},
        {IC_OAI_CHAT, "[1,2]", "", "JSON object"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"messages\":[]}", "", "not valid JSON"}, /* duplicate key */
        {IC_OAI_CHAT, "{}", "messages", "required"},
        {IC_OAI_CHAT, "{\"messages\":[]}", "messages", "non-empty"},
        {IC_OAI_CHAT, "{\"messages\":\"hi\"}", "messages", "non-empty"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}",
         "messages[0].role", "must be"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}",
         "messages[0].content", "string"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                      "\"image_url\"}]}]}", "messages[0].content", "text"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}",
         "messages[0].tool_call_id", "tool message"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}", "",
         "not valid JSON"}, /* jansson refuses U+0000 */
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}", "",
         "not valid JSON"}, /* and invalid UTF-8 */
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"n\":2}", "n",
         "n = 1"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"temperature\":\"hot\"}", "temperature", "number"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"temperature\":3}", "temperature", "between"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"max_tokens\":0}", "max_tokens", "between"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"max_tokens\":2.5}", "max_tokens", "integer"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"stream\":\"yes\"}", "stream", "true or false"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"stop\":[1]}", "stop", "stop sequence"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]}",
         "stop", "at most"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"logit_bias\":{\"x\":1}}", "logit_bias", "token ids"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"logit_bias\":{\"1\":500}}", "logit_bias", "-100 to 100"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"tools\":[{\"type\":\"function\"}]}", "tools", "function"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"tool_choice\":\"sometimes\"}", "tool_choice", "must be"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"parallel_tool_calls\":\"yes\"}", "parallel_tool_calls", "true or false"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
                      "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"g\"}}}",
         "tool_choice", "not among the tools"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\","
                      "\"function\":{\"arguments\":\"{}\"}}]}]}", "messages[0].tool_calls",
         "function.name"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\","
                      "\"function\":{\"name\":\"f\",\"arguments\":7}}]}]}", "messages[0].tool_calls",
         "JSON string"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"response_format\":{\"type\":\"xml\"}}", "response_format", "type"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"response_format\":{\"type\":\"json_schema\"}}", "response_format",
         "schema"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"priority\":\"urgent\"}", "priority", "low, normal"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"stream_options\":true}", "stream_options", "object"},
        {IC_OAI_COMPLETIONS, "{\"prompt\":[\"a\",\"b\"]}", "prompt", "list of prompts"},
        {IC_OAI_COMPLETIONS, "{\"prompt\":7}", "prompt", "string"},
        {IC_OAI_COMPLETIONS, "{}", "prompt", "required"},
        {IC_OAI_COMPLETIONS, "{\"prompt\":\"a\",\"logprobs\":30}", "logprobs", "between"},
        {IC_OAI_COMPLETIONS, "{\"prompt\":\"a\",\"logprobs\":6}", "logprobs", "between 0 and 5"},
        {IC_OAI_COMPLETIONS, "{\"prompt\":\"a\",\"logprobs\":-1}", "logprobs", "between"},
        {IC_OAI_COMPLETIONS, "{\"prompt\":\"a\",\"logprobs\":true}", "logprobs", "integer"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"logprobs\":1}", "logprobs", "true or false"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"logprobs\":true,\"top_logprobs\":21}", "top_logprobs", "20"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"logprobs\":true,\"top_logprobs\":-1}", "top_logprobs", "0"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"logprobs\":true,\"top_logprobs\":\"3\"}", "top_logprobs", "integer"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"top_logprobs\":2}", "top_logprobs", "requires 'logprobs'"},
        {IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"logprobs\":false,\"top_logprobs\":0}", "top_logprobs", "requires"},
        {IC_OAI_COMPLETIONS, "{\"prompt\":\"a\",\"model\":3}", "model", "string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ic_oai_request r;
        ic_oai_error err;
        int rc = parse(cases[i].e, cases[i].body, &r, &err);
        if (rc != IC_ERR_PARSE || err.status != 400 || strcmp(err.param, cases[i].param) ||
            !strstr(err.message, cases[i].word))
            fail_msg("case %zu (%s): rc %d status %d param '%s' message '%s'", i, cases[i].body,
                     rc, err.status, err.param, err.message);
        char *b = ic_oai_error_body(&err);
        json_t *j = json_loads(b, 0, NULL);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"),
                                                              "type")),
                            "invalid_request_error");
        json_decref(j);
        free(b);
    }
}

static void error_shapes_by_status(void **state)
{
    (void)state;
    ic_oai_error err;
    ic_oai_error_set(&err, 401, "invalid_api_key", NULL, "bad key %d", 1);
    char *b = ic_oai_error_body(&err);
    assert_string_equal(b, "{\"error\":{\"message\":\"bad key 1\",\"type\":"
                           "\"authentication_error\",\"param\":null,\"code\":"
                           "\"invalid_api_key\"}}");
    free(b);
    ic_oai_error_set(&err, 429, NULL, NULL, "slow down");
    assert_string_equal(err.type, "rate_limit_error");
    size_t len;
    char *e = ic_oai_stream_error(&err, &len);
    assert_true(strncmp(e, "data: {\"error\":", 15) == 0);
    assert_string_equal(e + len - 2, "\n\n");
    free(e);
}

static json_t *sse_json(const char *s, size_t len)
{
    assert_true(len > 8 && strncmp(s, "data: ", 6) == 0 && strcmp(s + len - 2, "\n\n") == 0);
    return json_loadb(s + 6, len - 8, 0, NULL);
}

static void answers_have_openai_shapes(void **state)
{
    (void)state;
    ic_oai_response r = {.endpoint = IC_OAI_CHAT, .id = "chatcmpl-1", .model = "m",
                         .created = 1700000000, .text = "Hi \"there\"", .text_len = 10,
                         .finish_reason = "stop",
                         .usage = {.prompt_tokens = 5, .completion_tokens = 2,
                                   .cached_tokens = 3}};
    char *b = ic_oai_response_body(&r);
    json_t *j = json_loads(b, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion");
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(c, "message"),
                                                          "content")), "Hi \"there\"");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "stop");
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")), 7);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(u,
                         "prompt_tokens_details"), "cached_tokens")), 3);
    json_decref(j);
    free(b);

    size_t len;
    r.text = "";
    r.text_len = 0;
    r.finish_reason = NULL;
    char *first = ic_oai_stream_chunk(&r, true, &len);
    j = sse_json(first, len);
    json_t *d = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "delta");
    assert_string_equal(json_string_value(json_object_get(d, "role")), "assistant");
    assert_string_equal(json_string_value(json_object_get(d, "content")), "");
    assert_true(json_is_null(json_object_get(json_array_get(json_object_get(j, "choices"), 0),
                                             "finish_reason")));
    assert_string_equal(json_string_value(json_object_get(j, "object")),
                        "chat.completion.chunk");
    json_decref(j);
    free(first);

    r.finish_reason = "length";
    char *last = ic_oai_stream_chunk(&r, false, &len);
    j = sse_json(last, len);
    d = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "delta");
    assert_int_equal(json_object_size(d), 0); /* the finishing chunk has an empty delta */
    json_decref(j);
    free(last);

    char *usage = ic_oai_stream_usage(&r, &len);
    j = sse_json(usage, len);
    assert_int_equal(json_array_size(json_object_get(j, "choices")), 0);
    assert_non_null(json_object_get(j, "usage"));
    json_decref(j);
    free(usage);
    assert_string_equal(ic_oai_stream_done(&len), "data: [DONE]\n\n");

    r.endpoint = IC_OAI_COMPLETIONS;
    r.text = "abc";
    r.text_len = 3;
    b = ic_oai_response_body(&r);
    j = json_loads(b, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "text_completion");
    assert_string_equal(json_string_value(json_object_get(json_array_get(
                            json_object_get(j, "choices"), 0), "text")), "abc");
    json_decref(j);
    free(b);
}

/* One token's log-probabilities as the scheduler packs them. */
static ic_logprobs *make_lp(const char *tok, float lp, int n_top, const char *const *tops,
                            const float *top_lps)
{
    size_t bytes = strlen(tok);
    for (int i = 0; i < n_top; i++)
        bytes += strlen(tops[i]);
    ic_logprobs *l = calloc(1, sizeof *l + bytes);
    l->size = sizeof *l + bytes;
    size_t off = strlen(tok);
    memcpy(l->bytes, tok, off);
    l->sampled = (ic_logprob_tok){.token = 1, .logprob = lp, .off = 0, .len = (uint32_t)off};
    l->n_top = n_top;
    for (int i = 0; i < n_top; i++) {
        size_t n = strlen(tops[i]);
        memcpy(l->bytes + off, tops[i], n);
        l->top[i] = (ic_logprob_tok){.token = 2 + i, .logprob = top_lps[i],
                                     .off = (uint32_t)off, .len = (uint32_t)n};
        off += n;
    }
    return l;
}

static void logprobs_shapes(void **state)
{
    (void)state;
    const char *tops[] = {"Hi", "Ho"};
    const float tlp[] = {-0.25f, -2.5f};
    ic_logprobs *lps[3] = {make_lp("Hi", -0.25f, 2, tops, tlp),
                           make_lp("\xe2\x80", -1.5f, 0, NULL, NULL), /* part of a character */
                           make_lp("\x9c", -INFINITY, 1, (const char *[]){"x"},
                                   (const float[]){-0.5f})};
    /* the list copies */
    ic_oai_lp_list list = {0};
    for (int i = 0; i < 3; i++)
        assert_int_equal(ic_oai_lp_list_push(&list, lps[i]), 0);
    for (int i = 0; i < 3; i++)
        free(lps[i]);
    assert_int_equal(list.n, 3);
    ic_oai_response r = {.endpoint = IC_OAI_CHAT, .id = "chatcmpl-1", .model = "m",
                         .created = 1, .text = "Hi\xe2\x80\x9c", .text_len = 5,
                         .finish_reason = "stop",
                         .logprobs = (const ic_logprobs *const *)list.v, .n_logprobs = 3};
    char *b = ic_oai_response_body(&r);
    json_t *j = json_loads(b, 0, NULL);
    assert_non_null(j);
    json_t *lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    json_t *content = json_object_get(lp, "content");
    assert_int_equal(json_array_size(content), 3);
    assert_true(json_is_null(json_object_get(lp, "refusal")));
    json_t *e0 = json_array_get(content, 0);
    assert_string_equal(json_string_value(json_object_get(e0, "token")), "Hi");
    assert_float_equal(json_real_value(json_object_get(e0, "logprob")), -0.25, 1e-6);
    json_t *by = json_object_get(e0, "bytes");
    assert_int_equal(json_array_size(by), 2);
    assert_int_equal(json_integer_value(json_array_get(by, 0)), 'H');
    json_t *t0 = json_object_get(e0, "top_logprobs");
    assert_int_equal(json_array_size(t0), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(t0, 1), "token")),
                        "Ho");
    assert_float_equal(json_real_value(json_object_get(json_array_get(t0, 1), "logprob")), -2.5,
                       1e-6);
    assert_non_null(json_object_get(json_array_get(t0, 1), "bytes"));
    assert_null(json_object_get(json_array_get(t0, 1), "top_logprobs"));
    json_t *e1 = json_array_get(content, 1);
    assert_string_equal(json_string_value(json_object_get(e1, "token")), "bytes:\\xe2\\x80");
    assert_int_equal(json_integer_value(json_array_get(json_object_get(e1, "bytes"), 1)), 0x80);
    assert_int_equal(json_array_size(json_object_get(e1, "top_logprobs")), 0);
    /* JSON has no -Infinity */
    assert_float_equal(json_real_value(json_object_get(json_array_get(content, 2), "logprob")),
                       -9999.0, 1e-6);
    json_decref(j);
    free(b);

    /* a streamed chunk carries its tokens' entries; one without: null */
    size_t len;
    r.finish_reason = NULL;
    r.n_logprobs = 1;
    char *chunk = ic_oai_stream_chunk(&r, false, &len);
    j = sse_json(chunk, len);
    lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    assert_int_equal(json_array_size(json_object_get(lp, "content")), 1);
    json_decref(j);
    free(chunk);
    r.n_logprobs = 0;
    chunk = ic_oai_stream_chunk(&r, false, &len);
    j = sse_json(chunk, len);
    assert_true(json_is_null(json_object_get(json_array_get(json_object_get(j, "choices"), 0),
                                             "logprobs")));
    json_decref(j);
    free(chunk);

    /* completions: the legacy shape, text_offset from r's */
    r.endpoint = IC_OAI_COMPLETIONS;
    r.n_logprobs = 3;
    r.text_offset = 10;
    b = ic_oai_response_body(&r);
    j = json_loads(b, 0, NULL);
    lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    assert_int_equal(json_array_size(json_object_get(lp, "tokens")), 3);
    assert_string_equal(json_string_value(json_array_get(json_object_get(lp, "tokens"), 0)), "Hi");
    assert_float_equal(json_real_value(json_array_get(json_object_get(lp, "token_logprobs"), 1)),
                       -1.5, 1e-6);
    json_t *top0 = json_array_get(json_object_get(lp, "top_logprobs"), 0);
    assert_int_equal(json_object_size(top0), 2);
    assert_float_equal(json_real_value(json_object_get(top0, "Ho")), -2.5, 1e-6);
    json_t *offs = json_object_get(lp, "text_offset");
    assert_int_equal(json_integer_value(json_array_get(offs, 0)), 10);
    assert_int_equal(json_integer_value(json_array_get(offs, 1)), 12);
    assert_int_equal(json_integer_value(json_array_get(offs, 2)), 14);
    json_decref(j);
    free(b);
    ic_oai_lp_list_free(&list);
    assert_int_equal(list.n, 0);

    /* parsing: chat's pair, completions' count */
    ic_oai_request q;
    ic_oai_error err;
    assert_int_equal(parse(IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                                        "\"logprobs\":true}", &q, &err), 0);
    assert_true(q.logprobs);
    assert_int_equal(q.top_logprobs, 0);
    ic_gen_params gp;
    ic_oai_gen_params(&q, IC_PRIORITY_HIGH, &gp);
    assert_true(gp.logprobs);
    assert_int_equal(gp.top_logprobs, 0);
    ic_oai_request_free(&q);
    assert_int_equal(parse(IC_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                                        "\"logprobs\":false,\"top_logprobs\":null}", &q, &err), 0);
    ic_oai_gen_params(&q, IC_PRIORITY_HIGH, &gp);
    assert_false(gp.logprobs);
    ic_oai_request_free(&q);
    assert_int_equal(parse(IC_OAI_COMPLETIONS, "{\"prompt\":\"a\",\"logprobs\":5,"
                                               "\"top_logprobs\":9}", &q, &err), 0);
    ic_oai_gen_params(&q, IC_PRIORITY_HIGH, &gp);
    assert_true(gp.logprobs);
    assert_int_equal(gp.top_logprobs, 5);
    ic_oai_request_free(&q);
    assert_int_equal(parse(IC_OAI_COMPLETIONS, "{\"prompt\":\"a\",\"logprobs\":null}", &q, &err), 0);
    ic_oai_gen_params(&q, IC_PRIORITY_HIGH, &gp);
    assert_false(gp.logprobs);
    ic_oai_request_free(&q);
}

static void tool_calls_and_models(void **state)
{
    (void)state;
    ic_oai_response r = {.endpoint = IC_OAI_CHAT, .id = "x", .model = "m",
                         .tool_calls_json = "[{\"id\":\"c1\",\"type\":\"function\","
                                            "\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]",
                         .finish_reason = ic_oai_finish_reason(IC_END_EOS, true)};
    char *b = ic_oai_response_body(&r);
    assert_non_null(strstr(b, "\"tool_calls\":[{\"id\":\"c1\""));
    assert_non_null(strstr(b, "\"finish_reason\":\"tool_calls\""));
    assert_non_null(strstr(b, "\"content\":null")); /* OpenAI's, beside tool calls */
    free(b);
    /* Built calls: a message's (no index), a first delta (index, id, name),
     * a later delta (index and an arguments piece only). */
    ic_oai_call_out calls[3] = {
        {.index = -1, .id = "c1", .name = "f", .arguments = "{\"a\":1}xx", .arguments_len = 7},
        {.index = 0, .id = "c2", .name = "g", .arguments = NULL},
        {.index = 0, .arguments = "\"q", .arguments_len = 2},
    };
    b = ic_oai_tool_calls_json(calls, 3);
    assert_string_equal(b, "[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\","
                           "\"arguments\":\"{\\\"a\\\":1}\"}},{\"index\":0,\"id\":\"c2\",\"type\":"
                           "\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"\"}},"
                           "{\"index\":0,\"function\":{\"arguments\":\"\\\"q\"}}]");
    free(b);
    assert_string_equal(ic_oai_finish_reason(IC_END_STOP_STRING, false), "stop");
    assert_string_equal(ic_oai_finish_reason(IC_END_CONTEXT_FULL, false), "length");
    assert_null(ic_oai_finish_reason(IC_END_ABORT, false));

    ic_oai_model ms[2] = {{"a", 1, true}, {"b", 2, false}};
    b = ic_oai_models_body(ms, 2, false);
    json_t *j = json_loads(b, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "list");
    assert_int_equal(json_array_size(json_object_get(j, "data")), 2);
    assert_true(json_is_false(json_object_get(json_array_get(json_object_get(j, "data"), 1),
                                              "loaded")));
    json_decref(j);
    free(b);
    b = ic_oai_models_body(ms, 1, true);
    assert_non_null(strstr(b, "\"id\":\"a\""));
    assert_null(strstr(b, "\"data\""));
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(chat_request_with_every_field),
        cmocka_unit_test(openai_defaults_not_protocol_ones),
        cmocka_unit_test(refusals_name_the_field),
        cmocka_unit_test(error_shapes_by_status),
        cmocka_unit_test(answers_have_openai_shapes),
        cmocka_unit_test(tool_calls_and_models),
        cmocka_unit_test(logprobs_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
