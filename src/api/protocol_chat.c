/* protocol_chat.c - protocol v1's chat fields: tools (OpenAI function
 * definitions), tool_choice, tool results (INFER messages) and reasoning
 * (see docs/protocol.md, "Tools and reasoning"). Pure; any thread.
 */
#include "protocol_chat.h"
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOOLS_MAX 128
#define TOOL_NAME_MAX 64
#define TOOL_RESULTS_MAX 64
#define REASONING_BUDGET_MAX 1000000

static int bad(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *why, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    return IC_ERR_PARSE;
}

/* A string without U+0000 (C strings end there). */
static bool c_string(const json_t *v)
{
    return json_is_string(v) && strlen(json_string_value(v)) == json_string_length(v);
}

/* OpenAI's function names: 1 to 64 of a-z, A-Z, 0-9, '_', '-' (and '.'). */
static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > TOOL_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

static int parse_tools(const json_t *v, ic_msg *m, char *why, size_t n)
{
    if (!json_is_array(v) || json_array_size(v) > TOOLS_MAX)
        return bad(why, n, "field 'tools' must be an array of at most %d function definitions",
                   TOOLS_MAX);
    size_t i;
    const json_t *t;
    json_array_foreach(v, i, t) {
        const json_t *type = json_object_get(t, "type");
        const json_t *fn = json_object_get(t, "function");
        if (!json_is_object(t) || !json_is_string(type) ||
            strcmp(json_string_value(type), "function") != 0)
            return bad(why, n, "field 'tools[%zu]' must be an object with \"type\":\"function\"", i);
        if (!json_is_object(fn))
            return bad(why, n, "field 'tools[%zu].function' must be an object", i);
        const json_t *name = json_object_get(fn, "name");
        const json_t *desc = json_object_get(fn, "description");
        const json_t *params = json_object_get(fn, "parameters");
        if (!c_string(name) || !name_ok(json_string_value(name)))
            return bad(why, n, "field 'tools[%zu].function.name' must be a string of 1 to %d "
                       "letters, digits, '_', '-' or '.'", i, TOOL_NAME_MAX);
        if (desc && !c_string(desc))
            return bad(why, n, "field 'tools[%zu].function.description' must be a string", i);
        if (params && !json_is_object(params))
            return bad(why, n, "field 'tools[%zu].function.parameters' must be a JSON Schema "
                       "object", i);
        for (size_t k = 0; k < i; k++) {
            const json_t *o = json_object_get(json_object_get(json_array_get(v, k), "function"),
                                              "name");
            if (strcmp(json_string_value(o), json_string_value(name)) == 0)
                return bad(why, n, "field 'tools[%zu].function.name': '%s' is defined twice", i,
                           json_string_value(name));
        }
    }
    if (json_array_size(v) == 0)
        return 0; /* no tools */
    m->tools_json = json_dumps(v, JSON_COMPACT);
    return m->tools_json ? 0 : IC_ERR_NOMEM;
}

static int parse_results(const json_t *v, ic_msg *m, char *why, size_t n)
{
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > TOOL_RESULTS_MAX)
        return bad(why, n, "field 'messages' must be an array of 1 to %d tool results",
                   TOOL_RESULTS_MAX);
    m->tool_results = calloc(json_array_size(v), sizeof *m->tool_results);
    if (!m->tool_results)
        return IC_ERR_NOMEM;
    size_t i;
    const json_t *t;
    json_array_foreach(v, i, t) {
        const json_t *role = json_object_get(t, "role");
        const json_t *id = json_object_get(t, "tool_call_id");
        const json_t *content = json_object_get(t, "content");
        if (!json_is_object(t) || !json_is_string(role) ||
            strcmp(json_string_value(role), "tool") != 0)
            return bad(why, n, "field 'messages[%zu].role' must be \"tool\" (tool results are "
                       "the only messages INFER takes)", i);
        if (!c_string(id) || json_string_length(id) == 0 || json_string_length(id) > 256)
            return bad(why, n, "field 'messages[%zu].tool_call_id' must be a string of 1 to "
                       "256 bytes", i);
        if (!c_string(content))
            return bad(why, n, "field 'messages[%zu].content' must be a string", i);
        ic_proto_tool_result *r = &m->tool_results[i];
        m->n_tool_results = (int)i + 1; /* so ic_proto_chat_free frees what is set */
        if (!(r->tool_call_id = strdup(json_string_value(id))) ||
            !(r->content = strdup(json_string_value(content))))
            return IC_ERR_NOMEM;
    }
    return 0;
}

