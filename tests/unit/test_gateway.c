/* test_gateway.c - the gateway driven through its server handlers, with a
 * fake server and a fake scheduler behind their own headers (server.h,
 * sched.h): this file defines the ic_server_* and ic_sched_* functions the
 * gateway calls, so the linker never takes server.o or sched.o from their
 * libraries. The fake server records what the gateway sends, closes and
 * times; the fake scheduler opens sessions, records INFERs and hands back
 * the events a test queues. The real protocol, auth, metrics and GPU
 * monitor (over the fake NVML) run underneath.
 *
 * Covers: dispatch and event routing, the HTTP route table, /metrics
 * behind tokens, HELLO before AUTH, the pre-auth caps and frame limit, no
 * messages handled on a closing connection, idle sessions, the per-client
 * default, token revocation on reload, the hot-GPU state, a lost END,
 * the throttle's delayed AUTH answers (and a reload while one waits),
 * strict session ids.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "auth.h"
#include "err.h"
#include "gateway.h"
#include "sched.h"
#include "server.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --- the fake server ------------------------------------------------- */

enum { MAX_SENT = 512, MAX_CONN = 64 };

struct ic_server {
    int unused;
};

typedef struct sent_msg {
    uint64_t conn;
    char *text;
} sent_msg;

static struct fake_server {
    struct ic_server srv;
    sent_msg sent[MAX_SENT];
    int n_sent;
    int close_code[MAX_CONN];          /* by conn id; 0 = not closed */
    char close_reason[MAX_CONN][64];
    int timer_ms[MAX_CONN];            /* last set; conn 0 = the server's */
    int n_connections;
    bool quit;
    uint64_t overloaded;               /* sends to this conn fail: too far behind */
} S;

int ic_server_send(ic_server *s, uint64_t conn, char *text, size_t len)
{
    (void)s;
    (void)len;
    if (conn == S.overloaded) {
        free(text);
        return IC_ERR_OVERLOADED;
    }
    assert_true(S.n_sent < MAX_SENT);
    S.sent[S.n_sent++] = (sent_msg){conn, text};
    return 0;
}

void ic_server_close(ic_server *s, uint64_t conn, int code, const char *reason)
{
    (void)s;
    assert_true(conn < MAX_CONN);
    if (S.close_code[conn] == 0) {
        S.close_code[conn] = code;
        snprintf(S.close_reason[conn], sizeof S.close_reason[conn], "%s", reason);
    }
}

void ic_server_set_timer(ic_server *s, uint64_t conn, int ms)
{
    (void)s;
    assert_true(conn < MAX_CONN);
    S.timer_ms[conn] = ms;
}

int ic_server_n_connections(const ic_server *s)
{
    (void)s;
    return S.n_connections;
}

void ic_server_quit(ic_server *s)
{
    (void)s;
    S.quit = true;
}

void ic_server_wake(ic_server *s) { (void)s; }

bool ic_server_tls(const ic_server *s)
{
    (void)s;
    return false;
}

int ic_server_reload_tls(ic_server *s, char *info, size_t infolen, char *err, size_t errlen)
{
    (void)s;
    (void)info;
    (void)infolen;
    snprintf(err, errlen, "no TLS");
    return IC_ERR_INVAL;
}

void ic_server_set_max_message(ic_server *s, uint64_t conn, size_t bytes)
{
    (void)s;
    (void)conn;
    (void)bytes;
}

/* HTTP answers that come later (the OpenAI API's): not exercised here. */
int ic_server_http_respond(ic_server *s, uint64_t id, ic_http_response *resp)
{
    (void)s;
    (void)id;
    free(resp->body);
    return 0;
}

int ic_server_http_chunk(ic_server *s, uint64_t id, char *data, size_t len)
{
    (void)s;
    (void)id;
    (void)len;
    free(data);
    return 0;
}

void ic_server_http_end(ic_server *s, uint64_t id)
{
    (void)s;
    (void)id;
}

/* --- the fake scheduler ---------------------------------------------- */

enum { MAX_FAKE_SESSIONS = 8, MAX_EVENTS = 64 };

struct ic_sched {
    ic_sched_opts opts;
    bool open[MAX_FAKE_SESSIONS + 1];  /* by session id 1..8 */
    enum ic_session_state state[MAX_FAKE_SESSIONS + 1];
    uint64_t next_id;
    uint64_t last_request[MAX_FAKE_SESSIONS + 1];
    int n_infer, n_abort, n_close;
    enum ic_close_reason last_close_reason;
    uint64_t last_closed;
    ic_event *events[MAX_EVENTS];
    int ev_head, ev_tail;
    ic_sched_stats stats;
};

static struct ic_sched F;

int ic_sched_open_session(ic_sched *s, const char *system_prompt, uint64_t *session_id)
{
    (void)system_prompt;
    if (s->next_id >= (uint64_t)s->opts.max_sessions)
        return IC_ERR_CAPACITY;
    *session_id = ++s->next_id;
    s->open[*session_id] = true;
    s->state[*session_id] = IC_SESSION_IDLE;
    return 0;
}

