/* routes.c - the gateway's HTTP routes: one table row per route (method,
 * path, who may call it, handler) and the handlers for /health and
 * /metrics (and /health/weight, HAProxy's agent-check). Bodies come from protocol.c (JSON) and metrics.c (Prometheus
 * text); nothing here formats either.
 *
 * Who may read /metrics: with --metrics-token, a request with
 * "Authorization: Bearer <that token>"; on a server with --tokens, also
 * any client token of the tokens file (every client may read the
 * counters; there is no per-client right). A server with neither serves
 * it to anyone, as before. /health is public.
 *
 * Thread: network thread (the server's on_http). Owns nothing.
 */
#include "gateway_impl.h"
#include "openai.h"
#include "web.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Who may call a route. */
enum route_auth {
    ROUTE_PUBLIC,
    ROUTE_METRICS,             /* see the file comment */
};

typedef struct route {
    const char *method;
    const char *allow;         /* the Allow header of a 405 on this path */
    const char *path;
    enum route_auth auth;
    void (*handler)(ic_gateway *g, const ic_http_request *req, ic_http_response *resp);
} route;

static void json_response(ic_http_response *resp, int status, char *body)
{
    resp->status = status;
    resp->content_type = "application/json";
    resp->body = body;
    resp->len = body ? strlen(body) : 0;
}

static void health(ic_gateway *g, const ic_http_request *req, ic_http_response *resp)
{
    (void)req;
    ic_sched_stats st = {0};
    if (g->sched)
        ic_models_stats(&g->models, &st);
    const char *state = g->stopping ? "stopping" : ic_gw_server_state(g, &st, NULL);
    bool ok = g->sched && !g->stopping && !g->stalled && !g->engine_dead;
    json_response(resp, ok ? 200 : 503, ic_proto_http_health(ok ? "ok" : state, state));
}

/* HAProxy's agent words for this replica (deploy/haproxy/haproxy.cfg):
 * serving: "up ready P%" with P = 100 - 90 x the load (sessions held by
 * clients, not the prompt cache's parked ones, plus generations queued,
 * over --max-sessions; capped at 1), a quarter of that while the thermal
 * guard holds new work; start-up loading, a stuck scheduler: down (and
 * ready, to undo a drain); stopping: drain and down. Every answer names
 * both states, because HAProxy lets only the agent undo what the agent set. */
static void agent_words(ic_gateway *g, char *out, size_t cap)
{
    if (g->stopping || !g->sched || g->stalled || g->engine_dead) {
        snprintf(out, cap, "%s", g->stopping      ? "drain down #stopping"
                                 : !g->sched      ? "ready down #loading"
                                 : g->engine_dead ? "ready down #failed"
                                                  : "ready down #stuck");
        return;
    }
    ic_sched_stats st = {0};
    ic_hw_sample hw;
    ic_gpu_monitor_sample(g->hw, &hw);
    ic_models_stats(&g->models, &st);
    int held = st.sessions - g->n_parked;
    double load = (double)(held > 0 ? held : 0) + st.queued;
    load /= st.max_sessions > 0 ? st.max_sessions : 1;
    int pct = 100 - (int)(90 * (load < 1 ? load : 1) + 0.5);
    if (strcmp(ic_gw_server_state(g, &st, &hw), ic_sched_state_name(IC_SCHED_THROTTLED)) == 0)
        pct = pct / 4 > 1 ? pct / 4 : 1;
    snprintf(out, cap, "up ready %d%%", pct);
}

/* GET /health/weight: HAProxy's agent-check sends this request on the
 * replica's own port (agent-send) and reads the first line of the answer,
 * so the words go in the status line's reason phrase and, for people and
 * scripts, as the body's one line. */
static void health_weight(ic_gateway *g, const ic_http_request *req, ic_http_response *resp)
{
    (void)req;
    char words[sizeof resp->reason];
    agent_words(g, words, sizeof words);
    size_t n = strlen(words);
    char *body = malloc(n + 2);
    if (body) {
        memcpy(body, words, n);
        memcpy(body + n, "\n", 2);
    }
    resp->status = 200;
    resp->content_type = "text/plain; charset=utf-8";
    resp->body = body;
    resp->len = body ? n + 1 : 0;
    memcpy(resp->reason, words, n + 1);
}

static void metrics(ic_gateway *g, const ic_http_request *req, ic_http_response *resp)
{
    (void)req;
    ic_sched_stats st = {0};
    ic_hw_sample hw;
    ic_gpu_monitor_sample(g->hw, &hw);
    if (g->sched)
        ic_models_stats(&g->models, &st);
    ic_metrics_model per_model[IC_MODELS_MAX];
    ic_models_update_metrics(&g->models);
    for (int i = 0; i < g->models.n; i++)
        per_model[i] = g->models.m[i].metrics;
    ic_metrics_durable md;
    uint64_t write_buckets[IC_STORE_WRITE_BUCKETS + 1];
    ic_gw_durable_metrics(g, &md, write_buckets);
    ic_metrics_gauges mg = {
        .durable = &md,
        .models = per_model,
        .n_models = g->models.n,
        .state = ic_gw_server_state(g, &st, &hw),
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
        .spec_drafted = st.spec_drafted_tokens,
        .spec_accepted = st.spec_accepted_tokens,
        .hw = &hw,
        .version = IC_VERSION,
        .llama_commit = IC_LLAMA_COMMIT,
    };
    resp->status = 200;
    resp->content_type = IC_METRICS_CONTENT_TYPE;
    if (ic_metrics_render(g->metrics, &mg, &resp->body, &resp->len) < 0)
        resp->body = NULL;
}

