/* openai.c - OpenAI API bodies <-> C (see openai.h): request validation
 * with errors that name the field, and every answer built with jansson.
 *
 * Pure; any thread.
 */
#include "openai.h"
#include "openai_lp.h"
#include "err.h"
#include "protocol.h"

#include <jansson.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- errors -------------------------------------------------------- */

static const char *type_of_status(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

void ic_oai_error_set(ic_oai_error *err, int status, const char *code, const char *param,
                      const char *fmt, ...)
{
    err->status = status;
    err->type = type_of_status(status);
    err->code = code;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

static json_t *error_object(const ic_oai_error *err)
{
    return json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", err->message, "type",
                     err->type ? err->type : type_of_status(err->status), "param",
                     err->param[0] ? json_string(err->param) : json_null(), "code",
                     err->code ? json_string(err->code) : json_null());
}

static char *dump(json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

char *ic_oai_error_body(const ic_oai_error *err) { return dump(error_object(err)); }

/* --- request parsing ----------------------------------------------- */

/* A field's value of the wrong type or out of range. */
static int bad(ic_oai_error *err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int bad(ic_oai_error *err, const char *param, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ic_oai_error_set(err, 400, "invalid_value", param, "'%s': %s", param, msg);
    return IC_ERR_PARSE;
}

static int nomem(ic_oai_error *err)
{
    ic_oai_error_set(err, 500, NULL, NULL, "out of memory");
    return IC_ERR_NOMEM;
}

/* A string without NUL bytes (jansson allows "\u0000"). */
static bool is_c_string(const json_t *v)
{
    return json_is_string(v) && strlen(json_string_value(v)) == json_string_length(v);
}

static int get_string(const json_t *root, const char *key, char **out, ic_oai_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!is_c_string(v))
        return bad(err, key, "must be a string");
    *out = strdup(json_string_value(v));
    return *out ? 0 : nomem(err);
}

static int get_bool(const json_t *root, const char *key, bool *out, ic_oai_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return bad(err, key, "must be true or false");
    *out = json_is_true(v);
    return 0;
}

/* A number in [lo, hi]; *has says whether it was given. */
static int get_number(const json_t *root, const char *key, double lo, double hi, double *out,
                      bool *has, ic_oai_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return bad(err, key, "must be a number");
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi)
        return bad(err, key, "must be between %g and %g", lo, hi);
    *out = x;
    if (has)
        *has = true;
    return 0;
}

static int get_int(const json_t *root, const char *key, json_int_t lo, json_int_t hi,
                   json_int_t *out, bool *has, ic_oai_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return bad(err, key, "must be an integer");
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return bad(err, key, "must be between %lld and %lld", (long long)lo, (long long)hi);
    *out = x;
    if (has)
        *has = true;
    return 0;
}

/* content: a string, null, or an array of parts of which only "text" parts
 * are read (others are refused: this server has no vision or audio). */
static int parse_content(const json_t *v, const char *param, char **out, ic_oai_error *err)
{
    if (!v || json_is_null(v)) {
        *out = strdup("");
        return *out ? 0 : nomem(err);
    }
    if (is_c_string(v)) {
        *out = strdup(json_string_value(v));
        return *out ? 0 : nomem(err);
    }
    if (!json_is_array(v))
        return bad(err, param, "must be a string or an array of content parts");
    size_t cap = 1, i;
    json_t *part;
    json_array_foreach(v, i, part) {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0)
            return bad(err, param, "only content parts of type \"text\" are supported");
        if (!is_c_string(text))
            return bad(err, param, "a text part needs a string \"text\"");
        cap += json_string_length(text);
    }
    char *s = malloc(cap);
    if (!s)
        return nomem(err);
    size_t len = 0;
    json_array_foreach(v, i, part) {
        json_t *text = json_object_get(part, "text");
        memcpy(s + len, json_string_value(text), json_string_length(text));
        len += json_string_length(text);
    }
    s[len] = '\0';
    *out = s;
    return 0;
}

