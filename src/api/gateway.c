/* gateway.c - protocol v1's connections and sessions on the network thread
 * (see gateway.h): HELLO and AUTH with the limits before it (the
 * throttle's delayed answers: throttle.h), the session
 * table and per-client limits, dispatching client messages to the
 * scheduler, routing its events back, and the sweep that closes idle
 * sessions and recovers generations whose END was lost.
 *
 * Thread: network thread. Owns the connection and session records of
 * struct ic_gateway (gateway_impl.h); routes.c and lifecycle.c call down
 * into this file, never the other way.
 */
#include "gateway_impl.h"
#include "clock.h"
#include "err.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Before AUTH a client needs one small message: anything larger closes. */
#define PREAUTH_MAX_MESSAGE_BYTES 4096

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- sending ------------------------------------------------------- */

void ic_gw_send_json(ic_gateway *g, uint64_t conn, char *json)
{
    if (!json) {
        ic_log_error("connection %llu: out of memory building a message",
                     (unsigned long long)conn);
        return;
    }
    if (ic_server_send(g->srv, conn, json, strlen(json)) == IC_ERR_OVERLOADED) {
        /* The server is dropping this client: handle nothing more from it. */
        client_conn *c = ic_idmap_get(&g->conns, conn);
        if (c)
            c->closing = true;
    }
}

void ic_gw_send_error(ic_gateway *g, uint64_t conn, enum ic_proto_code code, const char *message,
                      const char *sid, const ic_msg_id *id)
{
    ic_metrics_error(g->metrics, code);
    ic_log_for(IC_LOG_DEBUG, &(ic_log_ctx){.session = sid, .conn = conn}, "error %s sent: %s",
               ic_proto_code_name(code), message ? message : "");
    ic_gw_send_json(g, conn, ic_proto_error_msg(code, message, sid, id));
}