int ic_sched_open_session_kv(ic_sched *s, const char *system_prompt, const ic_turn *turns,
                             int n_turns, const uint8_t *kv, size_t kv_len,
                             const ic_token *hist, int n_hist, uint64_t *session_id)
{
    (void)turns;
    (void)n_turns;
    (void)kv;
    (void)kv_len;
    (void)hist;
    (void)n_hist;
    return ic_sched_open_session(s, system_prompt, session_id);
}

int ic_sched_infer(ic_sched *s, uint64_t session_id, uint64_t request_id, const char *prompt,
                   bool raw, const ic_gen_params *params)
{
    (void)prompt;
    (void)raw;
    (void)params;
    assert_true(session_id <= MAX_FAKE_SESSIONS && s->open[session_id]);
    s->last_request[session_id] = request_id;
    s->state[session_id] = IC_SESSION_GENERATING;
    s->n_infer++;
    return 0;
}

int ic_sched_abort(ic_sched *s, uint64_t session_id)
{
    (void)session_id;
    s->n_abort++;
    return 0;
}

/* One model here: the gateway never makes room (api/models.c). */
int ic_sched_sleep(ic_sched *s)
{
    (void)s;
    return 0;
}

int ic_sched_unload(ic_sched *s)
{
    (void)s;
    return 0;
}

int ic_sched_load(ic_sched *s)
{
    (void)s;
    return 0;
}

int ic_sched_close_session(ic_sched *s, uint64_t session_id, enum ic_close_reason reason)
{
    s->n_close++;
    s->last_closed = session_id;
    s->last_close_reason = reason;
    return 0;
}

ic_event *ic_sched_poll_event(ic_sched *s, int timeout_ms)
{
    (void)timeout_ms;
    return s->ev_head == s->ev_tail ? NULL : s->events[s->ev_head++ % MAX_EVENTS];
}

void ic_event_free(ic_event *ev)
{
    if (ev)
        free(ev->text);
    free(ev);
}

void ic_sched_get_stats(const ic_sched *s, ic_sched_stats *out)
{
    *out = s->stats;
    out->max_sessions = s->opts.max_sessions;
}

int ic_sched_session_info(const ic_sched *s, uint64_t session_id, enum ic_session_state *state,
                          int *n_ctx_used_tokens)
{
    if (session_id > MAX_FAKE_SESSIONS || !s->open[session_id])
        return IC_ERR_NOT_FOUND;
    *state = s->state[session_id];
    *n_ctx_used_tokens = 0;
    return 0;
}

void ic_sched_get_opts(const ic_sched *s, ic_sched_opts *out) { *out = s->opts; }

void ic_sched_model_info(const ic_sched *s, ic_engine_info *out)
{
    (void)s;
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "fake-model");
    out->n_params = 1234;
    out->n_ctx_train_tokens = 512;
}

void ic_sched_stop(ic_sched *s) { (void)s; }

/* The fake has no thread: a stop is over at once. */
void ic_sched_request_stop(ic_sched *s) { (void)s; }

bool ic_sched_stopped(const ic_sched *s)
{
    (void)s;
    return true;
}

static void push_event(ic_event ev)
{
    ic_event *e = malloc(sizeof *e);
    assert_non_null(e);
    *e = ev;
    F.events[F.ev_tail++ % MAX_EVENTS] = e;
}

/* --- the world --------------------------------------------------------- */

static ic_gateway *G;
static ic_server_handlers H;
static char tokens_path[256];
static char nvml_script[256];
static char token_a[128], token_b[128];

static void reset_fakes(void)
{
    for (int i = 0; i < S.n_sent; i++)
        free(S.sent[i].text);
    memset(&S, 0, sizeof S);
    for (int i = F.ev_head; i < F.ev_tail; i++)
        ic_event_free(F.events[i % MAX_EVENTS]);
    memset(&F, 0, sizeof F);
    F.opts.max_sessions = 4;
    F.opts.n_ctx_per_session = 256;
}

/* A gateway with a scheduler attached; with_tokens: tokens_path holds
 * clients "alice" (token_a) and "bob" (token_b). */
static void start(ic_gateway_opts *o, bool with_tokens)
{
    reset_fakes();
    char err[256] = "";
    if (with_tokens) {
        snprintf(tokens_path, sizeof tokens_path, "/tmp/ic-test-gateway-%d.tokens", (int)getpid());
        unlink(tokens_path);
        assert_int_equal(ic_auth_add_token(tokens_path, "alice", 0, IC_PRIORITY_NORMAL, token_a,
                                           sizeof token_a, err, sizeof err), 0);
        assert_int_equal(ic_auth_add_token(tokens_path, "bob", 0, IC_PRIORITY_NORMAL, token_b,
                                           sizeof token_b, err, sizeof err), 0);
        o->tokens_path = tokens_path;
    }
    assert_int_equal(ic_gateway_create(o, &G, err, sizeof err), 0);
    ic_gateway_server_handlers(G, &H);
    ic_gateway_set_server(G, &S.srv);
    assert_false(H.accept(H.ud)); /* loading */
    ic_gateway_attach(G, &F, NULL, "test");
    H.on_wake(H.ud);
    assert_true(H.accept(H.ud));
    assert_true(S.timer_ms[0] > 0); /* the watchdog and sweep tick */
}

