/* protocol.c - protocol v1 on the wire: client JSON frames to ic_msg, and
 * server messages from C values to JSON text (see protocol.h).
 *
 * Pure functions with no state of their own: the network thread calls them,
 * but any thread may. The only user of jansson for the wire protocol; every
 * server message is built with it, so escaping is always right. Strings
 * handed to the builders must be valid UTF-8 (a builder returns NULL
 * otherwise, as for out of memory; ERROR falls back to its code's name).
 *
 * Parsing choices beyond protocol.h: duplicate keys anywhere in a frame are
 * refused as bad_json (JSON_REJECT_DUPLICATES), so that no two readers of
 * one frame can disagree about it; JSON null is never a valid value, not
 * even for optional fields; integers beyond int64 and reals beyond double
 * are bad_json, as jansson cannot represent them. Beyond its contract,
 * ic_proto_parse returns IC_ERR_NOMEM (code internal) when out of memory;
 * on any failure *out holds nothing to free.
 */
#include "protocol.h"
#include "protocol_chat.h"
#include "err.h"

#include <jansson.h>

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_SEED 0xFFFFFFFFu  /* LLAMA_DEFAULT_SEED: a random seed */
#define INTERVAL_MIN_MS 250
#define INTERVAL_MAX_MS 3600000   /* larger requests are capped to this */
#define TYPE_ECHO_MAX_BYTES 64    /* of an unknown type, in its error */

/* The protocol defaults; ic_proto_gen_params starts from these. */
static const ic_req_params k_defaults = {
    .set = ~0u,
    .max_tokens = 256,
    .temperature = 0.8f,
    .top_k = 40,
    .top_p = 0.95f,
    .min_p = 0.05f,
    .repeat_penalty = 1.0f,
    .repeat_last_n = 64,
    .seed = DEFAULT_SEED,
    .ignore_eos = false,
    .allow_special = false,
    .speculative = true,
    .logprobs = -1,
    .priority = IC_PRIORITY_NORMAL,
};

/* --- Parsing: errors --- */

/* Records a refusal; returns IC_ERR_PARSE so callers can `return fail(...)`. */
__attribute__((format(printf, 3, 4)))
static int fail(ic_proto_error *err, enum ic_proto_code code, const char *fmt, ...)
{
    va_list ap;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return IC_ERR_PARSE;
}

/* "field 'params.top_p' must be a number from 0 to 1". */
static int fail_field(ic_proto_error *err, const char *prefix, const char *name,
                      const char *expect)
{
    return fail(err, IC_CODE_BAD_REQUEST, "field '%s%s' must be %s", prefix, name, expect);
}

/* jansson's text may quote input bytes; keep only printable ASCII so the
 * message is valid UTF-8 however vsnprintf cuts it. */
static int fail_bad_json(ic_proto_error *err, const json_error_t *jerr)
{
    char why[96];
    size_t i;
    for (i = 0; i + 1 < sizeof why && jerr->text[i]; i++) {
        unsigned char c = (unsigned char)jerr->text[i];
        why[i] = c >= 0x20 && c < 0x7F ? (char)c : '?';
    }
    why[i] = '\0';
    return fail(err, IC_CODE_BAD_JSON, "message is not valid JSON: %s at byte %d", why,
                jerr->position);
}

static int fail_nomem(ic_proto_error *err)
{
    fail(err, IC_CODE_INTERNAL, "out of memory");
    return IC_ERR_NOMEM;
}

/* --- Parsing: values --- */

/* True when the JSON string v equals lit exactly (an embedded U+0000
 * cannot make "AUTH\u0000x" look like "AUTH"). */
static bool str_is(const json_t *v, const char *lit)
{
    size_t n = strlen(lit);
    return json_string_length(v) == n && memcmp(json_string_value(v), lit, n) == 0;
}

/* True when the JSON string v holds no U+0000, so it fits a C string. */
static bool str_fits_c(const json_t *v)
{
    return memchr(json_string_value(v), '\0', json_string_length(v)) == NULL;
}

enum field_result { FIELD_OK = 0, FIELD_BAD = 1, FIELD_NUL = 2 };

/* A copy of the string v in *out; FIELD_BAD if v is not a string, FIELD_NUL
 * if it holds U+0000, IC_ERR_NOMEM. */
static int dup_string(const json_t *v, char **out)
{
    if (!json_is_string(v))
        return FIELD_BAD;
    if (!str_fits_c(v))
        return FIELD_NUL;
    *out = strdup(json_string_value(v));
    return *out ? FIELD_OK : IC_ERR_NOMEM;
}

/* Turns a field_result into the client's error (or passes 0 / NOMEM on). */
static int field_error(int rc, ic_proto_error *err, const char *prefix, const char *name,
                       const char *expect)
{
    if (rc == FIELD_BAD)
        return fail_field(err, prefix, name, expect);
    if (rc == FIELD_NUL)
        return fail(err, IC_CODE_BAD_REQUEST, "field '%s%s' must not contain U+0000", prefix,
                    name);
    if (rc == IC_ERR_NOMEM)
        return fail_nomem(err);
    return rc;
}