void ic_gw_close_conn(ic_gateway *g, client_conn *c, int code, const char *reason)
{
    c->closing = true;
    c->metrics_interval_ms = 0;
    ic_server_set_timer(g->srv, c->id, 0);
    ic_server_close(g->srv, c->id, code, reason);
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

int ic_gw_default_max_sessions(const ic_gateway *g)
{
    if (g->opts.max_sessions_per_client > 0)
        return g->opts.max_sessions_per_client;
    /* Automatic: with tokens no one client may hold every slot. */
    int total = g->max_sessions > 0 ? g->max_sessions : 1;
    if (!g->opts.tokens_path)
        return total;
    return total > 1 ? total / 2 : 1;
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
    free(ss->tools_json);
    free(ss->cache_text);
    free(ss);
}

/* A session of this connection named by the client, or NULL. */
static gw_session *own_session(ic_gateway *g, client_conn *c, const char *sid)
{
    if (g->store) /* durable sessions are named by their record's number */
        return ic_gw_durable_find(g, c, sid);
    uint64_t id;
    if (ic_proto_session_num(sid, &id) < 0)
        return NULL;
    gw_session *ss = ic_idmap_get(&g->sessions, id);
    return ss && ss->conn_id == c->id && !ss->closing ? ss : NULL;
}

/* HELLO's "model" (and AUTH_SUCCESS's, on a server with tokens). */
static ic_hello make_hello(ic_gateway *g, ic_engine_info *info)
{
    ic_sched_model_info(g->sched, info);
    return (ic_hello){
        .version = IC_VERSION,
        .auth_required = g->auth != NULL,
        .model_name = info->name,
        .n_params = info->n_params,
        .size_bytes = info->file_bytes,
        .n_ctx_train = info->n_ctx_train_tokens,
        .max_message_bytes = (int64_t)g->opts.max_message_bytes,
        .max_sessions_per_client = ic_gw_default_max_sessions(g),
        .max_sessions = g->max_sessions,
        .n_ctx_per_session = g->n_ctx_per_session,
        .cache_type_k = ic_kv_type_name(info->type_k),
        .cache_type_v = ic_kv_type_name(info->type_v),
        .flash_attn = ic_flash_attn_name(info->flash_attn),
        .node = g->opts.node_name,
        .models = g->model_names,
        .n_models = g->models.n,
    };
}

/* --- client messages ------------------------------------------------ */

static void auth_succeeded(ic_gateway *g, client_conn *c, const ic_msg_id *id)
{
    if (!c->authed)
        g->n_preauth--;
    c->authed = true;
    /* The server held this connection to one small message until now. */
    ic_server_set_max_message(g->srv, c->id, g->opts.max_message_bytes);
    ic_engine_info info;
    ic_hello h = make_hello(g, &info);
    ic_gw_send_json(g, c->id, ic_proto_auth_success_model(c->client.name, c->max_sessions,
                                                          g->auth ? &h : NULL, id));
}

/* Answers a checked AUTH: cfg for a right token (c->token holds it), or
 * NULL and the failure's reason. */
static void finish_auth(ic_gateway *g, client_conn *c, const ic_client_cfg *cfg,
                        const ic_msg_id *id, const char *reason)
{
    c->auth_pending = 0;
    if (!cfg) {
        ic_log_warn("connection %llu from %s: authentication failed", (unsigned long long)c->id,
                    c->addr);
        ic_gw_send_json(g, c->id, ic_proto_auth_failed(reason, id));
        ic_gw_close_conn(g, c, CLOSE_AUTH_FAILED, "authentication failed");
        return;
    }
    c->client = *cfg;
    snprintf(c->count_key, sizeof c->count_key, "%s", cfg->name);
    c->max_sessions = cfg->max_sessions > 0 ? cfg->max_sessions : ic_gw_default_max_sessions(g);
    ic_server_set_timer(g->srv, c->id, 0);
    ic_log_info("connection %llu from %s: authenticated as client %s", (unsigned long long)c->id,
                c->addr, cfg->name);
    auth_succeeded(g, c, id);
}

static void on_auth(ic_gateway *g, client_conn *c, const ic_msg *m)
{
    if (!g->auth) {
        /* An open server accepts any AUTH, so clients can always send one. */
        auth_succeeded(g, c, &m->id);
        return;
    }
    if (c->authed || c->auth_pending) {
        ic_gw_send_error(g, c->id, IC_CODE_BAD_REQUEST,
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
    if (ok && !(c->token = strdup(m->token))) {
        ic_metrics_auth_failed(g->metrics);
        finish_auth(g, c, NULL, &m->id, "out of memory");
        return;
    }
    if (delay_s > 0) {
        /* Answered by the connection's timer (lifecycle.c), which until now
         * held the AUTH time-out: the delay is shorter than any client waits. */
        c->auth_pending = ok ? 1 : 2;
        c->pending_cfg = cfg;
        c->auth_id = m->id;
        ic_server_set_timer(g->srv, c->id, (int)(delay_s * 1000) + 1);
        return;
    }
    finish_auth(g, c, ok ? &cfg : NULL, &m->id, "invalid token");
}

void ic_gw_finish_pending_auth(ic_gateway *g, client_conn *c)
{
    if (c->auth_pending != 1) {
        finish_auth(g, c, NULL, &c->auth_id,
                    "invalid token (too many failed attempts from this network: answers are "
                    "delayed)");
        return;
    }
    /* The tokens file may have been reloaded while the answer waited: a
     * token revoked meanwhile does not get in, and limits are the new ones. */
    ic_client_cfg cfg;
    if (ic_auth_check(g->auth, c->token, &cfg) < 0 ||
        strcmp(cfg.name, c->pending_cfg.name) != 0) {
        finish_auth(g, c, NULL, &c->auth_id, "token revoked");
        return;
    }
    c->pending_cfg = cfg;
    finish_auth(g, c, &c->pending_cfg, &c->auth_id, NULL);
}

int ic_gw_session_open(ic_gateway *g, const char *client_key, int limit, const char *system,
                       gw_session **out, bool *at_limit)
{
    return ic_gw_session_open_turns(g, 0, client_key, limit, system, NULL, 0, NULL, out,
                                    at_limit);
}

int ic_gw_session_open_on(ic_gateway *g, int model, const char *client_key, int limit,
                          const char *system, gw_session **out, bool *at_limit)
{
    return ic_gw_session_open_turns(g, model, client_key, limit, system, NULL, 0, NULL, out,
                                    at_limit);
}

int ic_gw_session_open_turns(ic_gateway *g, int model, const char *client_key, int limit,
                             const char *system, const ic_turn *turns, int n_turns,
                             const ic_event *kv, gw_session **out, bool *at_limit)
{
    ic_sched *sched = model >= 0 && model < g->models.n ? g->models.m[model].sched : NULL;
    *out = NULL;
    *at_limit = false;
    client_count *cc = count_of(g, client_key, true);
    if (!cc)
        return IC_ERR_NOMEM;
    if (cc->n >= limit) {
        *at_limit = true;
        return IC_ERR_CAPACITY;
    }
    gw_session *ss = calloc(1, sizeof *ss);
    uint64_t id = 0;
    int rc = !sched ? IC_ERR_NOT_FOUND
             : ss   ? ic_sched_open_session_kv(sched, system, turns, n_turns,
                                               kv ? kv->kv : NULL, kv ? kv->kv_len : 0,
                                               kv ? kv->hist : NULL, kv ? kv->n_hist : 0, &id)
                    : IC_ERR_NOMEM;
    if (rc == 0 && ic_idmap_put(&g->sessions, id, ss) < 0) {
        ic_sched_close_session(sched, id, IC_CLOSE_CLIENT);
        rc = IC_ERR_NOMEM;
    }
    if (rc < 0) {
        free(ss);
        count_release(g, cc);
        return rc;
    }
    ss->id = id;
    ss->last_used_ms = ic_now_ms();
    snprintf(ss->sid, sizeof ss->sid, "s%llu", (unsigned long long)id);
    snprintf(ss->client, sizeof ss->client, "%s", client_key);
    cc->n++;
    *out = ss;
    return 0;
}

int ic_gw_session_recount(ic_gateway *g, gw_session *ss, const char *client_key, int limit)
{
    client_count *to = client_key[0] ? count_of(g, client_key, true) : NULL;
    if (client_key[0] && !to)
        return IC_ERR_NOMEM;
    if (to && to->n >= limit)
        return IC_ERR_CAPACITY;
    client_count *from = ss->client[0] ? count_of(g, ss->client, false) : NULL;
    if (from && from->n > 0)
        from->n--;
    if (to)
        to->n++;
    if (from && from != to)
        count_release(g, from);
    snprintf(ss->client, sizeof ss->client, "%s", client_key);
    return 0;
}

static void on_create_session(ic_gateway *g, client_conn *c, ic_msg *m)
{
    gw_session *ss;
    bool at_limit = false;
    int model = ic_models_find(&g->models, m->model);
    if (model < 0) {
        char msg[200];
        snprintf(msg, sizeof msg, "no model named '%.64s' on this server", m->model);
        ic_gw_send_error(g, c->id, IC_CODE_MODEL_NOT_FOUND, msg, NULL, &m->id);
        return;
    }
    int rc = ic_gw_session_open_on(g, model, c->count_key, c->max_sessions, m->system, &ss,
                                   &at_limit);
    if (rc < 0) {
        char msg[128];
        enum ic_proto_code code = at_limit ? IC_CODE_SESSION_LIMIT : ic_proto_code_from_err(rc);
        if (at_limit)
            snprintf(msg, sizeof msg, "client %s already holds its limit of %d sessions",
                     g->auth ? c->client.name : "(this connection)", c->max_sessions);
        else
            snprintf(msg, sizeof msg, "%s",
                     code == IC_CODE_CAPACITY ? "the server holds its maximum number of sessions"
                                              : ic_strerror(rc));
        ic_gw_send_error(g, c->id, code, msg, NULL, &m->id);
        return;
    }
    ss->conn_id = c->id;
    ss->defaults = m->params; /* take the strings over */
    memset(&m->params, 0, sizeof m->params);
    ss->tools_json = m->tools_json;
    m->tools_json = NULL;
    char token[65];
    /* Durable sessions are the first model's only: a record names no model,
     * and its KV fingerprint is that model's (docs/protocol.md). */
    if (g->store && model == 0 && (rc = ic_gw_durable_attach(g, ss, m->system, token)) < 0) {
        ic_sched_close_session(g->sched, ss->id, IC_CLOSE_CLIENT);
        ss->closing = true;
        ss->conn_id = 0;
        ic_gw_send_error(g, c->id, IC_CODE_INTERNAL, ic_strerror(rc), NULL, &m->id);
        return;
    }
    if (g->opts.session_idle_timeout_s > 0)
        ic_gw_arm_tick(g, true);
    ic_log_ctx lc = session_ctx(ss, false);
    ic_log_for(IC_LOG_INFO, &lc, "session created%s", m->system ? " with a system prompt" : "");
    ic_sched_opts so;
    ic_sched_get_opts(ic_gw_sched(g, ss->id), &so);
    ic_gw_send_json(g, c->id, ic_proto_session_created_model(
                                  ss->sid, (int)so.n_ctx_per_session, g->models.m[model].name,
                                  ss->dur ? token : NULL, &m->id));
    memset(token, 0, sizeof token);
}

uint64_t ic_gw_prefix_group(const ic_gateway *g, const char *client)
{
    if (g->opts.prompt_cache == 0)
        return 0;
    if (!g->opts.prompt_cache_per_client)
        return 1;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const unsigned char *c = (const unsigned char *)client; *c; c++)
        h = (h ^ *c) * 1099511628211ull;
    return h | 1ull << 63;
}

int ic_gw_session_submit(ic_gateway *g, gw_session *ss, const char *prompt, bool raw,
                         const ic_gen_params *gp)
{
    uint64_t rid = ++g->next_request;
    ic_models_make_room(&g->models, ic_models_index_of(ss->id), &g->opts.models_budget,
                        ic_now_ms());
    int rc = ic_sched_infer(ic_gw_sched(g, ss->id), ss->id, rid, prompt, raw, gp);
    if (rc < 0)
        return rc;
    ss->submitted_ms = ic_now_ms();
    ss->running = true;
    ss->abort_sent = false;
    ss->muted = false;
    ss->lost_checks = 0;
    ss->request_id = rid;
    snprintf(ss->rid, sizeof ss->rid, "r%llu", (unsigned long long)rid);
    ic_gw_arm_tick(g, true); /* the sweep watches for a lost END */
    return 0;
}

static void on_infer(ic_gateway *g, client_conn *c, const ic_msg *m)
{
    gw_session *ss = own_session(g, c, m->session_id);
    if (!ss) {
        ic_gw_send_error(g, c->id, IC_CODE_SESSION_NOT_FOUND, "no such session", m->session_id,
                         &m->id);
        return;
    }
    ss->last_used_ms = ic_now_ms();
    if (ss->running) {
        ic_gw_send_error(g, c->id, IC_CODE_BUSY,
                         "a generation is already running in this session", ss->sid, &m->id);
        return;
    }
    ic_gen_params gp;
    ic_proto_gen_params(&ss->defaults, &m->params, c->client.priority, &gp);
    gw_infer_extras x;
    char why[200] = "";
    int xrc = ic_gw_infer_extras(ss, m, &gp, &x, why, sizeof why);
    if (xrc < 0) {
        ic_gw_send_error(g, c->id, xrc == IC_ERR_NOMEM ? IC_CODE_INTERNAL : IC_CODE_BAD_REQUEST,
                         why, ss->sid, &m->id);
        return;
    }
    int rc = ic_gw_session_submit(g, ss, m->prompt, m->raw, &gp);
    ic_gw_infer_extras_free(&x);
    if (rc < 0) {
        ic_gw_send_error(g, c->id, ic_proto_code_from_err(rc),
                         rc == IC_ERR_OVERLOADED ? "too much work is waiting; try again later"
                                                 : ic_strerror(rc),
                         ss->sid, &m->id);
        return;
    }
    ss->infer_id = m->id;
    ic_gw_durable_on_infer(ss, m->prompt, m->raw);
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
        ic_gw_send_error(g, c->id, IC_CODE_SESSION_NOT_FOUND, "no such session", m->session_id,
                         &m->id);
        return;
    }
    ss->last_used_ms = ic_now_ms();
    if (!ss->running) {
        ic_gw_send_error(g, c->id, IC_CODE_NOT_RUNNING,
                         "no generation is running in this session", ss->sid, &m->id);
        return;
    }
    /* The reply is the generation's END with reason "abort". */
    if (!ss->abort_sent && ic_sched_abort(ic_gw_sched(g, ss->id), ss->id) == 0)
        ss->abort_sent = true;
}

static void on_close_session(ic_gateway *g, client_conn *c, const ic_msg *m)
{
    gw_session *ss = own_session(g, c, m->session_id);
    if (!ss) {
        ic_gw_send_error(g, c->id, IC_CODE_SESSION_NOT_FOUND, "no such session", m->session_id,
                         &m->id);
        return;
    }
    if (ic_sched_close_session(ic_gw_sched(g, ss->id), ss->id, IC_CLOSE_CLIENT) < 0) {
        ic_gw_send_error(g, c->id, IC_CODE_INTERNAL, "could not close the session", ss->sid,
                         &m->id);
        return;
    }
    ss->closing = true;
    ss->close_id = m->id;
}

static void fill_sessions(ic_gateway *g, client_conn *c, ic_metrics_session *out, int *n, int cap)
{
    *n = 0;
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (*n < cap && ic_idmap_next(&g->sessions, &it, NULL, &val)) {
        gw_session *ss = val;
        if (ss->conn_id != c->id || ss->closing)
            continue;
        ic_metrics_session *ms = &out[(*n)++];
        snprintf(ms->session_id, sizeof ms->session_id, "%s", ss->sid);
        ic_sched *s = ic_gw_sched(g, ss->id);
        if (ic_sched_session_info(s, ss->id, &ms->state, &ms->n_ctx_used) < 0) {
            ms->state = IC_SESSION_IDLE;
            ms->n_ctx_used = 0;
        }
        if (ss->running && ms->state == IC_SESSION_IDLE)
            ms->state = IC_SESSION_QUEUED; /* submitted, not yet seen by the scheduler */
    }
}

const char *ic_gw_server_state(const ic_gateway *g, const ic_sched_stats *st,
                               const ic_hw_sample *hw)
{
    if (g->engine_dead)
        return "failed";
    if (!g->sched || st->state == IC_SCHED_WAKING)
        return "loading";
    if (g->stalled)
        return "stuck";
    /* The thermal guard reads the GPU only while work runs: an idle server
     * answering from a hot GPU says so from the reading just taken. */
    if (st->state == IC_SCHED_READY && hw && g->temp_limit_c > 0 &&
        hw->max_temperature_c >= g->temp_limit_c)
        return ic_sched_state_name(IC_SCHED_THROTTLED);
    return ic_sched_state_name(st->state);
}

void ic_gw_send_metrics(ic_gateway *g, client_conn *c, const ic_msg_id *id)
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
        .temp_limit_c = g->temp_limit_c,
        .gpus = hw.gpus,
        .n_gpus = hw.n_gpus,
        .cpu_pct = hw.cpu_pct,
        .ram_used_bytes = hw.ram_used_bytes,
        .ram_total_bytes = hw.ram_total_bytes,
        .sessions = list,
    };
    ic_models_stats(&g->models, &mm.engine);
    mm.state = ic_gw_server_state(g, &mm.engine, &hw);
    fill_sessions(g, c, list, &mm.n_sessions, MAX_LISTED);
    ic_gw_send_json(g, c->id, ic_proto_metrics(&mm, id));
    free(list);
}

