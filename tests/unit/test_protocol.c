/* test_protocol.c - protocol v1: client frames parse into ic_msg or into the
 * right error code with a message naming the field; ids are echoed; params
 * merge with the right precedence; every server message round-trips
 * through a JSON parser with the documented field names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "err.h"
#include "protocol.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- helpers --- */

static int parse(const char *text, ic_msg *m, ic_proto_error *e)
{
    return ic_proto_parse(text, strlen(text), m, e);
}

/* Parses text, expecting it to be refused with code and a message that
 * contains needle; also checks the message makes a valid ERROR. */
static void expect_refused(const char *text, size_t len, enum ic_proto_code code,
                           const char *needle)
{
    ic_msg m;
    ic_proto_error e;
    int rc = ic_proto_parse(text, len, &m, &e);
    if (rc != IC_ERR_PARSE || e.code != code || !strstr(e.message, needle))
        fail_msg("%.80s: rc %d code %s message '%s', wanted %s containing '%s'", text, rc,
                 ic_proto_code_name(e.code), e.message, ic_proto_code_name(code), needle);
    assert_null(m.token); /* nothing left to free */
    assert_null(m.prompt);
    assert_int_equal(m.params.n_stop, 0);
    char *err = ic_proto_error_msg(e.code, e.message, NULL, &e.id);
    assert_non_null(err); /* the message is valid UTF-8 */
    free(err);
}

static void refused(const char *text, enum ic_proto_code code, const char *needle)
{
    expect_refused(text, strlen(text), code, needle);
}

/* Parses a builder's output (taking it), asserting it is JSON whose first
 * member is "type" == type. */
static json_t *load(char *text, const char *type)
{
    assert_non_null(text);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "{\"type\":\"%s\"", type);
    if (strncmp(text, prefix, strlen(prefix)) != 0)
        fail_msg("%s does not start with %s", text, prefix);
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &jerr);
    if (!j)
        fail_msg("not JSON: %s (%s)", text, jerr.text);
    free(text);
    return j;
}

/* The member at a dotted path ("stats.ttft_ms"), or NULL. */
static const json_t *member_at(const json_t *obj, const char *path)
{
    const json_t *v = obj;
    char key[64];
    for (const char *p = path; v && *p;) {
        size_t n = strcspn(p, ".");
        snprintf(key, sizeof key, "%.*s", (int)n, p);
        v = json_object_get(v, key);
        p += n + (p[n] == '.');
    }
    return v;
}

static const char *get_s(const json_t *obj, const char *path)
{
    const json_t *v = member_at(obj, path);
    if (!json_is_string(v))
        fail_msg("'%s' is not a string", path);
    return json_string_value(v);
}

static json_int_t get_i(const json_t *obj, const char *path)
{
    const json_t *v = member_at(obj, path);
    if (!json_is_integer(v))
        fail_msg("'%s' is not an integer", path);
    return json_integer_value(v);
}

static double get_f(const json_t *obj, const char *path)
{
    const json_t *v = member_at(obj, path);
    if (!json_is_number(v))
        fail_msg("'%s' is not a number", path);
    return json_number_value(v);
}

/* --- parsing: good messages --- */

static void parses_every_type(void **state)
{
    (void)state;
    ic_msg m;
    ic_proto_error e;
    assert_int_equal(parse("{\"type\":\"AUTH\",\"token\":\"s3cret\",\"extra\":[1,{}]}", &m, &e), 0);
    assert_int_equal(m.type, IC_MSG_AUTH);
    assert_string_equal(m.token, "s3cret");
    assert_false(m.id.present);
    ic_msg_free(&m);

    assert_int_equal(parse("{\"type\":\"CREATE_SESSION\"}", &m, &e), 0);
    assert_int_equal(m.type, IC_MSG_CREATE_SESSION);
    assert_null(m.system);
    assert_int_equal(m.params.set, 0);
    ic_msg_free(&m);

    assert_int_equal(parse("{\"type\":\"CREATE_SESSION\",\"system\":\"Be brief.\","
                           "\"params\":{\"temperature\":0,\"bogus\":true}}", &m, &e), 0);
    assert_string_equal(m.system, "Be brief.");
    assert_int_equal(m.params.set, 1u << IC_PARAM_TEMPERATURE);
    assert_true(m.params.temperature == 0.0f);
    ic_msg_free(&m);

    assert_int_equal(parse("{\"session_id\":\"s1\",\"type\":\"CLOSE_SESSION\"}", &m, &e), 0);
    assert_int_equal(m.type, IC_MSG_CLOSE_SESSION);
    assert_string_equal(m.session_id, "s1");
    ic_msg_free(&m);

    assert_int_equal(parse("{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"h\\u00e9\"}",
                           &m, &e), 0);
    assert_int_equal(m.type, IC_MSG_INFER);
    assert_string_equal(m.prompt, "h\xc3\xa9");
    assert_false(m.raw);
    ic_msg_free(&m);

    assert_int_equal(parse("{\"type\":\"ABORT\",\"session_id\":\"\"}", &m, &e), 0);
    assert_int_equal(m.type, IC_MSG_ABORT);
    assert_string_equal(m.session_id, "");
    ic_msg_free(&m);

    assert_int_equal(parse(" {\"type\":\"METRICS\"} \n", &m, &e), 0);
    assert_int_equal(m.type, IC_MSG_METRICS);
    ic_msg_free(&m);
}

static void parses_infer_with_all_params(void **state)
{
    (void)state;
    ic_msg m;
    ic_proto_error e;
    const char *text =
        "{\"type\":\"INFER\",\"id\":7,\"session_id\":\"abc\",\"prompt\":\"Once\",\"raw\":true,"
        "\"params\":{\"max_tokens\":1000000,\"temperature\":100,\"top_k\":0,\"top_p\":1,"
        "\"min_p\":0.5,\"repeat_penalty\":0.001,\"repeat_last_n\":-1,\"seed\":4294967295,"
        "\"stop\":[\"\\n\\n\",\"\",\"END\"],\"ignore_eos\":true,\"priority\":\"low\"}}";
    assert_int_equal(parse(text, &m, &e), 0);
    assert_true(m.raw);
    assert_true(m.id.present && m.id.is_int && m.id.i == 7);
    const ic_req_params *p = &m.params;
    assert_int_equal(p->set, (1u << (IC_PARAM_PRIORITY + 1)) - 1); /* all eleven */
    assert_int_equal(p->max_tokens, 1000000);
    assert_true(p->temperature == 100.0f);
    assert_int_equal(p->top_k, 0);
    assert_true(p->top_p == 1.0f);
    assert_true(p->min_p == 0.5f);
    assert_true(p->repeat_penalty == 0.001f);
    assert_int_equal(p->repeat_last_n, -1);
    assert_true(p->seed == 4294967295u);
    assert_true(p->ignore_eos);
    assert_int_equal(p->priority, IC_PRIORITY_LOW);
    assert_int_equal(p->n_stop, 3);
    assert_string_equal(p->stop[0], "\n\n");
    assert_string_equal(p->stop[1], "");
    assert_string_equal(p->stop[2], "END");
    ic_msg_free(&m);
    ic_msg_free(&m); /* idempotent */
}

static void subscribe_interval_rules(void **state)
{
    (void)state;
    static const struct { const char *v; int ok; int ms; } cases[] = {
        {"0", 1, 0}, {"250", 1, 250}, {"1000", 1, 1000}, {"3600000", 1, 3600000},
        {"3600001", 1, 3600000}, {"9223372036854775807", 1, 3600000},
        {"249", 0, 0}, {"1", 0, 0}, {"-1", 0, 0}, {"1000.0", 0, 0}, {"\"1000\"", 0, 0},
        {"true", 0, 0}, {"null", 0, 0},
    };
    char text[128];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(text, sizeof text, "{\"type\":\"SUBSCRIBE_METRICS\",\"interval_ms\":%s}",
                 cases[i].v);
        if (cases[i].ok) {
            ic_msg m;
            ic_proto_error e;
            assert_int_equal(parse(text, &m, &e), 0);
            assert_int_equal(m.type, IC_MSG_SUBSCRIBE_METRICS);
            assert_int_equal(m.interval_ms, cases[i].ms);
            ic_msg_free(&m);
        } else {
            refused(text, IC_CODE_BAD_REQUEST, "'interval_ms'");
        }
    }
    refused("{\"type\":\"SUBSCRIBE_METRICS\"}", IC_CODE_BAD_REQUEST, "'interval_ms'");
}

