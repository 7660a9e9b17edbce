/* openai_http.c - the OpenAI-compatible API on the gateway: POST
 * /v1/chat/completions and /v1/completions (streamed as SSE or answered
 * whole), GET /v1/models[/{id}]. See docs/openai.md.
 *
 * Each request is one scheduler session for its length: it shares the
 * scheduler, the KV pool, the per-client session limits and priorities
 * and the metrics with WebSocket sessions (a running request counts as
 * one of the client's sessions). The chat prompt is rendered here with the
 * model's own template (engine/chat.h, immutable, so the network thread
 * renders while the scheduler decodes). A client that goes away closes the
 * session, which ends its generation within one scheduler step.
 *
 * Thread: network thread. Owns each request's oai_req (freed at the
 * session's SESSION_CLOSED). Calls down into gateway.c.
 */
#include "gateway_impl.h"
#include "clock.h"
#include "err.h"
#include "log.h"
#include "openai.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One request in flight. Network thread. */
typedef struct oai_req {
    uint64_t http_id;          /* the server's request id; 0 once answered or gone */
    enum ic_oai_endpoint endpoint;
    bool stream;
    bool include_usage;
    bool sent_first;           /* the role chunk went out */
    char id[40];               /* "chatcmpl-<n>" / "cmpl-<n>" */
    int64_t created_s;
    ic_buf text;               /* not streamed: the answer so far */
    int n_prompt_tokens;       /* of the rendered prompt, for usage */
} oai_req;

static void json_body(ic_http_response *resp, int status, char *body)
{
    resp->status = status;
    resp->content_type = "application/json";
    resp->body = body;
    resp->len = body ? strlen(body) : 0;
}

static void error_response(ic_http_response *resp, const ic_oai_error *err)
{
    json_body(resp, err->status, ic_oai_error_body(err));
    if (err->status == 429 || err->status == 503)
        resp->retry_after_s = 1;
}

static const char *bearer(const char *authorization)
{
    if (!authorization || strncmp(authorization, "Bearer ", 7) != 0)
        return NULL;
    return authorization + 7;
}

/* The client of an HTTP request: from the tokens file (Authorization:
 * Bearer or x-api-key), or on an open server one per peer address.
 * Returns 0, or fills err (401). */
static int http_client(ic_gateway *g, const ic_http_request *req, ic_client_cfg *cfg,
                       char *key, size_t cap, ic_oai_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    if (!g->auth) {
        cfg->priority = IC_PRIORITY_HIGH;
        snprintf(key, cap, "#h%s", req->peer_addr ? req->peer_addr : "");
        return 0;
    }
    const char *token = bearer(req->authorization);
    if (!token)
        token = req->api_key;
    if (!token || !*token) {
        ic_oai_error_set(err, 401, "missing_api_key", NULL,
                         "an API key is required: Authorization: Bearer <token>");
        return IC_ERR_AUTH;
    }
    if (ic_auth_check(g->auth, token, cfg) < 0) {
        ic_metrics_auth_failed(g->metrics);
        ic_oai_error_set(err, 401, "invalid_api_key", NULL, "the API key is not valid");
        return IC_ERR_AUTH;
    }
    snprintf(key, cap, "%s", cfg->name);
    return 0;
}

/* 503 while the model loads or the server stops. */
static bool unavailable(const ic_gateway *g, ic_oai_error *err)
{
    if (g->stopping)
        ic_oai_error_set(err, 503, "shutting_down", NULL, "the server is shutting down");
    else if (!g->sched)
        ic_oai_error_set(err, 503, "loading", NULL, "the model is loading; try again shortly");
    else
        return false;
    return true;
}

