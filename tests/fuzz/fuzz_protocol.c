/* fuzz_protocol.c - fuzz target for the protocol module.
 *
 * Each input is one client frame. It must parse or be refused cleanly; a
 * refusal must make a valid ERROR that echoes the id; a parsed message,
 * written back out as a client frame, must parse to the same message; its
 * strings must survive the server builders; param merging must stay in
 * range. A broken property aborts, which the fuzzer reports as a crash.
 *
 * Built with -fsanitize=fuzzer -DIC_LIBFUZZER it is a libFuzzer target
 * (seeds: tests/fuzz/corpus/, dictionary: tests/fuzz/protocol.dict).
 * Built without, main() replays the files and directories named on the
 * command line, so CTest can run it over the seed corpus.
 */
#include "err.h"
#include "protocol.h"

#include <jansson.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                               \
        }                                                                          \
    } while (0)

static bool id_equal(const ic_msg_id *a, const ic_msg_id *b)
{
    if (a->present != b->present)
        return false;
    if (!a->present)
        return true;
    return a->is_int == b->is_int && (a->is_int ? a->i == b->i : strcmp(a->s, b->s) == 0);
}

/* A server message built with id must carry it back: fed to the parser it
 * is an unknown type, and the refusal echoes the same id. */
static void check_echo(char *text, const ic_msg_id *id)
{
    CHECK(text != NULL);
    ic_msg m;
    ic_proto_error e;
    CHECK(ic_proto_parse(text, strlen(text), &m, &e) == IC_ERR_PARSE);
    CHECK(e.code == IC_CODE_UNKNOWN_TYPE);
    CHECK(id_equal(&e.id, id));
    free(text);
}

/* The string member key of the JSON text equals want (len bytes). */
static void check_member(char *text, const char *key, const char *want, size_t len)
{
    CHECK(text != NULL);
    json_t *j = json_loads(text, JSON_ALLOW_NUL, NULL);
    CHECK(j != NULL);
    const json_t *v = json_object_get(j, key);
    CHECK(json_string_length(v) == len && memcmp(json_string_value(v), want, len) == 0);
    json_decref(j);
    free(text);
}

static const char *k_types[] = {"AUTH", "CREATE_SESSION", "CLOSE_SESSION", "INFER",
                                "ABORT", "METRICS", "SUBSCRIBE_METRICS"};
static const char *k_prios[] = {"low", "normal", "high"};

/* Writes the message back out as a client frame. */
static char *client_frame(const ic_msg *m)
{
    const ic_req_params *p = &m->params;
    json_t *o = json_object(), *params = json_object(), *stop = json_array();
    json_object_set_new(o, "type", json_string(k_types[m->type]));
    if (m->id.present)
        json_object_set_new(o, "id", m->id.is_int ? json_integer(m->id.i) : json_string(m->id.s));
    const char *strs[][2] = {{"token", m->token}, {"session_id", m->session_id},
                             {"system", m->system}, {"prompt", m->prompt}};
    for (size_t i = 0; i < 4; i++)
        if (strs[i][1])
            json_object_set_new(o, strs[i][0], json_string(strs[i][1]));
    if (m->type == IC_MSG_INFER)
        json_object_set_new(o, "raw", json_boolean(m->raw));
    if (m->type == IC_MSG_SUBSCRIBE_METRICS)
        json_object_set_new(o, "interval_ms", json_integer(m->interval_ms));
#define PUT(bit, key, v) \
    if (p->set & (1u << (bit))) json_object_set_new(params, key, v)
    PUT(IC_PARAM_MAX_TOKENS, "max_tokens", json_integer(p->max_tokens));
    PUT(IC_PARAM_TEMPERATURE, "temperature", json_real(p->temperature));
    PUT(IC_PARAM_TOP_K, "top_k", json_integer(p->top_k));
    PUT(IC_PARAM_TOP_P, "top_p", json_real(p->top_p));
    PUT(IC_PARAM_MIN_P, "min_p", json_real(p->min_p));
    PUT(IC_PARAM_REPEAT_PENALTY, "repeat_penalty", json_real(p->repeat_penalty));
    PUT(IC_PARAM_REPEAT_LAST_N, "repeat_last_n", json_integer(p->repeat_last_n));
    PUT(IC_PARAM_SEED, "seed", json_integer(p->seed));
    PUT(IC_PARAM_IGNORE_EOS, "ignore_eos", json_boolean(p->ignore_eos));
    PUT(IC_PARAM_PRIORITY, "priority", json_string(k_prios[p->priority]));
    PUT(IC_PARAM_ALLOW_SPECIAL, "allow_special", json_boolean(p->allow_special));
#undef PUT
    for (int i = 0; i < p->n_stop; i++)
        json_array_append_new(stop, json_string(p->stop[i]));
    if (p->set & (1u << IC_PARAM_STOP))
        json_object_set(params, "stop", stop);
    if (p->set)
        json_object_set(o, "params", params);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(stop);
    json_decref(params);
    json_decref(o);
    return text;
}