static void stop(void)
{
    ic_gateway_destroy(G);
    G = NULL;
    reset_fakes();
    if (tokens_path[0])
        unlink(tokens_path);
    tokens_path[0] = '\0';
}

static int teardown(void **state)
{
    (void)state;
    if (G)
        stop();
    return 0;
}

static void open_conn(uint64_t id, const char *addr)
{
    S.n_connections++;
    H.on_open(H.ud, id, addr, NULL);
}

static void send_text(uint64_t conn, const char *text)
{
    H.on_message(H.ud, conn, text, strlen(text), false);
}

/* The last message sent to conn, parsed (the caller decrefs); NULL if none. */
static json_t *last_to(uint64_t conn)
{
    for (int i = S.n_sent - 1; i >= 0; i--) {
        if (S.sent[i].conn == conn) {
            json_t *j = json_loads(S.sent[i].text, 0, NULL);
            assert_non_null(j);
            return j;
        }
    }
    return NULL;
}

static int count_to(uint64_t conn)
{
    int n = 0;
    for (int i = 0; i < S.n_sent; i++)
        n += S.sent[i].conn == conn;
    return n;
}

static const char *type_of(json_t *j) { return json_string_value(json_object_get(j, "type")); }

static const char *str_at(json_t *j, const char *key)
{
    return json_string_value(json_object_get(j, key));
}

/* Asserts the last message to conn has this type (and code, for ERROR). */
static void expect_last(uint64_t conn, const char *type, const char *code)
{
    json_t *j = last_to(conn);
    assert_non_null(j);
    assert_string_equal(type_of(j), type);
    if (code)
        assert_string_equal(str_at(j, "code"), code);
    json_decref(j);
}

static void auth(uint64_t conn, const char *token)
{
    char msg[256];
    snprintf(msg, sizeof msg, "{\"type\":\"AUTH\",\"token\":\"%s\"}", token);
    send_text(conn, msg);
}

/* Creates a session on conn; returns its scheduler id. */
static uint64_t create_session(uint64_t conn)
{
    send_text(conn, "{\"type\":\"CREATE_SESSION\"}");
    expect_last(conn, "SESSION_CREATED", NULL);
    return F.next_id;
}

static char last_reason[64];  /* the last http() answer's own reason phrase */

static void http(const char *path, const char *authorization, int *status, char **body)
{
    ic_http_request req = {.method = "GET", .path = path, .authorization = authorization,
                           .peer_addr = "127.0.0.1", .body = ""};
    ic_http_response resp = {0};
    H.on_http(H.ud, &req, &resp);
    *status = resp.status;
    assert_non_null(resp.body);
    *body = resp.body;
    snprintf(last_reason, sizeof last_reason, "%s", resp.reason);
}

/* --- tests ------------------------------------------------------------- */

static void routes_tokens_to_their_session_and_end_clears_running(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    start(&o, false);
    open_conn(1, "127.0.0.1");
    open_conn(2, "127.0.0.1");
    expect_last(1, "HELLO", NULL);
    json_t *h = last_to(1);
    assert_string_equal(json_string_value(json_object_get(json_object_get(h, "model"), "name")),
                        "fake-model");
    /* Open server: each connection may hold every session. */
    assert_int_equal(json_integer_value(json_object_get(json_object_get(h, "limits"),
                                                        "max_sessions_per_client")), 4);
    json_decref(h);
    assert_int_equal(S.timer_ms[0], 30000); /* idle: the watchdog's quarter */
    uint64_t sid = create_session(1);
    assert_int_equal(S.timer_ms[0], 30000); /* no idle time-out: nothing to sweep */
    send_text(1, "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"hi\",\"id\":7}");
    assert_int_equal(F.n_infer, 1);
    assert_int_equal(S.timer_ms[0], 1000); /* a generation runs: sweep each second */
    send_text(1, "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"hi\"}");
    expect_last(1, "ERROR", "busy");
    /* Another connection cannot name it. */
    send_text(2, "{\"type\":\"ABORT\",\"session_id\":\"s1\"}");
    expect_last(2, "ERROR", "session_not_found");
    push_event((ic_event){.type = IC_EVENT_TOKEN, .session_id = sid,
                          .request_id = F.last_request[sid], .text = strdup("yo"),
                          .text_len = 2});
    push_event((ic_event){.type = IC_EVENT_END, .session_id = sid,
                          .request_id = F.last_request[sid], .reason = IC_END_LENGTH});
    H.on_wake(H.ud);
    json_t *end = last_to(1);
    assert_string_equal(type_of(end), "END");
    assert_int_equal(json_integer_value(json_object_get(end, "id")), 7);
    json_decref(end);
    H.on_timer(H.ud, 0);
    assert_int_equal(S.timer_ms[0], 30000); /* idle again: the server sleeps */
    json_t *tok = json_loads(S.sent[S.n_sent - 2].text, 0, NULL);
    assert_string_equal(type_of(tok), "TOKEN");
    assert_string_equal(str_at(tok, "text"), "yo");
    json_decref(tok);
    send_text(1, "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"again\"}");
    assert_int_equal(F.n_infer, 2);
    /* The connection goes: its session closes as a disconnect. */
    H.on_close(H.ud, 1);
    assert_int_equal(F.last_close_reason, IC_CLOSE_DISCONNECT);
    assert_int_equal(F.last_closed, sid);
    stop();
}

