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
    ic_buf text;               /* the answer so far */
    char *prompt;              /* the whole prompt text (for the prompt cache) */
    char client[IC_CLIENT_NAME_MAX + 1]; /* its count key */
    /* Chat: the rendered prompt, whose parser splits the answer into
     * content, reasoning and tool calls (when parse is set: tools or a
     * reasoning block); streams send what each partial parse adds. */
    ic_chat_prompt *chat;
    bool parse;
    size_t sent_content, sent_reasoning; /* bytes of each streamed so far */
    int n_calls;               /* tool calls seen (streamed: announced) so far */
    size_t *sent_args;         /* n_calls: argument bytes streamed of each */
    char **call_ids;           /* n_calls: the ids given to them */
    int model;                 /* its model's index (api/models.h) */
    /* logprobs: the tokens' log-probabilities not yet sent (streamed:
     * each chunk takes those that came before it; whole: all), and the
     * completion's bytes already covered by sent ones (text_offset). */
    ic_oai_lp_list lp;
    size_t lp_offset;
} oai_req;

void ic_gw_oai_free(oai_req *o)
{
    if (!o)
        return;
    ic_buf_free(&o->text);
    ic_oai_lp_list_free(&o->lp);
    free(o->prompt);
    ic_chat_prompt_free(o->chat);
    for (int i = 0; i < o->n_calls; i++)
        free(o->call_ids[i]);
    free(o->call_ids);
    free(o->sent_args);
    free(o);
}

/* --- the prompt cache ----------------------------------------------------
 * A finished request's session is parked instead of closed: it keeps its
 * KV cells, its conversation is the prompt and the answer as raw text, and
 * it counts for no client. A later request whose prompt starts with that
 * text takes it over and sends only the rest (the scheduler re-tokenises
 * the whole text and decodes what the cache lacks, so the tokens are the
 * ones a fresh session would decode). Least recently used entries are
 * closed past the limit, and when the server runs out of sessions. */

static int cache_limit(const ic_gateway *g)
{
    int n = g->opts.prompt_cache;
    if (n < 0)
        n = g->max_sessions / 2;
    return n < 0 ? 0 : n;
}

static void unpark_at(ic_gateway *g, int i)
{
    memmove(&g->parked[i], &g->parked[i + 1], (size_t)(g->n_parked - i - 1) * sizeof *g->parked);
    g->n_parked--;
}

static void unpark(ic_gateway *g, uint64_t id)
{
    for (int i = 0; i < g->n_parked; i++) {
        if (g->parked[i] == id) {
            unpark_at(g, i);
            return;
        }
    }
}

/* Closes the least recently used entry; false when there is none. */
static bool evict_one(ic_gateway *g)
{
    if (g->n_parked == 0)
        return false;
    uint64_t id = g->parked[0];
    unpark_at(g, 0);
    gw_session *ss = ic_idmap_get(&g->sessions, id);
    if (ss && !ss->closing) {
        ss->closing = true;
        ss->evicted = true;
        g->n_evicting++;
        ic_sched_close_session(ic_gw_sched(g, id), id, IC_CLOSE_CLIENT);
    }
    return true;
}

static void resume_waiting(ic_gateway *g);

/* A parked session's events: its close frees a slot for a waiting request.
 * (The scheduler has released the slot before it says SESSION_CLOSED.) */
static void parked_event(ic_gateway *g, gw_session *ss, const ic_event *ev)
{
    if (ev->type != IC_EVENT_SESSION_CLOSED)
        return;
    if (ss->evicted) {
        ss->evicted = false;
        g->n_evicting--;
    }
    unpark(g, ss->id);
    resume_waiting(g);
}

/* Parks ss after its request (true), or says it must be closed (false). */
static bool park(ic_gateway *g, gw_session *ss, oai_req *o)
{
    int limit = cache_limit(g);
    if (limit == 0 || g->stopping || !o->prompt)
        return false;
    if (g->n_parked == g->cap_parked) {
        int cap = g->cap_parked ? g->cap_parked * 2 : 16;
        uint64_t *p = realloc(g->parked, (size_t)cap * sizeof *p);
        if (!p)
            return false;
        g->parked = p;
        g->cap_parked = cap;
    }
    size_t plen = strlen(o->prompt);
    char *text = malloc(plen + o->text.len + 1);
    if (!text)
        return false;
    memcpy(text, o->prompt, plen);
    if (o->text.len)
        memcpy(text + plen, o->text.data, o->text.len);
    text[plen + o->text.len] = '\0';
    free(ss->cache_text);
    ss->cache_text = text;
    ss->cache_len = plen + o->text.len;
    snprintf(ss->cache_owner, sizeof ss->cache_owner, "%s", o->client);
    ic_gw_session_recount(g, ss, "", 0);
    ss->on_event = parked_event;
    g->parked[g->n_parked++] = ss->id;
    while (g->n_parked > limit)
        evict_one(g);
    return true;
}