static int parse_role(const json_t *v, enum ic_oai_role *out)
{
    static const struct {
        const char *name;
        enum ic_oai_role role;
    } roles[] = {{"system", IC_OAI_ROLE_SYSTEM}, {"developer", IC_OAI_ROLE_SYSTEM},
                 {"user", IC_OAI_ROLE_USER},     {"assistant", IC_OAI_ROLE_ASSISTANT},
                 {"tool", IC_OAI_ROLE_TOOL}};
    for (size_t i = 0; json_is_string(v) && i < sizeof roles / sizeof *roles; i++) {
        if (strcmp(json_string_value(v), roles[i].name) == 0) {
            *out = roles[i].role;
            return 0;
        }
    }
    return IC_ERR_PARSE;
}

/* An assistant message's tool_calls: [{id, type, function:{name, arguments}}];
 * arguments a JSON string as OpenAI sends it (an object is taken too). */
static int parse_calls(const json_t *calls, const char *param, ic_oai_message *out,
                       ic_oai_error *err)
{
    size_t n = json_array_size(calls), i;
    if (n == 0)
        return 0;
    out->tool_calls = calloc(n, sizeof *out->tool_calls);
    if (!out->tool_calls)
        return nomem(err);
    json_t *c;
    json_array_foreach(calls, i, c) {
        json_t *fn = json_object_get(c, "function"), *id = json_object_get(c, "id");
        json_t *name = json_object_get(fn, "name"), *args = json_object_get(fn, "arguments");
        if (!is_c_string(name) || (id && !json_is_null(id) && !is_c_string(id)))
            return bad(err, param, "each call needs a string function.name (and id)");
        ic_oai_tool_call *t = &out->tool_calls[out->n_tool_calls++];
        t->id = strdup(is_c_string(id) ? json_string_value(id) : "");
        t->name = strdup(json_string_value(name));
        if (is_c_string(args))
            t->arguments = strdup(json_string_value(args));
        else if (json_is_object(args))
            t->arguments = json_dumps(args, JSON_COMPACT);
        else if (!args || json_is_null(args))
            t->arguments = strdup("{}");
        else
            return bad(err, param, "function.arguments must be a JSON string");
        if (!t->id || !t->name || !t->arguments)
            return nomem(err);
    }
    return 0;
}

static int parse_message(const json_t *m, int i, ic_oai_message *out, ic_oai_error *err)
{
    char param[48];
    snprintf(param, sizeof param, "messages[%d]", i);
    if (!json_is_object(m))
        return bad(err, param, "must be an object");
    if (parse_role(json_object_get(m, "role"), &out->role) < 0) {
        snprintf(param, sizeof param, "messages[%d].role", i);
        return bad(err, param, "must be system, developer, user, assistant or tool");
    }
    snprintf(param, sizeof param, "messages[%d].content", i);
    int rc = parse_content(json_object_get(m, "content"), param, &out->content, err);
    if (rc == 0)
        rc = get_string(m, "name", &out->name, err);
    if (rc == 0 && out->role == IC_OAI_ROLE_TOOL) {
        rc = get_string(m, "tool_call_id", &out->tool_call_id, err);
        if (rc == 0 && !out->tool_call_id) {
            snprintf(param, sizeof param, "messages[%d].tool_call_id", i);
            return bad(err, param, "a tool message needs the id of the call it answers");
        }
    }
    json_t *calls = json_object_get(m, "tool_calls");
    if (rc == 0 && out->role == IC_OAI_ROLE_ASSISTANT && calls && !json_is_null(calls)) {
        snprintf(param, sizeof param, "messages[%d].tool_calls", i);
        if (!json_is_array(calls))
            return bad(err, param, "must be an array");
        out->tool_calls_json = json_dumps(calls, JSON_COMPACT);
        if (!out->tool_calls_json)
            return nomem(err);
        return parse_calls(calls, param, out, err);
    }
    return rc;
}