/* --- parsing: refusals --- */

static void not_json_is_bad_json(void **state)
{
    (void)state;
    refused("", IC_CODE_BAD_JSON, "not valid JSON");
    refused("{", IC_CODE_BAD_JSON, "not valid JSON");
    refused("hello", IC_CODE_BAD_JSON, "not valid JSON");
    refused("{\"type\":\"METRICS\"} {}", IC_CODE_BAD_JSON, "not valid JSON");
    refused("{'type':'METRICS'}", IC_CODE_BAD_JSON, "not valid JSON");
    refused("{\"type\":\"METRICS\",}", IC_CODE_BAD_JSON, "not valid JSON");
    refused("{\"type\":\"METRICS\",\"type\":\"AUTH\"}", IC_CODE_BAD_JSON, "duplicate");
    refused("{\"type\":\"METRICS\",\"x\":{\"a\":1,\"a\":2}}", IC_CODE_BAD_JSON, "duplicate");
    refused("{\"type\":\"METRICS\",\"a\\u0000b\":1}", IC_CODE_BAD_JSON, "not valid JSON");
    /* A raw NUL byte inside the frame, and an absent buffer. */
    expect_refused("{\"type\":\"METRICS\"}\0", 19, IC_CODE_BAD_JSON, "not valid JSON");
    expect_refused("{\"type\":\"ME\0TRICS\"}", 19, IC_CODE_BAD_JSON, "not valid JSON");
    ic_msg m;
    ic_proto_error e;
    assert_int_equal(ic_proto_parse(NULL, 0, &m, &e), IC_ERR_PARSE);
    assert_int_equal(e.code, IC_CODE_BAD_JSON);
    assert_false(e.id.present);
}

static void invalid_utf8_is_bad_json(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "{\"type\":\"AUTH\",\"token\":\"\xff\"}",            /* never valid */
        "{\"type\":\"AUTH\",\"token\":\"\xc3\"}",            /* truncated */
        "{\"type\":\"AUTH\",\"token\":\"\xc0\xaf\"}",        /* overlong '/' */
        "{\"type\":\"AUTH\",\"token\":\"\xed\xa0\x80\"}",    /* surrogate */
        "{\"type\":\"AUTH\",\"token\":\"\xf4\x90\x80\x80\"}", /* > U+10FFFF */
        "{\"type\":\"AUTH\",\"id\":1,\"token\":\"\\ud800\"}", /* lone surrogate escape */
        "\xef\xbb\xbf{\"type\":\"METRICS\"}",                /* a BOM is not JSON */
        "{\"type\":\"\x80\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        refused(bad[i], IC_CODE_BAD_JSON, "not valid JSON");
        ic_msg m;
        ic_proto_error e;
        parse(bad[i], &m, &e);
        assert_false(e.id.present);
        /* The message never quotes the bad bytes. */
        for (const char *c = e.message; *c; c++)
            assert_true((unsigned char)*c >= 0x20 && (unsigned char)*c < 0x7f);
    }
}

static void non_object_is_bad_request(void **state)
{
    (void)state;
    static const char *const texts[] = {"[]", "[{\"type\":\"METRICS\"}]", "3", "\"METRICS\"",
                                        "null", "true"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++)
        refused(texts[i], IC_CODE_BAD_REQUEST, "message must be a JSON object");
}

static void type_must_be_a_known_string(void **state)
{
    (void)state;
    refused("{}", IC_CODE_BAD_REQUEST, "field 'type' must be a string");
    refused("{\"type\":7}", IC_CODE_BAD_REQUEST, "'type'");
    refused("{\"type\":null}", IC_CODE_BAD_REQUEST, "'type'");
    refused("{\"type\":[\"AUTH\"]}", IC_CODE_BAD_REQUEST, "'type'");
    refused("{\"type\":\"FETCH\"}", IC_CODE_UNKNOWN_TYPE, "'FETCH'");
    refused("{\"type\":\"auth\",\"token\":\"x\"}", IC_CODE_UNKNOWN_TYPE, "'auth'");
    refused("{\"type\":\"\"}", IC_CODE_UNKNOWN_TYPE, "''");
    /* An embedded U+0000 must not make it "AUTH". */
    refused("{\"type\":\"AUTH\\u0000x\",\"token\":\"t\"}", IC_CODE_UNKNOWN_TYPE, "'AUTH'");
    refused("{\"type\":\"AUTHX\",\"token\":\"t\"}", IC_CODE_UNKNOWN_TYPE, "'AUTHX'");
}

static void long_unknown_type_is_cut_on_a_character(void **state)
{
    (void)state;
    /* 63 ASCII bytes then 'é' (2 bytes) straddling the 64-byte cut. */
    char text[512];
    char type[300];
    memset(type, 'A', 63);
    strcpy(type + 63, "\xc3\xa9");
    memset(type + 65, 'B', 200);
    type[265] = '\0';
    snprintf(text, sizeof text, "{\"type\":\"%s\"}", type);
    ic_msg m;
    ic_proto_error e;
    assert_int_equal(parse(text, &m, &e), IC_ERR_PARSE);
    assert_int_equal(e.code, IC_CODE_UNKNOWN_TYPE);
    assert_non_null(strstr(e.message, "AAAA...'"));
    assert_null(strstr(e.message, "\xc3"));
    assert_true(strlen(e.message) < sizeof e.message - 1);
    char *err = ic_proto_error_msg(e.code, e.message, NULL, NULL);
    json_t *j = load(err, "ERROR");
    assert_string_equal(get_s(j, "code"), "unknown_type");
    json_decref(j);
}