/* The parked session whose text is the longest prefix of prompt (and the
 * client's own, with per-client isolation), taken out of the cache; NULL
 * when none fits. */
static gw_session *take_cached(ic_gateway *g, int model, const char *prompt, const char *client)
{
    size_t plen = strlen(prompt);
    int best = -1;
    size_t best_len = 0;
    for (int i = 0; i < g->n_parked; i++) {
        gw_session *ss = ic_idmap_get(&g->sessions, g->parked[i]);
        if (!ss || ss->closing || ss->cache_len > plen || ss->cache_len < best_len ||
            memcmp(ss->cache_text, prompt, ss->cache_len) != 0)
            continue;
        if (g->opts.prompt_cache_per_client && strcmp(ss->cache_owner, client) != 0)
            continue;
        if (ic_models_index_of(ss->id) != model)
            continue;
        best = i;
        best_len = ss->cache_len;
    }
    if (best < 0)
        return NULL;
    gw_session *ss = ic_idmap_get(&g->sessions, g->parked[best]);
    unpark_at(g, best);
    ss->on_event = NULL;
    return ss;
}

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

/* The name of the function whose call tool_call_id answers, from the
 * assistant messages before message i (templates that print tool results
 * with the function's name need it; OpenAI's tool messages lack it). */
static const char *tool_name_for(const ic_oai_request *r, int i, const char *tool_call_id)
{
    for (int k = i - 1; tool_call_id && k >= 0; k--) {
        const ic_oai_message *m = &r->messages[k];
        for (int c = 0; c < m->n_tool_calls; c++)
            if (strcmp(m->tool_calls[c].id, tool_call_id) == 0)
                return m->tool_calls[c].name;
    }
    return NULL;
}

static int nomem_err(ic_oai_error *err)
{
    ic_oai_error_set(err, 500, NULL, NULL, "out of memory");
    return IC_ERR_NOMEM;
}

/* A response_format as a JSON Schema (json_object: any object), checked
 * here so that a schema that does not compile is a 400 naming
 * response_format, never an unconstrained answer. NULL: plain text. */
static int response_schema(const ic_oai_request *r, const char **schema, ic_oai_error *err)
{
    *schema = r->format == IC_OAI_FORMAT_JSON_OBJECT   ? "{\"type\":\"object\"}"
              : r->format == IC_OAI_FORMAT_JSON_SCHEMA ? r->schema_json
                                                       : NULL;
    if (!*schema)
        return 0;
    char why[256] = "", *gbnf = NULL;
    int rc = ic_chat_schema_to_grammar(*schema, &gbnf, why, sizeof why);
    free(gbnf);
    if (rc == IC_ERR_NOMEM)
        return nomem_err(err);
    if (rc < 0)
        ic_oai_error_set(err, 400, "invalid_json_schema", "response_format", "%s", why);
    return rc;
}

/* Renders r's messages with model's template, its tools and its
 * response_format. Returns 0 and *out (owned by the caller), or fills err. */