static int parse_messages(const json_t *root, ic_oai_request *r, ic_oai_error *err)
{
    json_t *v = json_object_get(root, "messages");
    if (!v)
        return bad(err, "messages", "is required");
    if (!json_is_array(v) || json_array_size(v) == 0)
        return bad(err, "messages", "must be a non-empty array");
    if (json_array_size(v) > 100000)
        return bad(err, "messages", "too many messages");
    r->messages = calloc(json_array_size(v), sizeof *r->messages);
    if (!r->messages)
        return nomem(err);
    size_t i;
    json_t *m;
    json_array_foreach(v, i, m) {
        r->n_messages = (int)i + 1;
        int rc = parse_message(m, (int)i, &r->messages[i], err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int parse_prompt(const json_t *root, ic_oai_request *r, ic_oai_error *err)
{
    json_t *v = json_object_get(root, "prompt");
    if (!v)
        return bad(err, "prompt", "is required");
    if (json_is_array(v))
        return bad(err, "prompt", "a list of prompts is not supported: send one request "
                                  "per prompt");
    if (!is_c_string(v))
        return bad(err, "prompt", "must be a string");
    r->prompt = strdup(json_string_value(v));
    return r->prompt ? 0 : nomem(err);
}

static int parse_stop(const json_t *root, ic_oai_request *r, ic_oai_error *err)
{
    json_t *v = json_object_get(root, "stop");
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        json_t *one = json_pack("[O]", v);
        int rc = one ? 0 : nomem(err);
        if (rc == 0) {
            json_t *tmp = json_pack("{s:o}", "stop", one);
            rc = tmp ? parse_stop(tmp, r, err) : nomem(err);
            json_decref(tmp);
        }
        return rc;
    }
    if (!json_is_array(v) || json_array_size(v) > IC_STOP_MAX)
        return bad(err, "stop", "must be a string or an array of at most %d strings",
                   IC_STOP_MAX);
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        if (!is_c_string(s) || json_string_length(s) == 0 || json_string_length(s) > 256)
            return bad(err, "stop", "each stop sequence must be a string of 1 to 256 bytes");
        if (!(r->stop[r->n_stop] = strdup(json_string_value(s))))
            return nomem(err);
        r->n_stop++;
    }
    return 0;
}

static int parse_logit_bias(const json_t *root, ic_oai_request *r, ic_oai_error *err)
{
    json_t *v = json_object_get(root, "logit_bias");
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v) || json_object_size(v) > IC_OAI_MAX_LOGIT_BIAS)
        return bad(err, "logit_bias", "must be an object of at most %d token ids",
                   IC_OAI_MAX_LOGIT_BIAS);
    r->logit_bias = calloc(json_object_size(v) + 1, sizeof *r->logit_bias);
    if (!r->logit_bias)
        return nomem(err);
    const char *key;
    json_t *b;
    json_object_foreach(v, key, b) {
        char *end;
        long tok = strtol(key, &end, 10);
        if (!*key || *end || tok < 0 || tok > INT32_MAX)
            return bad(err, "logit_bias", "keys must be token ids, not '%.40s'", key);
        if (!json_is_number(b) || json_number_value(b) < -100 || json_number_value(b) > 100)
            return bad(err, "logit_bias", "values must be numbers from -100 to 100");
        r->logit_bias[r->n_logit_bias++] =
            (ic_oai_logit_bias){.token = (int32_t)tok, .bias = (float)json_number_value(b)};
    }
    return 0;
}

/* A named tool_choice: that function must be called, which the chat layer
 * does as "required" over a list of just that tool. */
static int only_tool(const json_t *tools, const char *name, ic_oai_request *r, ic_oai_error *err)
{
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        const char *tn = json_string_value(json_object_get(json_object_get(t, "function"), "name"));
        if (!tn || strcmp(tn, name) != 0)
            continue;
        free(r->tools_json);
        r->tools_json = NULL;
        json_t *one = json_pack("[O]", t);
        r->tools_json = one ? json_dumps(one, JSON_COMPACT) : NULL;
        json_decref(one);
        r->tool_choice = strdup("required");
        return r->tools_json && r->tool_choice ? 0 : nomem(err);
    }
    return bad(err, "tool_choice", "the function '%.64s' is not among the tools", name);
}