static void field_types_and_ranges_are_checked(void **state)
{
    (void)state;
    static const struct { const char *params; const char *field; } bad[] = {
        {"3", "'params'"}, {"[]", "'params'"}, {"null", "'params'"},
        {"{\"max_tokens\":0}", "'params.max_tokens' must be an integer from 1 to 1000000"},
        {"{\"max_tokens\":1000001}", "'params.max_tokens'"},
        {"{\"max_tokens\":10.0}", "'params.max_tokens'"},
        {"{\"max_tokens\":\"10\"}", "'params.max_tokens'"},
        {"{\"max_tokens\":9223372036854775807}", "'params.max_tokens'"},
        {"{\"max_tokens\":-9223372036854775808}", "'params.max_tokens'"},
        {"{\"temperature\":-0.01}", "'params.temperature' must be a number"},
        {"{\"temperature\":100.5}", "'params.temperature'"},
        {"{\"temperature\":1e308}", "'params.temperature'"},
        {"{\"temperature\":true}", "'params.temperature'"},
        {"{\"temperature\":\"0.5\"}", "'params.temperature'"},
        {"{\"top_k\":-1}", "'params.top_k'"},
        {"{\"top_k\":2147483648}", "'params.top_k'"},
        {"{\"top_k\":1.5}", "'params.top_k'"},
        {"{\"top_p\":1.0000001}", "'params.top_p'"},
        {"{\"logprobs\":21}", "'params.logprobs' must be an integer from -1 to 20"},
        {"{\"logprobs\":-2}", "'params.logprobs'"},
        {"{\"logprobs\":true}", "'params.logprobs'"},
        {"{\"min_p\":-0.001}", "'params.min_p'"},
        {"{\"repeat_penalty\":0}", "'params.repeat_penalty' must be a number > 0"},
        {"{\"repeat_penalty\":101}", "'params.repeat_penalty'"},
        {"{\"repeat_penalty\":1e-50}", "'params.repeat_penalty'"}, /* 0 as a float */
        {"{\"temperature\":1e39}", "'params.temperature'"},        /* inf as a float */
        {"{\"repeat_last_n\":-2}", "'params.repeat_last_n'"},
        {"{\"seed\":-1}", "'params.seed'"},
        {"{\"seed\":4294967296}", "'params.seed'"},
        {"{\"seed\":1e3}", "'params.seed'"},
        {"{\"ignore_eos\":1}", "'params.ignore_eos' must be a boolean"},
        {"{\"ignore_eos\":\"true\"}", "'params.ignore_eos'"},
        {"{\"priority\":\"urgent\"}", "'params.priority'"},
        {"{\"priority\":\"HIGH\"}", "'params.priority'"},
        {"{\"priority\":\"high\\u0000\"}", "'params.priority'"},
        {"{\"priority\":2}", "'params.priority'"},
        {"{\"stop\":\"END\"}", "'params.stop' must be an array"},
        {"{\"stop\":[1]}", "'params.stop'"},
        {"{\"stop\":[\"a\",null]}", "'params.stop'"},
        {"{\"stop\":[[\"a\"]]}", "'params.stop'"},
        {"{\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]}", "'params.stop'"},
        {"{\"stop\":[\"a\\u0000b\"]}", "'params.stop' must not contain U+0000"},
        {"{\"allow_special\":1}", "'params.allow_special' must be a boolean"},
        {"{\"allow_special\":\"true\"}", "'params.allow_special' must be a boolean"},
        {"{\"allow_special\":null}", "'params.allow_special'"},
        {"{\"top_p\":-1e300}", "'params.top_p'"},     /* beyond float: refused first */
        {"{\"min_p\":3.5e38}", "'params.min_p'"},
    };
    char text[512];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(text, sizeof text,
                 "{\"type\":\"INFER\",\"id\":\"q\",\"session_id\":\"s\",\"prompt\":\"p\","
                 "\"params\":%s}", bad[i].params);
        refused(text, IC_CODE_BAD_REQUEST, bad[i].field);
        snprintf(text, sizeof text, "{\"type\":\"CREATE_SESSION\",\"params\":%s}", bad[i].params);
        refused(text, IC_CODE_BAD_REQUEST, bad[i].field);
    }
    refused("{\"type\":\"INFER\",\"session_id\":\"s\",\"prompt\":\"p\",\"raw\":1}",
            IC_CODE_BAD_REQUEST, "field 'raw' must be a boolean");
    refused("{\"type\":\"INFER\",\"session_id\":\"s\"}", IC_CODE_BAD_REQUEST,
            "field 'prompt' must be a string");
    refused("{\"type\":\"INFER\",\"prompt\":\"p\"}", IC_CODE_BAD_REQUEST, "'session_id'");
    refused("{\"type\":\"INFER\",\"session_id\":5,\"prompt\":\"p\"}", IC_CODE_BAD_REQUEST,
            "'session_id'");
    refused("{\"type\":\"AUTH\"}", IC_CODE_BAD_REQUEST, "field 'token' must be a string");
    refused("{\"type\":\"AUTH\",\"token\":null}", IC_CODE_BAD_REQUEST, "'token'");
    refused("{\"type\":\"CREATE_SESSION\",\"system\":[]}", IC_CODE_BAD_REQUEST, "'system'");
    refused("{\"type\":\"CLOSE_SESSION\"}", IC_CODE_BAD_REQUEST, "'session_id'");
    refused("{\"type\":\"ABORT\",\"session_id\":{}}", IC_CODE_BAD_REQUEST, "'session_id'");
    /* Huge literals that jansson cannot hold at all are not JSON to us. */
    refused("{\"type\":\"INFER\",\"session_id\":\"s\",\"prompt\":\"p\","
            "\"params\":{\"max_tokens\":99999999999999999999}}", IC_CODE_BAD_JSON, "JSON");
    refused("{\"type\":\"INFER\",\"session_id\":\"s\",\"prompt\":\"p\","
            "\"params\":{\"temperature\":1e400}}", IC_CODE_BAD_JSON, "JSON");
}

static void limits_of_stop_strings_are_accepted(void **state)
{
    (void)state;
    char big[IC_STOP_MAX_BYTES + 2];
    char text[2048];
    memset(big, 'x', IC_STOP_MAX_BYTES);
    big[IC_STOP_MAX_BYTES] = '\0';
    snprintf(text, sizeof text,
             "{\"type\":\"CREATE_SESSION\",\"params\":{\"stop\":[\"%s\",\"1\",\"2\",\"3\","
             "\"4\",\"5\",\"6\",\"\"]}}", big);
    ic_msg m;
    ic_proto_error e;
    assert_int_equal(parse(text, &m, &e), 0);
    assert_int_equal(m.params.n_stop, IC_STOP_MAX);
    assert_int_equal(strlen(m.params.stop[0]), IC_STOP_MAX_BYTES);
    ic_msg_free(&m);

    strcat(big, "y");
    snprintf(text, sizeof text, "{\"type\":\"CREATE_SESSION\",\"params\":{\"stop\":[\"%s\"]}}",
             big);
    refused(text, IC_CODE_BAD_REQUEST, "'params.stop'");
}

static void nul_escapes_are_refused(void **state)
{
    (void)state;
    refused("{\"type\":\"AUTH\",\"token\":\"ab\\u0000cd\"}", IC_CODE_BAD_REQUEST,
            "field 'token' must not contain U+0000");
    refused("{\"type\":\"ABORT\",\"session_id\":\"\\u0000\"}", IC_CODE_BAD_REQUEST,
            "'session_id' must not contain U+0000");
    refused("{\"type\":\"CREATE_SESSION\",\"system\":\"x\\u0000\"}", IC_CODE_BAD_REQUEST,
            "'system' must not contain U+0000");
    refused("{\"type\":\"INFER\",\"session_id\":\"s\",\"prompt\":\"\\u0000\"}",
            IC_CODE_BAD_REQUEST, "'prompt' must not contain U+0000");
    /* Elsewhere it is just an ignored field. */
    ic_msg m;
    ic_proto_error e;
    assert_int_equal(parse("{\"type\":\"METRICS\",\"note\":\"\\u0000\"}", &m, &e), 0);
    ic_msg_free(&m);
}

static void nested_garbage_is_survived(void **state)
{
    (void)state;
    /* Far deeper than jansson's parser allows: refused, not a stack overflow. */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 64);
    assert_non_null(deep);
    size_t n = (size_t)sprintf(deep, "{\"type\":\"METRICS\",\"x\":");
    memset(deep + n, '[', depth);
    memset(deep + n + depth, ']', depth);
    strcpy(deep + n + 2 * depth, "}");
    expect_refused(deep, strlen(deep), IC_CODE_BAD_JSON, "not valid JSON");

    /* Moderately nested junk in ignored fields is fine. */
    depth = 500;
    n = (size_t)sprintf(deep, "{\"type\":\"METRICS\",\"x\":");
    for (size_t i = 0; i < depth; i++)
        n += (size_t)sprintf(deep + n, "{\"a\":[");
    for (size_t i = 0; i < depth; i++)
        n += (size_t)sprintf(deep + n, "]}");
    strcpy(deep + n, "}");
    ic_msg m;
    ic_proto_error e;
    assert_int_equal(parse(deep, &m, &e), 0);
    assert_int_equal(m.type, IC_MSG_METRICS);
    ic_msg_free(&m);
    free(deep);

    refused("{\"type\":\"INFER\",\"session_id\":\"s\",\"prompt\":\"p\",\"params\":"
            "{\"stop\":[{\"a\":[{\"b\":[]}]}]}}", IC_CODE_BAD_REQUEST, "'params.stop'");
}

/* --- ids --- */

static void ids_are_read_first_and_echoed(void **state)
{
    (void)state;
    ic_msg m;
    ic_proto_error e;
    assert_int_equal(parse("{\"type\":\"METRICS\",\"id\":\"req-1\"}", &m, &e), 0);
    assert_true(m.id.present && !m.id.is_int);
    assert_string_equal(m.id.s, "req-1");
    ic_msg_free(&m);

    assert_int_equal(parse("{\"type\":\"METRICS\",\"id\":-9223372036854775808}", &m, &e), 0);
    assert_true(m.id.present && m.id.is_int && m.id.i == INT64_MIN);
    ic_msg_free(&m);

    char id64[IC_MSG_ID_MAX_BYTES + 1];
    char text[256];
    memset(id64, 'i', IC_MSG_ID_MAX_BYTES);
    id64[IC_MSG_ID_MAX_BYTES] = '\0';
    snprintf(text, sizeof text, "{\"id\":\"%s\",\"type\":\"METRICS\"}", id64);
    assert_int_equal(parse(text, &m, &e), 0);
    assert_string_equal(m.id.s, id64);
    ic_msg_free(&m);

    /* Errors about other fields still carry the id. */
    assert_int_equal(parse("{\"id\":\"abc\",\"type\":\"AUTH\",\"token\":3}", &m, &e), IC_ERR_PARSE);
    assert_int_equal(e.code, IC_CODE_BAD_REQUEST);
    assert_true(e.id.present && !e.id.is_int);
    assert_string_equal(e.id.s, "abc");
    assert_int_equal(parse("{\"id\":42,\"type\":\"NOPE\"}", &m, &e), IC_ERR_PARSE);
    assert_int_equal(e.code, IC_CODE_UNKNOWN_TYPE);
    assert_true(e.id.present && e.id.is_int && e.id.i == 42);
    assert_int_equal(parse("{\"id\":42}", &m, &e), IC_ERR_PARSE);
    assert_true(e.id.present && e.id.i == 42);
}