static int render_chat(ic_gateway *g, int model, const ic_oai_request *r, ic_chat_prompt **out,
                       ic_oai_error *err)
{
    static const char *const roles[] = {"system", "user", "assistant", "tool"};
    const char *schema = NULL;
    int rc = response_schema(r, &schema, err);
    if (rc < 0)
        return rc;
    if (schema && r->tools_json && (!r->tool_choice || strcmp(r->tool_choice, "none") != 0)) {
        ic_oai_error_set(err, 400, "invalid_value", "response_format",
                         "response_format cannot be combined with tools (use tool_choice none)");
        return IC_ERR_INVAL;
    }
    size_t n_calls = 0;
    for (int i = 0; i < r->n_messages; i++)
        n_calls += (size_t)r->messages[i].n_tool_calls;
    size_t n_msgs = r->n_messages > 0 ? (size_t)r->n_messages : 1;
    ic_chat_message *msgs = calloc(n_msgs, sizeof *msgs);
    ic_chat_tool_call *calls = calloc(n_calls + 1, sizeof *calls);
    if (!msgs || !calls) {
        free(msgs);
        free(calls);
        return nomem_err(err);
    }
    ic_chat_tool_call *next = calls;
    for (int i = 0; i < r->n_messages; i++) {
        const ic_oai_message *m = &r->messages[i];
        msgs[i].role = roles[m->role];
        msgs[i].content = m->content;
        msgs[i].tool_call_id = m->tool_call_id;
        if (m->role == IC_OAI_ROLE_TOOL)
            msgs[i].tool_name = m->name ? m->name : tool_name_for(r, i, m->tool_call_id);
        if (m->n_tool_calls > 0) {
            msgs[i].tool_calls = next;
            msgs[i].n_tool_calls = (size_t)m->n_tool_calls;
            if (!*m->content)
                msgs[i].content = NULL; /* the calls alone, as OpenAI's null content */
            for (int c = 0; c < m->n_tool_calls; c++, next++)
                *next = (ic_chat_tool_call){.id = m->tool_calls[c].id,
                                            .name = m->tool_calls[c].name,
                                            .arguments = m->tool_calls[c].arguments};
        }
    }
    ic_chat_render_opts ro = ic_chat_render_opts_default();
    ro.tools_json = r->tools_json;
    ro.tool_choice = r->tool_choice;
    ro.parallel_tool_calls = r->parallel_tool_calls;
    ro.json_schema = schema;
    char why[256] = "";
    rc = ic_chat_render(g->models.m[model].chat, msgs, (size_t)r->n_messages, &ro, out, why,
                        sizeof why);
    free(msgs);
    free(calls);
    if (rc == IC_ERR_NOMEM)
        return nomem_err(err);
    if (rc < 0) {
        bool tools = r->tools_json && strstr(why, "tool");
        ic_oai_error_set(err, 400, "invalid_messages", tools ? "tools" : "messages",
                         "the model's chat template refused the %s: %s",
                         tools ? "tools" : "messages", why);
    }
    return rc;
}

/* A logit bias on a token the model does not have. */
static bool bad_logit_bias(const ic_gateway *g, int model, const ic_oai_request *r,
                           ic_oai_error *err)
{
    ic_engine_info info;
    ic_sched_model_info(g->models.m[model].sched, &info);
    for (int i = 0; i < r->n_logit_bias; i++) {
        if (r->logit_bias[i].token >= info.n_vocab) {
            ic_oai_error_set(err, 400, "invalid_value", "logit_bias",
                             "'logit_bias': token %d is not in the model's vocabulary of %d",
                             (int)r->logit_bias[i].token, info.n_vocab);
            return true;
        }
    }
    return false;
}

static void fill_response(const ic_gateway *g, const oai_req *o, ic_oai_response *r)
{
    *r = (ic_oai_response){.endpoint = o->endpoint, .id = o->id,
                           .model = g->models.m[o->model].name,
                           .created = o->created_s};
}

static void send_chunk(ic_gateway *g, oai_req *o, char *data, size_t len)
{
    if (data && o->http_id)
        ic_server_http_chunk(g->srv, o->http_id, data, len);
    else
        free(data);
}

/* The answer so far through the template's parser; NULL when it does not
 * parse (partial: wait for more; finished: the caller falls back). */
static ic_chat_parsed *parse_answer(const oai_req *o, bool partial)
{
    ic_chat_parsed *p = NULL;
    const char *text = o->text.data ? o->text.data : "";
    if (ic_chat_parse(o->chat, text, o->text.len, partial, &p, NULL, 0) < 0)
        return NULL;
    return p;
}

/* Gives ids to the calls first seen in p (the model's own, else ours,
 * "call_<completion>_<i>", stable across partial parses). */
static bool name_calls(oai_req *o, const ic_chat_parsed *p)
{
    if ((int)p->n_tool_calls <= o->n_calls)
        return true;
    char **ids = realloc(o->call_ids, p->n_tool_calls * sizeof *ids);
    if (ids)
        o->call_ids = ids;
    size_t *sent = realloc(o->sent_args, p->n_tool_calls * sizeof *sent);
    if (sent)
        o->sent_args = sent;
    if (!ids || !sent)
        return false;
    for (; o->n_calls < (int)p->n_tool_calls; o->n_calls++) {
        const char *own = p->tool_calls[o->n_calls].id;
        char mine[64];
        snprintf(mine, sizeof mine, "call_%s_%d", o->id, o->n_calls);
        o->call_ids[o->n_calls] = strdup(own && *own ? own : mine);
        o->sent_args[o->n_calls] = 0;
        if (!o->call_ids[o->n_calls])
            return false;
    }
    return true;
}