/* The "id" member: absent, an integer, or a string of at most 64 bytes. */
static int parse_id(const json_t *root, ic_msg_id *id)
{
    const json_t *v = json_object_get(root, "id");
    if (!v)
        return 0;
    if (json_is_integer(v)) {
        id->present = id->is_int = true;
        id->i = json_integer_value(v);
        return 0;
    }
    size_t n = json_string_length(v); /* 0 for a non-string */
    if (!json_is_string(v) || n > IC_MSG_ID_MAX_BYTES || !str_fits_c(v))
        return IC_ERR_INVAL;
    memcpy(id->s, json_string_value(v), n);
    id->s[n] = '\0';
    id->present = true;
    return 0;
}

/* --- Parsing: generation parameters, one table row per parameter --- */

enum param_kind { PK_INT, PK_U32, PK_NUM, PK_BOOL, PK_PRIORITY, PK_STOP };

typedef struct param_rule {
    const char *name;
    enum ic_param bit;
    enum param_kind kind;
    double lo, hi;           /* PK_INT, PK_U32, PK_NUM: the allowed range */
    bool lo_open;            /* lo itself is not allowed */
    size_t offset;           /* of the field in ic_req_params */
    const char *expect;      /* "field 'params.x' must be <expect>" */
} param_rule;

#define AT(f) offsetof(ic_req_params, f)
static const param_rule k_param_rules[] = {
    {"max_tokens", IC_PARAM_MAX_TOKENS, PK_INT, 1, 1000000, false, AT(max_tokens),
     "an integer from 1 to 1000000"},
    {"temperature", IC_PARAM_TEMPERATURE, PK_NUM, 0, 100, false, AT(temperature),
     "a number from 0 to 100"},
    {"top_k", IC_PARAM_TOP_K, PK_INT, 0, 2147483647.0, false, AT(top_k),
     "an integer from 0 to 2147483647"},
    {"top_p", IC_PARAM_TOP_P, PK_NUM, 0, 1, false, AT(top_p), "a number from 0 to 1"},
    {"min_p", IC_PARAM_MIN_P, PK_NUM, 0, 1, false, AT(min_p), "a number from 0 to 1"},
    {"repeat_penalty", IC_PARAM_REPEAT_PENALTY, PK_NUM, 0, 100, true, AT(repeat_penalty),
     "a number > 0 and <= 100"},
    {"repeat_last_n", IC_PARAM_REPEAT_LAST_N, PK_INT, -1, 1000000, false, AT(repeat_last_n),
     "an integer from -1 to 1000000"},
    {"seed", IC_PARAM_SEED, PK_U32, 0, 4294967295.0, false, AT(seed),
     "an integer from 0 to 4294967295"},
    {"stop", IC_PARAM_STOP, PK_STOP, 0, 0, false, 0,
     "an array of at most 8 strings of at most 256 bytes"},
    {"ignore_eos", IC_PARAM_IGNORE_EOS, PK_BOOL, 0, 0, false, AT(ignore_eos), "a boolean"},
    {"priority", IC_PARAM_PRIORITY, PK_PRIORITY, 0, 0, false, AT(priority),
     "'high', 'normal' or 'low'"},
    {"allow_special", IC_PARAM_ALLOW_SPECIAL, PK_BOOL, 0, 0, false, AT(allow_special),
     "a boolean"},
    {"speculative", IC_PARAM_SPECULATIVE, PK_BOOL, 0, 0, false, AT(speculative), "a boolean"},
    {"logprobs", IC_PARAM_LOGPROBS, PK_INT, -1, IC_LOGPROBS_MAX, false, AT(logprobs),
     "an integer from -1 to 20"},
};
#undef AT

static bool in_range(const param_rule *r, double x)
{
    return (r->lo_open ? x > r->lo : x >= r->lo) && x <= r->hi;
}

static int parse_priority(const json_t *v, enum ic_priority *out)
{
    for (int i = 0; json_is_string(v) && i < 3; i++) {
        if (str_is(v, ic_priority_name((enum ic_priority)i))) {
            *out = (enum ic_priority)i;
            return FIELD_OK;
        }
    }
    return FIELD_BAD;
}

/* Replaces p's stop strings with the array v. */
static int parse_stop(const json_t *v, ic_req_params *p)
{
    if (!json_is_array(v) || json_array_size(v) > IC_STOP_MAX)
        return FIELD_BAD;
    ic_req_params_free(p);
    for (size_t i = 0; i < json_array_size(v); i++) {
        const json_t *s = json_array_get(v, i);
        if (json_string_length(s) > IC_STOP_MAX_BYTES)
            return FIELD_BAD;
        int rc = dup_string(s, &p->stop[i]);
        if (rc != FIELD_OK)
            return rc;
        p->n_stop++;
    }
    return FIELD_OK;
}