static void http_routes_answer_from_the_table(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    start(&o, false);
    int status;
    char *body;
    http("/health", NULL, &status, &body);
    assert_int_equal(status, 200);
    assert_string_equal(body, "{\"status\":\"ok\",\"state\":\"ready\"}");
    free(body);
    http("/nope", NULL, &status, &body);
    assert_int_equal(status, 404);
    assert_string_equal(body, "{\"error\":\"not found\"}");
    free(body);
    http("/metrics", NULL, &status, &body); /* open server: open */
    assert_int_equal(status, 200);
    assert_non_null(strstr(body, "inferencecenter_state{state=\"ready\"} 1"));
    free(body);
    stop();
}

/* Defect 4: behind --tokens, /metrics needs a bearer token; /health not. */
static void metrics_needs_a_token_when_tokens_are_required(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    start(&o, true);
    int status;
    char *body;
    http("/metrics", NULL, &status, &body);
    assert_int_equal(status, 401);
    assert_null(strstr(body, "inferencecenter"));
    free(body);
    http("/metrics", "Bearer not-a-token", &status, &body);
    assert_int_equal(status, 401);
    free(body);
    char hdr[160];
    snprintf(hdr, sizeof hdr, "Bearer %s", token_b);
    http("/metrics", hdr, &status, &body);
    assert_int_equal(status, 200);
    assert_non_null(strstr(body, "inferencecenter_state"));
    free(body);
    http("/health", NULL, &status, &body);
    assert_int_equal(status, 200);
    free(body);
    stop();
    /* --metrics-token alone, and beside --tokens. */
    o = ic_gateway_opts_default();
    o.metrics_token = "m-secret";
    start(&o, true);
    http("/metrics", "Bearer m-secret", &status, &body);
    assert_int_equal(status, 200);
    free(body);
    http("/metrics", hdr, &status, &body);
    assert_int_equal(status, 401); /* token_b was made for the previous file */
    free(body);
    snprintf(hdr, sizeof hdr, "Bearer %s", token_a);
    http("/metrics", hdr, &status, &body);
    assert_int_equal(status, 200);
    free(body);
    stop();
}

/* HELLO names no model before AUTH; AUTH_SUCCESS does. The per-client
 * default is half the server's total with tokens. */
static void hello_names_no_model_before_auth(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    start(&o, true);
    open_conn(1, "127.0.0.1");
    json_t *h = last_to(1);
    assert_string_equal(type_of(h), "HELLO");
    assert_null(json_object_get(h, "model"));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(h, "limits"),
                                                        "max_sessions_per_client")), 2);
    json_decref(h);
    auth(1, token_a);
    json_t *a = last_to(1);
    assert_string_equal(type_of(a), "AUTH_SUCCESS");
    assert_string_equal(json_string_value(json_object_get(json_object_get(a, "model"), "name")),
                        "fake-model");
    assert_int_equal(json_integer_value(json_object_get(a, "max_sessions")), 2);
    json_decref(a);
    create_session(1);
    create_session(1);
    send_text(1, "{\"type\":\"CREATE_SESSION\"}");
    expect_last(1, "ERROR", "session_limit");
    stop();
}

static void preauth_connections_are_capped_per_address_and_in_all(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    o.max_preauth_per_ip = 2;
    o.max_preauth = 3;
    start(&o, true);
    open_conn(1, "127.0.0.1");
    open_conn(2, "127.0.0.1");
    open_conn(3, "127.0.0.1");
    assert_int_equal(S.close_code[1], 0);
    assert_int_equal(S.close_code[2], 0);
    assert_int_equal(S.close_code[3], 1013);
    assert_string_equal(S.close_reason[3],
                        "too many unauthenticated connections from this address");
    assert_int_equal(count_to(3), 0); /* no HELLO */
    H.on_close(H.ud, 3);
    open_conn(4, "127.0.0.2");
    assert_int_equal(S.close_code[4], 0);
    open_conn(5, "127.0.0.3");
    assert_int_equal(S.close_code[5], 1013); /* 3 unauthenticated in all */
    assert_string_equal(S.close_reason[5], "too many unauthenticated connections");
    H.on_close(H.ud, 5);
    /* An authenticated connection no longer counts. */
    auth(1, token_a);
    expect_last(1, "AUTH_SUCCESS", NULL);
    open_conn(6, "127.0.0.1");
    assert_int_equal(S.close_code[6], 0);
    /* A closed unauthenticated one frees its place. */
    H.on_close(H.ud, 6);
    H.on_close(H.ud, 2);
    open_conn(7, "127.0.0.1");
    open_conn(8, "127.0.0.1");
    assert_int_equal(S.close_code[7], 0);
    assert_int_equal(S.close_code[8], 0);
    stop();
    /* max_connections caps every connection, open server included. */
    o = ic_gateway_opts_default();
    o.max_connections = 2;
    start(&o, false);
    open_conn(1, "127.0.0.1");
    open_conn(2, "127.0.0.1");
    open_conn(3, "127.0.0.1");
    assert_int_equal(S.close_code[3], 1013);
    assert_string_equal(S.close_reason[3], "too many connections");
    stop();
}