/* The part of now that was not sent yet: NULL when nothing new, or when
 * the parse took back text it had given (not sent again). */
static const char *unsent(const char *now, size_t sent, size_t *len)
{
    size_t n = strlen(now);
    if (n <= sent)
        return NULL;
    *len = n - sent;
    return now + sent;
}

/* One delta chunk of r, with the log-probabilities not sent yet, which
 * are then forgotten (a stream holds no more). */
static void send_delta(ic_gateway *g, oai_req *o, ic_oai_response *r)
{
    size_t len = 0;
    ic_oai_lp_list_put(&o->lp, o->lp_offset, r);
    char *chunk = ic_oai_stream_chunk(r, false, &len); /* sets len: called first */
    send_chunk(g, o, chunk, len);
    ic_oai_lp_list_sent(&o->lp, &o->lp_offset);
}

/* Streams what parse p adds to what was sent: content, reasoning, the
 * calls' names and their arguments, each as its own delta chunk. */
static void stream_parsed(ic_gateway *g, oai_req *o, const ic_chat_parsed *p)
{
    ic_oai_response r;
    size_t n = 0;
    const char *add = unsent(p->reasoning_content, o->sent_reasoning, &n);
    if (add) {
        fill_response(g, o, &r);
        r.reasoning = add; /* a suffix of a NUL-terminated string */
        send_delta(g, o, &r);
        o->sent_reasoning += n;
    }
    if ((add = unsent(p->content, o->sent_content, &n))) {
        fill_response(g, o, &r);
        r.text = add;
        r.text_len = n;
        send_delta(g, o, &r);
        o->sent_content += n;
    }
    int seen = o->n_calls;
    if (!name_calls(o, p))
        return;
    for (int i = 0; i < (int)p->n_tool_calls; i++) {
        const ic_chat_tool_call *c = &p->tool_calls[i];
        add = unsent(c->arguments, o->sent_args[i], &n);
        bool fresh = i >= seen;
        if (!fresh && !add)
            continue;
        ic_oai_call_out out = {.index = i, .id = fresh ? o->call_ids[i] : NULL,
                               .name = fresh ? c->name : NULL, .arguments = add,
                               .arguments_len = add ? n : 0};
        char *calls = ic_oai_tool_calls_json(&out, 1);
        fill_response(g, o, &r);
        r.tool_calls_json = calls;
        if (calls)
            send_delta(g, o, &r);
        free(calls);
        o->sent_args[i] += add ? n : 0;
    }
}

/* The finished answer's tool calls as message JSON (NULL: none). */
static char *final_calls(oai_req *o, const ic_chat_parsed *p)
{
    if (p->n_tool_calls == 0 || !name_calls(o, p))
        return NULL;
    ic_oai_call_out *out = calloc(p->n_tool_calls, sizeof *out);
    if (!out)
        return NULL;
    for (size_t i = 0; i < p->n_tool_calls; i++)
        out[i] = (ic_oai_call_out){.index = -1, .id = o->call_ids[i],
                                   .name = p->tool_calls[i].name,
                                   .arguments = p->tool_calls[i].arguments,
                                   .arguments_len = strlen(p->tool_calls[i].arguments)};
    char *json = ic_oai_tool_calls_json(out, p->n_tool_calls);
    free(out);
    return json;
}

/* The finished answer parsed: a finished parse, else what a partial parse
 * is sure of (a model cut off by max_tokens), else the text as content. */
static ic_chat_parsed *parse_final(const oai_req *o)
{
    ic_chat_parsed *p = parse_answer(o, false);
    if (!p)
        p = parse_answer(o, true);
    return p;
}