static int parse_param(const param_rule *r, const json_t *v, ic_req_params *p)
{
    char *field = (char *)p + r->offset;
    switch (r->kind) {
    case PK_INT:
    case PK_U32:
        if (!json_is_integer(v) || !in_range(r, (double)json_integer_value(v)))
            return FIELD_BAD;
        if (r->kind == PK_INT)
            *(int *)field = (int)json_integer_value(v);
        else
            *(uint32_t *)field = (uint32_t)json_integer_value(v);
        return FIELD_OK;
    case PK_NUM: {
        /* Check the float that will be used: 1e-50 is > 0 but 0.0f is not.
         * A double beyond float's range is refused before the conversion,
         * which would be undefined. */
        double d = json_number_value(v);
        if (!json_is_number(v) || !(fabs(d) <= FLT_MAX))
            return FIELD_BAD;
        float x = (float)d;
        if (!in_range(r, x))
            return FIELD_BAD;
        *(float *)field = x;
        return FIELD_OK;
    }
    case PK_BOOL:
        if (!json_is_boolean(v))
            return FIELD_BAD;
        *(bool *)field = json_is_true(v);
        return FIELD_OK;
    case PK_PRIORITY:
        return parse_priority(v, (enum ic_priority *)field);
    case PK_STOP:
        return parse_stop(v, p);
    }
    return FIELD_BAD;
}

/* The optional "params" object; unknown keys in it are ignored. */
static int parse_params(const json_t *root, ic_req_params *p, ic_proto_error *err)
{
    *p = k_defaults;
    p->set = 0;
    const json_t *obj = json_object_get(root, "params");
    if (!obj)
        return 0;
    if (!json_is_object(obj))
        return fail_field(err, "", "params", "an object");
    for (size_t i = 0; i < sizeof k_param_rules / sizeof *k_param_rules; i++) {
        const param_rule *r = &k_param_rules[i];
        const json_t *v = json_object_get(obj, r->name);
        if (!v)
            continue;
        int rc = parse_param(r, v, p);
        if (rc != FIELD_OK)
            return field_error(rc, err, "params.", r->name, r->expect);
        p->set |= 1u << r->bit;
    }
    return 0;
}

/* --- Parsing: messages --- */

enum msg_field {
    F_TOKEN = 1 << 0,        /* required string */
    F_SESSION = 1 << 1,      /* required string */
    F_PROMPT = 1 << 2,       /* required string */
    F_SYSTEM = 1 << 3,       /* optional string */
    F_RAW = 1 << 4,          /* optional boolean */
    F_PARAMS = 1 << 5,       /* optional object */
    F_INTERVAL = 1 << 6,     /* required integer */
    F_CONSTRAINT = 1 << 7,   /* optional grammar (string) or json_schema (object) */
    F_RESUME = 1 << 8,       /* required string */
    F_MODEL = 1 << 9,        /* optional string */
    F_CHAT = 1 << 10,        /* tools; INFER also tool_choice, messages, reasoning */
};

static const struct msg_rule {
    const char *type;
    enum ic_msg_type msg;
    unsigned fields;
} k_msg_rules[] = {
    {"AUTH", IC_MSG_AUTH, F_TOKEN},
    {"CREATE_SESSION", IC_MSG_CREATE_SESSION, F_SYSTEM | F_PARAMS | F_MODEL | F_CHAT},
    {"CLOSE_SESSION", IC_MSG_CLOSE_SESSION, F_SESSION},
    {"INFER", IC_MSG_INFER, F_SESSION | F_PROMPT | F_RAW | F_PARAMS | F_CONSTRAINT | F_CHAT},
    {"ABORT", IC_MSG_ABORT, F_SESSION},
    {"METRICS", IC_MSG_METRICS, 0},
    {"SUBSCRIBE_METRICS", IC_MSG_SUBSCRIBE_METRICS, F_INTERVAL},
    {"RESUME_SESSION", IC_MSG_RESUME_SESSION, F_SESSION | F_RESUME},
    {"MODEL_LOAD", IC_MSG_MODEL_LOAD, F_MODEL},
    {"MODEL_UNLOAD", IC_MSG_MODEL_UNLOAD, F_MODEL},
};

static const struct string_rule {
    unsigned field;
    const char *name;
    size_t offset;           /* of the char * in ic_msg */
    bool required;
} k_string_rules[] = {
    {F_TOKEN, "token", offsetof(ic_msg, token), true},
    {F_SESSION, "session_id", offsetof(ic_msg, session_id), true},
    {F_PROMPT, "prompt", offsetof(ic_msg, prompt), true},
    {F_SYSTEM, "system", offsetof(ic_msg, system), false},
    {F_CONSTRAINT, "grammar", offsetof(ic_msg, grammar), false},
    {F_RESUME, "resume_token", offsetof(ic_msg, resume_token), true},
    {F_MODEL, "model", offsetof(ic_msg, model), false},
};

static int parse_strings(const json_t *root, unsigned fields, ic_msg *m, ic_proto_error *err)
{
    for (size_t i = 0; i < sizeof k_string_rules / sizeof *k_string_rules; i++) {
        const struct string_rule *r = &k_string_rules[i];
        const json_t *v = json_object_get(root, r->name);
        if (!(fields & r->field) || (!v && !r->required))
            continue;
        if (!v && r->field == F_PROMPT && json_object_get(root, "messages")) {
            /* tool results alone: no user turn */
            m->no_prompt = true;
            if (!(m->prompt = strdup("")))
                return fail_nomem(err);
            continue;
        }
        int rc = dup_string(v, (char **)((char *)m + r->offset));
        if (rc != FIELD_OK)
            return field_error(rc, err, "", r->name, "a string");
    }
    return 0;
}