/* The chat messages as the chat layer takes them (pointers into r). */
static int render_chat(ic_gateway *g, const ic_oai_request *r, char **prompt, ic_oai_error *err)
{
    static const char *const roles[] = {"system", "user", "assistant", "tool"};
    ic_chat_message *msgs = calloc((size_t)r->n_messages, sizeof *msgs);
    if (!msgs) {
        ic_oai_error_set(err, 500, NULL, NULL, "out of memory");
        return IC_ERR_NOMEM;
    }
    for (int i = 0; i < r->n_messages; i++) {
        const ic_oai_message *m = &r->messages[i];
        msgs[i].role = roles[m->role];
        msgs[i].content = m->content;
        msgs[i].tool_call_id = m->tool_call_id;
    }
    ic_chat_render_opts ro = ic_chat_render_opts_default();
    ic_chat_prompt *cp = NULL;
    char why[256] = "";
    int rc = ic_chat_render(g->chat, msgs, (size_t)r->n_messages, &ro, &cp, why, sizeof why);
    free(msgs);
    if (rc < 0) {
        ic_oai_error_set(err, 400, "invalid_messages", "messages",
                         "the model's chat template refused the messages: %s", why);
        return rc;
    }
    *prompt = strdup(cp->prompt);
    ic_chat_prompt_free(cp);
    if (!*prompt) {
        ic_oai_error_set(err, 500, NULL, NULL, "out of memory");
        return IC_ERR_NOMEM;
    }
    return 0;
}

/* What this server cannot do yet is refused, never answered unconstrained. */
static bool unsupported(const ic_oai_request *r, ic_oai_error *err)
{
    const char *what = r->tools_json                       ? "tools"
                       : r->format != IC_OAI_FORMAT_TEXT   ? "response_format"
                       : r->n_logit_bias > 0               ? "logit_bias"
                       : r->logprobs                       ? "logprobs"
                       : r->presence_penalty != 0          ? "presence_penalty"
                       : r->frequency_penalty != 0         ? "frequency_penalty"
                                                           : NULL;
    if (!what)
        return false;
    ic_oai_error_set(err, 400, "unsupported_parameter", what,
                     "'%s' is not supported by this server yet", what);
    return true;
}

static void fill_response(const ic_gateway *g, const oai_req *o, ic_oai_response *r)
{
    *r = (ic_oai_response){.endpoint = o->endpoint, .id = o->id, .model = g->model_id,
                           .created = o->created_s};
}

static void send_chunk(ic_gateway *g, oai_req *o, char *data, size_t len)
{
    if (data && o->http_id)
        ic_server_http_chunk(g->srv, o->http_id, data, len);
    else
        free(data);
}

static void on_token(ic_gateway *g, oai_req *o, const ic_event *ev)
{
    if (!o->stream) {
        if (ic_buf_append(&o->text, ev->text, ev->text_len) < 0)
            ic_log_warn("openai: out of memory holding an answer");
        return;
    }
    if (ev->text_len == 0)
        return;
    ic_oai_response r;
    fill_response(g, o, &r);
    r.text = ev->text;
    r.text_len = ev->text_len;
    size_t len = 0;
    char *chunk = ic_oai_stream_chunk(&r, false, &len);
    send_chunk(g, o, chunk, len);
}

/* The end of the stream: the finishing chunk, usage, [DONE]. */
static void stream_end(ic_gateway *g, oai_req *o, const char *finish, const ic_oai_usage *u,
                       const ic_oai_error *err)
{
    ic_oai_response r;
    fill_response(g, o, &r);
    size_t len = 0;
    if (err) {
        send_chunk(g, o, ic_oai_stream_error(err, &len), len);
    } else {
        r.finish_reason = finish;
        send_chunk(g, o, ic_oai_stream_chunk(&r, false, &len), len);
        if (o->include_usage) {
            r.usage = *u;
            send_chunk(g, o, ic_oai_stream_usage(&r, &len), len);
        }
    }
    const char *done = ic_oai_stream_done(&len);
    send_chunk(g, o, strndup(done, len), len);
    if (o->http_id)
        ic_server_http_end(g->srv, o->http_id);
}

static void answer(ic_gateway *g, oai_req *o, const char *finish, const ic_oai_usage *u,
                   const ic_oai_error *err)
{
    if (!o->http_id)
        return;
    if (o->stream) {
        stream_end(g, o, finish, u, err);
    } else {
        ic_http_response resp = {0};
        if (err) {
            error_response(&resp, err);
        } else {
            ic_oai_response r;
            fill_response(g, o, &r);
            r.text = o->text.data ? o->text.data : "";
            r.text_len = o->text.len;
            r.finish_reason = finish;
            r.usage = *u;
            json_body(&resp, 200, ic_oai_response_body(&r));
        }
        if (!resp.body)
            json_body(&resp, 500, NULL);
        ic_server_http_respond(g->srv, o->http_id, &resp);
    }
    o->http_id = 0;
}