static void on_subscribe(ic_gateway *g, client_conn *c, const ic_msg *m)
{
    c->metrics_interval_ms = m->interval_ms;
    c->metrics_id = m->id;
    ic_server_set_timer(g->srv, c->id, m->interval_ms);
    if (m->interval_ms > 0)
        ic_gw_send_metrics(g, c, &m->id);
}

static void dispatch(ic_gateway *g, client_conn *c, ic_msg *m)
{
    if (!c->authed && m->type != IC_MSG_AUTH) {
        ic_gw_send_error(g, c->id, IC_CODE_UNAUTHENTICATED, "send AUTH with a valid token first",
                         NULL, &m->id);
        return;
    }
    /* Nothing reaches a scheduler whose backend failed: it would never answer. */
    if (g->engine_dead && (m->type == IC_MSG_CREATE_SESSION || m->type == IC_MSG_INFER ||
                           m->type == IC_MSG_CLOSE_SESSION || m->type == IC_MSG_RESUME_SESSION)) {
        ic_gw_send_error(g, c->id, IC_CODE_INTERNAL, IC_GW_ENGINE_DEAD_MSG, m->session_id,
                         &m->id);
        return;
    }
    switch (m->type) {
    case IC_MSG_AUTH: on_auth(g, c, m); break;
    case IC_MSG_CREATE_SESSION: on_create_session(g, c, m); break;
    case IC_MSG_CLOSE_SESSION: on_close_session(g, c, m); break;
    case IC_MSG_INFER: on_infer(g, c, m); break;
    case IC_MSG_ABORT: on_abort(g, c, m); break;
    case IC_MSG_METRICS: ic_gw_send_metrics(g, c, &m->id); break;
    case IC_MSG_SUBSCRIBE_METRICS: on_subscribe(g, c, m); break;
    case IC_MSG_RESUME_SESSION: ic_gw_durable_resume(g, c, m); break;
    case IC_MSG_MODEL_LOAD:
    case IC_MSG_MODEL_UNLOAD: ic_gw_on_model_admin(g, c, m); break;
    }
}

