/* lifecycle.c - the gateway's life (see gateway.h): create and destroy,
 * the handlers it gives the server, the model's arrival, the graceful
 * stop, the tokens reload (connections whose token went are closed), and
 * the timers: the internal watchdog with the session sweep (server timer
 * 0), the shutdown time-out, and per connection the AUTH time-out, a
 * throttled AUTH's delayed answer, or the metrics subscription.
 *
 * Thread: network thread, except the "any thread" entry points at the
 * end, which touch only atomics and ic_server_wake. Calls down into
 * gateway.c and routes.c (gateway_impl.h).
 */
#include "gateway_impl.h"
#include "clock.h"
#include "err.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

ic_gateway_opts ic_gateway_opts_default(void)
{
    return (ic_gateway_opts){
        .tokens_path = NULL,
        .max_sessions_per_client = 0,
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
        .session_idle_timeout_s = 0,
        .max_preauth_per_ip = 16,
        .max_preauth = 256,
        .max_connections = 0,
        .prompt_cache = -1,
        .web = true,
        .prompt_cache_per_client = false,
        .session_store = NULL,
        .session_ttl_s = 3600,
        .session_ram_bytes = (size_t)1024 << 20,
    };
}

/* --- timers ---------------------------------------------------------- */


/* The scheduler is stuck when work waits and its loop has not turned for
 * watchdog_timeout_s. */
static void check_watchdog(ic_gateway *g)
{
    if (!g->sched || g->opts.watchdog_timeout_s <= 0)
        return;
    ic_sched_stats st;
    ic_models_stats(&g->models, &st);
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
        ic_gw_sweep_sessions(g, ic_now_ms());
        ic_gw_arm_tick(g, false);
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
    if (!c || c->closing)
        return;
    if (c->auth_pending) {
        ic_gw_finish_pending_auth(g, c);
        return;
    }
    if (!c->authed) {
        ic_gw_send_error(g, id, IC_CODE_UNAUTHENTICATED, "no AUTH in time", NULL, NULL);
        ic_gw_close_conn(g, c, CLOSE_AUTH_TIMEOUT, "authentication timeout");
        return;
    }
    if (c->metrics_interval_ms > 0 && g->sched && !g->stopping) {
        ic_gw_send_metrics(g, c, &c->metrics_id);
        ic_server_set_timer(g->srv, id, c->metrics_interval_ms);
    }
}

/* --- stop and reload ------------------------------------------------- */

/* Graceful stop: the scheduler ends everything (END shutdown, then
 * SESSION_CLOSED shutdown), those events go out, then every connection
 * closes with 1001. The server loop ends when the last one has gone or
 * the shutdown time-out passes. */
/* The second half of the stop, once the scheduler has said everything
 * (END shutdown, SESSION_CLOSED) and it has been routed: close every
 * connection with 1001 after what is queued for it. */
static void close_for_stop(ic_gateway *g)
{
    g->conns_closed = true;
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (ic_idmap_next(&g->conns, &it, NULL, &val)) {
        client_conn *c = val;
        if (!c->closing)
            ic_gw_close_conn(g, c, CLOSE_GOING_AWAY, "server shutting down");
    }
}

/* Graceful stop, first half: the scheduler is asked to stop without
 * waiting for its step to end (the network thread never blocks on it);
 * its last events arrive through the wake-up, and h_wake closes the
 * connections then. The shutdown time-out covers both halves. */
static void begin_stop(ic_gateway *g)
{
    g->stopping = true;
    ic_log_info("shutting down: ending generations and closing %d connections",
                ic_server_n_connections(g->srv));
    ic_gw_durable_stop(g); /* its evictions go before the scheduler's shutdown */
    ic_models_request_stop(&g->models);
    g->tick_ms = 0;
    ic_server_set_timer(g->srv, 0, (int)(g->opts.shutdown_timeout_s * 1000));
    if (!g->sched)
        close_for_stop(g);
}

/* After a reload: a connection whose token is no longer in the file, or
 * now names another client, closes with 4003; the others take their
 * client's new limits. */