static void preauth_messages_are_small(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    start(&o, true);
    static char big[5000];
    int n = snprintf(big, sizeof big, "{\"type\":\"AUTH\",\"token\":\"");
    memset(big + n, 'x', sizeof big - n - 3);
    memcpy(big + sizeof big - 3, "\"}", 3);
    open_conn(1, "127.0.0.1");
    send_text(1, big);
    expect_last(1, "ERROR", "message_too_large");
    assert_int_equal(S.close_code[1], 1009);
    /* After AUTH the server's own limit applies: the same size parses. */
    open_conn(2, "127.0.0.1");
    auth(2, token_a);
    expect_last(2, "AUTH_SUCCESS", NULL);
    snprintf(big, sizeof big, "{\"type\":\"CREATE_SESSION\",\"system\":\"");
    n = (int)strlen(big);
    memset(big + n, 'y', sizeof big - n - 3);
    memcpy(big + sizeof big - 3, "\"}", 3);
    send_text(2, big);
    expect_last(2, "SESSION_CREATED", NULL);
    assert_int_equal(S.close_code[2], 0);
    stop();
}

/* Nothing is handled on a connection the gateway is closing. */
static void closing_connections_handle_no_messages(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    start(&o, true);
    open_conn(1, "127.0.0.1"); /* auth failure */
    auth(1, "wrong");
    expect_last(1, "AUTH_FAILED", NULL);
    assert_int_equal(S.close_code[1], 4001);
    int before = count_to(1);
    auth(1, token_a);
    send_text(1, "{\"type\":\"METRICS\"}");
    assert_int_equal(count_to(1), before);
    open_conn(2, "127.0.0.1"); /* auth time-out */
    H.on_timer(H.ud, 2);
    assert_int_equal(S.close_code[2], 4002);
    before = count_to(2);
    auth(2, token_a);
    assert_int_equal(count_to(2), before);
    open_conn(3, "127.0.0.1"); /* too large (the server's limit) */
    auth(3, token_a);
    H.on_too_large(H.ud, 3);
    assert_int_equal(S.close_code[3], 1009);
    before = count_to(3);
    send_text(3, "{\"type\":\"CREATE_SESSION\"}");
    assert_int_equal(count_to(3), before);
    assert_int_equal(F.next_id, 0); /* no session opened */
    open_conn(4, "127.0.0.1"); /* its send queue overflowed */
    auth(4, token_a);
    S.overloaded = 4;
    send_text(4, "{\"type\":\"METRICS\"}");
    send_text(4, "{\"type\":\"CREATE_SESSION\"}");
    assert_int_equal(F.next_id, 0);
    stop();
}

static void idle_sessions_close_with_idle_timeout(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    o.session_idle_timeout_s = 1;
    start(&o, false);
    open_conn(1, "127.0.0.1");
    assert_int_equal(S.timer_ms[0], 30000);
    uint64_t idle = create_session(1);
    assert_int_equal(S.timer_ms[0], 1000); /* sessions to watch */
    uint64_t busy = create_session(1);
    send_text(1, "{\"type\":\"INFER\",\"session_id\":\"s2\",\"prompt\":\"hi\"}");
    H.on_timer(H.ud, 0);
    assert_int_equal(F.n_close, 0); /* not yet */
    usleep(1100 * 1000);
    H.on_timer(H.ud, 0);
    assert_int_equal(F.n_close, 1); /* the running one stays */
    assert_int_equal(F.last_closed, idle);
    push_event((ic_event){.type = IC_EVENT_SESSION_CLOSED, .session_id = idle,
                          .close_reason = F.last_close_reason});
    H.on_wake(H.ud);
    json_t *j = last_to(1);
    assert_string_equal(type_of(j), "SESSION_CLOSED");
    assert_string_equal(str_at(j, "session_id"), "s1");
    assert_string_equal(str_at(j, "reason"), "idle_timeout");
    assert_null(json_object_get(j, "id"));
    json_decref(j);
    send_text(1, "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"hi\"}");
    expect_last(1, "ERROR", "session_not_found");
    (void)busy;
    stop();
}

/* SIGHUP: a connection whose token left the file closes with 4003. */
static void reload_closes_connections_of_revoked_tokens(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    start(&o, true);
    open_conn(1, "127.0.0.1");
    auth(1, token_a);
    open_conn(2, "127.0.0.1");
    auth(2, token_b);
    /* A new file with bob only (a fresh token, the old one revoked too). */
    char err[256], fresh[128];
    FILE *f = fopen(tokens_path, "r");
    assert_non_null(f);
    char line[512], keep[512] = "";
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "bob ", 4) == 0)
            snprintf(keep, sizeof keep, "%s", line);
    fclose(f);
    f = fopen(tokens_path, "w");
    assert_non_null(f);
    fputs(keep, f);
    fclose(f);
    assert_int_equal(ic_auth_add_token(tokens_path, "carol", 0, IC_PRIORITY_LOW, fresh,
                                       sizeof fresh, err, sizeof err), 0);
    ic_gateway_request_reload(G);
    H.on_wake(H.ud);
    assert_int_equal(S.close_code[1], 4003);
    assert_string_equal(S.close_reason[1], "token revoked");
    expect_last(1, "ERROR", "unauthenticated");
    assert_int_equal(S.close_code[2], 0);
    send_text(2, "{\"type\":\"CREATE_SESSION\"}");
    expect_last(2, "SESSION_CREATED", NULL);
    int before = count_to(1);
    send_text(1, "{\"type\":\"CREATE_SESSION\"}");
    assert_int_equal(count_to(1), before);
    stop();
}