/* --- connections ---------------------------------------------------- */

/* Unauthenticated connections from addr. */
static int preauth_from(const ic_gateway *g, const char *addr)
{
    int n = 0;
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (ic_idmap_next(&g->conns, &it, NULL, &val)) {
        const client_conn *c = val;
        n += !c->authed && strcmp(c->addr, addr) == 0; /* closing ones too, as n_preauth */
    }
    return n;
}

/* Why a new connection from addr may not open now, or NULL. */
static const char *refusal(const ic_gateway *g, const char *addr)
{
    if (g->opts.max_connections > 0 && (int)ic_idmap_len(&g->conns) >= g->opts.max_connections)
        return "too many connections";
    if (!g->auth)
        return NULL;
    if (g->opts.max_preauth > 0 && g->n_preauth >= g->opts.max_preauth)
        return "too many unauthenticated connections";
    if (g->opts.max_preauth_per_ip > 0 && preauth_from(g, addr) >= g->opts.max_preauth_per_ip)
        return "too many unauthenticated connections from this address";
    return NULL;
}

void ic_gw_on_open(ic_gateway *g, uint64_t id, const char *addr, const char *forwarded_for)
{
    /* The address the throttle and the per-address cap use: the peer, or
     * through trusted proxies the client X-Forwarded-For names. */
    char client_addr[IC_CLIENT_ADDR_MAX];
    ic_client_addr(addr, forwarded_for, g->proxies, client_addr, sizeof client_addr);
    const char *why = refusal(g, client_addr);
    if (why) {
        ic_log_warn("connection %llu from %s refused: %s", (unsigned long long)id, client_addr,
                    why);
        ic_server_close(g->srv, id, CLOSE_TRY_LATER, why);
        return;
    }
    client_conn *c = calloc(1, sizeof *c);
    if (!c || ic_idmap_put(&g->conns, id, c) < 0) {
        free(c);
        ic_server_close(g->srv, id, CLOSE_INTERNAL, "out of memory");
        return;
    }
    c->id = id;
    snprintf(c->addr, sizeof c->addr, "%s", client_addr);
    c->authed = g->auth == NULL;
    g->n_preauth += !c->authed;
    snprintf(c->client.name, sizeof c->client.name, "anonymous");
    /* Without tokens there are no client identities: each connection is
     * its own client for the per-client limit. */
    snprintf(c->count_key, sizeof c->count_key, "#%llu", (unsigned long long)id);
    c->client.priority = IC_PRIORITY_HIGH;
    c->max_sessions = ic_gw_default_max_sessions(g);
    ic_engine_info info;
    ic_hello h = make_hello(g, &info);
    if (g->auth) {
        h.model_name = NULL; /* said in AUTH_SUCCESS, to clients with a token */
        h.n_models = 0;
    }
    ic_gw_send_json(g, id, ic_proto_hello(&h));
    if (!c->authed)
        ic_server_set_timer(g->srv, id, g->opts.auth_timeout_s * 1000);
}

