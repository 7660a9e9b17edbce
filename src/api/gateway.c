/* gateway.c - protocol v1 on the network thread (see gateway.h): auth,
 * sessions, limits, dispatch to the scheduler and event routing.
 *
 * Thread: network thread, except the few "any thread" entry points, which
 * touch only atomics and ic_server_wake.
 */
#include "gateway.h"
#include "auth.h"
#include "clock.h"
#include "err.h"
#include "gpu.h"
#include "idmap.h"
#include "log.h"
#include "metrics.h"
#include "protocol.h"
#include "throttle.h"

#include <jansson.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CLOSE_GOING_AWAY 1001
#define CLOSE_TOO_BIG 1009
#define CLOSE_AUTH_FAILED 4001
#define CLOSE_AUTH_TIMEOUT 4002

/* A client's connection as the gateway sees it. Network thread. */
typedef struct client_conn {
    uint64_t id;
    char addr[IC_CLIENT_ADDR_MAX]; /* the client's, through trusted proxies */
    char count_key[IC_CLIENT_NAME_MAX + 1]; /* whose session count this uses */
    bool authed;
    int auth_pending;          /* a throttled AUTH's answer waits: 1 ok, 2 failed */
    ic_client_cfg pending_cfg;
    ic_msg_id auth_id;
    ic_client_cfg client;
    int max_sessions;
    int metrics_interval_ms;   /* 0 = not subscribed */
    ic_msg_id metrics_id;
} client_conn;

/* A session's network-side record, keyed by the scheduler's session ID.
 * conn_id 0 means its connection has gone and the close is in flight. */
typedef struct gw_session {
    uint64_t id;
    char sid[24];              /* "s<id>", as clients name it */
    uint64_t conn_id;
    char client[IC_CLIENT_NAME_MAX + 1];
    ic_req_params defaults;
    bool running;              /* an INFER awaits its END or ERROR */
    bool abort_sent;
    bool closing;
    uint64_t request_id;
    char rid[24];
    ic_msg_id infer_id;
    ic_msg_id close_id;
} gw_session;

/* Sessions held per client name, across its connections. */
typedef struct client_count {
    char name[IC_CLIENT_NAME_MAX + 1];
    int n;
} client_count;

struct ic_gateway {
    ic_gateway_opts opts;
    ic_server *srv;
    ic_auth *auth;             /* NULL = open server */
    ic_throttle *throttle;
    ic_addr_list *proxies;     /* trusted for X-Forwarded-For */
    ic_gpu_monitor *hw;
    ic_metrics *metrics;
    ic_idmap conns;            /* conn id -> client_conn */
    ic_idmap sessions;         /* session id -> gw_session */
    client_count *counts;
    int n_counts, cap_counts;
    uint64_t next_request;
    ic_sched *sched;           /* NULL while loading */
    bool stopping;
    bool failed;
    bool stalled;              /* the watchdog's verdict at its last check */
    int n_gpu_layers;
    int n_ctx_per_session;
    int max_sessions;
    /* Set from other threads, read on the network thread. */
    _Atomic(ic_sched *) attach_pending;
    _Atomic bool load_failed;
    _Atomic bool stop_requested;
    _Atomic bool reload_requested;
};