static int parse_tools(const json_t *root, ic_oai_request *r, ic_oai_error *err)
{
    json_t *v = json_object_get(root, "tools");
    if (v && !json_is_null(v)) {
        if (!json_is_array(v))
            return bad(err, "tools", "must be an array");
        size_t i;
        json_t *t;
        json_array_foreach(v, i, t) {
            json_t *fn = json_object_get(t, "function");
            if (!json_is_string(json_object_get(t, "type")) ||
                strcmp(json_string_value(json_object_get(t, "type")), "function") != 0 ||
                !json_is_string(json_object_get(fn, "name")))
                return bad(err, "tools", "each tool must be {\"type\":\"function\","
                                         "\"function\":{\"name\":...}}");
        }
        if (json_array_size(v) > 0 && !(r->tools_json = json_dumps(v, JSON_COMPACT)))
            return nomem(err);
    }
    json_t *c = json_object_get(root, "tool_choice");
    if (!c || json_is_null(c))
        return 0;
    const char *name = NULL;
    if (json_is_string(c)) {
        name = json_string_value(c);
        if (strcmp(name, "none") && strcmp(name, "auto") && strcmp(name, "required"))
            return bad(err, "tool_choice", "must be none, auto, required or a function");
    } else if (json_is_object(c)) {
        name = json_string_value(json_object_get(json_object_get(c, "function"), "name"));
        if (!name)
            return bad(err, "tool_choice", "a function choice needs function.name");
    } else {
        return bad(err, "tool_choice", "must be a string or an object");
    }
    if (json_is_object(c))
        return only_tool(v, name, r, err);
    r->tool_choice = strdup(name);
    return r->tool_choice ? 0 : nomem(err);
}

static int parse_format(const json_t *root, ic_oai_request *r, ic_oai_error *err)
{
    json_t *v = json_object_get(root, "response_format");
    if (!v || json_is_null(v))
        return 0;
    const char *type = json_string_value(json_object_get(v, "type"));
    if (!json_is_object(v) || !type)
        return bad(err, "response_format", "must be an object with a \"type\"");
    if (strcmp(type, "text") == 0)
        return 0;
    if (strcmp(type, "json_object") == 0) {
        r->format = IC_OAI_FORMAT_JSON_OBJECT;
        return 0;
    }
    if (strcmp(type, "json_schema") != 0)
        return bad(err, "response_format", "type must be text, json_object or json_schema");
    json_t *schema = json_object_get(json_object_get(v, "json_schema"), "schema");
    if (!json_is_object(schema))
        return bad(err, "response_format", "json_schema needs a \"schema\" object");
    r->format = IC_OAI_FORMAT_JSON_SCHEMA;
    r->schema_json = json_dumps(schema, JSON_COMPACT);
    return r->schema_json ? 0 : nomem(err);
}

static int parse_priority(const json_t *root, ic_oai_request *r, ic_oai_error *err)
{
    json_t *v = json_object_get(root, "priority");
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || ic_priority_parse(json_string_value(v), &r->priority) < 0)
        return bad(err, "priority", "must be low, normal or high");
    r->has_priority = true;
    return 0;
}