void ic_gw_on_message(ic_gateway *g, uint64_t id, const char *data, size_t len, bool binary)
{
    client_conn *c = ic_idmap_get(&g->conns, id);
    if (!c || c->closing || g->stopping)
        return;
    if (!c->authed && len > PREAUTH_MAX_MESSAGE_BYTES) {
        char msg[96];
        snprintf(msg, sizeof msg, "before AUTH a message may hold at most %d bytes",
                 PREAUTH_MAX_MESSAGE_BYTES);
        ic_gw_send_error(g, id, IC_CODE_MESSAGE_TOO_LARGE, msg, NULL, NULL);
        ic_gw_close_conn(g, c, CLOSE_TOO_BIG, "message too large");
        return;
    }
    if (binary) {
        ic_gw_send_error(g, id, IC_CODE_BAD_REQUEST,
                         "binary frames are not supported; send JSON text", NULL, NULL);
        return;
    }
    ic_msg m;
    ic_proto_error pe;
    if (ic_proto_parse(data, len, &m, &pe) < 0) {
        ic_gw_send_error(g, id, pe.code, pe.message, NULL, &pe.id);
        return;
    }
    dispatch(g, c, &m);
    ic_msg_free(&m);
}

void ic_gw_on_too_large(ic_gateway *g, uint64_t id)
{
    client_conn *c = ic_idmap_get(&g->conns, id);
    if (!c || c->closing)
        return;
    char msg[96];
    snprintf(msg, sizeof msg, "message exceeds %zu bytes", g->opts.max_message_bytes);
    ic_gw_send_error(g, id, IC_CODE_MESSAGE_TOO_LARGE, msg, NULL, NULL);
    ic_gw_close_conn(g, c, CLOSE_TOO_BIG, "message too large");
}