ic_gateway_opts ic_gateway_opts_default(void)
{
    return (ic_gateway_opts){
        .tokens_path = NULL,
        .max_sessions_per_client = 8,
        .max_message_bytes = 1 << 20,
        .auth_timeout_s = 30,
        .auth_max_failures = 5,
        .auth_window_s = 60,
        .auth_global_max_failures = 100,
        .auth_max_delay_s = 5,
        .trusted_proxies = NULL,
        .n_trusted_proxies = 0,
        .shutdown_timeout_s = 10,
        .listen_url = "",
        .metrics_token = NULL,
        .watchdog_timeout_s = 120,
        .log_prompts = false,
    };
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- sending ------------------------------------------------------- */

static void send_json(ic_gateway *g, uint64_t conn, char *json)
{
    if (!json) {
        ic_log_error("connection %llu: out of memory building a message",
                     (unsigned long long)conn);
        return;
    }
    ic_server_send(g->srv, conn, json, strlen(json));
}

/* Every client-visible error goes through here. */
static void send_error(ic_gateway *g, uint64_t conn, enum ic_proto_code code, const char *message,
                       const char *sid, const ic_msg_id *id)
{
    ic_metrics_error(g->metrics, code);
    ic_log_for(IC_LOG_DEBUG, &(ic_log_ctx){.session = sid, .conn = conn}, "error %s sent: %s",
               ic_proto_code_name(code), message ? message : "");
    send_json(g, conn, ic_proto_error_msg(code, message, sid, id));
}

/* Who a log line about this session is about. */
static ic_log_ctx session_ctx(const gw_session *ss, bool with_request)
{
    return (ic_log_ctx){
        .client = ss->client[0] == '#' ? NULL : ss->client,
        .session = ss->sid,
        .request = with_request ? ss->rid : NULL,
        .conn = ss->conn_id,
    };
}

/* --- client session counts --------------------------------------- */

static client_count *count_of(ic_gateway *g, const char *name, bool create)
{
    for (int i = 0; i < g->n_counts; i++) {
        if (strcmp(g->counts[i].name, name) == 0)
            return &g->counts[i];
    }
    if (!create)
        return NULL;
    if (g->n_counts == g->cap_counts) {
        int cap = g->cap_counts ? g->cap_counts * 2 : 16;
        client_count *c = realloc(g->counts, (size_t)cap * sizeof *c);
        if (!c)
            return NULL;
        g->counts = c;
        g->cap_counts = cap;
    }
    client_count *c = &g->counts[g->n_counts++];
    snprintf(c->name, sizeof c->name, "%s", name);
    c->n = 0;
    return c;
}

/* Forgets a per-connection count (open server: key "#<conn>") once its
 * connection's sessions are all gone, so the table does not grow with
 * every connection ever made. */
static void count_release(ic_gateway *g, client_count *cc)
{
    if (!cc || cc->n > 0 || cc->name[0] != '#')
        return;
    *cc = g->counts[--g->n_counts];
}

static void session_free(ic_gateway *g, gw_session *ss)
{
    client_count *cc = count_of(g, ss->client, false);
    if (cc && cc->n > 0)
        cc->n--;
    if (cc && cc->name[0] == '#' &&
        !ic_idmap_get(&g->conns, strtoull(cc->name + 1, NULL, 10)))
        count_release(g, cc); /* its connection has gone */
    ic_idmap_del(&g->sessions, ss->id);
    ic_req_params_free(&ss->defaults);
    free(ss);
}

/* A session of this connection named by the client, or NULL. */
static gw_session *own_session(ic_gateway *g, client_conn *c, const char *sid)
{
    uint64_t id;
    if (ic_proto_session_num(sid, &id) < 0)
        return NULL;
    gw_session *ss = ic_idmap_get(&g->sessions, id);
    return ss && ss->conn_id == c->id && !ss->closing ? ss : NULL;
}

/* --- client messages ------------------------------------------------ */

/* Answers an AUTH: cfg NULL for a wrong token; delayed by the throttle. */
static void finish_auth(ic_gateway *g, client_conn *c, const ic_client_cfg *cfg,
                        const ic_msg_id *id, bool delayed)
{
    c->auth_pending = 0;
    if (!cfg) {
        ic_log_warn("connection %llu from %s: authentication failed", (unsigned long long)c->id,
                    c->addr);
        send_json(g, c->id, ic_proto_auth_failed(delayed ? "invalid token (too many failed "
                                                           "attempts from this network: "
                                                           "answers are delayed)"
                                                         : "invalid token", id));
        ic_server_close(g->srv, c->id, CLOSE_AUTH_FAILED, "authentication failed");
        return;
    }
    c->authed = true;
    c->client = *cfg;
    snprintf(c->count_key, sizeof c->count_key, "%s", cfg->name);
    c->max_sessions = cfg->max_sessions > 0 ? cfg->max_sessions : g->opts.max_sessions_per_client;
    ic_server_set_timer(g->srv, c->id, 0);
    ic_log_info("connection %llu from %s: authenticated as client %s", (unsigned long long)c->id,
                c->addr, cfg->name);
    send_json(g, c->id, ic_proto_auth_success(cfg->name, c->max_sessions, id));
}

static void on_auth(ic_gateway *g, client_conn *c, const ic_msg *m)
{
    if (!g->auth) {
        /* An open server accepts any AUTH, so clients can always send one. */
        c->authed = true;
        send_json(g, c->id, ic_proto_auth_success(c->client.name, c->max_sessions, &m->id));
        return;
    }
    if (c->authed || c->auth_pending) {
        send_error(g, c->id, IC_CODE_BAD_REQUEST,
                   c->authed ? "already authenticated" : "an AUTH is already being answered",
                   NULL, &m->id);
        return;
    }
    double t = ic_now_s();
    ic_client_cfg cfg = {0};
    /* Checked now, always: the throttle only delays the answer (throttle.h). */
    double delay_s = ic_throttle_delay_s(g->throttle, c->addr, t);
    bool ok = ic_auth_check(g->auth, m->token, &cfg) == 0;
    if (ok) {
        ic_throttle_success(g->throttle, c->addr, t);
    } else {
        ic_throttle_fail(g->throttle, c->addr, t);
        ic_metrics_auth_failed(g->metrics); /* counted even if the client hangs up */
    }
    if (delay_s > 0) {
        c->auth_pending = ok ? 1 : 2;
        c->pending_cfg = cfg;
        c->auth_id = m->id;
        ic_server_set_timer(g->srv, c->id, (int)(delay_s * 1000) + 1);
        return;
    }
    finish_auth(g, c, ok ? &cfg : NULL, &m->id, false);
}

static void on_create_session(ic_gateway *g, client_conn *c, ic_msg *m)
{
    client_count *cc = count_of(g, c->count_key, true);
    if (!cc) {
        send_error(g, c->id, IC_CODE_INTERNAL, "out of memory", NULL, &m->id);
        return;
    }
    if (cc->n >= c->max_sessions) {
        char msg[128];
        snprintf(msg, sizeof msg, "client %s already holds its limit of %d sessions",
                 g->auth ? c->client.name : "(this connection)", c->max_sessions);
        send_error(g, c->id, IC_CODE_SESSION_LIMIT, msg, NULL, &m->id);
        return;
    }
    gw_session *ss = calloc(1, sizeof *ss);
    uint64_t id = 0;
    int rc = ss ? ic_sched_open_session(g->sched, m->system, &id) : IC_ERR_NOMEM;
    if (rc == 0 && ic_idmap_put(&g->sessions, id, ss) < 0) {
        ic_sched_close_session(g->sched, id, IC_CLOSE_CLIENT);
        rc = IC_ERR_NOMEM;
    }
    if (rc < 0) {
        free(ss);
        enum ic_proto_code code = ic_proto_code_from_err(rc);
        send_error(g, c->id, code,
                   code == IC_CODE_CAPACITY ? "the server holds its maximum number of sessions"
                                            : ic_strerror(rc),
                   NULL, &m->id);
        return;
    }
    ss->id = id;
    ss->conn_id = c->id;
    snprintf(ss->sid, sizeof ss->sid, "s%llu", (unsigned long long)id);
    snprintf(ss->client, sizeof ss->client, "%s", c->count_key);
    ss->defaults = m->params; /* take the strings over */
    memset(&m->params, 0, sizeof m->params);
    cc->n++;
    ic_log_ctx lc = session_ctx(ss, false);
    ic_log_for(IC_LOG_INFO, &lc, "session created%s", m->system ? " with a system prompt" : "");
    send_json(g, c->id, ic_proto_session_created(ss->sid, g->n_ctx_per_session, &m->id));
}

static void on_infer(ic_gateway *g, client_conn *c, const ic_msg *m)
{
    gw_session *ss = own_session(g, c, m->session_id);
    if (!ss) {
        send_error(g, c->id, IC_CODE_SESSION_NOT_FOUND, "no such session", m->session_id, &m->id);
        return;
    }
    if (ss->running) {
        send_error(g, c->id, IC_CODE_BUSY, "a generation is already running in this session",
                   ss->sid, &m->id);
        return;
    }
    ic_gen_params gp;
    ic_proto_gen_params(&ss->defaults, &m->params, c->client.priority, &gp);
    uint64_t rid = ++g->next_request;
    int rc = ic_sched_infer(g->sched, ss->id, rid, m->prompt, m->raw, &gp);
    if (rc < 0) {
        send_error(g, c->id, ic_proto_code_from_err(rc),
                   rc == IC_ERR_OVERLOADED ? "too much work is waiting; try again later"
                                           : ic_strerror(rc),
                   ss->sid, &m->id);
        return;
    }
    ss->running = true;
    ss->abort_sent = false;
    ss->request_id = rid;
    snprintf(ss->rid, sizeof ss->rid, "r%llu", (unsigned long long)rid);
    ss->infer_id = m->id;
    ic_log_ctx lc = session_ctx(ss, true);
    ic_log_for(IC_LOG_DEBUG, &lc, "generation queued: %zu prompt bytes, max_tokens %d%s",
               strlen(m->prompt), gp.max_tokens, m->raw ? ", raw" : "");
    if (g->opts.log_prompts)
        ic_log_for(IC_LOG_DEBUG, &lc, "prompt: %s", m->prompt);
}

static void on_abort(ic_gateway *g, client_conn *c, const ic_msg *m)
{
    gw_session *ss = own_session(g, c, m->session_id);
    if (!ss) {
        send_error(g, c->id, IC_CODE_SESSION_NOT_FOUND, "no such session", m->session_id, &m->id);
        return;
    }
    if (!ss->running) {
        send_error(g, c->id, IC_CODE_NOT_RUNNING, "no generation is running in this session",
                   ss->sid, &m->id);
        return;
    }
    /* The reply is the generation's END with reason "abort". */
    if (!ss->abort_sent && ic_sched_abort(g->sched, ss->id) == 0)
        ss->abort_sent = true;
}

static void on_close_session(ic_gateway *g, client_conn *c, const ic_msg *m)
{
    gw_session *ss = own_session(g, c, m->session_id);
    if (!ss) {
        send_error(g, c->id, IC_CODE_SESSION_NOT_FOUND, "no such session", m->session_id, &m->id);
        return;
    }
    if (ic_sched_close_session(g->sched, ss->id, IC_CLOSE_CLIENT) < 0) {
        send_error(g, c->id, IC_CODE_INTERNAL, "could not close the session", ss->sid, &m->id);
        return;
    }
    ss->closing = true;
    ss->close_id = m->id;
}

static void fill_sessions(ic_gateway *g, client_conn *c, ic_metrics_session *out, int *n, int cap)
{
    *n = 0;
    for (size_t i = 0; i < g->sessions.cap && *n < cap; i++) {
        uint64_t id = g->sessions.keys[i];
        gw_session *ss = id && id != UINT64_MAX ? g->sessions.vals[i] : NULL;
        if (!ss || ss->conn_id != c->id || ss->closing)
            continue;
        ic_metrics_session *ms = &out[(*n)++];
        snprintf(ms->session_id, sizeof ms->session_id, "%s", ss->sid);
        if (ic_sched_session_info(g->sched, ss->id, &ms->state, &ms->n_ctx_used) < 0) {
            ms->state = IC_SESSION_IDLE;
            ms->n_ctx_used = 0;
        }
        if (ss->running && ms->state == IC_SESSION_IDLE)
            ms->state = IC_SESSION_QUEUED; /* submitted, not yet seen by the scheduler */
    }
}

/* The server's state as METRICS, /metrics and /health name it. */
static const char *server_state(const ic_gateway *g, const ic_sched_stats *st)
{
    if (!g->sched || st->state == IC_SCHED_WAKING)
        return "loading";
    if (g->stalled)
        return "stuck";
    return ic_sched_state_name(st->state);
}

static void send_metrics(ic_gateway *g, client_conn *c, const ic_msg_id *id)
{
    enum { MAX_LISTED = 256 };
    ic_metrics_session *list = calloc(MAX_LISTED, sizeof *list);
    if (!list)
        return;
    ic_hw_sample hw;
    ic_gpu_monitor_sample(g->hw, &hw);
    ic_metrics_msg mm = {
        .timestamp_ms = wall_ms(),
        .n_gpu_layers = g->n_gpu_layers,
        .gpus = hw.gpus,
        .n_gpus = hw.n_gpus,
        .cpu_pct = hw.cpu_pct,
        .ram_used_bytes = hw.ram_used_bytes,
        .ram_total_bytes = hw.ram_total_bytes,
        .sessions = list,
    };
    ic_sched_get_stats(g->sched, &mm.engine);
    mm.state = server_state(g, &mm.engine);
    fill_sessions(g, c, list, &mm.n_sessions, MAX_LISTED);
    send_json(g, c->id, ic_proto_metrics(&mm, id));
    free(list);
}

static void on_subscribe(ic_gateway *g, client_conn *c, const ic_msg *m)
{
    c->metrics_interval_ms = m->interval_ms;
    c->metrics_id = m->id;
    ic_server_set_timer(g->srv, c->id, m->interval_ms);
    if (m->interval_ms > 0)
        send_metrics(g, c, &m->id);
}

static void dispatch(ic_gateway *g, client_conn *c, ic_msg *m)
{
    if (!c->authed && m->type != IC_MSG_AUTH) {
        send_error(g, c->id, IC_CODE_UNAUTHENTICATED, "send AUTH with a valid token first", NULL,
                   &m->id);
        return;
    }
    switch (m->type) {
    case IC_MSG_AUTH: on_auth(g, c, m); break;
    case IC_MSG_CREATE_SESSION: on_create_session(g, c, m); break;
    case IC_MSG_CLOSE_SESSION: on_close_session(g, c, m); break;
    case IC_MSG_INFER: on_infer(g, c, m); break;
    case IC_MSG_ABORT: on_abort(g, c, m); break;
    case IC_MSG_METRICS: send_metrics(g, c, &m->id); break;
    case IC_MSG_SUBSCRIBE_METRICS: on_subscribe(g, c, m); break;
    }
}

/* --- server handlers (network thread) ------------------------------ */

static bool h_accept(void *ud)
{
    ic_gateway *g = ud;
    return g->sched && !g->stopping;
}

static void h_open(void *ud, uint64_t id, const char *addr)
{
    ic_gateway *g = ud;
    client_conn *c = calloc(1, sizeof *c);
    if (!c || ic_idmap_put(&g->conns, id, c) < 0) {
        free(c);
        ic_server_close(g->srv, id, 1011, "out of memory");
        return;
    }
    c->id = id;
    ic_client_addr(addr, NULL, g->proxies, c->addr, sizeof c->addr);
    c->authed = g->auth == NULL;
    snprintf(c->client.name, sizeof c->client.name, "anonymous");
    /* Without tokens there are no client identities: each connection is
     * its own client for the per-client limit. */
    snprintf(c->count_key, sizeof c->count_key, "#%llu", (unsigned long long)id);
    c->client.priority = IC_PRIORITY_HIGH;
    c->max_sessions = g->opts.max_sessions_per_client;
    ic_engine_info info;
    ic_sched_model_info(g->sched, &info);
    ic_hello h = {
        .version = IC_VERSION,
        .auth_required = g->auth != NULL,
        .model_name = info.name,
        .n_params = info.n_params,
        .size_bytes = info.file_bytes,
        .n_ctx_train = info.n_ctx_train_tokens,
        .max_message_bytes = (int64_t)g->opts.max_message_bytes,
        .max_sessions_per_client = g->opts.max_sessions_per_client,
        .max_sessions = g->max_sessions,
        .n_ctx_per_session = g->n_ctx_per_session,
    };
    send_json(g, id, ic_proto_hello(&h));
    if (!c->authed)
        ic_server_set_timer(g->srv, id, g->opts.auth_timeout_s * 1000);
}

static void h_message(void *ud, uint64_t id, const char *data, size_t len, bool binary)
{
    ic_gateway *g = ud;
    client_conn *c = ic_idmap_get(&g->conns, id);
    if (!c || g->stopping)
        return;
    if (binary) {
        send_error(g, id, IC_CODE_BAD_REQUEST, "binary frames are not supported; send JSON text",
                   NULL, NULL);
        return;
    }
    ic_msg m;
    ic_proto_error pe;
    if (ic_proto_parse(data, len, &m, &pe) < 0) {
        send_error(g, id, pe.code, pe.message, NULL, &pe.id);
        return;
    }
    dispatch(g, c, &m);
    ic_msg_free(&m);
}

static void h_too_large(void *ud, uint64_t id)
{
    ic_gateway *g = ud;
    char msg[96];
    snprintf(msg, sizeof msg, "message exceeds %zu bytes", g->opts.max_message_bytes);
    send_error(g, id, IC_CODE_MESSAGE_TOO_LARGE, msg, NULL, NULL);
    ic_server_close(g->srv, id, CLOSE_TOO_BIG, "message too large");
}

/* The connection is gone: its sessions close (their generations stop
 * within a step); their records go when SESSION_CLOSED comes back. */
static void h_close(void *ud, uint64_t id)
{
    ic_gateway *g = ud;
    client_conn *c = ic_idmap_del(&g->conns, id);
    if (!c)
        return;
    for (size_t i = 0; i < g->sessions.cap; i++) {
        uint64_t sid = g->sessions.keys[i];
        gw_session *ss = sid && sid != UINT64_MAX ? g->sessions.vals[i] : NULL;
        if (!ss || ss->conn_id != id)
            continue;
        ss->conn_id = 0;
        if (!ss->closing && g->sched && !g->stopping)
            ic_sched_close_session(g->sched, ss->id, IC_CLOSE_DISCONNECT);
        ss->closing = true;
    }
    count_release(g, count_of(g, c->count_key, false));
    free(c);
    if (g->stopping && ic_server_n_connections(g->srv) == 0)
        ic_server_quit(g->srv);
}

/* How often the watchdog looks: a quarter of its time-out, at least 1 s. */
static int watchdog_period_ms(const ic_gateway *g)
{
    int ms = g->opts.watchdog_timeout_s * 250;
    return ms < 1000 ? 1000 : ms;
}

/* The internal watchdog (server timer 0 while not stopping): work waits
 * and the scheduler loop has not turned for watchdog_timeout_s. */
static void check_watchdog(ic_gateway *g)
{
    ic_server_set_timer(g->srv, 0, watchdog_period_ms(g));
    if (!g->sched || g->opts.watchdog_timeout_s <= 0)
        return;
    ic_sched_stats st;
    ic_sched_get_stats(g->sched, &st);
    double quiet_s = ic_now_s() - st.last_progress_ms / 1e3; /* both CLOCK_MONOTONIC */
    bool stalled = st.generating + st.queued > 0 && st.state != IC_SCHED_WAKING &&
                   quiet_s >= g->opts.watchdog_timeout_s;
    if (stalled && !g->stalled)
        ic_log_error("watchdog: the scheduler has made no progress for %.0f s with %d "
                     "generations waiting", quiet_s, st.generating + st.queued);
    else if (!stalled && g->stalled)
        ic_log_info("watchdog: the scheduler is making progress again");
    g->stalled = stalled;
}

static void h_timer(void *ud, uint64_t id)
{
    ic_gateway *g = ud;
    if (id == 0 && !g->stopping) {
        check_watchdog(g);
        return;
    }
    if (id == 0) {
        /* The shutdown time-out: stop waiting for slow clients. */
        ic_log_warn("shutdown: %d connections did not close in time",
                    ic_server_n_connections(g->srv));
        ic_server_quit(g->srv);
        return;
    }
    client_conn *c = ic_idmap_get(&g->conns, id);
    if (!c)
        return;
    if (c->auth_pending) {
        finish_auth(g, c, c->auth_pending == 1 ? &c->pending_cfg : NULL, &c->auth_id, true);
        return;
    }
    if (!c->authed) {
        send_error(g, id, IC_CODE_UNAUTHENTICATED, "no AUTH in time", NULL, NULL);
        ic_server_close(g->srv, id, CLOSE_AUTH_TIMEOUT, "authentication timeout");
        return;
    }
    if (c->metrics_interval_ms > 0 && g->sched && !g->stopping) {
        send_metrics(g, c, &c->metrics_id);
        ic_server_set_timer(g->srv, id, c->metrics_interval_ms);
    }
}

static void json_response(ic_http_response *resp, int status, json_t *j)
{
    resp->status = status;
    resp->content_type = "application/json";
    resp->body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    resp->len = resp->body ? strlen(resp->body) : 0;
    json_decref(j);
}

/* GET /metrics: Prometheus text, behind --metrics-token when set. */
static void metrics_response(ic_gateway *g, const ic_http_request *req, ic_http_response *resp)
{
    if (g->opts.metrics_token) {
        const char *a = req->authorization;
        bool ok = a && strncmp(a, "Bearer ", 7) == 0 &&
                  ic_auth_secret_equal(a + 7, g->opts.metrics_token);
        if (!ok) {
            json_response(resp, 401, json_pack("{s:s}", "error", "bearer token required"));
            return;
        }
    }
    ic_sched_stats st = {0};
    ic_hw_sample hw;
    ic_gpu_monitor_sample(g->hw, &hw);
    if (g->sched)
        ic_sched_get_stats(g->sched, &st);
    ic_metrics_gauges mg = {
        .state = server_state(g, &st),
        .sessions = st.sessions,
        .sessions_max = g->sched ? st.max_sessions : 0,
        .generating = st.generating,
        .queued = st.queued,
        .kv_cells_used = st.kv_cells_used,
        .kv_cells_total = st.kv_cells_total,
        .gpu_layers = g->n_gpu_layers,
        .connections = ic_server_n_connections(g->srv),
        .stalled = g->stalled,
        .steps = st.steps,
        .hw = &hw,
        .version = IC_VERSION,
        .llama_commit = IC_LLAMA_COMMIT,
    };
    resp->status = 200;
    resp->content_type = IC_METRICS_CONTENT_TYPE;
    if (ic_metrics_render(g->metrics, &mg, &resp->body, &resp->len) < 0)
        resp->body = NULL;
}

static void h_http(void *ud, const ic_http_request *req, ic_http_response *resp)
{
    ic_gateway *g = ud;
    if (strcmp(req->path, "/metrics") == 0) {
        metrics_response(g, req, resp);
    } else if (strcmp(req->path, "/health") == 0) {
        ic_sched_stats st = {0};
        if (g->sched)
            ic_sched_get_stats(g->sched, &st);
        const char *state = g->stopping ? "stopping" : server_state(g, &st);
        bool ok = g->sched && !g->stopping && !g->stalled;
        json_response(resp, ok ? 200 : 503,
                      json_pack("{s:s,s:s}", "status", ok ? "ok" : state, "state", state));
    } else {
        json_response(resp, 404, json_pack("{s:s}", "error", "not found"));
    }
}

/* --- scheduler events ------------------------------------------------ */

static void observe_end(ic_gateway *g, const gw_session *ss, const ic_event *ev)
{
    const ic_gen_stats *st = &ev->stats;
    ic_metrics_generation_ended(g->metrics, ev->reason, st->prompt_tokens, st->generated_tokens);
    ic_metrics_observe(g->metrics, IC_HIST_QUEUE_TIME, st->queue_ms / 1e3);
    if (st->generated_tokens > 0)
        ic_metrics_observe(g->metrics, IC_HIST_TTFT, st->ttft_ms / 1e3);
    ic_metrics_observe(g->metrics, IC_HIST_DURATION, st->total_ms / 1e3);
    ic_log_ctx lc = session_ctx(ss, true);
    ic_log_for(IC_LOG_INFO, &lc, "generation ended: %s, %d prompt + %d generated tokens, "
               "ttft %.0f ms, total %.0f ms", ic_end_reason_name(ev->reason), st->prompt_tokens,
               st->generated_tokens, st->ttft_ms, st->total_ms);
}

static void route_event(ic_gateway *g, ic_event *ev)
{
    gw_session *ss = ic_idmap_get(&g->sessions, ev->session_id);
    if (!ss)
        return;
    uint64_t conn = ss->conn_id;
    switch (ev->type) {
    case IC_EVENT_TOKEN:
        if (ev->index > 0)
            ic_metrics_observe(g->metrics, IC_HIST_INTER_TOKEN, ev->gap_ms / 1e3);
        if (conn)
            send_json(g, conn, ic_proto_token(ss->sid, ss->rid, ev->index, ev->text, ev->text_len,
                                              &ss->infer_id));
        break;
    case IC_EVENT_END:
        ss->running = false;
        observe_end(g, ss, ev);
        if (conn)
            send_json(g, conn, ic_proto_end(ss->sid, ss->rid, ev->reason, &ev->stats,
                                            &ss->infer_id));
        break;
    case IC_EVENT_ERROR:
        ss->running = false;
        if (conn)
            send_error(g, conn, ic_proto_code_from_err(ev->err), ev->message, ss->sid,
                       &ss->infer_id);
        break;
    case IC_EVENT_SESSION_CLOSED: {
        ic_log_ctx lc = session_ctx(ss, false);
        ic_log_for(IC_LOG_INFO, &lc, "session closed: %s", ic_close_reason_name(ev->close_reason));
        if (conn)
            send_json(g, conn, ic_proto_session_closed(ss->sid,
                                                       ic_close_reason_name(ev->close_reason),
                                                       &ss->close_id));
        session_free(g, ss);
        break;
    }
    }
}

static void drain_events(ic_gateway *g)
{
    if (!g->sched)
        return;
    for (ic_event *ev; (ev = ic_sched_poll_event(g->sched, 0));) {
        route_event(g, ev);
        ic_event_free(ev);
    }
}

static void close_conn_for_stop(uint64_t id, void *val, void *ud)
{
    (void)val;
    ic_gateway *g = ud;
    ic_server_close(g->srv, id, CLOSE_GOING_AWAY, "server shutting down");
}

/* Graceful stop: the scheduler ends everything (END shutdown, then
 * SESSION_CLOSED shutdown), those events go out, then every connection
 * closes with 1001. The server loop ends when the last one has gone or
 * the shutdown time-out passes. */
static void begin_stop(ic_gateway *g)
{
    g->stopping = true;
    ic_log_info("shutting down: ending generations and closing %d connections",
                ic_server_n_connections(g->srv));
    if (g->sched) {
        ic_sched_stop(g->sched);
        drain_events(g);
    }
    ic_idmap_each(&g->conns, close_conn_for_stop, g);
    ic_server_set_timer(g->srv, 0, (int)(g->opts.shutdown_timeout_s * 1000));
}

static void reload_tokens(ic_gateway *g)
{
    if (!g->opts.tokens_path)
        return;
    char err[256];
    ic_auth *fresh = NULL;
    if (ic_auth_load(g->opts.tokens_path, &fresh, err, sizeof err) < 0) {
        ic_log_error("tokens reload failed, keeping the previous tokens: %s", err);
        return;
    }
    ic_auth_destroy(g->auth);
    g->auth = fresh;
    ic_log_info("tokens reloaded: %d clients", ic_auth_count(fresh));
}

static void h_wake(void *ud)
{
    ic_gateway *g = ud;
    ic_sched *s = atomic_exchange(&g->attach_pending, NULL);
    if (s && !g->stopping) {
        g->sched = s;
        ic_sched_opts so;
        ic_sched_get_opts(s, &so);
        g->n_ctx_per_session = (int)so.n_ctx_per_session;
        ic_engine_info info;
        ic_sched_model_info(s, &info);
        g->n_gpu_layers = info.n_gpu_layers;
        g->max_sessions = so.max_sessions;
        ic_server_set_timer(g->srv, 0, watchdog_period_ms(g));
        ic_log_info("ready: model %s, %d sessions of %u tokens, listening on %s", info.name,
                    so.max_sessions, so.n_ctx_per_session, g->opts.listen_url);
    }
    if (atomic_exchange(&g->reload_requested, false))
        reload_tokens(g);
    if (atomic_load(&g->load_failed) && !g->stopping) {
        g->failed = true;
        begin_stop(g);
    }
    if (atomic_load(&g->stop_requested) && !g->stopping)
        begin_stop(g);
    drain_events(g);
    if (g->stopping && ic_server_n_connections(g->srv) == 0)
        ic_server_quit(g->srv);
}

/* --- lifetime and other threads ----------------------------------- */

static int make_throttle(ic_gateway *g, const ic_gateway_opts *o, char *err, size_t errlen)
{
    ic_throttle_opts to = ic_throttle_opts_default();
    to.max_failures = o->auth_max_failures;
    to.window_s = o->auth_window_s;
    to.global_max_failures = o->auth_global_max_failures;
    to.max_delay_s = o->auth_max_delay_s;
    if (to.base_delay_s > to.max_delay_s)
        to.base_delay_s = to.max_delay_s;
    int rc = ic_throttle_create(&to, &g->throttle);
    if (rc == 0)
        rc = ic_addr_list_create(o->trusted_proxies, o->n_trusted_proxies, &g->proxies, err,
                                 errlen);
    return rc;
}

int ic_gateway_create(const ic_gateway_opts *opts, ic_gateway **out, char *err, size_t errlen)
{
    *out = NULL;
    ic_gateway *g = calloc(1, sizeof *g);
    if (!g)
        return IC_ERR_NOMEM;
    g->opts = *opts;
    int rc = ic_gpu_monitor_create(NULL, &g->hw);
    if (rc == 0)
        rc = ic_metrics_create(&g->metrics);
    if (rc == 0)
        rc = make_throttle(g, opts, err, errlen);
    if (rc == 0 && opts->tokens_path)
        rc = ic_auth_load(opts->tokens_path, &g->auth, err, errlen);
    if (rc < 0) {
        ic_gateway_destroy(g);
        return rc;
    }
    *out = g;
    return 0;
}

static void free_session_cb(uint64_t id, void *val, void *ud)
{
    (void)id;
    (void)ud;
    gw_session *ss = val;
    ic_req_params_free(&ss->defaults);
    free(ss);
}

static void free_conn_cb(uint64_t id, void *val, void *ud)
{
    (void)id;
    (void)ud;
    free(val);
}

void ic_gateway_destroy(ic_gateway *g)
{
    if (!g)
        return;
    ic_idmap_each(&g->sessions, free_session_cb, NULL);
    ic_idmap_free(&g->sessions);
    ic_idmap_each(&g->conns, free_conn_cb, NULL);
    ic_idmap_free(&g->conns);
    ic_auth_destroy(g->auth);
    ic_throttle_destroy(g->throttle);
    ic_addr_list_destroy(g->proxies);
    ic_gpu_monitor_destroy(g->hw);
    ic_metrics_destroy(g->metrics);
    free(g->counts);
    free(g);
}

void ic_gateway_server_handlers(ic_gateway *g, ic_server_handlers *h)
{
    *h = (ic_server_handlers){
        .ud = g,
        .accept = h_accept,
        .on_open = h_open,
        .on_message = h_message,
        .on_too_large = h_too_large,
        .on_close = h_close,
        .on_wake = h_wake,
        .on_timer = h_timer,
        .on_http = h_http,
    };
}

void ic_gateway_set_server(ic_gateway *g, ic_server *srv) { g->srv = srv; }

void ic_gateway_wake(void *ud)
{
    ic_gateway *g = ud;
    ic_server_wake(g->srv);
}

void ic_gateway_attach(ic_gateway *g, ic_sched *sched)
{
    atomic_store(&g->attach_pending, sched);
    ic_gateway_wake(g);
}

void ic_gateway_load_failed(ic_gateway *g)
{
    atomic_store(&g->load_failed, true);
    ic_gateway_wake(g);
}

void ic_gateway_request_stop(ic_gateway *g)
{
    atomic_store(&g->stop_requested, true);
    ic_gateway_wake(g);
}

void ic_gateway_request_reload(ic_gateway *g)
{
    atomic_store(&g->reload_requested, true);
    ic_gateway_wake(g);
}

bool ic_gateway_failed(const ic_gateway *g) { return g->failed; }

bool ic_gateway_stalled(const ic_gateway *g) { return g->stalled; }