/* The sampling fields shared by both endpoints. */
static int parse_sampling(const json_t *root, ic_oai_request *r, ic_oai_error *err)
{
    json_int_t mt = 0, mct = 0, n = 1, seed = 0, top_k = 0, top_lp = 0;
    double temp = 0, top_p = 0, min_p = 0, rp = 0, pp = 0, fp = 0;
    bool has_seed = false;
    int rc = get_int(root, "max_tokens", 1, 1 << 30, &mt, NULL, err);
    if (rc == 0)
        rc = get_int(root, "max_completion_tokens", 1, 1 << 30, &mct, NULL, err);
    if (rc == 0)
        rc = get_int(root, "n", 1, 128, &n, NULL, err);
    if (rc == 0 && n != 1)
        return bad(err, "n", "only n = 1 is supported: send one request per choice");
    if (rc == 0)
        rc = get_number(root, "temperature", 0, 2, &temp, &r->has_temperature, err);
    if (rc == 0)
        rc = get_number(root, "top_p", 0, 1, &top_p, &r->has_top_p, err);
    if (rc == 0)
        rc = get_number(root, "min_p", 0, 1, &min_p, &r->has_min_p, err);
    if (rc == 0)
        rc = get_number(root, "repeat_penalty", 0, 10, &rp, &r->has_repeat_penalty, err);
    if (rc == 0)
        rc = get_number(root, "presence_penalty", -2, 2, &pp, NULL, err);
    if (rc == 0)
        rc = get_number(root, "frequency_penalty", -2, 2, &fp, NULL, err);
    if (rc == 0)
        rc = get_int(root, "seed", INT64_MIN, INT64_MAX, &seed, &has_seed, err);
    if (rc == 0)
        rc = get_int(root, "top_k", 0, 1 << 20, &top_k, &r->has_top_k, err);
    if (rc == 0)
        rc = get_int(root, "top_logprobs", 0, 20, &top_lp, NULL, err);
    if (rc < 0)
        return rc;
    r->max_tokens = (int)(mct ? mct : mt);
    r->temperature = (float)temp;
    r->top_p = (float)top_p;
    r->min_p = (float)min_p;
    r->repeat_penalty = (float)rp;
    r->presence_penalty = (float)pp;
    r->frequency_penalty = (float)fp;
    r->has_seed = has_seed;
    r->seed = (uint32_t)(uint64_t)seed;
    r->top_k = (int)top_k;
    r->top_logprobs = (int)top_lp;
    return 0;
}

/* Chat: logprobs true/false and top_logprobs 0..20 (read with the
 * sampling fields), which needs logprobs true as OpenAI says.
 * Completions: logprobs is a count, 0..5 (OpenAI's legacy limit). */
static int parse_logprobs(const json_t *root, ic_oai_request *r, ic_oai_error *err)
{
    json_t *lp = json_object_get(root, "logprobs");
    if (r->endpoint == IC_OAI_COMPLETIONS) {
        r->top_logprobs = 0; /* not a field of completions */
        if (!lp || json_is_null(lp))
            return 0;
        if (!json_is_integer(lp) || json_integer_value(lp) < 0 || json_integer_value(lp) > 5)
            return bad(err, "logprobs", "must be an integer between 0 and 5");
        r->logprobs = true;
        r->top_logprobs = (int)json_integer_value(lp);
        return 0;
    }
    int rc = get_bool(root, "logprobs", &r->logprobs, err);
    json_t *top = json_object_get(root, "top_logprobs");
    if (rc == 0 && top && !json_is_null(top) && !r->logprobs)
        return bad(err, "top_logprobs", "requires 'logprobs' to be true");
    return rc;
}