static void recheck_connections(ic_gateway *g)
{
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (ic_idmap_next(&g->conns, &it, NULL, &val)) {
        client_conn *c = val;
        if (!c->authed || c->closing || !c->token)
            continue;
        ic_client_cfg cfg;
        if (ic_auth_check(g->auth, c->token, &cfg) < 0 ||
            strcmp(cfg.name, c->client.name) != 0) {
            ic_log_info("connection %llu (client %s): token revoked, closing",
                        (unsigned long long)c->id, c->client.name);
            ic_gw_send_error(g, c->id, IC_CODE_UNAUTHENTICATED, "token revoked", NULL, NULL);
            ic_gw_close_conn(g, c, CLOSE_TOKEN_REVOKED, "token revoked");
            continue;
        }
        c->client.priority = cfg.priority;
        c->client.max_sessions = cfg.max_sessions;
        c->max_sessions = cfg.max_sessions > 0 ? cfg.max_sessions : ic_gw_default_max_sessions(g);
    }
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
    recheck_connections(g);
}

/* SIGHUP also picks up a renewed TLS certificate (--tls-cert). */
static void reload_tls(ic_gateway *g)
{
    if (!ic_server_tls(g->srv))
        return;
    char info[300], err[300];
    if (ic_server_reload_tls(g->srv, info, sizeof info, err, sizeof err) < 0)
        ic_log_error("TLS reload failed, keeping the previous certificate: %s", err);
    else
        ic_log_info("TLS certificate reloaded: %s", info);
}

static void attach(ic_gateway *g, ic_sched *s)
{
    g->models = g->pending_models;
    for (int i = 0; i < g->models.n; i++)
        g->model_names[i] = g->models.m[i].name;
    g->sched = s;
    g->chat = g->models.m[0].chat;
    snprintf(g->model_id, sizeof g->model_id, "%s", g->models.m[0].name);
    g->model_created_s = (int64_t)time(NULL);
    ic_sched_opts so;
    ic_sched_get_opts(s, &so);
    g->n_ctx_per_session = (int)so.n_ctx_per_session;
    g->temp_limit_c = so.temp_limit_c;
    ic_engine_info info;
    ic_sched_model_info(s, &info);
    g->n_gpu_layers = info.n_gpu_layers;
    g->max_sessions = so.max_sessions;
    ic_gw_arm_tick(g, false);
    ic_log_info("ready: model %s, %d sessions of %u tokens, listening on %s", info.name,
                so.max_sessions, so.n_ctx_per_session, g->opts.listen_url);
    for (int i = 1; i < g->models.n; i++)
        ic_log_info("also serving model %s", g->models.m[i].name);
}

/* The backend failed (ic_gateway_engine_failed): say so and end what runs. */
static void engine_died(ic_gateway *g)
{
    g->engine_dead = true;
    ic_log_error("the model's backend failed: %s; running generations end with an error, "
                 "/health says failed, and the server must be restarted (systemd's watchdog "
                 "does that when the unit has WatchdogSec=)", g->engine_failed_why);
    ic_gw_fail_running(g);
    ic_gw_oai_fail_waiting(g);
}

static void take_added_models(ic_gateway *g);

static void h_wake(void *ud)
{
    ic_gateway *g = ud;
    if (atomic_load(&g->engine_failed) && !g->engine_dead && g->sched)
        engine_died(g);
    ic_sched *s = atomic_exchange(&g->attach_pending, NULL);
    if (s && !g->stopping)
        attach(g, s);
    if (g->sched && !g->stopping)
        take_added_models(g);
    if (atomic_exchange(&g->reload_requested, false)) {
        reload_tokens(g);
        reload_tls(g);
    }
    if (atomic_load(&g->load_failed) && !g->stopping) {
        g->failed = true;
        begin_stop(g);
    }
    if (atomic_load(&g->stop_requested) && !g->stopping)
        begin_stop(g);
    /* read before the drain; a failed backend's scheduler never stops */
    bool done = g->stopping && (g->engine_dead || ic_models_stopped(&g->models));
    ic_gw_drain_events(g);
    ic_gw_durable_drain(g);
    if (done && !g->conns_closed)
        close_for_stop(g);
    if (g->conns_closed && ic_server_n_connections(g->srv) == 0)
        ic_server_quit(g->srv);
}

/* --- the server's handlers ------------------------------------------- */

static bool h_accept(void *ud)
{
    ic_gateway *g = ud;
    return g->sched && !g->stopping && !g->engine_dead;
}

static void h_open(void *ud, uint64_t id, const char *addr, const char *xff)
{
    ic_gw_on_open(ud, id, addr, xff);
}

static void h_message(void *ud, uint64_t id, const char *data, size_t len, bool binary)
{
    ic_gw_on_message(ud, id, data, len, binary);
}

static void h_too_large(void *ud, uint64_t id) { ic_gw_on_too_large(ud, id); }

static void h_close(void *ud, uint64_t id) { ic_gw_on_close(ud, id); }