/* Five wrong tokens from one /24 throttle it: further AUTHs from that
 * network, right or wrong, are checked at once and answered by the
 * connection's timer; nothing is handled meanwhile, another network is
 * not affected, and a hang-up while the answer waits leaves nothing. */
static void throttled_auth_is_answered_by_the_timer(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    o.max_preauth_per_ip = 0;
    start(&o, true);
    char addr[32];
    for (uint64_t id = 1; id <= 5; id++) {
        snprintf(addr, sizeof addr, "10.1.2.%d", (int)id);
        open_conn(id, addr);
        auth(id, "ic_wrong");
        expect_last(id, "AUTH_FAILED", NULL);
        assert_int_equal(S.close_code[id], 4001);
    }
    /* Right token, same network: no answer yet, the timer holds it. */
    open_conn(6, "10.1.2.99");
    auth(6, token_a);
    assert_int_equal(count_to(6), 1); /* HELLO only */
    assert_true(S.timer_ms[6] > 0 && S.timer_ms[6] <= 5001);
    auth(6, token_a);
    expect_last(6, "ERROR", "bad_request");
    send_text(6, "{\"type\":\"CREATE_SESSION\"}");
    expect_last(6, "ERROR", "unauthenticated");
    H.on_timer(H.ud, 6);
    expect_last(6, "AUTH_SUCCESS", NULL);
    assert_int_equal(S.close_code[6], 0);
    assert_int_equal(S.timer_ms[6], 0);
    send_text(6, "{\"type\":\"CREATE_SESSION\"}");
    expect_last(6, "SESSION_CREATED", NULL);
    H.on_timer(H.ud, 6); /* a late tick answers nothing twice */
    expect_last(6, "SESSION_CREATED", NULL);
    /* Wrong token, same network: the failure waits too. */
    open_conn(7, "10.1.2.7");
    auth(7, "ic_wrong");
    assert_int_equal(count_to(7), 1);
    assert_int_equal(S.close_code[7], 0);
    H.on_timer(H.ud, 7);
    json_t *j = last_to(7);
    assert_string_equal(type_of(j), "AUTH_FAILED");
    assert_non_null(strstr(str_at(j, "reason"), "delayed"));
    json_decref(j);
    assert_int_equal(S.close_code[7], 4001);
    /* Another network answers at once. */
    open_conn(8, "10.1.3.1");
    auth(8, token_b);
    expect_last(8, "AUTH_SUCCESS", NULL);
    /* A hang-up while the answer waits. */
    open_conn(9, "10.1.2.200");
    auth(9, token_b);
    int before = S.n_sent;
    S.n_connections--;
    H.on_close(H.ud, 9);
    H.on_timer(H.ud, 9);
    assert_int_equal(S.n_sent, before);
    stop();
}

/* A token revoked by a reload while its delayed answer waits does not get
 * in; a token still in the file does, with its new limits. */
static void reload_while_auth_waits_revokes_the_token(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    o.max_preauth_per_ip = 0;
    start(&o, true);
    for (uint64_t id = 1; id <= 5; id++) {
        open_conn(id, "10.9.9.9");
        auth(id, "ic_wrong");
    }
    open_conn(6, "10.9.9.9");
    auth(6, token_a);
    open_conn(7, "10.9.9.9");
    auth(7, token_b);
    assert_int_equal(count_to(6), 1);
    assert_int_equal(count_to(7), 1);
    /* A new file: bob with a limit of 3, alice gone. */
    FILE *f = fopen(tokens_path, "r");
    assert_non_null(f);
    char line[512], bob[512] = "";
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "bob ", 4) == 0)
            snprintf(bob, sizeof bob, "%s", line);
    fclose(f);
    char *nl = strchr(bob, '\n');
    if (nl)
        *nl = '\0';
    f = fopen(tokens_path, "w");
    assert_non_null(f);
    fprintf(f, "%s max_sessions=3\n", bob);
    fclose(f);
    ic_gateway_request_reload(G);
    H.on_wake(H.ud);
    assert_int_equal(S.close_code[6], 0); /* not authenticated: nothing to revoke yet */
    H.on_timer(H.ud, 6);
    json_t *j = last_to(6);
    assert_string_equal(type_of(j), "AUTH_FAILED");
    assert_string_equal(str_at(j, "reason"), "token revoked");
    json_decref(j);
    assert_int_equal(S.close_code[6], 4001);
    H.on_timer(H.ud, 7);
    j = last_to(7);
    assert_string_equal(type_of(j), "AUTH_SUCCESS");
    assert_int_equal(json_integer_value(json_object_get(j, "max_sessions")), 3);
    json_decref(j);
    stop();
}