/* interval_ms: 0 stops, else at least 250 ms; longer than an hour is capped. */
static int parse_interval(const json_t *root, ic_msg *m, ic_proto_error *err)
{
    const json_t *v = json_object_get(root, "interval_ms");
    json_int_t ms = json_integer_value(v); /* 0 for a non-integer */
    if (!json_is_integer(v) || ms < 0 || (ms > 0 && ms < INTERVAL_MIN_MS))
        return fail_field(err, "", "interval_ms", "an integer: 0, or 250 or more");
    m->interval_ms = ms > INTERVAL_MAX_MS ? INTERVAL_MAX_MS : (int)ms;
    return 0;
}

/* INFER json_schema: an object, kept as JSON text (the chat layer compiles
 * it); at most one of grammar and json_schema. */
static int parse_schema(const json_t *root, ic_msg *m, ic_proto_error *err)
{
    const json_t *v = json_object_get(root, "json_schema");
    if (!v)
        return 0;
    if (!json_is_object(v))
        return fail_field(err, "", "json_schema", "a JSON Schema object");
    if (m->grammar)
        return fail(err, IC_CODE_BAD_REQUEST, "give grammar or json_schema, not both");
    m->json_schema = json_dumps(v, JSON_COMPACT);
    return m->json_schema ? 0 : fail_nomem(err);
}

static int parse_fields(const json_t *root, unsigned fields, ic_msg *m, ic_proto_error *err)
{
    int rc = parse_strings(root, fields, m, err);
    if (rc == 0 && (fields & F_RAW)) {
        const json_t *v = json_object_get(root, "raw");
        if (v && !json_is_boolean(v))
            return fail_field(err, "", "raw", "a boolean");
        m->raw = json_is_true(v);
    }
    if (rc == 0 && (fields & F_PARAMS))
        rc = parse_params(root, &m->params, err);
    if (rc == 0 && (fields & F_INTERVAL))
        rc = parse_interval(root, m, err);
    if (rc == 0 && (fields & F_CONSTRAINT))
        rc = parse_schema(root, m, err);
    if (rc == 0 && (fields & F_CHAT)) {
        char why[160] = "";
        m->has_tools = json_object_get(root, "tools") != NULL;
        rc = ic_proto_chat_fields(root, m->type == IC_MSG_INFER, m, why, sizeof why);
        if (rc == IC_ERR_NOMEM)
            return fail_nomem(err);
        if (rc < 0)
            return fail(err, IC_CODE_BAD_REQUEST, "%s", why);
    }
    return rc;
}

/* Everything after the JSON text became an object. */
static int parse_object(const json_t *root, ic_msg *m, ic_proto_error *err)
{
    if (parse_id(root, &m->id) < 0)
        return fail_field(err, "", "id", "a string of at most 64 bytes or an integer");
    err->id = m->id;
    const json_t *type = json_object_get(root, "type");
    if (!json_is_string(type))
        return fail_field(err, "", "type", "a string");
    for (size_t i = 0; i < sizeof k_msg_rules / sizeof *k_msg_rules; i++) {
        if (str_is(type, k_msg_rules[i].type)) {
            m->type = k_msg_rules[i].msg;
            return parse_fields(root, k_msg_rules[i].fields, m, err);
        }
    }
    /* Echo at most TYPE_ECHO_MAX_BYTES, cut before a NUL and on a character
     * boundary so the message stays valid UTF-8. */
    const char *s = json_string_value(type);
    size_t n = strnlen(s, TYPE_ECHO_MAX_BYTES + 1);
    bool cut = n > TYPE_ECHO_MAX_BYTES;
    if (cut)
        for (n = TYPE_ECHO_MAX_BYTES; n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80; n--)
            ;
    return fail(err, IC_CODE_UNKNOWN_TYPE, "unknown message type '%.*s%s'", (int)n, s,
                cut ? "..." : "");
}

int ic_proto_parse(const char *text, size_t len, ic_msg *out, ic_proto_error *err)
{
    ic_proto_error scratch;
    if (!err)
        err = &scratch;
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    if (!text)
        return fail(err, IC_CODE_BAD_JSON, "message is not valid JSON: empty");

    /* ALLOW_NUL so "\u0000" reaches us and is refused naming its field. */
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES |
                                             JSON_ALLOW_NUL, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_out_of_memory)
            return fail_nomem(err);
        return fail_bad_json(err, &jerr);
    }
    int rc = json_is_object(root)
                 ? parse_object(root, out, err)
                 : fail(err, IC_CODE_BAD_REQUEST, "message must be a JSON object");
    json_decref(root);
    if (rc < 0)
        ic_msg_free(out);
    return rc;
}

void ic_msg_free(ic_msg *msg)
{
    if (!msg)
        return;
    free(msg->token);
    free(msg->session_id);
    free(msg->system);
    free(msg->prompt);
    free(msg->grammar);
    free(msg->json_schema);
    free(msg->resume_token);
    free(msg->model);
    msg->grammar = msg->json_schema = NULL;
    ic_proto_chat_free(msg);
    msg->token = msg->session_id = msg->system = msg->prompt = msg->resume_token = NULL;
    msg->model = NULL;
    ic_req_params_free(&msg->params);
}