static void on_token(ic_gateway *g, oai_req *o, const ic_event *ev)
{
    if (ic_buf_append(&o->text, ev->text, ev->text_len) < 0) {
        ic_log_warn("openai: out of memory holding an answer");
        free(o->prompt); /* the answer is incomplete: do not cache it */
        o->prompt = NULL;
    }
    if (ev->logprobs && ic_oai_lp_list_push(&o->lp, ev->logprobs) < 0)
        ic_log_warn("openai: out of memory holding a token's logprobs");
    if (!o->stream || ev->text_len == 0)
        return;
    if (o->parse) {
        ic_chat_parsed *p = parse_answer(o, true);
        if (p)
            stream_parsed(g, o, p);
        ic_chat_parsed_free(p);
        return;
    }
    ic_oai_response r;
    fill_response(g, o, &r);
    r.text = ev->text;
    r.text_len = ev->text_len;
    send_delta(g, o, &r);
}

/* The end of the stream: the finishing chunk, usage, [DONE]. */
static void stream_end(ic_gateway *g, oai_req *o, const char *finish, const ic_oai_usage *u,
                       const ic_oai_error *err, const ic_chat_parsed *parsed)
{
    if (parsed && !err)
        stream_parsed(g, o, parsed);
    ic_oai_response r;
    fill_response(g, o, &r);
    size_t len = 0;
    char *data;
    /* (each length is set by the builder's call, so the call comes first) */
    if (err) {
        data = ic_oai_stream_error(err, &len);
        send_chunk(g, o, data, len);
    } else {
        r.finish_reason = finish;
        send_delta(g, o, &r); /* with tokens whose text never came (stop string, EOS) */
        r.n_logprobs = 0;
        if (o->include_usage) {
            r.usage = *u;
            data = ic_oai_stream_usage(&r, &len);
            send_chunk(g, o, data, len);
        }
    }
    const char *done = ic_oai_stream_done(&len);
    data = strndup(done, len);
    send_chunk(g, o, data, len);
    if (o->http_id)
        ic_server_http_end(g->srv, o->http_id);
}

static void answer(ic_gateway *g, oai_req *o, const char *finish, const ic_oai_usage *u,
                   const ic_oai_error *err)
{
    if (!o->http_id)
        return;
    ic_chat_parsed *parsed = o->parse && !err ? parse_final(o) : NULL;
    char *calls = NULL;
    if (parsed && parsed->n_tool_calls > 0 && finish && strcmp(finish, "stop") == 0)
        finish = "tool_calls";
    if (parsed && !o->stream)
        calls = final_calls(o, parsed);
    if (o->stream) {
        stream_end(g, o, finish, u, err, parsed);
    } else {
        ic_http_response resp = {0};
        if (err) {
            error_response(&resp, err);
        } else {
            ic_oai_response r;
            fill_response(g, o, &r);
            r.text = o->text.data ? o->text.data : "";
            r.text_len = o->text.len;
            if (parsed) {
                r.text = parsed->content;
                r.text_len = strlen(parsed->content);
                r.reasoning = *parsed->reasoning_content ? parsed->reasoning_content : NULL;
                r.tool_calls_json = calls;
            }
            r.finish_reason = finish;
            r.usage = *u;
            ic_oai_lp_list_put(&o->lp, 0, &r);
            json_body(&resp, 200, ic_oai_response_body(&r));
        }
        if (!resp.body)
            json_body(&resp, 500, NULL);
        ic_metrics_http_request(g->metrics,
                                o->endpoint == IC_OAI_CHAT ? "/v1/chat/completions"
                                                           : "/v1/completions",
                                resp.status);
        ic_server_http_respond(g->srv, o->http_id, &resp);
    }
    free(calls);
    ic_chat_parsed_free(parsed);
    o->http_id = 0;
}