static void bad_ids_are_refused_without_echo(void **state)
{
    (void)state;
    char id65[IC_MSG_ID_MAX_BYTES + 2];
    char text[256];
    memset(id65, 'i', IC_MSG_ID_MAX_BYTES + 1);
    id65[IC_MSG_ID_MAX_BYTES + 1] = '\0';
    snprintf(text, sizeof text, "{\"type\":\"METRICS\",\"id\":\"%s\"}", id65);
    static const char *const bad[] = {
        "{\"type\":\"METRICS\",\"id\":1.5}",   "{\"type\":\"METRICS\",\"id\":true}",
        "{\"type\":\"METRICS\",\"id\":null}",  "{\"type\":\"METRICS\",\"id\":[1]}",
        "{\"type\":\"METRICS\",\"id\":{}}",    "{\"type\":\"METRICS\",\"id\":\"a\\u0000\"}",
        "{\"type\":\"NOPE\",\"id\":1e2}",      "{\"id\":false}",
    };
    for (size_t i = 0; i <= sizeof bad / sizeof *bad; i++) {
        const char *t = i < sizeof bad / sizeof *bad ? bad[i] : text;
        ic_msg m;
        ic_proto_error e;
        assert_int_equal(parse(t, &m, &e), IC_ERR_PARSE);
        assert_int_equal(e.code, IC_CODE_BAD_REQUEST);
        assert_non_null(strstr(e.message, "field 'id'"));
        assert_false(e.id.present);
    }
}

/* --- params merge --- */

static void gen_params_defaults(void **state)
{
    (void)state;
    ic_gen_params g;
    ic_proto_gen_params(NULL, NULL, IC_PRIORITY_HIGH, &g);
    assert_int_equal(g.max_tokens, 256);
    assert_true(g.sample.temperature == 0.8f);
    assert_int_equal(g.sample.top_k, 40);
    assert_true(g.sample.top_p == 0.95f);
    assert_true(g.sample.min_p == 0.05f);
    assert_true(g.sample.repeat_penalty == 1.0f);
    assert_int_equal(g.sample.repeat_last_n_tokens, 64);
    assert_true(g.sample.seed == 0xFFFFFFFFu);
    assert_false(g.sample.ban_eog);
    assert_false(g.ignore_eos);
    assert_int_equal(g.priority, IC_PRIORITY_NORMAL);
    assert_int_equal(g.n_stop, 0);

    /* Parsed but unset values do not leak into the result. */
    ic_msg m;
    ic_proto_error e;
    assert_int_equal(parse("{\"type\":\"CREATE_SESSION\",\"params\":{}}", &m, &e), 0);
    ic_proto_gen_params(&m.params, &m.params, IC_PRIORITY_HIGH, &g);
    assert_int_equal(g.max_tokens, 256);
    assert_true(g.sample.seed == 0xFFFFFFFFu);
    ic_msg_free(&m);
}

/* "s+1", "s-18446744073709551615" and friends used to name session s1
 * (strtoull accepts a sign and wraps negative numbers). */