static int parse_root(const json_t *root, ic_oai_request *r, ic_oai_error *err)
{
    if (!json_is_object(root)) {
        ic_oai_error_set(err, 400, "invalid_json", NULL, "the body must be a JSON object");
        return IC_ERR_PARSE;
    }
    int rc = get_string(root, "model", &r->model, err);
    if (rc == 0)
        rc = r->endpoint == IC_OAI_CHAT ? parse_messages(root, r, err) : parse_prompt(root, r, err);
    if (rc == 0)
        rc = parse_sampling(root, r, err);
    if (rc == 0)
        rc = get_bool(root, "stream", &r->stream, err);
    json_t *so = json_object_get(root, "stream_options");
    if (rc == 0 && so && !json_is_null(so)) {
        if (!json_is_object(so))
            return bad(err, "stream_options", "must be an object");
        rc = get_bool(so, "include_usage", &r->include_usage, err);
    }
    if (rc == 0)
        rc = parse_stop(root, r, err);
    if (rc == 0)
        rc = parse_logit_bias(root, r, err);
    if (rc == 0)
        rc = get_string(root, "user", &r->user, err);
    if (rc == 0 && r->endpoint == IC_OAI_CHAT)
        rc = parse_tools(root, r, err);
    r->parallel_tool_calls = -1;
    if (rc == 0 && json_is_boolean(json_object_get(root, "parallel_tool_calls")))
        r->parallel_tool_calls = json_is_true(json_object_get(root, "parallel_tool_calls"));
    else if (rc == 0)
        rc = get_bool(root, "parallel_tool_calls", &(bool){false}, err); /* null, or 400 */
    if (rc == 0 && r->endpoint == IC_OAI_CHAT)
        rc = parse_format(root, r, err);
    if (rc == 0)
        rc = parse_logprobs(root, r, err);
    if (rc == 0)
        rc = get_bool(root, "ignore_eos", &r->ignore_eos, err);
    if (rc == 0)
        rc = parse_priority(root, r, err);
    return rc;
}

int ic_oai_parse_request(enum ic_oai_endpoint endpoint, const char *body, size_t len,
                         ic_oai_request *out, ic_oai_error *err)
{
    memset(out, 0, sizeof *out);
    out->endpoint = endpoint;
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        ic_oai_error_set(err, 400, "invalid_json", NULL,
                         "the body is not valid JSON: %s (line %d, column %d)", jerr.text,
                         jerr.line, jerr.column);
        return IC_ERR_PARSE;
    }
    int rc = parse_root(root, out, err);
    json_decref(root);
    if (rc < 0)
        ic_oai_request_free(out);
    return rc;
}

void ic_oai_request_free(ic_oai_request *r)
{
    for (int i = 0; i < r->n_messages; i++) {
        free(r->messages[i].content);
        free(r->messages[i].name);
        free(r->messages[i].tool_call_id);
        free(r->messages[i].tool_calls_json);
        for (int k = 0; k < r->messages[i].n_tool_calls; k++) {
            free(r->messages[i].tool_calls[k].id);
            free(r->messages[i].tool_calls[k].name);
            free(r->messages[i].tool_calls[k].arguments);
        }
        free(r->messages[i].tool_calls);
    }
    free(r->messages);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->model);
    free(r->prompt);
    free(r->logit_bias);
    free(r->user);
    free(r->tools_json);
    free(r->tool_choice);
    free(r->schema_json);
    memset(r, 0, sizeof *r);
}

void ic_oai_gen_params(const ic_oai_request *r, enum ic_priority max_priority,
                       ic_gen_params *gen)
{
    ic_proto_gen_params(NULL, NULL, max_priority, gen);
    /* OpenAI's defaults where they differ from protocol v1's: temperature
     * 1, top_p 1, no top-k or min-p cut, and a length bound only from the
     * context. */
    gen->sample.temperature = r->has_temperature ? r->temperature : 1.0f;
    gen->sample.top_p = r->has_top_p ? r->top_p : 1.0f;
    gen->sample.top_k = r->has_top_k ? r->top_k : 0;
    gen->sample.min_p = r->has_min_p ? r->min_p : 0.0f;
    if (r->has_repeat_penalty)
        gen->sample.repeat_penalty = r->repeat_penalty;
    if (r->has_seed)
        gen->sample.seed = r->seed;
    gen->sample.presence_penalty = r->presence_penalty;
    gen->sample.frequency_penalty = r->frequency_penalty;
    gen->sample.logit_bias = r->logit_bias; /* borrowed: ic_sched_infer copies */
    gen->sample.n_logit_bias = r->n_logit_bias;
    gen->max_tokens = r->max_tokens > 0 ? r->max_tokens : 1 << 30;
    gen->ignore_eos = gen->sample.ban_eog = r->ignore_eos;
    gen->priority = r->has_priority ? r->priority : IC_PRIORITY_NORMAL;
    if (gen->priority > max_priority)
        gen->priority = max_priority;
    gen->n_stop = r->n_stop;
    for (int i = 0; i < r->n_stop; i++)
        gen->stop[i] = r->stop[i];
    gen->logprobs = r->logprobs;
    gen->top_logprobs = r->logprobs ? r->top_logprobs : 0;
}