/* Session ids are parsed strictly: "s+1", "s01" and an overflow do not
 * name session s1. */
static void session_ids_are_strict(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    start(&o, false);
    open_conn(1, "127.0.0.1");
    send_text(1, "{\"type\":\"CREATE_SESSION\"}");
    expect_last(1, "SESSION_CREATED", NULL);
    const char *bad[] = {"s+1", "s01", "s-18446744073709551615", "s18446744073709551617"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[128];
        snprintf(msg, sizeof msg, "{\"type\":\"INFER\",\"session_id\":\"%s\",\"prompt\":\"x\"}",
                 bad[i]);
        send_text(1, msg);
        json_t *j = last_to(1);
        assert_string_equal(type_of(j), "ERROR");
        json_decref(j);
    }
    assert_int_equal(F.n_infer, 0);
    send_text(1, "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"x\"}");
    assert_int_equal(F.n_infer, 1);
    stop();
}

static void write_nvml(double temp_c)
{
    FILE *f = fopen(nvml_script, "w");
    assert_non_null(f);
    fprintf(f, "count 1\n0.name Fake GPU\n0.temperature %.0f\n", temp_c);
    fclose(f);
}

/* An idle server on a GPU above the limit says throttled in METRICS and
 * /metrics (from the reading taken for them); /health reads nothing. */
static void hot_gpu_reads_as_throttled(void **state)
{
    (void)state;
    const char *lib = getenv("IC_FAKE_NVML");
    if (!lib)
        fail_msg("IC_FAKE_NVML does not name the fake NVML library (run through ctest)");
    snprintf(nvml_script, sizeof nvml_script, "/tmp/ic-test-gateway-nvml-%d", (int)getpid());
    write_nvml(91);
    setenv("IC_FAKE_NVML_FILE", nvml_script, 1);
    setenv("IC_NVML_LIBRARY", lib, 1);
    ic_gateway_opts o = ic_gateway_opts_default();
    reset_fakes();
    char err[256];
    assert_int_equal(ic_gateway_create(&o, &G, err, sizeof err), 0);
    ic_gateway_server_handlers(G, &H);
    ic_gateway_set_server(G, &S.srv);
    F.opts.temp_limit_c = 85;
    ic_gateway_attach(G, &F, NULL, "test");
    H.on_wake(H.ud);
    open_conn(1, "127.0.0.1");
    send_text(1, "{\"type\":\"METRICS\"}");
    json_t *j = last_to(1);
    assert_string_equal(type_of(j), "METRICS");
    assert_string_equal(str_at(json_object_get(j, "engine"), "state"), "throttled");
    json_decref(j);
    int status;
    char *body;
    http("/metrics", NULL, &status, &body);
    assert_non_null(strstr(body, "inferencecenter_state{state=\"throttled\"} 1"));
    free(body);
    http("/health", NULL, &status, &body);
    assert_string_equal(body, "{\"status\":\"ok\",\"state\":\"ready\"}");
    free(body);
    ic_gateway_destroy(G);
    G = NULL;
    /* Below the limit: ready (a fresh monitor, not a cached reading). */
    write_nvml(60);
    assert_int_equal(ic_gateway_create(&o, &G, err, sizeof err), 0);
    ic_gateway_server_handlers(G, &H);
    ic_gateway_set_server(G, &S.srv);
    ic_gateway_attach(G, &F, NULL, "test");
    H.on_wake(H.ud);
    open_conn(2, "127.0.0.1");
    send_text(2, "{\"type\":\"METRICS\"}");
    j = last_to(2);
    assert_string_equal(str_at(json_object_get(j, "engine"), "state"), "ready");
    json_decref(j);
    unsetenv("IC_NVML_LIBRARY");
    unlink(nvml_script);
    stop();
}

/* The scheduler finished a generation and its END was dropped (out of
 * memory): the session does not stay busy forever. */
static void lost_end_does_not_leave_the_session_running(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    start(&o, false);
    open_conn(1, "127.0.0.1");
    uint64_t sid = create_session(1);
    send_text(1, "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"hi\",\"id\":\"q\"}");
    uint64_t rid = F.last_request[sid];
    /* Still generating: the sweep leaves it. */
    H.on_timer(H.ud, 0);
    H.on_timer(H.ud, 0);
    send_text(1, "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"hi\"}");
    expect_last(1, "ERROR", "busy");
    /* Done on the scheduler's side, END lost, nothing else running. */
    F.state[sid] = IC_SESSION_IDLE;
    H.on_timer(H.ud, 0);
    send_text(1, "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"hi\"}");
    expect_last(1, "ERROR", "busy"); /* one look is not enough */
    H.on_timer(H.ud, 0);
    json_t *j = last_to(1);
    assert_string_equal(type_of(j), "ERROR");
    assert_string_equal(str_at(j, "code"), "internal");
    assert_string_equal(str_at(j, "id"), "q");
    json_decref(j);
    send_text(1, "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"again\"}");
    assert_int_equal(F.n_infer, 2);
    /* The old END arriving late is not taken for the new generation's. */
    int before = count_to(1);
    push_event((ic_event){.type = IC_EVENT_END, .session_id = sid, .request_id = rid});
    H.on_wake(H.ud);
    assert_int_equal(count_to(1), before);
    send_text(1, "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"hi\"}");
    expect_last(1, "ERROR", "busy");
    stop();
}