int ic_req_params_copy(ic_req_params *dst, const ic_req_params *src)
{
    ic_req_params tmp = *src;
    memset(tmp.stop, 0, sizeof tmp.stop);
    tmp.n_stop = 0;
    for (int i = 0; i < src->n_stop; i++) {
        tmp.stop[i] = strdup(src->stop[i]);
        if (!tmp.stop[i]) {
            ic_req_params_free(&tmp);
            *dst = tmp;
            return IC_ERR_NOMEM;
        }
        tmp.n_stop++;
    }
    *dst = tmp;
    return 0;
}

void ic_req_params_free(ic_req_params *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n_stop; i++) {
        free(p->stop[i]);
        p->stop[i] = NULL;
    }
    p->n_stop = 0;
}

/* --- Generation parameters --- */

#define HAS(p, x) ((p)->set & (1u << IC_PARAM_##x))

/* Applies the fields p says were given. */
static void apply_params(const ic_req_params *p, ic_gen_params *g)
{
    if (!p)
        return;
    if (HAS(p, MAX_TOKENS)) g->max_tokens = p->max_tokens;
    if (HAS(p, TEMPERATURE)) g->sample.temperature = p->temperature;
    if (HAS(p, TOP_K)) g->sample.top_k = p->top_k;
    if (HAS(p, TOP_P)) g->sample.top_p = p->top_p;
    if (HAS(p, MIN_P)) g->sample.min_p = p->min_p;
    if (HAS(p, REPEAT_PENALTY)) g->sample.repeat_penalty = p->repeat_penalty;
    if (HAS(p, REPEAT_LAST_N)) g->sample.repeat_last_n_tokens = p->repeat_last_n;
    if (HAS(p, SEED)) g->sample.seed = p->seed;
    if (HAS(p, IGNORE_EOS)) g->ignore_eos = g->sample.ban_eog = p->ignore_eos;
    if (HAS(p, PRIORITY)) g->priority = p->priority;
    if (HAS(p, ALLOW_SPECIAL)) g->allow_special = p->allow_special;
    if (HAS(p, SPECULATIVE)) g->no_speculation = !p->speculative;
    if (HAS(p, LOGPROBS)) {
        g->logprobs = p->logprobs >= 0;
        g->top_logprobs = p->logprobs > 0 ? p->logprobs : 0;
    }
    if (HAS(p, STOP)) {
        g->n_stop = p->n_stop;
        for (int i = 0; i < IC_STOP_MAX; i++)
            g->stop[i] = i < p->n_stop ? p->stop[i] : NULL;
    }
}
#undef HAS

void ic_proto_gen_params(const ic_req_params *session_defaults, const ic_req_params *request,
                         enum ic_priority max_priority, ic_gen_params *gen)
{
    memset(gen, 0, sizeof *gen);
    apply_params(&k_defaults, gen);
    apply_params(session_defaults, gen);
    apply_params(request, gen);
    if (gen->priority > max_priority)
        gen->priority = max_priority;
}

/* --- Identifiers --- */