static void conn_free(client_conn *c)
{
    if (c->token) {
        volatile char *p = c->token;
        while (*p)
            *p++ = 0;
        free(c->token);
    }
    free(c);
}

/* The connection is gone: its sessions close (their generations stop
 * within a step); their records go when SESSION_CLOSED comes back. */
void ic_gw_on_close(ic_gateway *g, uint64_t id)
{
    client_conn *c = ic_idmap_del(&g->conns, id);
    if (!c)
        return;
    g->n_preauth -= !c->authed;
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (ic_idmap_next(&g->sessions, &it, NULL, &val)) {
        gw_session *ss = val;
        if (ss->conn_id != id || ic_gw_durable_park(g, ss))
            continue;
        ss->conn_id = 0;
        if (!ss->closing && g->sched && !g->stopping)
            ic_sched_close_session(ic_gw_sched(g, ss->id), ss->id, IC_CLOSE_DISCONNECT);
        ss->closing = true;
    }
    count_release(g, count_of(g, c->count_key, false));
    conn_free(c);
    if (g->stopping && ic_server_n_connections(g->srv) == 0)
        ic_server_quit(g->srv);
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
    if (ss->on_event) {
        if (ev->type == IC_EVENT_END)
            observe_end(g, ss, ev);
        else if (ev->type == IC_EVENT_TOKEN && ev->index > 0)
            ic_metrics_observe(g->metrics, IC_HIST_INTER_TOKEN, ev->gap_ms / 1e3);
        ss->on_event(g, ss, ev); /* frees its own state at SESSION_CLOSED */
        if (ev->type == IC_EVENT_SESSION_CLOSED)
            session_free(g, ss);
        return;
    }
    ic_gw_durable_on_event(g, ss, ev); /* before SESSION_CLOSED frees ss */
    uint64_t conn = ss->muted && ev->type != IC_EVENT_SESSION_CLOSED ? 0 : ss->conn_id;
    switch (ev->type) {
    case IC_EVENT_TOKEN:
        if (ev->index > 0)
            ic_metrics_observe(g->metrics, IC_HIST_INTER_TOKEN, ev->gap_ms / 1e3);
        if (conn && ss->running && ev->request_id == ss->request_id)
            ic_gw_send_json(g, conn, ic_proto_token_full(ss->sid, ss->rid, ev->index, ev->text,
                                                         ev->text_len,
                                                         ev->reasoning ? "reasoning" : NULL,
                                                         ev->logprobs, &ss->infer_id));
        break;
    case IC_EVENT_END:
        if (!ss->running || ev->request_id != ss->request_id)
            break; /* a generation given up as lost (its END came after all) */
        ss->running = false;
        ss->last_used_ms = ic_now_ms();
        observe_end(g, ss, ev);
        if (conn) {
            char *end = ic_proto_end_parsed(ss->sid, ss->rid, ev->reason, &ev->stats,
                                            ev->parsed, &ss->infer_id);
            if (!end || !ic_gw_durable_hold_end(g, ss, end))
                ic_gw_send_json(g, conn, end);
        }
        break;
    case IC_EVENT_ERROR:
        if (!ss->running || ev->request_id != ss->request_id)
            break;
        ss->running = false;
        ss->last_used_ms = ic_now_ms();
        if (conn)
            ic_gw_send_error(g, conn, ic_proto_code_from_err(ev->err), ev->message, ss->sid,
                             &ss->infer_id);
        break;
    case IC_EVENT_SESSION_CLOSED: {
        const char *reason = ss->close_reason ? ss->close_reason
                                              : ic_close_reason_name(ev->close_reason);
        ic_log_ctx lc = session_ctx(ss, false);
        ic_log_for(IC_LOG_INFO, &lc, "session closed: %s", reason);
        if (conn)
            ic_gw_send_json(g, conn, ic_proto_session_closed(ss->sid, reason, &ss->close_id));
        session_free(g, ss);
        break;
    }
    }
}