/* A busy scheduler (others generating) turning twice more also proves it. */
static void lost_end_found_while_others_generate(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    start(&o, false);
    open_conn(1, "127.0.0.1");
    uint64_t sid = create_session(1);
    send_text(1, "{\"type\":\"INFER\",\"session_id\":\"s1\",\"prompt\":\"hi\"}");
    F.state[sid] = IC_SESSION_IDLE;
    F.stats.generating = 3;
    F.stats.last_progress_ms = 100;
    H.on_timer(H.ud, 0);
    H.on_timer(H.ud, 0); /* no progress: a long step may not have taken it yet */
    F.stats.last_progress_ms = 200;
    H.on_timer(H.ud, 0);
    expect_last(1, "SESSION_CREATED", NULL); /* one turn is not enough */
    F.stats.last_progress_ms = 300;
    H.on_timer(H.ud, 0);
    expect_last(1, "ERROR", "internal");
    stop();
}

/* --node-name is HELLO's node; /health/weight gives HAProxy's agent words
 * in the reason phrase and the body: the weight falls with the load, and
 * a server that is loading or stopping is down (and drained when stopping). */
static void node_name_and_agent_weight(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    o.node_name = "r2";
    reset_fakes();
    char err[256] = "";
    assert_int_equal(ic_gateway_create(&o, &G, err, sizeof err), 0);
    ic_gateway_server_handlers(G, &H);
    ic_gateway_set_server(G, &S.srv);
    int status;
    char *body;
    http("/health/weight", NULL, &status, &body);
    assert_int_equal(status, 200);
    assert_string_equal(body, "ready down #loading\n");
    assert_string_equal(last_reason, "ready down #loading");
    free(body);
    ic_gateway_attach(G, &F, NULL, "test");
    H.on_wake(H.ud);
    open_conn(1, "127.0.0.1");
    json_t *h = last_to(1);
    assert_string_equal(str_at(h, "node"), "r2");
    json_decref(h);
    http("/health/weight", NULL, &status, &body);
    assert_string_equal(body, "up ready 100%\n");
    assert_string_equal(last_reason, "up ready 100%");
    free(body);
    /* Two of four sessions held and two generations queued: fully loaded. */
    F.stats.sessions = 2;
    http("/health/weight", NULL, &status, &body);
    assert_string_equal(body, "up ready 55%\n");
    free(body);
    F.stats.queued = 2;
    http("/health/weight", NULL, &status, &body);
    assert_string_equal(body, "up ready 10%\n");
    free(body);
    F.stats.state = IC_SCHED_THROTTLED;
    F.stats.sessions = F.stats.queued = 0;
    http("/health/weight", NULL, &status, &body);
    assert_string_equal(body, "up ready 25%\n");
    free(body);
    F.stats.state = IC_SCHED_READY;
    ic_gateway_request_stop(G);
    H.on_wake(H.ud);
    http("/health/weight", NULL, &status, &body);
    assert_string_equal(last_reason, "drain down #stopping");
    free(body);
    stop();
}

/* Without --node-name HELLO has no node. */
static void hello_has_no_node_without_a_name(void **state)
{
    (void)state;
    ic_gateway_opts o = ic_gateway_opts_default();
    start(&o, false);
    open_conn(1, "127.0.0.1");
    json_t *h = last_to(1);
    assert_null(json_object_get(h, "node"));
    json_decref(h);
    stop();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(routes_tokens_to_their_session_and_end_clears_running, teardown),
        cmocka_unit_test_teardown(http_routes_answer_from_the_table, teardown),
        cmocka_unit_test_teardown(metrics_needs_a_token_when_tokens_are_required, teardown),
        cmocka_unit_test_teardown(hello_names_no_model_before_auth, teardown),
        cmocka_unit_test_teardown(preauth_connections_are_capped_per_address_and_in_all, teardown),
        cmocka_unit_test_teardown(preauth_messages_are_small, teardown),
        cmocka_unit_test_teardown(closing_connections_handle_no_messages, teardown),
        cmocka_unit_test_teardown(idle_sessions_close_with_idle_timeout, teardown),
        cmocka_unit_test_teardown(reload_closes_connections_of_revoked_tokens, teardown),
        cmocka_unit_test_teardown(throttled_auth_is_answered_by_the_timer, teardown),
        cmocka_unit_test_teardown(reload_while_auth_waits_revokes_the_token, teardown),
        cmocka_unit_test_teardown(session_ids_are_strict, teardown),
        cmocka_unit_test_teardown(hot_gpu_reads_as_throttled, teardown),
        cmocka_unit_test_teardown(lost_end_does_not_leave_the_session_running, teardown),
        cmocka_unit_test_teardown(lost_end_found_while_others_generate, teardown),
        cmocka_unit_test_teardown(node_name_and_agent_weight, teardown),
        cmocka_unit_test_teardown(hello_has_no_node_without_a_name, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
