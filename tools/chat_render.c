/* chat_render.c - ic-chat-render: renders conversations with a model's own
 * chat template through the chat module (src/engine/chat.h), for the
 * differential test against llama-server's POST /apply-template and for
 * timing render and parse.
 *
 *   ic-chat-render --model M.gguf [--repeat N] REQUEST.json...
 *
 * Each REQUEST is an OpenAI-style body: messages (role, content,
 * reasoning_content, tool_call_id, name, tool_calls), optional tools,
 * tool_choice, add_generation_prompt, reasoning (-1/0/1), json_schema,
 * grammar, and "parse": a model output to parse with the rendered prompt's
 * parser. For each one a JSON line goes to stdout: prompt, format,
 * generation_prompt, grammar facts, the parse result, and with --repeat
 * the mean render and parse time in microseconds. An error gives a line
 * {"error": ..., "code": ...}. One thread; not part of the server.
 */
#include "chat.h"
#include "engine.h"
#include "err.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static const char *str_or_null(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* The C messages of a JSON messages array. Argument objects become JSON
 * text kept in *keep (freed by the caller after the render). */
typedef struct conv {
    ic_chat_message *msgs;
    size_t n;
    ic_chat_tool_call *calls; /* all messages' calls, one array */
    char **args;              /* dumped argument objects */
    size_t n_args;
} conv;

static void conv_free(conv *c)
{
    free(c->msgs);
    free(c->calls);
    for (size_t i = 0; i < c->n_args; i++)
        free(c->args[i]);
    free(c->args);
}

static int conv_from_json(json_t *messages, conv *c)
{
    memset(c, 0, sizeof *c);
    size_t n = json_array_size(messages), n_calls = 0;
    for (size_t i = 0; i < n; i++)
        n_calls += json_array_size(json_object_get(json_array_get(messages, i), "tool_calls"));
    c->msgs = calloc(n ? n : 1, sizeof *c->msgs);
    c->calls = calloc(n_calls ? n_calls : 1, sizeof *c->calls);
    c->args = calloc(n_calls ? n_calls : 1, sizeof *c->args);
    if (!c->msgs || !c->calls || !c->args)
        return IC_ERR_NOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(messages, i);
        ic_chat_message *cm = &c->msgs[i];
        cm->role = str_or_null(m, "role");
        cm->content = str_or_null(m, "content");
        cm->reasoning_content = str_or_null(m, "reasoning_content");
        cm->tool_call_id = str_or_null(m, "tool_call_id");
        cm->tool_name = str_or_null(m, "name");
        json_t *calls = json_object_get(m, "tool_calls");
        cm->tool_calls = &c->calls[k];
        for (size_t j = 0; j < json_array_size(calls); j++, k++) {
            json_t *tc = json_array_get(calls, j), *fn = json_object_get(tc, "function");
            json_t *args = json_object_get(fn, "arguments");
            c->calls[k].id = str_or_null(tc, "id");
            c->calls[k].name = str_or_null(fn, "name");
            if (json_is_string(args)) {
                c->calls[k].arguments = json_string_value(args);
            } else {
                c->args[c->n_args] = json_dumps(args, JSON_COMPACT);
                c->calls[k].arguments = c->args[c->n_args++];
            }
            cm->n_tool_calls++;
        }
    }
    c->n = n;
    return 0;
}