/* The scheduler's events for a request's session (gateway.c's hook). */
static void on_event(ic_gateway *g, gw_session *ss, const ic_event *ev)
{
    oai_req *o = ss->oai;
    ic_oai_error err;
    if (!o && ev->type != IC_EVENT_SESSION_CLOSED)
        return; /* the request is over; its session is closing */
    switch (ev->type) {
    case IC_EVENT_TOKEN:
        if (ss->running && ev->request_id == ss->request_id)
            on_token(g, o, ev);
        break;
    case IC_EVENT_END: {
        if (!ss->running || ev->request_id != ss->request_id)
            break;
        ss->running = false;
        int ctx = ev->stats.context_tokens, decoded = ev->stats.prompt_tokens;
        ic_oai_usage u = {.prompt_tokens = ctx, .completion_tokens = ev->stats.generated_tokens,
                          .cached_tokens = ctx > decoded ? ctx - decoded : 0};
        ic_metrics_prompt_cache_hit(g->metrics, u.cached_tokens);
        const char *finish = ic_oai_finish_reason(ev->reason, false);
        if (!finish) {
            bool retry = ev->reason == IC_END_SHUTDOWN || ev->reason == IC_END_MODEL_UNLOADED;
            int status = retry ? 503 : 500;
            ic_oai_error_set(&err, status, ic_end_reason_name(ev->reason), NULL,
                             "the generation ended: %s", ic_end_reason_name(ev->reason));
        }
        bool answered = o->http_id != 0;
        answer(g, o, finish, &u, finish ? NULL : &err);
        if (!(finish && answered && park(g, ss, o)) && !ss->closing) {
            ic_sched_close_session(ic_gw_sched(g, ss->id), ss->id, IC_CLOSE_CLIENT);
            ss->closing = true;
        }
        ic_gw_oai_free(o);
        ss->oai = NULL;
        break;
    }
    case IC_EVENT_ERROR: {
        if (!ss->running || ev->request_id != ss->request_id)
            break;
        ss->running = false;
        bool too_long = ev->err == IC_ERR_PROMPT_TOO_LONG || ev->err == IC_ERR_CONTEXT_FULL;
        bool bad = too_long || ev->err == IC_ERR_INVAL; /* e.g. an empty prompt */
        ic_oai_error_set(&err, bad ? 400 : ev->err == IC_ERR_OVERLOADED ? 429 : 500,
                         too_long ? "context_length_exceeded" : bad ? "invalid_value" : NULL,
                         bad ? (o->endpoint == IC_OAI_CHAT ? "messages" : "prompt") : NULL, "%s",
                         ev->message);
        answer(g, o, NULL, NULL, &err);
        if (!ss->closing) {
            ic_sched_close_session(ic_gw_sched(g, ss->id), ss->id, IC_CLOSE_CLIENT);
            ss->closing = true;
        }
        ic_gw_oai_free(o);
        ss->oai = NULL;
        break;
    }
    case IC_EVENT_SESSION_CLOSED:
        if (o && o->http_id) {
            ic_oai_error_set(&err, 503, NULL, NULL, "the server is shutting down");
            answer(g, o, NULL, NULL, &err);
        }
        ic_gw_oai_free(o);
        ss->oai = NULL;
        break;
    }
}

static uint64_t next_completion_id(void)
{
    static uint64_t n;
    return ++n;
}

/* A request that has been checked and rendered, on its way to a session.
 * It waits in g->oai_waiting (FIFO) when the server was out of sessions
 * and a prompt-cache entry was closed to make room. Network thread. */
typedef struct oai_job {
    struct oai_job *next;
    uint64_t http_id;
    enum ic_oai_endpoint ep;
    ic_oai_request r;          /* owned */
    char *prompt;              /* owned */
    ic_chat_prompt *chat;      /* chat: the rendered prompt, owned */
    ic_client_cfg cfg;
    char key[IC_CLIENT_NAME_MAX + 1];
    int model;                 /* index (api/models.h) */
} oai_job;

static void job_free(oai_job *j)
{
    if (!j)
        return;
    ic_oai_request_free(&j->r);
    free(j->prompt);
    ic_chat_prompt_free(j->chat);
    free(j);
}

/* The response that opens a started request: deferred (answered whole at
 * END) or the SSE stream's headers with the role chunk. */
static void opening(ic_gateway *g, oai_req *o, ic_http_response *resp)
{
    if (!o->stream) {
        resp->defer = true;
        return;
    }
    ic_oai_response first;
    fill_response(g, o, &first);
    size_t len = 0;
    resp->status = 200;
    resp->content_type = "text/event-stream";
    resp->stream = true;
    resp->body = o->endpoint == IC_OAI_CHAT ? ic_oai_stream_chunk(&first, true, &len) : NULL;
    resp->len = len;
    o->sent_first = true;
}

/* Finds or opens the job's session and submits it. Returns 0 (j->prompt
 * moved into the request's state, *out_o set), IC_ERR_BUSY (no session
 * now, but a cache entry is closing: wait for it), or an error in err. */