static bool str_equal(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool params_equal(const ic_req_params *a, const ic_req_params *b)
{
    if (a->set != b->set || a->n_stop != b->n_stop)
        return false;
    for (int i = 0; i < a->n_stop; i++)
        if (strcmp(a->stop[i], b->stop[i]) != 0)
            return false;
    ic_gen_params ga, gb;
    ic_proto_gen_params(NULL, a, IC_PRIORITY_HIGH, &ga);
    ic_proto_gen_params(NULL, b, IC_PRIORITY_HIGH, &gb);
    return memcmp(&ga.sample, &gb.sample, sizeof ga.sample) == 0 &&
           ga.max_tokens == gb.max_tokens && ga.ignore_eos == gb.ignore_eos &&
           ga.allow_special == gb.allow_special && ga.priority == gb.priority;
}

/* parse(write(m)) == m. */
static void check_reparse(const ic_msg *m)
{
    char *text = client_frame(m);
    CHECK(text != NULL);
    ic_msg r;
    ic_proto_error e;
    CHECK(ic_proto_parse(text, strlen(text), &r, &e) == 0);
    CHECK(r.type == m->type && id_equal(&r.id, &m->id));
    CHECK(str_equal(r.token, m->token) && str_equal(r.session_id, m->session_id));
    CHECK(str_equal(r.system, m->system) && str_equal(r.prompt, m->prompt));
    CHECK(r.raw == m->raw && r.interval_ms == m->interval_ms);
    CHECK(params_equal(&r.params, &m->params));
    ic_msg_free(&r);
    free(text);
}

static void check_params(const ic_msg *m)
{
    ic_req_params copy;
    CHECK(ic_req_params_copy(&copy, &m->params) == 0);
    for (int prio = IC_PRIORITY_LOW; prio <= IC_PRIORITY_HIGH; prio++) {
        ic_gen_params g;
        ic_proto_gen_params(&copy, &m->params, (enum ic_priority)prio, &g);
        CHECK(g.priority <= (enum ic_priority)prio);
        CHECK(g.max_tokens >= 1 && g.max_tokens <= 1000000);
        CHECK(g.sample.temperature >= 0 && g.sample.temperature <= 100);
        CHECK(g.sample.top_p >= 0 && g.sample.top_p <= 1);
        CHECK(g.sample.repeat_penalty > 0);
        CHECK(g.n_stop >= 0 && g.n_stop <= IC_STOP_MAX);
        for (int i = 0; i < g.n_stop; i++)
            CHECK(strlen(g.stop[i]) <= IC_STOP_MAX_BYTES);
    }
    ic_req_params_free(&copy);
}

/* A session id is accepted only in its one canonical spelling "s<N>". */
static void check_session_id(const char *sid)
{
    uint64_t n = 0;
    if (ic_proto_session_num(sid, &n) != 0)
        return;
    char canon[32];
    snprintf(canon, sizeof canon, "s%llu", (unsigned long long)n);
    CHECK(n >= 1 && strcmp(canon, sid) == 0);
}

static void check_parsed(const ic_msg *m)
{
    const ic_msg_id *id = &m->id;
    if (m->session_id)
        check_session_id(m->session_id);
    check_reparse(m);
    check_params(m);
    if (m->prompt) {
        size_t n = strlen(m->prompt);
        check_member(ic_proto_token("s", "r", 0, m->prompt, n, id), "text", m->prompt, n);
    }
    if (m->session_id)
        check_echo(ic_proto_session_closed(m->session_id, "client", id), id);
    if (m->token)
        check_echo(ic_proto_auth_success(m->token, 4, id), id);
    if (m->system)
        check_echo(ic_proto_auth_failed(m->system, id), id);
    check_echo(ic_proto_session_created(m->session_id, 2048, id), id);
}

/* A refusal: a known code, and an ERROR that says the same and echoes the id. */
static void check_refused(const ic_msg *m, const ic_proto_error *e)
{
    CHECK(e->code == IC_CODE_BAD_JSON || e->code == IC_CODE_BAD_REQUEST ||
          e->code == IC_CODE_UNKNOWN_TYPE);
    CHECK(memchr(e->message, '\0', sizeof e->message) != NULL && e->message[0]);
    CHECK(!m->token && !m->session_id && !m->system && !m->prompt && m->params.n_stop == 0);
    char *text = ic_proto_error_msg(e->code, e->message, "s", &e->id);
    check_member(ic_proto_error_msg(e->code, e->message, NULL, &e->id), "message", e->message,
                 strlen(e->message));
    check_echo(text, &e->id);
}

/* END and METRICS with raw bytes as their numbers (NaN and inf included)
 * and enums (out of range included): still JSON, every number finite. */
static void check_numbers_from_bytes(const uint8_t *data, size_t size)
{
    ic_gen_stats st;
    ic_metrics_session ms = {.session_id = "s"};
    ic_gpu_reading gpu = {.name = "gpu"};
    if (size < 1 + sizeof st + sizeof ms.state + 2 * sizeof gpu.power_w)
        return;
    int reason = (int8_t)data[0];
    memcpy(&st, data + 1, sizeof st);
    memcpy(&ms.state, data + 1 + sizeof st, sizeof ms.state);
    memcpy(&gpu.power_w, data + 1 + sizeof st + sizeof ms.state, sizeof gpu.power_w);
    memcpy(&gpu.temperature_c, data + size - sizeof gpu.temperature_c, sizeof gpu.temperature_c);
    ic_metrics_msg mm = {.state = "ready", .gpus = &gpu, .n_gpus = 1, .sessions = &ms,
                         .n_sessions = 1, .cpu_pct = st.ttft_ms};
    char *texts[2] = {ic_proto_end("s", "r", (enum ic_end_reason)reason, &st, NULL),
                      ic_proto_metrics(&mm, NULL)};
    for (int i = 0; i < 2; i++) {
        CHECK(texts[i] != NULL);
        CHECK(strstr(texts[i], "nan") == NULL && strstr(texts[i], "inf") == NULL);
        json_t *j = json_loads(texts[i], 0, NULL);
        CHECK(j != NULL);
        json_decref(j);
        free(texts[i]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ic_msg m;
    ic_proto_error e;
    int rc = ic_proto_parse((const char *)data, size, &m, &e);
    CHECK(rc == 0 || rc == IC_ERR_PARSE);
    if (rc == 0)
        check_parsed(&m);
    else
        check_refused(&m, &e);
    ic_msg_free(&m);

    /* The raw bytes as token text: either refused (not UTF-8) or kept exactly. */
    char *tok = ic_proto_token("s", "r", (int)size, (const char *)data, size, NULL);
    if (tok)
        check_member(tok, "text", (const char *)data, size);
    check_numbers_from_bytes(data, size);

    /* The raw bytes as a session id: only the canonical spelling passes. */
    char *sid = malloc(size + 1);
    if (sid) {
        memcpy(sid, data, size);
        sid[size] = '\0';
        check_session_id(sid);
        free(sid);
    }
    return 0;
}

#ifndef IC_LIBFUZZER
#include <dirent.h>
#include <sys/stat.h>

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open\n", path);
        return 1;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    char chunk[4096];
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + n > cap) {
            cap = (len + n) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return 1;
            }
            buf = nb;
        }
        memcpy(buf + len, chunk, n);
        len += n;
    }
    fclose(f);
    LLVMFuzzerTestOneInput((const uint8_t *)(buf ? buf : ""), len);
    free(buf);
    return 0;
}

/* Replays each file, and each file in each directory, named on the
 * command line. */
int main(int argc, char **argv)
{
    int bad = 0, n = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        DIR *d = stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode) ? opendir(argv[i]) : NULL;
        if (!d) {
            bad += replay_file(argv[i]);
            n++;
            continue;
        }
        for (struct dirent *de; (de = readdir(d)) != NULL;) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], de->d_name);
            if (de->d_name[0] == '.' || stat(path, &st) != 0 || !S_ISREG(st.st_mode))
                continue;
            bad += replay_file(path);
            n++;
        }
        closedir(d);
    }
    printf("replayed %d inputs, %d unreadable\n", n, bad);
    return bad || n == 0 ? 1 : 0;
}
#endif