static void h_http(void *ud, const ic_http_request *req, ic_http_response *resp)
{
    ic_gw_on_http(ud, req, resp);
}

static void h_http_gone(void *ud, uint64_t id) { ic_gw_oai_gone(ud, id); }

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
        .on_http_gone = h_http_gone,
    };
}

/* --- lifetime ---------------------------------------------------------- */

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
    if (rc == 0 && opts->session_store)
        rc = ic_gw_durable_open(g, err, errlen);
    if (rc < 0) {
        ic_gateway_destroy(g);
        return rc;
    }
    *out = g;
    return 0;
}

void ic_gateway_destroy(ic_gateway *g)
{
    if (!g)
        return;
    ic_gw_durable_close(g);
    ic_gw_free_all(g);
    ic_auth_destroy(g->auth);
    ic_throttle_destroy(g->throttle);
    ic_addr_list_destroy(g->proxies);
    ic_gpu_monitor_destroy(g->hw);
    ic_metrics_destroy(g->metrics);
    free(g->counts);
    free(g);
}

void ic_gateway_set_server(ic_gateway *g, ic_server *srv) { g->srv = srv; }

void ic_gateway_finish(ic_gateway *g) { ic_gw_durable_finish(g); }

bool ic_gateway_failed(const ic_gateway *g) { return g->failed; }

bool ic_gateway_stalled(const ic_gateway *g) { return g->stalled; }

bool ic_gateway_engine_dead(const ic_gateway *g) { return g->engine_dead; }

/* --- any thread ---------------------------------------------------------- */

void ic_gateway_wake(void *ud)
{
    ic_gateway *g = ud;
    ic_server_wake(g->srv);
}

void ic_gateway_attach(ic_gateway *g, ic_sched *sched, const struct ic_chat *chat,
                       const char *model_id)
{
    ic_gateway_model m = {.sched = sched, .chat = chat, .name = model_id};
    ic_gateway_attach_models(g, &m, 1);
}

void ic_gateway_attach_models(ic_gateway *g, const ic_gateway_model *models, int n)
{
    ic_models *pm = &g->pending_models;
    pm->n = n < IC_MODELS_MAX ? n : IC_MODELS_MAX;
    for (int i = 0; i < pm->n; i++) {
        pm->m[i] = (ic_model_entry){.sched = models[i].sched, .chat = models[i].chat,
                                    .created_s = (int64_t)time(NULL), .resident = true,
                                    .vram_bytes = models[i].vram_bytes,
                                    .ram_bytes = models[i].ram_bytes};
        snprintf(pm->m[i].name, sizeof pm->m[i].name, "%s",
                 models[i].name ? models[i].name : "");
    }
    atomic_store(&g->n_published, pm->n);
    atomic_store(&g->attach_pending, pm->m[0].sched); /* publishes pending_models */
    ic_gateway_wake(g);
}

void ic_gateway_add_model(ic_gateway *g, const ic_gateway_model *model)
{
    int n = atomic_load(&g->n_published);
    if (n >= IC_MODELS_MAX)
        return;
    ic_model_entry *e = &g->pending_models.m[n];
    *e = (ic_model_entry){.sched = model->sched, .chat = model->chat,
                          .created_s = (int64_t)time(NULL), .resident = true,
                          .vram_bytes = model->vram_bytes, .ram_bytes = model->ram_bytes};
    snprintf(e->name, sizeof e->name, "%s", model->name ? model->name : "");
    atomic_store(&g->n_published, n + 1); /* publishes the entry */
    ic_gateway_wake(g);
}

/* Models added after the first attach (SIGHUP's rescan) join the list. */
static void take_added_models(ic_gateway *g)
{
    int n = atomic_load(&g->n_published);
    for (int i = g->models.n; i < n; i++) {
        g->models.m[i] = g->pending_models.m[i];
        g->model_names[i] = g->models.m[i].name;
        g->models.n = i + 1;
        ic_log_info("now also serving model %s", g->models.m[i].name);
    }
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

void ic_gateway_engine_failed(ic_gateway *g, const char *why)
{
    if (atomic_exchange(&g->engine_fail_claimed, true))
        return;
    snprintf(g->engine_failed_why, sizeof g->engine_failed_why, "%s", why ? why : "?");
    atomic_store(&g->engine_failed, true);
    ic_server_wake(g->srv);
}

void ic_gateway_request_reload(ic_gateway *g)
{
    atomic_store(&g->reload_requested, true);
    ic_gateway_wake(g);
}