/* The scheduler's events for a request's session (gateway.c's hook). */
static void on_event(ic_gateway *g, gw_session *ss, const ic_event *ev)
{
    oai_req *o = ss->oai;
    ic_oai_error err;
    switch (ev->type) {
    case IC_EVENT_TOKEN:
        if (ss->running && ev->request_id == ss->request_id)
            on_token(g, o, ev);
        break;
    case IC_EVENT_END: {
        if (!ss->running || ev->request_id != ss->request_id)
            break;
        ss->running = false;
        ic_oai_usage u = {.prompt_tokens = ev->stats.prompt_tokens,
                          .completion_tokens = ev->stats.generated_tokens};
        const char *finish = ic_oai_finish_reason(ev->reason, false);
        if (!finish) {
            int status = ev->reason == IC_END_SHUTDOWN ? 503 : 500;
            ic_oai_error_set(&err, status, ic_end_reason_name(ev->reason), NULL,
                             "the generation ended: %s", ic_end_reason_name(ev->reason));
        }
        answer(g, o, finish, &u, finish ? NULL : &err);
        ic_sched_close_session(g->sched, ss->id, IC_CLOSE_CLIENT);
        ss->closing = true;
        break;
    }
    case IC_EVENT_ERROR: {
        if (!ss->running || ev->request_id != ss->request_id)
            break;
        ss->running = false;
        bool too_long = ev->err == IC_ERR_PROMPT_TOO_LONG || ev->err == IC_ERR_CONTEXT_FULL;
        ic_oai_error_set(&err, too_long ? 400 : ev->err == IC_ERR_OVERLOADED ? 429 : 500,
                         too_long ? "context_length_exceeded" : NULL,
                         too_long ? "messages" : NULL, "%s", ev->message);
        answer(g, o, NULL, NULL, &err);
        ic_sched_close_session(g->sched, ss->id, IC_CLOSE_CLIENT);
        ss->closing = true;
        break;
    }
    case IC_EVENT_SESSION_CLOSED:
        if (o->http_id) {
            ic_oai_error_set(&err, 503, NULL, NULL, "the server is shutting down");
            answer(g, o, NULL, NULL, &err);
        }
        ic_buf_free(&o->text);
        free(o);
        ss->oai = NULL;
        break;
    }
}

static uint64_t next_completion_id(void)
{
    static uint64_t n;
    return ++n;
}