/* prefix followed by a canonical decimal 1..UINT64_MAX. */
static int parse_counter_id(const char *s, char prefix, uint64_t *out)
{
    if (!s || s[0] != prefix || s[1] < '1' || s[1] > '9')
        return IC_ERR_NOT_FOUND;
    uint64_t v = 0;
    for (const char *p = s + 1; *p; p++) {
        if (*p < '0' || *p > '9')
            return IC_ERR_NOT_FOUND;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return IC_ERR_NOT_FOUND;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int ic_proto_session_num(const char *session_id, uint64_t *out)
{
    return parse_counter_id(session_id, 's', out);
}

/* --- Names --- */

const char *ic_proto_code_name(enum ic_proto_code code)
{
    static const char *const names[] = {
        "bad_json", "bad_request", "unknown_type", "unauthenticated", "session_not_found",
        "session_limit", "capacity", "busy", "not_running", "prompt_too_long",
        "message_too_large", "overloaded", "internal", "model_not_found", "forbidden",
    };
    return (unsigned)code < sizeof names / sizeof *names ? names[code] : "internal";
}

enum ic_proto_code ic_proto_code_from_err(int err)
{
    switch (err) {
    case IC_ERR_PROMPT_TOO_LONG: return IC_CODE_PROMPT_TOO_LONG;
    case IC_ERR_OVERLOADED: return IC_CODE_OVERLOADED;
    case IC_ERR_CAPACITY: return IC_CODE_CAPACITY;
    case IC_ERR_NOT_FOUND: return IC_CODE_SESSION_NOT_FOUND;
    case IC_ERR_BUSY: return IC_CODE_BUSY;
    case IC_ERR_NOT_RUNNING: return IC_CODE_NOT_RUNNING;
    case IC_ERR_INVAL: return IC_CODE_BAD_REQUEST;
    case IC_ERR_AUTH: return IC_CODE_UNAUTHENTICATED;
    default: return IC_CODE_INTERNAL;
    }
}

/* --- Building: helpers --- */
/* A constructor returns NULL when out of memory, then set() fails; so a
 * builder ORs the results together and checks once. */

static json_t *jreal(double x)
{
    return json_real(isfinite(x) ? x : 0.0); /* JSON has no NaN or inf */
}

static json_t *juint(uint64_t x)
{
    return json_integer(x > INT64_MAX ? INT64_MAX : (json_int_t)x);
}

/* s may be NULL (""); invalid UTF-8 gives NULL. */
static json_t *jstr(const char *s)
{
    return json_string(s ? s : "");
}

/* Descriptive text from a fixed buffer (GPU name, ...): bad bytes give "". */
static json_t *jtext(const char *s, size_t cap)
{
    json_t *v = json_stringn(s, strnlen(s, cap));
    return v ? v : json_string("");
}

/* Takes v on every path: jansson frees it when obj is NULL or the set fails. */
static int set(json_t *obj, const char *key, json_t *v)
{
    return json_object_set_new(obj, key, v) == 0 ? 0 : -1;
}

/* obj when every setter succeeded (rc == 0), else NULL (obj freed). */
static json_t *checked(json_t *obj, int rc)
{
    if (rc == 0)
        return obj;
    json_decref(obj);
    return NULL;
}

/* {"type":type} plus "id" when present: every message starts this way. */
static json_t *msg_new(const char *type, const ic_msg_id *id)
{
    json_t *m = json_object();
    int rc = set(m, "type", json_string(type));
    if (id && id->present)
        rc |= set(m, "id", id->is_int ? json_integer(id->i) : jstr(id->s));
    return checked(m, rc);
}

/* Serialises and frees m; NULL when any setter failed (rc != 0). */
static char *finish(json_t *m, int rc)
{
    char *text = m && rc == 0 ? json_dumps(m, JSON_COMPACT) : NULL;
    json_decref(m);
    return text;
}

/* --- Building: the messages --- */

/* The "model" object of HELLO and AUTH_SUCCESS. */
static json_t *hello_model(const ic_hello *h, int *rc)
{
    json_t *model = json_object();
    *rc |= set(model, "name", jtext(h->model_name ? h->model_name : "", SIZE_MAX));
    *rc |= set(model, "n_params", juint(h->n_params));
    *rc |= set(model, "size_bytes", juint(h->size_bytes));
    *rc |= set(model, "n_ctx_train", json_integer(h->n_ctx_train));
    return model;
}

/* HELLO's and AUTH_SUCCESS's "models": the names. */
static int set_models(json_t *m, const ic_hello *h)
{
    json_t *names = json_array();
    int rc = 0;
    for (int i = 0; i < h->n_models; i++)
        rc |= names ? json_array_append_new(names, jstr(h->models[i])) : -1;
    return rc | set(m, "models", names);
}

char *ic_proto_hello(const ic_hello *h)
{
    json_t *m = msg_new("HELLO", NULL);
    json_t *limits = json_object();
    int rc = set(m, "server", json_string("InferenceCenter"));
    rc |= set(m, "version", jstr(h->version));
    rc |= set(m, "protocol", json_integer(IC_PROTOCOL_VERSION));
    rc |= set(m, "auth_required", json_boolean(h->auth_required));
    if (h->node && *h->node)
        rc |= set(m, "node", jstr(h->node));
    rc |= set(limits, "max_message_bytes", json_integer(h->max_message_bytes));
    rc |= set(limits, "max_sessions_per_client", json_integer(h->max_sessions_per_client));
    rc |= set(limits, "max_sessions", json_integer(h->max_sessions));
    rc |= set(limits, "n_ctx_per_session", json_integer(h->n_ctx_per_session));
    if (h->cache_type_k)
        rc |= set(limits, "cache_type_k", json_string(h->cache_type_k));
    if (h->cache_type_v)
        rc |= set(limits, "cache_type_v", json_string(h->cache_type_v));
    if (h->flash_attn)
        rc |= set(limits, "flash_attn", json_string(h->flash_attn));
    if (h->model_name) {
        int mrc = 0;
        json_t *model = hello_model(h, &mrc);
        rc |= mrc | set(m, "model", model);
    }
    if (h->n_models > 0)
        rc |= set_models(m, h);
    rc |= set(m, "limits", limits);
    return finish(m, rc);
}

char *ic_proto_auth_success(const char *client, int max_sessions, const ic_msg_id *id)
{
    return ic_proto_auth_success_model(client, max_sessions, NULL, id);
}

char *ic_proto_auth_success_model(const char *client, int max_sessions, const ic_hello *model,
                                  const ic_msg_id *id)
{
    json_t *m = msg_new("AUTH_SUCCESS", id);
    int rc = set(m, "client", jstr(client));
    rc |= set(m, "max_sessions", json_integer(max_sessions));
    if (model && model->model_name) {
        int mrc = 0;
        json_t *mj = hello_model(model, &mrc);
        rc |= mrc | set(m, "model", mj);
        if (model->n_models > 0)
            rc |= set_models(m, model);
    }
    return finish(m, rc);
}

char *ic_proto_auth_failed(const char *reason, const ic_msg_id *id)
{
    json_t *m = msg_new("AUTH_FAILED", id);
    return finish(m, set(m, "reason", jstr(reason)));
}

char *ic_proto_model_status(const char *model, bool loaded, const ic_msg_id *id)
{
    json_t *m = msg_new("MODEL_STATUS", id);
    int rc = set(m, "model", jstr(model));
    rc |= set(m, "loaded", json_boolean(loaded));
    return finish(m, rc);
}

char *ic_proto_session_created(const char *session_id, int n_ctx, const ic_msg_id *id)
{
    return ic_proto_session_created_model(session_id, n_ctx, NULL, NULL, id);
}

char *ic_proto_session_created_model(const char *session_id, int n_ctx, const char *model,
                                     const char *resume_token, const ic_msg_id *id)
{
    json_t *m = msg_new("SESSION_CREATED", id);
    int rc = set(m, "session_id", jstr(session_id));
    rc |= set(m, "n_ctx", json_integer(n_ctx));
    if (model)
        rc |= set(m, "model", jstr(model));
    if (resume_token)
        rc |= set(m, "resume_token", jstr(resume_token));
    return finish(m, rc);
}

char *ic_proto_session_created_durable(const char *session_id, int n_ctx,
                                       const char *resume_token, const ic_msg_id *id)
{
    return ic_proto_session_created_model(session_id, n_ctx, NULL, resume_token, id);
}

char *ic_proto_session_resumed(const char *session_id, int n_ctx_used, const ic_msg_id *id)
{
    json_t *m = msg_new("SESSION_RESUMED", id);
    int rc = set(m, "session_id", jstr(session_id));
    rc |= set(m, "n_ctx_used", json_integer(n_ctx_used));
    return finish(m, rc);
}

char *ic_proto_session_closed(const char *session_id, const char *reason, const ic_msg_id *id)
{
    json_t *m = msg_new("SESSION_CLOSED", id);
    int rc = set(m, "session_id", jstr(session_id));
    rc |= set(m, "reason", jstr(reason));
    return finish(m, rc);
}

char *ic_proto_token(const char *session_id, const char *request_id, int index, const char *text,
                     size_t text_len, const ic_msg_id *id)
{
    return ic_proto_token_full(session_id, request_id, index, text, text_len, NULL, NULL, id);
}

char *ic_proto_token_channel(const char *session_id, const char *request_id, int index,
                             const char *text, size_t text_len, const char *channel,
                             const ic_msg_id *id)
{
    return ic_proto_token_full(session_id, request_id, index, text, text_len, channel, NULL, id);
}

/* JSON has no -Infinity: OpenAI's stand-in for "never". */
static double lp_value(float lp) { return isfinite(lp) ? (double)lp : -9999.0; }

/* One token of a TOKEN's logprobs: {id, text, bytes, logprob}; text is
 * the bytes, or "" when they are a piece of a UTF-8 character (bytes has
 * them). */
static json_t *lp_token(const ic_logprobs *lp, const ic_logprob_tok *t)
{
    const char *b = lp->bytes + t->off;
    json_t *text = json_stringn(b, t->len); /* NULL: not valid UTF-8 */
    json_t *bytes = json_array();
    for (uint32_t i = 0; bytes && i < t->len; i++)
        json_array_append_new(bytes, json_integer((unsigned char)b[i]));
    return json_pack("{s:i,s:o,s:o,s:f}", "id", (int)t->token, "text",
                     text ? text : json_string(""), "bytes", bytes, "logprob",
                     lp_value(t->logprob));
}

char *ic_proto_token_lp(const char *session_id, const char *request_id, int index,
                        const char *text, size_t text_len, const ic_logprobs *lp,
                        const ic_msg_id *id)
{
    return ic_proto_token_full(session_id, request_id, index, text, text_len, NULL, lp, id);
}

char *ic_proto_token_full(const char *session_id, const char *request_id, int index,
                          const char *text, size_t text_len, const char *channel,
                          const ic_logprobs *lp, const ic_msg_id *id)
{
    json_t *m = msg_new("TOKEN", id);
    int rc = set(m, "session_id", jstr(session_id));
    rc |= set(m, "request_id", jstr(request_id));
    rc |= set(m, "index", json_integer(index));
    /* json_stringn keeps NUL bytes; the dump writes them as \u0000. */
    rc |= set(m, "text", text ? json_stringn(text, text_len) : json_string(""));
    if (channel)
        rc |= set(m, "channel", jstr(channel));
    if (lp) {
        json_t *top = json_array();
        for (int i = 0; top && i < lp->n_top; i++)
            rc |= json_array_append_new(top, lp_token(lp, &lp->top[i]));
        rc |= set(m, "logprob", json_real(lp_value(lp->sampled.logprob)));
        rc |= set(m, "token", lp_token(lp, &lp->sampled));
        rc |= set(m, "top_logprobs", top);
    }
    return finish(m, rc);
}

char *ic_proto_end(const char *session_id, const char *request_id, enum ic_end_reason reason,
                   const ic_gen_stats *stats, const ic_msg_id *id)
{
    return ic_proto_end_parsed(session_id, request_id, reason, stats, NULL, id);
}

char *ic_proto_end_parsed(const char *session_id, const char *request_id,
                          enum ic_end_reason reason, const ic_gen_stats *stats,
                          const ic_chat_parsed *parsed, const ic_msg_id *id)
{
    static const ic_gen_stats zero;
    const ic_gen_stats *st = stats ? stats : &zero;
    json_t *m = msg_new("END", id);
    json_t *o = json_object();
    int rc = set(m, "session_id", jstr(session_id));
    rc |= set(m, "request_id", jstr(request_id));
    bool calls = parsed && parsed->n_tool_calls > 0 &&
                 (reason == IC_END_EOS || reason == IC_END_STOP_STRING);
    rc |= set(m, "reason", json_string(calls ? "tool_calls" : ic_end_reason_name(reason)));
    if (parsed)
        rc |= ic_proto_chat_end(m, parsed);
    rc |= set(o, "prompt_tokens", json_integer(st->prompt_tokens));
    rc |= set(o, "context_tokens", json_integer(st->context_tokens));
    rc |= set(o, "generated_tokens", json_integer(st->generated_tokens));
    rc |= set(o, "queue_ms", jreal(st->queue_ms));
    rc |= set(o, "ttft_ms", jreal(st->ttft_ms));
    rc |= set(o, "total_ms", jreal(st->total_ms));
    rc |= set(o, "tokens_per_second", jreal(st->tokens_per_second));
    rc |= set(o, "prompt_tokens_per_second", jreal(st->prompt_tokens_per_second));
    rc |= set(o, "drafted_tokens", json_integer(st->drafted_tokens));
    rc |= set(o, "accepted_tokens", json_integer(st->accepted_tokens));
    rc |= set(m, "stats", o);
    return finish(m, rc);
}

char *ic_proto_error_msg(enum ic_proto_code code, const char *message, const char *session_id,
                         const ic_msg_id *id)
{
    const char *name = ic_proto_code_name(code);
    json_t *m = msg_new("ERROR", id);
    json_t *text = json_string(message ? message : name);
    int rc = set(m, "code", json_string(name));
    rc |= set(m, "message", text ? text : json_string(name)); /* bad UTF-8: the code */
    if (session_id)
        rc |= set(m, "session_id", jstr(session_id));
    return finish(m, rc);
}

static json_t *metrics_engine(const ic_metrics_msg *mm)
{
    json_t *o = json_object();
    int rc = set(o, "state", jstr(mm->state));
    rc |= set(o, "sessions", json_integer(mm->engine.sessions));
    rc |= set(o, "max_sessions", json_integer(mm->engine.max_sessions));
    rc |= set(o, "generating", json_integer(mm->engine.generating));
    rc |= set(o, "queued", json_integer(mm->engine.queued));
    rc |= set(o, "tokens_per_second", jreal(mm->engine.tokens_per_second));
    rc |= set(o, "kv_cells_used", json_integer(mm->engine.kv_cells_used));
    rc |= set(o, "kv_cells_total", json_integer(mm->engine.kv_cells_total));
    rc |= set(o, "n_gpu_layers", json_integer(mm->n_gpu_layers));
    rc |= set(o, "temp_limit_c", jreal(mm->temp_limit_c > 0 ? mm->temp_limit_c : 0));
    return checked(o, rc);
}

static json_t *metrics_gpu(const ic_gpu_reading *g)
{
    json_t *o = json_object();
    int rc = set(o, "index", json_integer(g->index));
    rc |= set(o, "name", jtext(g->name, sizeof g->name));
    rc |= set(o, "temperature_c", jreal(g->temperature_c));
    rc |= set(o, "utilization_pct", jreal(g->utilization_pct));
    rc |= set(o, "memory_used_bytes", json_integer(g->memory_used_bytes));
    rc |= set(o, "memory_total_bytes", json_integer(g->memory_total_bytes));
    rc |= set(o, "power_w", jreal(g->power_w));
    return checked(o, rc);
}

static json_t *metrics_session(const ic_metrics_session *s)
{
    json_t *o = json_object();
    int rc = set(o, "session_id", jtext(s->session_id, sizeof s->session_id));
    rc |= set(o, "state", json_string(ic_session_state_name(s->state)));
    rc |= set(o, "n_ctx_used", json_integer(s->n_ctx_used));
    return checked(o, rc);
}

char *ic_proto_metrics(const ic_metrics_msg *mm, const ic_msg_id *id)
{
    json_t *m = msg_new("METRICS", id);
    json_t *gpus = json_array(), *sessions = json_array(), *sys = json_object();
    int rc = set(m, "timestamp_ms", json_integer(mm->timestamp_ms));
    rc |= set(m, "engine", metrics_engine(mm));
    for (int i = 0; gpus && i < mm->n_gpus; i++)
        rc |= json_array_append_new(gpus, metrics_gpu(&mm->gpus[i]));
    rc |= set(m, "gpus", gpus);
    rc |= set(sys, "cpu_pct", jreal(mm->cpu_pct));
    rc |= set(sys, "ram_used_bytes", json_integer(mm->ram_used_bytes));
    rc |= set(sys, "ram_total_bytes", json_integer(mm->ram_total_bytes));
    rc |= set(m, "system", sys);
    for (int i = 0; sessions && i < mm->n_sessions; i++)
        rc |= json_array_append_new(sessions, metrics_session(&mm->sessions[i]));
    rc |= set(m, "sessions", sessions);
    return finish(m, rc);
}

/* --- HTTP bodies ----------------------------------------------------- */

static char *dump_object(json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return text;
}

char *ic_proto_http_health(const char *status, const char *state)
{
    return dump_object(json_pack("{s:s,s:s}", "status", status, "state", state));
}

char *ic_proto_http_error(const char *message)
{
    return dump_object(json_pack("{s:s}", "error", message));
}