/* The web console (web.c): its three files, unless --no-web. */
static void web(ic_gateway *g, const ic_http_request *req, ic_http_response *resp)
{
    if (!g->opts.web || !ic_web_serve(req, resp))
        json_response(resp, 404, ic_proto_http_error("not found"));
}

/* A generation asked of a server whose backend failed (an OpenAI POST). */
static void backend_failed(ic_http_response *resp)
{
    ic_oai_error e;
    ic_oai_error_set(&e, 503, "backend_failed", NULL, "%s", IC_GW_ENGINE_DEAD_MSG);
    json_response(resp, 503, ic_oai_error_body(&e));
}

static const route k_routes[] = {
    {"GET", "GET, HEAD", "/", ROUTE_PUBLIC, web},
    {"GET", "GET, HEAD", "/console.js", ROUTE_PUBLIC, web},
    {"GET", "GET, HEAD", "/console.css", ROUTE_PUBLIC, web},
    {"GET", "GET, HEAD", "/health", ROUTE_PUBLIC, health},
    {"GET", "GET, HEAD", "/health/weight", ROUTE_PUBLIC, health_weight},
    {"GET", "GET, HEAD", "/metrics", ROUTE_METRICS, metrics},
    /* The OpenAI API (openai_http.c) checks its own API keys: its errors
     * are in OpenAI's shape. A path ending in '*' matches as a prefix. */
    {"POST", "POST", "/v1/chat/completions", ROUTE_PUBLIC, ic_gw_oai_chat},
    {"POST", "POST", "/v1/completions", ROUTE_PUBLIC, ic_gw_oai_completions},
    {"GET", "GET, HEAD", "/v1/models", ROUTE_PUBLIC, ic_gw_oai_models},
    {"GET", "GET, HEAD", "/v1/models/*", ROUTE_PUBLIC, ic_gw_oai_models},
    /* admin.c checks for an admin's token itself */
    {"POST", "POST", "/admin/models/*", ROUTE_PUBLIC, ic_gw_http_model_admin},
};

/* The bearer token of an Authorization header, or NULL. */
static const char *bearer(const char *authorization)
{
    if (!authorization || strncmp(authorization, "Bearer ", 7) != 0)
        return NULL;
    return authorization + 7;
}

static bool allowed(const ic_gateway *g, enum route_auth need, const ic_http_request *req)
{
    if (need == ROUTE_PUBLIC || (!g->opts.metrics_token && !g->auth))
        return true;
    const char *token = bearer(req->authorization);
    if (!token)
        return false;
    if (g->opts.metrics_token && ic_auth_secret_equal(token, g->opts.metrics_token))
        return true;
    ic_client_cfg cfg;
    return g->auth && ic_auth_check(g->auth, token, &cfg) == 0;
}

/* Exact, or a prefix when the pattern ends in '*' (with something after it). */
static bool path_matches(const char *pattern, const char *path)
{
    size_t n = strlen(pattern);
    if (n > 0 && pattern[n - 1] == '*')
        return strncmp(pattern, path, n - 1) == 0 && path[n - 1] != '\0';
    return strcmp(pattern, path) == 0;
}

/* HEAD is answered as GET (the server sends no body). */
static bool method_matches(const char *want, const char *got)
{
    return strcmp(want, got) == 0 || (strcmp(want, "GET") == 0 && strcmp(got, "HEAD") == 0);
}

void ic_gw_on_http(ic_gateway *g, const ic_http_request *req, ic_http_response *resp)
{
    const char *allow = NULL;
    for (size_t i = 0; i < sizeof k_routes / sizeof *k_routes; i++) {
        const route *r = &k_routes[i];
        if (!path_matches(r->path, req->path))
            continue;
        if (!method_matches(r->method, req->method)) {
            allow = r->allow;
            continue;
        }
        if (!allowed(g, r->auth, req))
            json_response(resp, 401, ic_proto_http_error("bearer token required"));
        else if (g->engine_dead && strcmp(r->method, "POST") == 0)
            backend_failed(resp);
        else
            r->handler(g, req, resp);
        if (!resp->defer) /* a deferred answer is counted when it goes */
            ic_metrics_http_request(g->metrics, r->path, resp->status);
        return;
    }
    if (allow) {
        json_response(resp, 405, ic_proto_http_error("method not allowed"));
        resp->allow = allow;
    } else {
        json_response(resp, 404, ic_proto_http_error("not found"));
    }
    ic_metrics_http_request(g->metrics, "other", resp->status);
}