static int begin(ic_gateway *g, oai_job *j, oai_req **out_o, ic_oai_error *err)
{
    int limit = j->cfg.max_sessions > 0 ? j->cfg.max_sessions : ic_gw_default_max_sessions(g);
    bool at_limit = false;
    size_t reused = 0;
    gw_session *ss = take_cached(g, j->model, j->prompt, j->key);
    int rc;
    if (ss) {
        reused = ss->cache_len;
        rc = ic_gw_session_recount(g, ss, j->key, limit);
        at_limit = rc == IC_ERR_CAPACITY;
        if (rc < 0) { /* back into the cache */
            ss->on_event = parked_event;
            g->parked[g->n_parked++] = ss->id;
            ss = NULL;
        }
    } else {
        rc = ic_gw_session_open_on(g, j->model, j->key, limit, NULL, &ss, &at_limit);
        /* Out of sessions: close the least recently used cache entry and
         * wait for its slot rather than refuse; with none left to close,
         * wait while an entry closed earlier is still giving its slot
         * back (8 clients on 8 sessions got 429 there). */
        if (rc == IC_ERR_CAPACITY && !at_limit && (evict_one(g) || g->n_evicting > 0))
            return IC_ERR_BUSY;
    }
    if (rc < 0) {
        ic_oai_error_set(err, rc == IC_ERR_NOMEM ? 500 : 429,
                         at_limit ? "session_limit" : "overloaded", NULL, "%s",
                         at_limit ? "this client is at its limit of concurrent requests"
                                  : "the server is at its session capacity; retry later");
        return rc;
    }
    oai_req *o = calloc(1, sizeof *o);
    ic_gen_params gp;
    ic_oai_gen_params(&j->r, j->cfg.priority, &gp);
    gp.allow_special = j->ep == IC_OAI_CHAT; /* the rendered template's control tokens */
    gp.prefix_group = ic_gw_prefix_group(g, j->key);
    ic_grammar grammar = {0};
    if (j->chat) {
        grammar = ic_chat_prompt_grammar(j->chat);
        gp.grammar = &grammar;
        /* the template's own stop strings, where the request left room */
        for (size_t i = 0; i < j->chat->n_additional_stops && gp.n_stop < IC_STOP_MAX; i++)
            gp.stop[gp.n_stop++] = j->chat->additional_stops[i];
    }
    rc = o ? ic_gw_session_submit(g, ss, j->prompt + reused, true, &gp) : IC_ERR_NOMEM;
    if (rc < 0) {
        ic_oai_error_set(err, rc == IC_ERR_OVERLOADED ? 429 : 500, NULL, NULL, "%s",
                         rc == IC_ERR_OVERLOADED ? "too much work is waiting; retry later"
                                                 : ic_strerror(rc));
        ss->closing = true;
        ic_sched_close_session(ic_gw_sched(g, ss->id), ss->id, IC_CLOSE_CLIENT);
        free(o);
        return rc;
    }
    o->http_id = j->http_id;
    o->prompt = j->prompt;
    j->prompt = NULL;
    o->chat = j->chat;
    j->chat = NULL;
    o->parse = o->chat && (j->r.tools_json || o->chat->thinking || j->r.format != IC_OAI_FORMAT_TEXT);
    snprintf(o->client, sizeof o->client, "%s", j->key);
    o->endpoint = j->ep;
    o->model = j->model;
    o->stream = j->r.stream;
    o->include_usage = j->r.include_usage;
    o->created_s = (int64_t)time(NULL);
    snprintf(o->id, sizeof o->id, "%s-%llu", j->ep == IC_OAI_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)next_completion_id());
    ss->oai = o;
    ss->on_event = on_event;
    *out_o = o;
    return 0;
}

/* A session slot came free: start the requests that wait for one. */
static void resume_waiting(ic_gateway *g)
{
    while (g->oai_waiting) {
        oai_job *j = g->oai_waiting;
        oai_req *o = NULL;
        ic_oai_error err;
        int rc = begin(g, j, &o, &err);
        if (rc == IC_ERR_BUSY)
            return; /* another entry is closing for it */
        g->oai_waiting = j->next;
        ic_http_response resp = {0};
        if (rc < 0)
            error_response(&resp, &err);
        else
            opening(g, o, &resp);
        if (!resp.defer)
            ic_server_http_respond(g->srv, j->http_id, &resp);
        job_free(j);
    }
}

void ic_gw_oai_fail_waiting(ic_gateway *g)
{
    ic_oai_error err;
    ic_oai_error_set(&err, 503, "backend_failed", NULL, "%s", IC_GW_ENGINE_DEAD_MSG);
    while (g->oai_waiting) {
        oai_job *j = g->oai_waiting;
        g->oai_waiting = j->next;
        ic_http_response resp = {0};
        error_response(&resp, &err);
        ic_server_http_respond(g->srv, j->http_id, &resp);
        job_free(j);
    }
}