static void session_ids_are_strict(void **state)
{
    (void)state;
    static const struct { const char *sid; uint64_t want; } good[] = {
        {"s1", 1}, {"s9", 9}, {"s10", 10}, {"s4096", 4096},
        {"s18446744073709551615", UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        uint64_t n = 0;
        assert_int_equal(ic_proto_session_num(good[i].sid, &n), 0);
        assert_true(n == good[i].want);
    }
    static const char *const bad[] = {
        "s+1", "s-1", "s-18446744073709551615", "s01", "s0", "s00", "s", "", "1", "S1",
        "s 1", "s1 ", " s1", "s1x", "s0x1", "s1e3", "s1.0", "s18446744073709551616",
        "s99999999999999999999", "s\xd9\xa1", "r1", "s\t1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint64_t n = 12345;
        if (ic_proto_session_num(bad[i], &n) != IC_ERR_NOT_FOUND)
            fail_msg("'%s' was accepted as session %llu", bad[i], (unsigned long long)n);
        assert_true(n == 12345);
    }
    uint64_t n;
    assert_int_equal(ic_proto_session_num(NULL, &n), IC_ERR_NOT_FOUND);
}

static void allow_special_defaults_off_and_merges(void **state)
{
    (void)state;
    ic_msg sess, req;
    ic_proto_error e;
    ic_gen_params g;
    ic_proto_gen_params(NULL, NULL, IC_PRIORITY_HIGH, &g);
    assert_false(g.allow_special);
    assert_int_equal(parse("{\"type\":\"CREATE_SESSION\",\"params\":"
                           "{\"allow_special\":true}}", &sess, &e), 0);
    assert_true(sess.params.allow_special);
    assert_true(sess.params.set & (1u << IC_PARAM_ALLOW_SPECIAL));
    assert_int_equal(parse("{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"p\"}",
                           &req, &e), 0);
    assert_false(req.params.set & (1u << IC_PARAM_ALLOW_SPECIAL));
    ic_proto_gen_params(&sess.params, &req.params, IC_PRIORITY_HIGH, &g);
    assert_true(g.allow_special); /* the session's default */
    ic_msg_free(&req);
    assert_int_equal(parse("{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"p\","
                           "\"params\":{\"allow_special\":false}}", &req, &e), 0);
    ic_proto_gen_params(&sess.params, &req.params, IC_PRIORITY_HIGH, &g);
    assert_false(g.allow_special); /* the request wins */
    ic_proto_gen_params(NULL, &sess.params, IC_PRIORITY_HIGH, &g);
    assert_true(g.allow_special);
    ic_msg_free(&req);
    ic_msg_free(&sess);
}

static void logprobs_param_and_token_fields(void **state)
{
    (void)state;
    ic_msg m;
    ic_proto_error e;
    ic_gen_params g;
    ic_proto_gen_params(NULL, NULL, IC_PRIORITY_HIGH, &g);
    assert_false(g.logprobs); /* off unless asked */
    for (int k = -1; k <= 20; k += 7) {
        char text[128];
        snprintf(text, sizeof text, "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"p\","
                 "\"params\":{\"logprobs\":%d}}", k);
        assert_int_equal(parse(text, &m, &e), 0);
        ic_proto_gen_params(NULL, &m.params, IC_PRIORITY_HIGH, &g);
        assert_true(g.logprobs == (k >= 0));
        assert_int_equal(g.top_logprobs, k > 0 ? k : 0);
        ic_msg_free(&m);
    }
    /* TOKEN with logprobs: logprob, token {id,text,bytes,logprob}, top_logprobs */
    ic_logprobs *lp = calloc(1, sizeof *lp + 4);
    lp->size = sizeof *lp + 4;
    memcpy(lp->bytes, "Hi\xe2\x80", 4);
    lp->sampled = (ic_logprob_tok){.token = 7, .logprob = -0.5f, .off = 0, .len = 2};
    lp->n_top = 2;
    lp->top[0] = (ic_logprob_tok){.token = 7, .logprob = -0.5f, .off = 0, .len = 2};
    lp->top[1] = (ic_logprob_tok){.token = 9, .logprob = -INFINITY, .off = 2, .len = 2};
    json_t *j = load(ic_proto_token_lp("s1", "r9", 0, "Hi", 2, lp, NULL), "TOKEN");
    assert_float_equal(json_real_value(json_object_get(j, "logprob")), -0.5, 1e-6);
    json_t *tok = json_object_get(j, "token");
    assert_int_equal(get_i(tok, "id"), 7);
    assert_string_equal(get_s(tok, "text"), "Hi");
    json_t *top = json_object_get(j, "top_logprobs");
    assert_int_equal(json_array_size(top), 2);
    json_t *t1 = json_array_get(top, 1);
    assert_string_equal(get_s(t1, "text"), ""); /* a piece of a character: bytes only */
    assert_int_equal(json_integer_value(json_array_get(json_object_get(t1, "bytes"), 0)), 0xe2);
    assert_float_equal(json_real_value(json_object_get(t1, "logprob")), -9999.0, 1e-6);
    json_decref(j);
    /* without: the TOKEN of before */
    j = load(ic_proto_token_lp("s1", "r9", 0, "Hi", 2, NULL, NULL), "TOKEN");
    assert_null(json_object_get(j, "logprob"));
    assert_null(json_object_get(j, "top_logprobs"));
    json_decref(j);
    free(lp);
}

static void gen_params_merge_and_priority_cap(void **state)
{
    (void)state;
    ic_msg session, request;
    ic_proto_error e;
    assert_int_equal(parse("{\"type\":\"CREATE_SESSION\",\"params\":{\"temperature\":0.2,"
                           "\"top_k\":5,\"seed\":42,\"stop\":[\"A\",\"B\"],\"priority\":\"high\","
                           "\"ignore_eos\":true}}", &session, &e), 0);
    assert_int_equal(parse("{\"type\":\"INFER\",\"session_id\":\"s\",\"prompt\":\"p\","
                           "\"params\":{\"temperature\":1,\"max_tokens\":9,"
                           "\"priority\":\"high\"}}", &request, &e), 0);
    ic_gen_params g;
    ic_proto_gen_params(&session.params, &request.params, IC_PRIORITY_NORMAL, &g);
    assert_true(g.sample.temperature == 1.0f); /* request beats session */
    assert_int_equal(g.max_tokens, 9);
    assert_int_equal(g.sample.top_k, 5);       /* session beats default */
    assert_true(g.sample.seed == 42);
    assert_true(g.sample.top_p == 0.95f);      /* default */
    assert_true(g.ignore_eos && g.sample.ban_eog);
    assert_int_equal(g.n_stop, 2);
    assert_ptr_equal(g.stop[0], session.params.stop[0]); /* borrowed */
    assert_string_equal(g.stop[1], "B");
    assert_int_equal(g.priority, IC_PRIORITY_NORMAL); /* capped */

    ic_proto_gen_params(&session.params, NULL, IC_PRIORITY_LOW, &g);
    assert_int_equal(g.priority, IC_PRIORITY_LOW);
    ic_proto_gen_params(&session.params, NULL, IC_PRIORITY_HIGH, &g);
    assert_int_equal(g.priority, IC_PRIORITY_HIGH);
    ic_msg_free(&request);

    /* A request may lower its priority, and an empty stop list clears. */
    assert_int_equal(parse("{\"type\":\"INFER\",\"session_id\":\"s\",\"prompt\":\"p\","
                           "\"params\":{\"priority\":\"low\",\"stop\":[],\"ignore_eos\":false}}",
                           &request, &e), 0);
    ic_proto_gen_params(&session.params, &request.params, IC_PRIORITY_NORMAL, &g);
    assert_int_equal(g.priority, IC_PRIORITY_LOW);
    assert_int_equal(g.n_stop, 0);
    assert_null(g.stop[0]);
    assert_false(g.ignore_eos || g.sample.ban_eog);
    assert_true(g.sample.temperature == 0.2f);
    ic_msg_free(&request);
    ic_msg_free(&session);
}

static void req_params_copy_is_deep(void **state)
{
    (void)state;
    ic_msg m;
    ic_proto_error e;
    assert_int_equal(parse("{\"type\":\"CREATE_SESSION\",\"params\":{\"stop\":[\"x\",\"yz\"],"
                           "\"top_k\":3}}", &m, &e), 0);
    ic_req_params copy;
    assert_int_equal(ic_req_params_copy(&copy, &m.params), 0);
    ic_msg_free(&m); /* the copy outlives the original */
    assert_int_equal(copy.set, (1u << IC_PARAM_STOP) | (1u << IC_PARAM_TOP_K));
    assert_int_equal(copy.top_k, 3);
    assert_int_equal(copy.n_stop, 2);
    assert_string_equal(copy.stop[0], "x");
    assert_string_equal(copy.stop[1], "yz");
    assert_null(copy.stop[2]);
    ic_req_params_free(&copy);
    assert_int_equal(copy.n_stop, 0);
    ic_req_params_free(&copy);
}

/* --- codes --- */

static void code_names_and_err_mapping(void **state)
{
    (void)state;
    static const char *const names[] = {
        "bad_json", "bad_request", "unknown_type", "unauthenticated", "session_not_found",
        "session_limit", "capacity", "busy", "not_running", "prompt_too_long",
        "message_too_large", "overloaded", "internal",
    };
    for (int c = IC_CODE_BAD_JSON; c <= IC_CODE_INTERNAL; c++)
        assert_string_equal(ic_proto_code_name((enum ic_proto_code)c), names[c]);
    assert_string_equal(ic_proto_code_name((enum ic_proto_code)99), "internal");

    static const struct { int err; enum ic_proto_code code; } map[] = {
        {IC_ERR_PROMPT_TOO_LONG, IC_CODE_PROMPT_TOO_LONG}, {IC_ERR_OVERLOADED, IC_CODE_OVERLOADED},
        {IC_ERR_CAPACITY, IC_CODE_CAPACITY}, {IC_ERR_NOT_FOUND, IC_CODE_SESSION_NOT_FOUND},
        {IC_ERR_BUSY, IC_CODE_BUSY}, {IC_ERR_NOT_RUNNING, IC_CODE_NOT_RUNNING},
        {IC_ERR_INVAL, IC_CODE_BAD_REQUEST}, {IC_ERR_AUTH, IC_CODE_UNAUTHENTICATED},
        {IC_ERR_NOMEM, IC_CODE_INTERNAL}, {IC_ERR_DECODE, IC_CODE_INTERNAL},
        {IC_ERR_CONTEXT_FULL, IC_CODE_INTERNAL}, {0, IC_CODE_INTERNAL}, {-999, IC_CODE_INTERNAL},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        assert_int_equal(ic_proto_code_from_err(map[i].err), map[i].code);
}

/* --- builders --- */

static void hello_round_trips(void **state)
{
    (void)state;
    ic_hello h = {
        .version = "0.1.0", .auth_required = true, .model_name = "stories \"260K\"",
        .n_params = UINT64_MAX, .size_bytes = 1048576, .n_ctx_train = 512,
        .max_message_bytes = 1 << 20, .max_sessions_per_client = 4, .max_sessions = 6,
        .n_ctx_per_session = 2048,
    };
    json_t *j = load(ic_proto_hello(&h), "HELLO");
    assert_string_equal(get_s(j, "server"), "InferenceCenter");
    assert_string_equal(get_s(j, "version"), "0.1.0");
    assert_int_equal(get_i(j, "protocol"), IC_PROTOCOL_VERSION);
    assert_true(json_is_true(json_object_get(j, "auth_required")));
    assert_string_equal(get_s(j, "model.name"), "stories \"260K\"");
    assert_true(get_i(j, "model.n_params") == INT64_MAX); /* clamped */
    assert_int_equal(get_i(j, "model.size_bytes"), 1048576);
    assert_int_equal(get_i(j, "model.n_ctx_train"), 512);
    assert_int_equal(get_i(j, "limits.max_message_bytes"), 1 << 20);
    assert_int_equal(get_i(j, "limits.max_sessions_per_client"), 4);
    assert_int_equal(get_i(j, "limits.max_sessions"), 6);
    assert_int_equal(get_i(j, "limits.n_ctx_per_session"), 2048);
    assert_null(json_object_get(j, "id"));
    json_decref(j);
}

/* Before AUTH on a server with tokens HELLO names no model; AUTH_SUCCESS
 * then carries it. */
static void hello_without_model_and_auth_success_with_it(void **state)
{
    (void)state;
    ic_hello h = {.version = "0.1.0", .auth_required = true, .max_sessions = 6};
    json_t *j = load(ic_proto_hello(&h), "HELLO");
    assert_null(json_object_get(j, "model"));
    assert_int_equal(get_i(j, "limits.max_sessions"), 6);
    json_decref(j);
    h.model_name = "tiny";
    h.n_ctx_train = 512;
    j = load(ic_proto_auth_success_model("alice", 2, &h, NULL), "AUTH_SUCCESS");
    assert_string_equal(get_s(j, "model.name"), "tiny");
    assert_int_equal(get_i(j, "model.n_ctx_train"), 512);
    assert_int_equal(get_i(j, "max_sessions"), 2);
    json_decref(j);
    j = load(ic_proto_auth_success_model("alice", 2, NULL, NULL), "AUTH_SUCCESS");
    assert_null(json_object_get(j, "model"));
    json_decref(j);
}

static void http_bodies_are_escaped_json(void **state)
{
    (void)state;
    char *text = ic_proto_http_health("ok", "ready");
    assert_string_equal(text, "{\"status\":\"ok\",\"state\":\"ready\"}");
    free(text);
    text = ic_proto_http_error("say \"no\"\n");
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    assert_string_equal(get_s(j, "error"), "say \"no\"\n");
    json_decref(j);
    free(text);
}

static void small_messages_round_trip_with_ids(void **state)
{
    (void)state;
    ic_msg_id sid = {.present = true};
    strcpy(sid.s, "r\"1\\");
    ic_msg_id iid = {.present = true, .is_int = true, .i = -5};
    ic_msg_id absent = {.present = false, .is_int = true, .i = 9};

    char *text = ic_proto_auth_success("alice", 3, &sid);
    assert_non_null(strstr(text, "{\"type\":\"AUTH_SUCCESS\",\"id\":\"r\\\"1\\\\\","));
    json_t *j = load(text, "AUTH_SUCCESS");
    assert_string_equal(get_s(j, "id"), "r\"1\\");
    assert_string_equal(get_s(j, "client"), "alice");
    assert_int_equal(get_i(j, "max_sessions"), 3);
    json_decref(j);

    j = load(ic_proto_auth_failed("bad token", &iid), "AUTH_FAILED");
    assert_int_equal(get_i(j, "id"), -5);
    assert_string_equal(get_s(j, "reason"), "bad token");
    json_decref(j);

    j = load(ic_proto_session_created("s-7", 2048, &absent), "SESSION_CREATED");
    assert_null(json_object_get(j, "id"));
    assert_string_equal(get_s(j, "session_id"), "s-7");
    assert_int_equal(get_i(j, "n_ctx"), 2048);
    json_decref(j);

    j = load(ic_proto_session_closed("s-7", "client", NULL), "SESSION_CLOSED");
    assert_string_equal(get_s(j, "session_id"), "s-7");
    assert_string_equal(get_s(j, "reason"), "client");
    assert_int_equal(json_object_size(j), 3);
    json_decref(j);
}

/* Several models: CREATE_SESSION's and the admin messages' "model", HELLO's
 * list, SESSION_CREATED's and MODEL_STATUS's members. */
static void models_in_messages(void **state)
{
    (void)state;
    ic_msg m;
    ic_proto_error e;
    assert_int_equal(parse("{\"type\":\"CREATE_SESSION\",\"model\":\"tiny\"}", &m, &e), 0);
    assert_int_equal(m.type, IC_MSG_CREATE_SESSION);
    assert_string_equal(m.model, "tiny");
    ic_msg_free(&m);
    assert_int_equal(parse("{\"type\":\"CREATE_SESSION\"}", &m, &e), 0);
    assert_null(m.model);
    ic_msg_free(&m);
    assert_int_equal(parse("{\"type\":\"MODEL_UNLOAD\",\"model\":\"a\",\"id\":3}", &m, &e), 0);
    assert_int_equal(m.type, IC_MSG_MODEL_UNLOAD);
    assert_string_equal(m.model, "a");
    ic_msg_free(&m);
    assert_int_equal(parse("{\"type\":\"MODEL_LOAD\",\"model\":\"b\"}", &m, &e), 0);
    assert_int_equal(m.type, IC_MSG_MODEL_LOAD);
    ic_msg_free(&m);
    refused("{\"type\":\"CREATE_SESSION\",\"model\":7}", IC_CODE_BAD_REQUEST,
            "field 'model' must be a string");
    refused("{\"type\":\"MODEL_LOAD\",\"model\":null}", IC_CODE_BAD_REQUEST, "'model'");
    assert_string_equal(ic_proto_code_name(IC_CODE_MODEL_NOT_FOUND), "model_not_found");
    assert_string_equal(ic_proto_code_name(IC_CODE_FORBIDDEN), "forbidden");
    assert_string_equal(ic_end_reason_name(IC_END_MODEL_UNLOADED), "model_unloaded");

    const char *names[] = {"first", "se\"cond"};
    ic_hello h = {.version = "0.1.0", .model_name = "x", .models = names, .n_models = 2};
    json_t *j = load(ic_proto_hello(&h), "HELLO");
    const json_t *list = json_object_get(j, "models");
    assert_int_equal(json_array_size(list), 2);
    assert_string_equal(json_string_value(json_array_get(list, 1)), "se\"cond");
    json_decref(j);
    h.n_models = 0;
    j = load(ic_proto_hello(&h), "HELLO");
    assert_null(json_object_get(j, "models"));
    json_decref(j);

    ic_msg_id id = {.present = true, .is_int = true, .i = 4};
    j = load(ic_proto_session_created_model("s1", 512, "tiny", NULL, &id), "SESSION_CREATED");
    assert_string_equal(get_s(j, "model"), "tiny");
    assert_int_equal(get_i(j, "n_ctx"), 512);
    assert_int_equal(get_i(j, "id"), 4);
    assert_null(json_object_get(j, "resume_token"));
    json_decref(j);
    j = load(ic_proto_session_created_model("s7", 512, "tiny", "ab12", NULL), "SESSION_CREATED");
    assert_string_equal(get_s(j, "model"), "tiny");
    assert_string_equal(get_s(j, "resume_token"), "ab12");
    json_decref(j);
    j = load(ic_proto_model_status("tiny", false, NULL), "MODEL_STATUS");
    assert_string_equal(get_s(j, "model"), "tiny");
    assert_true(json_is_false(json_object_get(j, "loaded")));
    assert_int_equal(json_object_size(j), 3);
    json_decref(j);
}

static void token_text_keeps_nul_bytes(void **state)
{
    (void)state;
    ic_msg_id id = {.present = true, .is_int = true, .i = 1};
    const char text[] = "a\0b\n\xe2\x82\xac";
    char *out = ic_proto_token("s1", "r9", 4, text, sizeof text - 1, &id);
    assert_non_null(strstr(out, "\"text\":\"a\\u0000b\\n\xe2\x82\xac\""));
    json_t *j = load(out, "TOKEN");
    assert_string_equal(get_s(j, "session_id"), "s1");
    assert_string_equal(get_s(j, "request_id"), "r9");
    assert_int_equal(get_i(j, "index"), 4);
    const json_t *t = json_object_get(j, "text");
    assert_int_equal(json_string_length(t), sizeof text - 1);
    assert_memory_equal(json_string_value(t), text, sizeof text - 1);
    json_decref(j);

    j = load(ic_proto_token("s1", "r9", 0, "", 0, NULL), "TOKEN");
    assert_string_equal(get_s(j, "text"), "");
    json_decref(j);
    /* Invalid UTF-8 is the caller's bug: no half-escaped output. */
    assert_null(ic_proto_token("s1", "r9", 0, "\xff", 1, NULL));
}

static void end_has_reason_and_finite_stats(void **state)
{
    (void)state;
    static const char *const reasons[] = {"eos", "length", "stop_string", "abort",
                                          "context_full", "shutdown", "error"};
    ic_gen_stats st = {
        .prompt_tokens = 12, .generated_tokens = 34, .queue_ms = 1.5, .ttft_ms = NAN,
        .total_ms = INFINITY, .tokens_per_second = -INFINITY, .prompt_tokens_per_second = 99.25,
    };
    for (int r = IC_END_EOS; r <= IC_END_ERROR; r++) {
        json_t *j = load(ic_proto_end("s", "r", (enum ic_end_reason)r, &st, NULL), "END");
        assert_string_equal(get_s(j, "reason"), reasons[r]);
        json_decref(j);
    }
    ic_msg_id id = {.present = true};
    strcpy(id.s, "x");
    json_t *j = load(ic_proto_end("s2", "r3", IC_END_LENGTH, &st, &id), "END");
    assert_string_equal(get_s(j, "id"), "x");
    assert_string_equal(get_s(j, "session_id"), "s2");
    assert_string_equal(get_s(j, "request_id"), "r3");
    assert_int_equal(get_i(j, "stats.prompt_tokens"), 12);
    assert_int_equal(get_i(j, "stats.generated_tokens"), 34);
    assert_true(get_f(j, "stats.queue_ms") == 1.5);
    assert_true(get_f(j, "stats.ttft_ms") == 0.0);
    assert_true(get_f(j, "stats.total_ms") == 0.0);
    assert_true(get_f(j, "stats.tokens_per_second") == 0.0);
    assert_true(get_f(j, "stats.prompt_tokens_per_second") == 99.25);
    json_decref(j);
}

static void error_builder(void **state)
{
    (void)state;
    ic_msg_id id = {.present = true, .is_int = true, .i = 77};
    json_t *j = load(ic_proto_error_msg(IC_CODE_BUSY, "session is busy", "s5", &id), "ERROR");
    assert_int_equal(get_i(j, "id"), 77);
    assert_string_equal(get_s(j, "code"), "busy");
    assert_string_equal(get_s(j, "message"), "session is busy");
    assert_string_equal(get_s(j, "session_id"), "s5");
    json_decref(j);

    j = load(ic_proto_error_msg(IC_CODE_BAD_JSON, "x", NULL, NULL), "ERROR");
    assert_null(json_object_get(j, "session_id"));
    assert_int_equal(json_object_size(j), 3);
    json_decref(j);

    /* A message that is not UTF-8 still gives an ERROR, with the code as text. */
    j = load(ic_proto_error_msg(IC_CODE_INTERNAL, "bad \xc3", NULL, NULL), "ERROR");
    assert_string_equal(get_s(j, "message"), "internal");
    json_decref(j);

    /* What the parser says goes straight into an ERROR. */
    ic_msg m;
    ic_proto_error e;
    assert_int_equal(parse("{\"id\":\"z\",\"type\":\"ABORT\"}", &m, &e), IC_ERR_PARSE);
    j = load(ic_proto_error_msg(e.code, e.message, NULL, &e.id), "ERROR");
    assert_string_equal(get_s(j, "id"), "z");
    assert_string_equal(get_s(j, "code"), "bad_request");
    assert_string_equal(get_s(j, "message"), "field 'session_id' must be a string");
    json_decref(j);
}

static void metrics_round_trips(void **state)
{
    (void)state;
    ic_gpu_reading gpus[2] = {
        {.index = 0, .name = "NVIDIA H100", .temperature_c = 41.5, .utilization_pct = NAN,
         .memory_used_bytes = 1000, .memory_total_bytes = 80000000000LL, .power_w = 120.25},
        {.index = 1, .name = "bad \xff name", .power_w = INFINITY},
    };
    ic_metrics_session sessions[2] = {
        {.session_id = "s1", .state = IC_SESSION_GENERATING, .n_ctx_used = 100},
        {.session_id = "s2", .state = IC_SESSION_PREFILL, .n_ctx_used = 0},
    };
    ic_metrics_msg mm = {
        .timestamp_ms = 1700000000123LL, .state = "ready",
        .engine = {.sessions = 2, .generating = 1, .queued = 3, .kv_cells_used = 10,
                   .kv_cells_total = 4096, .tokens_per_second = 55.5},
        .n_gpu_layers = -1, .gpus = gpus, .n_gpus = 2, .cpu_pct = 12.5,
        .ram_used_bytes = 1 << 30, .ram_total_bytes = 1LL << 34,
        .sessions = sessions, .n_sessions = 2,
    };
    ic_msg_id id = {.present = true};
    strcpy(id.s, "m");
    json_t *j = load(ic_proto_metrics(&mm, &id), "METRICS");
    assert_string_equal(get_s(j, "id"), "m");
    assert_true(get_i(j, "timestamp_ms") == 1700000000123LL);
    assert_string_equal(get_s(j, "engine.state"), "ready");
    assert_int_equal(get_i(j, "engine.sessions"), 2);
    assert_int_equal(get_i(j, "engine.generating"), 1);
    assert_int_equal(get_i(j, "engine.queued"), 3);
    assert_true(get_f(j, "engine.tokens_per_second") == 55.5);
    assert_int_equal(get_i(j, "engine.kv_cells_used"), 10);
    assert_int_equal(get_i(j, "engine.kv_cells_total"), 4096);
    assert_int_equal(get_i(j, "engine.n_gpu_layers"), -1);
    const json_t *g = json_object_get(j, "gpus");
    assert_int_equal(json_array_size(g), 2);
    const json_t *g0 = json_array_get(g, 0);
    assert_int_equal(get_i(g0, "index"), 0);
    assert_string_equal(get_s(g0, "name"), "NVIDIA H100");
    assert_true(get_f(g0, "temperature_c") == 41.5);
    assert_true(get_f(g0, "utilization_pct") == 0.0);
    assert_int_equal(get_i(g0, "memory_used_bytes"), 1000);
    assert_true(get_i(g0, "memory_total_bytes") == 80000000000LL);
    assert_true(get_f(g0, "power_w") == 120.25);
    const json_t *g1 = json_array_get(g, 1);
    assert_string_equal(get_s(g1, "name"), ""); /* not UTF-8: dropped, message kept */
    assert_true(get_f(g1, "power_w") == 0.0);
    assert_true(get_f(j, "system.cpu_pct") == 12.5);
    assert_int_equal(get_i(j, "system.ram_used_bytes"), 1 << 30);
    assert_true(get_i(j, "system.ram_total_bytes") == 1LL << 34);
    const json_t *s = json_object_get(j, "sessions");
    assert_int_equal(json_array_size(s), 2);
    assert_string_equal(get_s(json_array_get(s, 0), "session_id"), "s1");
    assert_string_equal(get_s(json_array_get(s, 0), "state"), "generating");
    assert_int_equal(get_i(json_array_get(s, 0), "n_ctx_used"), 100);
    assert_string_equal(get_s(json_array_get(s, 1), "state"), "prefill");
    json_decref(j);

    ic_metrics_msg empty = {.state = "loading"};
    j = load(ic_proto_metrics(&empty, NULL), "METRICS");
    assert_int_equal(json_array_size(json_object_get(j, "gpus")), 0);
    assert_int_equal(json_array_size(json_object_get(j, "sessions")), 0);
    assert_string_equal(get_s(j, "engine.state"), "loading");
    json_decref(j);
}

/* --- tools and reasoning (protocol v1 chat fields) --- */

static void chat_fields_parse(void **state)
{
    (void)state;
    ic_msg m;
    ic_proto_error e;
    const char *infer =
        "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"hi\","
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"description\":\"d\",\"parameters\":{\"type\":\"object\"}}}],"
        "\"tool_choice\":\"required\",\"reasoning\":true,\"reasoning_budget\":12,"
        "\"messages\":[{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"22 C\"}]}";
    assert_int_equal(parse(infer, &m, &e), 0);
    assert_true(m.has_tools);
    assert_non_null(m.tools_json);
    json_t *tools = json_loads(m.tools_json, 0, NULL);
    assert_non_null(tools);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(json_array_get(tools, 0), "function"),
                                          "name")),
        "get_weather");
    json_decref(tools);
    assert_string_equal(m.tool_choice, "required");
    assert_int_equal(m.reasoning, 1);
    assert_int_equal(m.reasoning_budget, 12);
    assert_int_equal(m.n_tool_results, 1);
    assert_string_equal(m.tool_results[0].tool_call_id, "call_1");
    assert_string_equal(m.tool_results[0].content, "22 C");
    assert_false(m.no_prompt);
    ic_msg_free(&m);

    /* tool results alone: prompt may be absent */
    assert_int_equal(parse("{\"type\":\"INFER\",\"session_id\":\"s1\",\"messages\":[{\"role\":"
                           "\"tool\",\"tool_call_id\":\"c\",\"content\":\"\"}]}", &m, &e), 0);
    assert_true(m.no_prompt);
    assert_string_equal(m.prompt, "");
    assert_int_equal(m.reasoning, -1);
    assert_int_equal(m.reasoning_budget, -1);
    ic_msg_free(&m);

    /* an old client's INFER: nothing new set */
    assert_int_equal(parse("{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"x\"}", &m, &e), 0);
    assert_false(m.has_tools);
    assert_null(m.tools_json);
    assert_null(m.tool_choice);
    assert_int_equal(m.n_tool_results, 0);
    assert_int_equal(m.reasoning, -1);
    assert_int_equal(m.reasoning_budget, -1);
    ic_msg_free(&m);

    /* tools [] in an INFER: given, and none for this turn */
    assert_int_equal(parse("{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"x\","
                           "\"tools\":[],\"reasoning\":false}", &m, &e), 0);
    assert_true(m.has_tools);
    assert_null(m.tools_json);
    assert_int_equal(m.reasoning, 0);
    ic_msg_free(&m);

    assert_int_equal(parse("{\"type\":\"CREATE_SESSION\",\"tools\":[{\"type\":\"function\","
                           "\"function\":{\"name\":\"a.b-c_1\"}}]}", &m, &e), 0);
    assert_non_null(m.tools_json);
    ic_msg_free(&m);
}