const char *ic_oai_finish_reason(enum ic_end_reason reason, bool tool_calls)
{
    switch (reason) {
    case IC_END_EOS:
    case IC_END_STOP_STRING: return tool_calls ? "tool_calls" : "stop";
    case IC_END_LENGTH:
    case IC_END_CONTEXT_FULL: return "length";
    default: return NULL;
    }
}

/* --- answers --------------------------------------------------------- */

static json_t *usage_object(const ic_oai_usage *u)
{
    return json_pack("{s:i,s:i,s:i,s:{s:i}}", "prompt_tokens", u->prompt_tokens,
                     "completion_tokens", u->completion_tokens, "total_tokens",
                     u->prompt_tokens + u->completion_tokens, "prompt_tokens_details",
                     "cached_tokens", u->cached_tokens);
}

static json_t *head(const ic_oai_response *r, bool chunk)
{
    const char *object = r->endpoint == IC_OAI_CHAT
                             ? (chunk ? "chat.completion.chunk" : "chat.completion")
                             : "text_completion";
    return json_pack("{s:s,s:s,s:I,s:s,s:s}", "id", r->id, "object", object, "created",
                     (json_int_t)r->created, "model", r->model, "system_fingerprint",
                     "inferencecenter-" IC_VERSION);
}

/* Parsed tool calls, or NULL when there are none (or they do not parse). */
static json_t *tool_calls(const ic_oai_response *r)
{
    return r->tool_calls_json ? json_loads(r->tool_calls_json, 0, NULL) : NULL;
}

static json_t *finish_value(const char *f) { return f ? json_string(f) : json_null(); }

char *ic_oai_response_body(const ic_oai_response *r)
{
    json_t *j = head(r, false), *choice;
    json_t *text = json_stringn(r->text ? r->text : "", r->text ? r->text_len : 0);
    if (r->endpoint == IC_OAI_CHAT) {
        json_t *calls = tool_calls(r);
        if (calls && r->text_len == 0) { /* OpenAI: null content beside tool calls */
            json_decref(text);
            text = NULL;
        }
        json_t *msg = json_pack("{s:s,s:o}", "role", "assistant", "content",
                                text ? text : json_null());
        if (msg && calls)
            json_object_set_new(msg, "tool_calls", calls);
        if (msg && r->reasoning)
            json_object_set_new(msg, "reasoning_content", json_string(r->reasoning));
        choice = json_pack("{s:i,s:o,s:o,s:o}", "index", 0, "message", msg, "logprobs",
                           ic_oai__logprobs_json(r), "finish_reason",
                           finish_value(r->finish_reason));
    } else {
        choice = json_pack("{s:o,s:i,s:o,s:o}", "text", text, "index", 0, "logprobs",
                           ic_oai__logprobs_json(r), "finish_reason",
                           finish_value(r->finish_reason));
    }
    if (!j || !choice || json_object_set_new(j, "choices", json_pack("[o]", choice)) < 0 ||
        json_object_set_new(j, "usage", usage_object(&r->usage)) < 0) {
        json_decref(j);
        return NULL;
    }
    return dump(j);
}