static int parse_reasoning(const json_t *root, ic_msg *m, char *why, size_t n)
{
    const json_t *v = json_object_get(root, "reasoning");
    const json_t *b = json_object_get(root, "reasoning_budget");
    if (v && !json_is_boolean(v))
        return bad(why, n, "field 'reasoning' must be a boolean");
    m->reasoning = v ? json_is_true(v) : -1;
    if (!b)
        return 0;
    json_int_t x = json_integer_value(b);
    if (!json_is_integer(b) || x < 0 || x > REASONING_BUDGET_MAX)
        return bad(why, n, "field 'reasoning_budget' must be an integer 0 ... %d",
                   REASONING_BUDGET_MAX);
    if (m->reasoning == 0)
        return bad(why, n, "field 'reasoning_budget' needs reasoning on (\"reasoning\": true)");
    m->reasoning_budget = (int)x;
    return 0;
}

int ic_proto_chat_fields(const json_t *root, bool infer, ic_msg *m, char *why, size_t why_size)
{
    m->reasoning = -1;
    m->reasoning_budget = -1;
    const json_t *tools = json_object_get(root, "tools");
    int rc = tools ? parse_tools(tools, m, why, why_size) : 0;
    if (rc < 0 || !infer)
        return rc;
    const json_t *choice = json_object_get(root, "tool_choice");
    if (choice) {
        const char *c = json_is_string(choice) ? json_string_value(choice) : "";
        if (strcmp(c, "auto") != 0 && strcmp(c, "none") != 0 && strcmp(c, "required") != 0)
            return bad(why, why_size, "field 'tool_choice' must be \"auto\", \"none\" or "
                       "\"required\"");
        if (!(m->tool_choice = strdup(c)))
            return IC_ERR_NOMEM;
    }
    const json_t *msgs = json_object_get(root, "messages");
    if (msgs && (rc = parse_results(msgs, m, why, why_size)) < 0)
        return rc;
    return parse_reasoning(root, m, why, why_size);
}

void ic_proto_chat_free(ic_msg *m)
{
    free(m->tools_json);
    free(m->tool_choice);
    for (int i = 0; m->tool_results && i < m->n_tool_results; i++) {
        free(m->tool_results[i].tool_call_id);
        free(m->tool_results[i].content);
    }
    free(m->tool_results);
    m->tools_json = m->tool_choice = NULL;
    m->tool_results = NULL;
    m->n_tool_results = 0;
}

/* jansson's json_object_set_new, -1 on failure (v NULL included). */
static int put(json_t *o, const char *key, json_t *v)
{
    return v && json_object_set_new(o, key, v) == 0 ? 0 : -1;
}

static json_t *text(const char *s) { return json_string(s ? s : ""); }

int ic_proto_chat_end(json_t *m, const ic_chat_parsed *p)
{
    int rc = put(m, "content", text(p->content));
    rc |= put(m, "reasoning_content", text(p->reasoning_content));
    if (p->n_tool_calls == 0)
        return rc;
    json_t *calls = json_array();
    for (size_t i = 0; calls && i < p->n_tool_calls; i++) {
        const ic_chat_tool_call *c = &p->tool_calls[i];
        json_t *call = json_object(), *fn = json_object();
        int r = put(fn, "name", text(c->name));
        r |= put(fn, "arguments", text(c->arguments && *c->arguments ? c->arguments : "{}"));
        r |= put(call, "id", text(c->id));
        r |= put(call, "type", json_string("function"));
        r |= put(call, "function", fn);
        r |= json_array_append_new(calls, call);
        rc |= r;
    }
    return rc | put(m, "tool_calls", calls);
}