static void chat_fields_refused(void **state)
{
    (void)state;
#define INF "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"x\","
#define FN(x) "\"tools\":[{\"type\":\"function\",\"function\":" x "}]}"
    refused(INF "\"tools\":{}}", IC_CODE_BAD_REQUEST, "field 'tools' must be an array");
    refused(INF "\"tools\":[1]}", IC_CODE_BAD_REQUEST, "'tools[0]' must be an object");
    refused(INF "\"tools\":[{\"type\":\"code\",\"function\":{\"name\":\"f\"}}]}",
            IC_CODE_BAD_REQUEST, "\"type\":\"function\"");
    refused(INF "\"tools\":[{\"type\":\"function\"}]}", IC_CODE_BAD_REQUEST,
            "'tools[0].function' must be an object");
    refused(INF FN("{}"), IC_CODE_BAD_REQUEST, "'tools[0].function.name'");
    refused(INF FN("{\"name\":\"\"}"), IC_CODE_BAD_REQUEST, "'tools[0].function.name'");
    refused(INF FN("{\"name\":\"a b\"}"), IC_CODE_BAD_REQUEST, "'tools[0].function.name'");
    refused(INF FN("{\"name\":7}"), IC_CODE_BAD_REQUEST, "'tools[0].function.name'");
    refused(INF FN("{\"name\":\"f\",\"parameters\":[]}"), IC_CODE_BAD_REQUEST,
            "'tools[0].function.parameters'");
    refused(INF FN("{\"name\":\"f\",\"description\":3}"), IC_CODE_BAD_REQUEST,
            "'tools[0].function.description'");
    refused(INF "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},"
                "{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}",
            IC_CODE_BAD_REQUEST, "defined twice");
    refused("{\"type\":\"CREATE_SESSION\",\"tools\":\"f\"}", IC_CODE_BAD_REQUEST,
            "field 'tools' must be an array");
    refused(INF "\"tool_choice\":\"any\"}", IC_CODE_BAD_REQUEST, "field 'tool_choice'");
    refused(INF "\"tool_choice\":{\"type\":\"function\"}}", IC_CODE_BAD_REQUEST,
            "field 'tool_choice'");
    refused(INF "\"messages\":[]}", IC_CODE_BAD_REQUEST, "field 'messages'");
    refused(INF "\"messages\":{}}", IC_CODE_BAD_REQUEST, "field 'messages'");
    refused(INF "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", IC_CODE_BAD_REQUEST,
            "'messages[0].role' must be \"tool\"");
    refused(INF "\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", IC_CODE_BAD_REQUEST,
            "'messages[0].tool_call_id'");
    refused(INF "\"messages\":[{\"role\":\"tool\",\"tool_call_id\":\"c\"}]}",
            IC_CODE_BAD_REQUEST, "'messages[0].content'");
    refused(INF "\"messages\":[{\"role\":\"tool\",\"tool_call_id\":\"c\",\"content\":\"a\\u0000\"}]}",
            IC_CODE_BAD_REQUEST, "'messages[0].content'");
    refused(INF "\"reasoning\":1}", IC_CODE_BAD_REQUEST, "field 'reasoning' must be a boolean");
    refused(INF "\"reasoning_budget\":-1}", IC_CODE_BAD_REQUEST, "field 'reasoning_budget'");
    refused(INF "\"reasoning_budget\":1.5}", IC_CODE_BAD_REQUEST, "field 'reasoning_budget'");
    refused(INF "\"reasoning\":false,\"reasoning_budget\":4}", IC_CODE_BAD_REQUEST,
            "needs reasoning on");
    /* without messages the prompt stays required */
    refused("{\"type\":\"INFER\",\"session_id\":\"s1\"}", IC_CODE_BAD_REQUEST, "'prompt'");
#undef FN
#undef INF
}