char *ic_oai_tool_calls_json(const ic_oai_call_out *calls, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        const ic_oai_call_out *c = &calls[i];
        json_t *fn = json_object(), *call = json_object();
        json_t *args = json_stringn(c->arguments ? c->arguments : "",
                                    c->arguments ? c->arguments_len : 0);
        if (!fn || !call || !args) {
            json_decref(fn);
            json_decref(call);
            json_decref(args);
            json_decref(a);
            return NULL;
        }
        if (c->index >= 0)
            json_object_set_new(call, "index", json_integer(c->index));
        if (c->id)
            json_object_set_new(call, "id", json_string(c->id));
        if (c->id || c->name)
            json_object_set_new(call, "type", json_string("function"));
        if (c->name)
            json_object_set_new(fn, "name", json_string(c->name));
        json_object_set_new(fn, "arguments", args);
        json_object_set_new(call, "function", fn);
        json_array_append_new(a, call);
    }
    return dump(a);
}

/* "data: " + json + "\n\n", malloc'd. */
static char *sse(json_t *j, size_t *len)
{
    char *body = dump(j);
    if (!body)
        return NULL;
    size_t n = strlen(body);
    char *out = malloc(n + 9);
    if (out) {
        memcpy(out, "data: ", 6);
        memcpy(out + 6, body, n);
        memcpy(out + 6 + n, "\n\n", 3);
        *len = n + 8;
    }
    free(body);
    return out;
}

char *ic_oai_stream_chunk(const ic_oai_response *r, bool first, size_t *len)
{
    json_t *j = head(r, true), *choice;
    json_t *text = json_stringn(r->text ? r->text : "", r->text ? r->text_len : 0);
    if (r->endpoint == IC_OAI_CHAT) {
        json_t *delta = json_object();
        if (delta && first)
            json_object_set_new(delta, "role", json_string("assistant"));
        if (delta && (r->text_len > 0 || first))
            json_object_set(delta, "content", text);
        json_t *calls = tool_calls(r);
        if (delta && calls)
            json_object_set_new(delta, "tool_calls", calls);
        if (delta && r->reasoning)
            json_object_set_new(delta, "reasoning_content", json_string(r->reasoning));
        json_decref(text);
        choice = json_pack("{s:i,s:o,s:o,s:o}", "index", 0, "delta", delta, "logprobs",
                           ic_oai__logprobs_json(r), "finish_reason",
                           finish_value(r->finish_reason));
    } else {
        choice = json_pack("{s:o,s:i,s:o,s:o}", "text", text, "index", 0, "logprobs",
                           ic_oai__logprobs_json(r), "finish_reason",
                           finish_value(r->finish_reason));
    }
    if (!j || !choice || json_object_set_new(j, "choices", json_pack("[o]", choice)) < 0) {
        json_decref(j);
        return NULL;
    }
    return sse(j, len);
}

char *ic_oai_stream_usage(const ic_oai_response *r, size_t *len)
{
    json_t *j = head(r, true);
    if (!j || json_object_set_new(j, "choices", json_array()) < 0 ||
        json_object_set_new(j, "usage", usage_object(&r->usage)) < 0) {
        json_decref(j);
        return NULL;
    }
    return sse(j, len);
}

char *ic_oai_stream_error(const ic_oai_error *err, size_t *len)
{
    return sse(error_object(err), len);
}

const char *ic_oai_stream_done(size_t *len)
{
    static const char done[] = "data: [DONE]\n\n";
    *len = sizeof done - 1;
    return done;
}

static json_t *model_object(const ic_oai_model *m)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:b}", "id", m->id, "object", "model", "created",
                     (json_int_t)m->created, "owned_by", "inferencecenter", "loaded", m->loaded);
}

char *ic_oai_models_body(const ic_oai_model *models, int n, bool one_object)
{
    if (one_object && n == 1)
        return dump(model_object(&models[0]));
    json_t *data = json_array();
    for (int i = 0; data && i < n; i++) {
        if (json_array_append_new(data, model_object(&models[i])) < 0) {
            json_decref(data);
            return NULL;
        }
    }
    return dump(data ? json_pack("{s:s,s:o}", "object", "list", "data", data) : NULL);
}