void ic_gw_oai_free_waiting(ic_gateway *g)
{
    while (g->oai_waiting) {
        oai_job *j = g->oai_waiting;
        g->oai_waiting = j->next;
        job_free(j);
    }
}

/* Both POST routes: parse, check, render, start. */
static void start(ic_gateway *g, enum ic_oai_endpoint ep, const ic_http_request *req,
                  ic_http_response *resp)
{
    ic_oai_error err;
    oai_job *j = calloc(1, sizeof *j);
    if (!j) {
        ic_oai_error_set(&err, 500, NULL, NULL, "out of memory");
        error_response(resp, &err);
        return;
    }
    j->http_id = req->id;
    j->ep = ep;
    int rc = unavailable(g, &err) ? IC_ERR_SHUTDOWN
                                  : http_client(g, req, &j->cfg, j->key, sizeof j->key, &err);
    if (rc == 0)
        rc = ic_oai_parse_request(ep, req->body, req->body_len, &j->r, &err);
    ic_oai_request *r = &j->r;
    if (rc < 0) {
        /* refused above */
    } else if ((j->model = ic_models_find(&g->models, r->model)) < 0) {
        ic_oai_error_set(&err, 404, "model_not_found", "model",
                         "the model '%.64s' does not exist (GET /v1/models lists those served)",
                         r->model);
        rc = IC_ERR_NOT_FOUND;
    } else if (bad_logit_bias(g, j->model, r, &err)) {
        rc = IC_ERR_INVAL;
    } else if (ep == IC_OAI_CHAT && !g->models.m[j->model].chat) {
        ic_oai_error_set(&err, 400, NULL, NULL, "this model has no chat template");
        rc = IC_ERR_INVAL;
    } else if (ep == IC_OAI_CHAT) {
        rc = render_chat(g, j->model, r, &j->chat, &err);
        if (rc == 0 && !(j->prompt = strdup(j->chat->prompt)))
            rc = nomem_err(&err);
    } else if (!(j->prompt = strdup(r->prompt))) {
        ic_oai_error_set(&err, 500, NULL, NULL, "out of memory");
        rc = IC_ERR_NOMEM;
    }
    oai_req *o = NULL;
    if (rc == 0)
        rc = begin(g, j, &o, &err);
    if (rc == IC_ERR_BUSY) {
        oai_job **tail = &g->oai_waiting;
        while (*tail)
            tail = &(*tail)->next;
        *tail = j;
        resp->defer = true;
        return;
    }
    job_free(j);
    if (rc < 0)
        error_response(resp, &err);
    else
        opening(g, o, resp);
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
    ic_oai_model list[IC_MODELS_MAX];
    for (int i = 0; i < g->models.n; i++)
        list[i] = (ic_oai_model){.id = g->models.m[i].name, .created = g->models.m[i].created_s,
                                 .loaded = ic_models_loaded(&g->models, i)};
    const char *want = strncmp(req->path, "/v1/models/", 11) == 0 ? req->path + 11 : NULL;
    int found = want ? ic_models_find(&g->models, want) : 0;
    if (want && (!*want || found < 0)) {
        ic_oai_error_set(&err, 404, "model_not_found", "model",
                         "the model '%.64s' does not exist", want);
        error_response(resp, &err);
        return;
    }
    json_body(resp, 200, want ? ic_oai_models_body(&list[found], 1, true)
                              : ic_oai_models_body(list, g->models.n, false));
}

/* The client went away: close the session, which ends its generation
 * within one step (prefill included). */
void ic_gw_oai_gone(ic_gateway *g, uint64_t http_id)
{
    for (oai_job **p = &g->oai_waiting; *p; p = &(*p)->next) {
        if ((*p)->http_id == http_id) {
            oai_job *j = *p;
            *p = j->next;
            job_free(j);
            return;
        }
    }
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (ic_idmap_next(&g->sessions, &it, NULL, &val)) {
        gw_session *ss = val;
        if (!ss->oai || ss->oai->http_id != http_id)
            continue;
        ss->oai->http_id = 0;
        if (!ss->closing) {
            ss->closing = true;
            ic_sched_close_session(ic_gw_sched(g, ss->id), ss->id, IC_CLOSE_DISCONNECT);
        }
        return;
    }
}