void ic_gw_fail_running(ic_gateway *g)
{
    ic_gw_drain_events(g); /* what was already sampled still goes out */
    /* Ids first: an HTTP request's handler may free its session, or open
     * another, while its ERROR is routed. */
    size_t n = 0, cap = ic_idmap_len(&g->sessions);
    uint64_t *ids = calloc(cap ? cap : 1, sizeof *ids);
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    uint64_t id;
    while (ids && n < cap && ic_idmap_next(&g->sessions, &it, &id, &val))
        if (((gw_session *)val)->running)
            ids[n++] = id;
    for (size_t i = 0; i < n; i++) {
        gw_session *ss = ic_idmap_get(&g->sessions, ids[i]);
        if (!ss || !ss->running)
            continue;
        ic_event ev = {.type = IC_EVENT_ERROR, .session_id = ss->id,
                       .request_id = ss->request_id, .err = IC_ERR_DECODE};
        snprintf(ev.message, sizeof ev.message, "%s", IC_GW_ENGINE_DEAD_MSG);
        route_event(g, &ev);
    }
    free(ids);
}

void ic_gw_drain_events(ic_gateway *g)
{
    for (int i = 0; i < g->models.n; i++) {
        ic_sched *s = g->models.m[i].sched;
        for (ic_event *ev; s && (ev = ic_sched_poll_event(s, 0));) {
            route_event(g, ev);
            ic_event_free(ev);
        }
    }
    ic_models_update_metrics(&g->models); /* a load just done is counted */
}

/* --- the sweep ------------------------------------------------------- */

/* True when the running INFER of ss has been finished by the scheduler
 * and its END will not come (the scheduler dropped it, out of memory).
 * The scheduler's session state is IDLE both before it has taken a
 * submission and after it ended it, so one look cannot tell: it must be
 * IDLE at two sweeps in a row with nothing generating or queued anywhere
 * (an idle loop takes a submission at once), or at sweeps across which the
 * loop turned twice more (a turn takes every waiting submission). */
static bool end_lost(ic_gateway *g, gw_session *ss, const ic_sched_stats *st)
{
    enum ic_session_state state;
    int n_ctx;
    if (ic_sched_session_info(ic_gw_sched(g, ss->id), ss->id, &state, &n_ctx) < 0 ||
        state != IC_SESSION_IDLE || st->state == IC_SCHED_SLEEPING ||
        st->state == IC_SCHED_WAKING) {
        ss->lost_checks = 0;
        return false;
    }
    bool quiet = st->generating + st->queued == 0;
    if (ss->lost_checks++ == 0) {
        ss->lost_advances = 0;
    } else if (quiet && ss->lost_quiet) {
        return true;
    } else if (st->last_progress_ms > ss->lost_progress_ms && ++ss->lost_advances >= 2) {
        return true;
    }
    ss->lost_progress_ms = st->last_progress_ms;
    ss->lost_quiet = quiet;
    return false;
}