static void end_parsed_and_token_channel(void **state)
{
    (void)state;
    ic_gen_stats st = {.prompt_tokens = 3, .context_tokens = 9, .generated_tokens = 5};
    ic_chat_tool_call call = {.id = "call_r1_0", .name = "get_weather",
                              .arguments = "{\"city\":\"Paris\"}"};
    ic_chat_parsed p = {.content = "", .reasoning_content = "hmm", .tool_calls = &call,
                        .n_tool_calls = 1};
    json_t *j = load(ic_proto_end_parsed("s1", "r1", IC_END_EOS, &st, &p, NULL), "END");
    assert_string_equal(get_s(j, "reason"), "tool_calls");
    assert_string_equal(get_s(j, "content"), "");
    assert_string_equal(get_s(j, "reasoning_content"), "hmm");
    json_t *c = json_array_get(json_object_get(j, "tool_calls"), 0);
    assert_string_equal(json_string_value(json_object_get(c, "id")), "call_r1_0");
    assert_string_equal(json_string_value(json_object_get(c, "type")), "function");
    json_t *fn = json_object_get(c, "function");
    assert_string_equal(json_string_value(json_object_get(fn, "name")), "get_weather");
    assert_string_equal(json_string_value(json_object_get(fn, "arguments")), "{\"city\":\"Paris\"}");
    assert_int_equal(get_i(j, "stats.context_tokens"), 9);
    json_decref(j);
    /* cut off by max_tokens: the reason stays */
    j = load(ic_proto_end_parsed("s1", "r1", IC_END_LENGTH, &st, &p, NULL), "END");
    assert_string_equal(get_s(j, "reason"), "length");
    json_decref(j);
    /* no calls: content and reasoning, no tool_calls member */
    p.n_tool_calls = 0;
    p.content = "Hello";
    j = load(ic_proto_end_parsed("s1", "r1", IC_END_EOS, &st, &p, NULL), "END");
    assert_string_equal(get_s(j, "reason"), "eos");
    assert_string_equal(get_s(j, "content"), "Hello");
    assert_null(json_object_get(j, "tool_calls"));
    json_decref(j);
    /* without a parse: exactly the old END */
    j = load(ic_proto_end_parsed("s1", "r1", IC_END_EOS, &st, NULL, NULL), "END");
    assert_null(json_object_get(j, "content"));
    assert_null(json_object_get(j, "reasoning_content"));
    json_decref(j);

    j = load(ic_proto_token_channel("s1", "r1", 0, "<think>", 7, "reasoning", NULL), "TOKEN");
    assert_string_equal(get_s(j, "channel"), "reasoning");
    json_decref(j);
    j = load(ic_proto_token("s1", "r1", 1, "Hi", 2, NULL), "TOKEN");
    assert_null(json_object_get(j, "channel"));
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_every_type),
        cmocka_unit_test(parses_infer_with_all_params),
        cmocka_unit_test(subscribe_interval_rules),
        cmocka_unit_test(not_json_is_bad_json),
        cmocka_unit_test(invalid_utf8_is_bad_json),
        cmocka_unit_test(non_object_is_bad_request),
        cmocka_unit_test(type_must_be_a_known_string),
        cmocka_unit_test(long_unknown_type_is_cut_on_a_character),
        cmocka_unit_test(field_types_and_ranges_are_checked),
        cmocka_unit_test(limits_of_stop_strings_are_accepted),
        cmocka_unit_test(nul_escapes_are_refused),
        cmocka_unit_test(nested_garbage_is_survived),
        cmocka_unit_test(ids_are_read_first_and_echoed),
        cmocka_unit_test(bad_ids_are_refused_without_echo),
        cmocka_unit_test(gen_params_defaults),
        cmocka_unit_test(gen_params_merge_and_priority_cap),
        cmocka_unit_test(logprobs_param_and_token_fields),
        cmocka_unit_test(session_ids_are_strict),
        cmocka_unit_test(allow_special_defaults_off_and_merges),
        cmocka_unit_test(req_params_copy_is_deep),
        cmocka_unit_test(code_names_and_err_mapping),
        cmocka_unit_test(hello_round_trips),
        cmocka_unit_test(hello_without_model_and_auth_success_with_it),
        cmocka_unit_test(http_bodies_are_escaped_json),
        cmocka_unit_test(small_messages_round_trip_with_ids),
        cmocka_unit_test(models_in_messages),
        cmocka_unit_test(token_text_keeps_nul_bytes),
        cmocka_unit_test(end_has_reason_and_finite_stats),
        cmocka_unit_test(error_builder),
        cmocka_unit_test(metrics_round_trips),
        cmocka_unit_test(chat_fields_parse),
        cmocka_unit_test(chat_fields_refused),
        cmocka_unit_test(end_parsed_and_token_channel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