/* Both POST routes: parse, check, render, start. */
static void start(ic_gateway *g, enum ic_oai_endpoint ep, const ic_http_request *req,
                  ic_http_response *resp)
{
    ic_oai_error err;
    ic_client_cfg cfg;
    char key[IC_CLIENT_NAME_MAX + 1];
    if (unavailable(g, &err) || http_client(g, req, &cfg, key, sizeof key, &err) < 0) {
        error_response(resp, &err);
        return;
    }
    ic_oai_request r;
    if (ic_oai_parse_request(ep, req->body, req->body_len, &r, &err) < 0) {
        error_response(resp, &err);
        return;
    }
    char *prompt = NULL;
    int rc = 0;
    if (r.model && strcmp(r.model, g->model_id) != 0) {
        ic_oai_error_set(&err, 404, "model_not_found", "model",
                         "the model '%.64s' does not exist (this server serves '%.64s')",
                         r.model, g->model_id);
        rc = IC_ERR_NOT_FOUND;
    } else if (unsupported(&r, &err)) {
        rc = IC_ERR_INVAL;
    } else if (ep == IC_OAI_CHAT && !g->chat) {
        ic_oai_error_set(&err, 400, NULL, NULL, "this model has no chat template");
        rc = IC_ERR_INVAL;
    } else if (ep == IC_OAI_CHAT) {
        rc = render_chat(g, &r, &prompt, &err);
    } else if (!(prompt = strdup(r.prompt))) {
        ic_oai_error_set(&err, 500, NULL, NULL, "out of memory");
        rc = IC_ERR_NOMEM;
    }
    gw_session *ss = NULL;
    oai_req *o = NULL;
    if (rc == 0) {
        int limit = cfg.max_sessions > 0 ? cfg.max_sessions : ic_gw_default_max_sessions(g);
        bool at_limit = false;
        rc = ic_gw_session_open(g, key, limit, NULL, &ss, &at_limit);
        if (rc < 0)
            ic_oai_error_set(&err, rc == IC_ERR_NOMEM ? 500 : 429,
                             at_limit ? "session_limit" : "overloaded", NULL, "%s",
                             at_limit ? "this client is at its limit of concurrent requests"
                                      : "the server is at its session capacity; retry later");
    }
    if (rc == 0 && !(o = calloc(1, sizeof *o))) {
        ic_oai_error_set(&err, 500, NULL, NULL, "out of memory");
        rc = IC_ERR_NOMEM;
    }
    if (rc == 0) {
        ic_gen_params gp;
        ic_oai_gen_params(&r, cfg.priority, &gp);
        gp.allow_special = ep == IC_OAI_CHAT; /* the rendered template's control tokens */
        uint64_t rid = ++g->next_request;
        rc = ic_sched_infer(g->sched, ss->id, rid, prompt, true, &gp);
        if (rc < 0) {
            ic_oai_error_set(&err, rc == IC_ERR_OVERLOADED ? 429 : 500, NULL, NULL,
                             rc == IC_ERR_OVERLOADED ? "too much work is waiting; retry later"
                                                     : "%s", ic_strerror(rc));
        } else {
            ss->running = true;
            ss->request_id = rid;
            ss->submitted_ms = ic_now_ms();
            snprintf(ss->rid, sizeof ss->rid, "r%llu", (unsigned long long)rid);
        }
    }
    free(prompt);
    if (rc < 0) {
        if (ss) {
            ss->closing = true;
            ic_sched_close_session(g->sched, ss->id, IC_CLOSE_CLIENT);
        }
        free(o);
        ic_oai_request_free(&r);
        error_response(resp, &err);
        return;
    }
    o->http_id = req->id;
    o->endpoint = ep;
    o->stream = r.stream;
    o->include_usage = r.include_usage;
    o->created_s = (int64_t)time(NULL);
    snprintf(o->id, sizeof o->id, "%s-%llu", ep == IC_OAI_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)next_completion_id());
    ss->oai = o;
    ss->on_event = on_event;
    ic_oai_request_free(&r);
    if (!o->stream) {
        resp->defer = true;
        return;
    }
    /* The role chunk goes with the headers. */
    ic_oai_response first;
    fill_response(g, o, &first);
    size_t len = 0;
    resp->status = 200;
    resp->content_type = "text/event-stream";
    resp->stream = true;
    resp->body = ep == IC_OAI_CHAT ? ic_oai_stream_chunk(&first, true, &len) : NULL;
    resp->len = len;
    o->sent_first = true;
}

void ic_gw_oai_chat(ic_gateway *g, const ic_http_request *req, ic_http_response *resp)
{
    start(g, IC_OAI_CHAT, req, resp);
}

void ic_gw_oai_completions(ic_gateway *g, const ic_http_request *req, ic_http_response *resp)
{
    start(g, IC_OAI_COMPLETIONS, req, resp);
}

void ic_gw_oai_models(ic_gateway *g, const ic_http_request *req, ic_http_response *resp)
{
    ic_oai_error err;
    ic_client_cfg cfg;
    char key[IC_CLIENT_NAME_MAX + 1];
    if (http_client(g, req, &cfg, key, sizeof key, &err) < 0) {
        error_response(resp, &err);
        return;
    }
    ic_oai_model m = {.id = g->model_id, .created = g->model_created_s, .loaded = g->sched};
    const char *want = strncmp(req->path, "/v1/models/", 11) == 0 ? req->path + 11 : NULL;
    if (want && (!g->sched || strcmp(want, g->model_id) != 0)) {
        ic_oai_error_set(&err, 404, "model_not_found", "model",
                         "the model '%.64s' does not exist", want);
        error_response(resp, &err);
        return;
    }
    json_body(resp, 200, ic_oai_models_body(&m, g->sched ? 1 : 0, want != NULL));
}

/* The client went away: close the session, which ends its generation
 * within one step (prefill included). */
void ic_gw_oai_gone(ic_gateway *g, uint64_t http_id)
{
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (ic_idmap_next(&g->sessions, &it, NULL, &val)) {
        gw_session *ss = val;
        if (!ss->oai || ss->oai->http_id != http_id)
            continue;
        ss->oai->http_id = 0;
        if (!ss->closing) {
            ss->closing = true;
            ic_sched_close_session(g->sched, ss->id, IC_CLOSE_DISCONNECT);
        }
        return;
    }
}