void ic_gw_sweep_sessions(ic_gateway *g, double now_ms)
{
    if (!g->sched || g->stopping)
        return;
    ic_gw_drain_events(g); /* an END already queued is not lost */
    ic_sched_stats st[IC_MODELS_MAX];
    for (int i = 0; i < g->models.n; i++)
        if (g->models.m[i].sched)
            ic_sched_get_stats(g->models.m[i].sched, &st[i]);
    double idle_ms = g->opts.session_idle_timeout_s * 1000.0;
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (ic_idmap_next(&g->sessions, &it, NULL, &val)) {
        gw_session *ss = val;
        if (ss->closing || (ic_gw_durable_parked(ss) && !ss->running))
            continue; /* a parked session waits for --session-ttl */
        const ic_sched_stats *mst = &st[ic_models_index_of(ss->id)]; /* its model's */
        if (ss->running && ic_gw_sched(g, ss->id) && end_lost(g, ss, mst)) {
            ic_log_ctx lc = session_ctx(ss, true);
            ic_log_for(IC_LOG_ERROR, &lc, "generation ended without an END (out of memory)");
            if (ss->on_event) { /* an HTTP request: its handler answers and closes it */
                ic_event lost = {.type = IC_EVENT_ERROR, .session_id = ss->id,
                                 .request_id = ss->request_id, .err = IC_ERR_NOMEM};
                snprintf(lost.message, sizeof lost.message,
                         "the generation ended but its result was lost (out of memory)");
                ss->on_event(g, ss, &lost);
                continue;
            }
            ss->running = false;
            ss->last_used_ms = now_ms;
            if (ss->conn_id)
                ic_gw_send_error(g, ss->conn_id, IC_CODE_INTERNAL,
                                 "the generation ended but its result was lost (out of memory)",
                                 ss->sid, &ss->infer_id);
        } else if (!ss->running && idle_ms > 0 && now_ms - ss->last_used_ms >= idle_ms &&
                   ic_sched_close_session(ic_gw_sched(g, ss->id), ss->id, IC_CLOSE_CLIENT) == 0) {
            ss->closing = true;
            ss->close_reason = "idle_timeout";
            ss->close_id = (ic_msg_id){0};
            ic_log_ctx lc = session_ctx(ss, false);
            ic_log_for(IC_LOG_INFO, &lc, "session unused for %d s: closing",
                       g->opts.session_idle_timeout_s);
        }
    }
    ic_gw_durable_sweep(g, now_ms);
}

/* Whether the sweep has work at its next tick. */
static bool sweep_needed(const ic_gateway *g)
{
    bool idle_timeout = g->opts.session_idle_timeout_s > 0;
    if (ic_gw_durable_sweep_needed(g))
        return true;
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (ic_idmap_next(&g->sessions, &it, NULL, &val)) {
        const gw_session *ss = val;
        if (!ss->closing && (ss->running || idle_timeout))
            return true;
    }
    return false;
}

void ic_gw_arm_tick(ic_gateway *g, bool soon)
{
    enum { SWEEP_MS = 1000 };
    if (g->stopping || !g->sched)
        return;
    if (soon) {
        if (g->tick_ms > SWEEP_MS) {
            g->tick_ms = SWEEP_MS;
            ic_server_set_timer(g->srv, 0, SWEEP_MS);
        }
        return;
    }
    int ms = g->opts.watchdog_timeout_s * 250;
    if (ms < SWEEP_MS)
        ms = SWEEP_MS;
    if (sweep_needed(g))
        ms = SWEEP_MS;
    g->tick_ms = ms;
    ic_server_set_timer(g->srv, 0, ms);
}

void ic_gw_free_all(ic_gateway *g)
{
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (ic_idmap_next(&g->sessions, &it, NULL, &val)) {
        gw_session *ss = val;
        ic_req_params_free(&ss->defaults);
        ic_gw_oai_free(ss->oai);
        free(ss->cache_text);
        free(ss);
    }
    ic_idmap_free(&g->sessions);
    free(g->parked);
    g->parked = NULL;
    ic_gw_oai_free_waiting(g);
    it = IC_IDMAP_ITER_INIT;
    while (ic_idmap_next(&g->conns, &it, NULL, &val))
        conn_free(val);
    ic_idmap_free(&g->conns);
}