static json_t *strs_json(char **v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

static json_t *prompt_json(const ic_chat_prompt *p)
{
    json_t *triggers = json_array();
    for (size_t i = 0; i < p->n_triggers; i++)
        json_array_append_new(triggers, json_pack("{s:s?,s:s}", "word", p->triggers[i].word, "pattern",
                                                  p->triggers[i].pattern));
    return json_pack("{s:s,s:i,s:s,s:s,s:s?,s:b,s:o,s:o,s:o,s:b,s:s,s:o}", "prompt", p->prompt, "format",
                     p->format, "format_name", p->format_name, "generation_prompt", p->generation_prompt,
                     "grammar", p->grammar, "grammar_lazy", p->grammar_lazy, "triggers", triggers,
                     "preserved_tokens", strs_json(p->preserved_tokens, p->n_preserved_tokens),
                     "additional_stops", strs_json(p->additional_stops, p->n_additional_stops),
                     "thinking", p->thinking, "thinking_start_tag", p->thinking_start_tag,
                     "thinking_end_tags", strs_json(p->thinking_end_tags, p->n_thinking_end_tags));
}

static json_t *parsed_json(const ic_chat_parsed *r)
{
    json_t *calls = json_array();
    for (size_t i = 0; i < r->n_tool_calls; i++)
        json_array_append_new(calls, json_pack("{s:s,s:s,s:s}", "id", r->tool_calls[i].id, "name",
                                               r->tool_calls[i].name, "arguments", r->tool_calls[i].arguments));
    return json_pack("{s:s,s:s,s:o}", "content", r->content, "reasoning_content", r->reasoning_content,
                     "tool_calls", calls);
}

static json_t *error_json(int rc, const char *msg)
{
    return json_pack("{s:s,s:s}", "error", msg, "code", ic_strerror(rc));
}

/* Renders (and parses) one request; returns the JSON line to print. */
static json_t *run_request(const ic_chat *chat, json_t *req, int repeat)
{
    ic_chat_render_opts o = ic_chat_render_opts_default();
    json_t *tools = json_object_get(req, "tools"), *schema = json_object_get(req, "json_schema");
    char *tools_text = tools ? json_dumps(tools, JSON_COMPACT) : NULL;
    char *schema_text = schema ? json_dumps(schema, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    o.tools_json = tools_text;
    o.json_schema = schema_text;
    o.tool_choice = str_or_null(req, "tool_choice");
    o.grammar = str_or_null(req, "grammar");
    if (json_is_boolean(json_object_get(req, "add_generation_prompt")))
        o.add_generation_prompt = json_is_true(json_object_get(req, "add_generation_prompt"));
    if (json_is_integer(json_object_get(req, "reasoning")))
        o.reasoning = (int)json_integer_value(json_object_get(req, "reasoning"));
    conv c;
    char err[1024] = "";
    json_t *line = NULL;
    int rc = conv_from_json(json_object_get(req, "messages"), &c);
    ic_chat_prompt *p = NULL;
    double t0 = now_us();
    for (int i = 0; rc == 0 && i < repeat; i++) {
        ic_chat_prompt_free(p);
        p = NULL;
        rc = ic_chat_render(chat, c.msgs, c.n, &o, &p, err, sizeof err);
    }
    double render_us = (now_us() - t0) / repeat;
    if (rc != 0) {
        line = error_json(rc, err[0] ? err : ic_strerror(rc));
    } else {
        line = prompt_json(p);
        if (repeat > 1)
            json_object_set_new(line, "render_us", json_real(render_us));
        const char *output = str_or_null(req, "parse");
        if (output) {
            ic_chat_parsed *r = NULL;
            t0 = now_us();
            for (int i = 0; rc == 0 && i < repeat; i++) {
                ic_chat_parsed_free(r);
                r = NULL;
                rc = ic_chat_parse(p, output, strlen(output), false, &r, err, sizeof err);
            }
            double parse_us = (now_us() - t0) / repeat;
            json_object_set_new(line, "parsed", rc == 0 ? parsed_json(r) : error_json(rc, err));
            if (repeat > 1)
                json_object_set_new(line, "parse_us", json_real(parse_us));
            ic_chat_parsed_free(r);
        }
    }
    ic_chat_prompt_free(p);
    conv_free(&c);
    free(tools_text);
    free(schema_text);
    return line;
}

int main(int argc, char **argv)
{
    const char *model = NULL;
    int repeat = 1, first = 1;
    while (first + 1 < argc && argv[first][0] == '-' && argv[first][1] == '-') {
        if (strcmp(argv[first], "--model") == 0)
            model = argv[first + 1];
        else if (strcmp(argv[first], "--repeat") == 0)
            repeat = atoi(argv[first + 1]);
        else
            break;
        first += 2;
    }
    if (!model || repeat < 1 || first >= argc) {
        fprintf(stderr, "usage: ic-chat-render --model M.gguf [--repeat N] REQUEST.json...\n");
        return 2;
    }
    ic_engine_global_init();
    ic_engine_opts eo = ic_engine_opts_default();
    eo.model_path = model;
    eo.n_ctx_tokens = 256;
    eo.n_batch_tokens = 64;
    ic_engine *e = NULL;
    const char *why = NULL;
    int rc = ic_engine_create(&eo, &e, &why);
    if (rc != 0) {
        fprintf(stderr, "ic-chat-render: %s: %s\n", model, why ? why : ic_strerror(rc));
        return 1;
    }
    char err[1024] = "";
    ic_chat *chat = NULL;
    rc = ic_chat_create(e, NULL, &chat, err, sizeof err);
    ic_engine_destroy(e); /* the templates keep no pointer to the model */
    if (rc != 0) {
        json_t *line = error_json(rc, err);
        char *text = json_dumps(line, JSON_COMPACT);
        puts(text);
        free(text);
        json_decref(line);
        return 0;
    }
    for (int i = first; i < argc; i++) {
        json_error_t jerr;
        json_t *req = json_load_file(argv[i], 0, &jerr), *line;
        line = req ? run_request(chat, req, repeat) : error_json(IC_ERR_PARSE, jerr.text);
        char *text = json_dumps(line, JSON_COMPACT | JSON_ENSURE_ASCII);
        puts(text);
        free(text);
        json_decref(line);
        json_decref(req);
    }
    ic_chat_destroy(chat);
    return 0;
}
