/* sched_submit.c - the scheduler's request side: what other threads call
 * to open sessions, start and stop generations and read events and
 * gauges (see sched.h). Touches only the two queues and the atomics; open
 * and infer run on the one submitting thread, which owns the sent
 * counters (sched_impl.h), abort and close on any thread. Requests and
 * their answers' events are allocated here, so that the scheduler thread
 * never needs memory to answer.
 */
#include "sched.h"
#include "err.h"
#include "queue.h"
#include "sched_impl.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

void ic_event_free(ic_event *ev)
{
    if (!ev)
        return;
    free(ev->text);
    free(ev->logprobs);
    ic_chat_parsed_free(ev->parsed);
    free(ev->kv);
    free(ev->hist);
    free(ev);
}

void ic_sched__req_free(void *p)
{
    req *r = p;
    if (!r)
        return;
    free(r->text);
    for (int i = 0; i < IC_STOP_MAX; i++)
        free(r->stop_copies[i]);
    free((char *)r->grammar.gbnf);
    free((char *)r->grammar.prefill);
    for (size_t i = 0; r->triggers && i < r->grammar.n_triggers; i++) {
        free((char *)r->triggers[i].word);
        free((char *)r->triggers[i].pattern);
    }
    free(r->triggers);
    free(r->logit_bias);
    free((char *)r->chat.tools_json);
    free((char *)r->chat.tool_choice);
    for (size_t i = 0; r->chat_results && i < r->chat.n_tool_results; i++) {
        free((char *)r->chat_results[i].content);
        free((char *)r->chat_results[i].tool_call_id);
    }
    free(r->chat_results);
    for (int i = 0; r->turns && i < r->n_turns; i++) {
        free((char *)r->turns[i].prompt);
        free((char *)r->turns[i].reply);
    }
    free(r->turns);
    free(r->kv);
    free(r->hist);
    ic_event_free(r->reply);
    free(r);
}

/* ------------------------------------------------------------------ */
/* Requests: any thread.                                                */

static int submit(ic_sched *s, req *r)
{
    if (atomic_load(&s->stopped)) {
        ic_sched__req_free(r);
        return IC_ERR_SHUTDOWN;
    }
    r->t_submit_ms = ic_now_ms();
    int rc = ic_queue_push(s->requests, r);
    if (rc < 0)
        ic_sched__req_free(r);
    return rc < 0 ? rc : 0;
}

int ic_sched_open_session(ic_sched *s, const char *system_prompt, uint64_t *session_id)
{
    return ic_sched_open_session_turns(s, system_prompt, NULL, 0, session_id);
}

/* Copies turns into r. */
static int copy_turns(req *r, const ic_turn *turns, int n)
{
    if (n <= 0)
        return 0;
    if (!(r->turns = calloc((size_t)n, sizeof *r->turns)))
        return IC_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        r->n_turns = i + 1; /* so req_free frees what is set */
        r->turns[i].raw = turns[i].raw;
        if (!(r->turns[i].prompt = strdup(turns[i].prompt ? turns[i].prompt : "")) ||
            !(r->turns[i].reply = strdup(turns[i].reply ? turns[i].reply : "")))
            return IC_ERR_NOMEM;
    }
    return 0;
}

int ic_sched_open_session_turns(ic_sched *s, const char *system_prompt, const ic_turn *turns,
                                int n_turns, uint64_t *session_id)
{
    return ic_sched_open_session_kv(s, system_prompt, turns, n_turns, NULL, 0, NULL, 0,
                                    session_id);
}

/* Copies a KV state and its tokens into r. */
static int copy_kv(req *r, const uint8_t *kv, size_t len, const ic_token *hist, int n_hist)
{
    if (!kv || len == 0 || n_hist <= 0)
        return 0;
    if (!(r->kv = malloc(len)) || !(r->hist = malloc((size_t)n_hist * sizeof *hist)))
        return IC_ERR_NOMEM;
    memcpy(r->kv, kv, len);
    memcpy(r->hist, hist, (size_t)n_hist * sizeof *hist);
    r->kv_len = len;
    r->n_hist = n_hist;
    return 0;
}

int ic_sched_open_session_kv(ic_sched *s, const char *system_prompt, const ic_turn *turns,
                             int n_turns, const uint8_t *kv, size_t kv_len,
                             const ic_token *hist, int n_hist, uint64_t *session_id)
{
    /* opens_done before st_sessions: an open the scheduler has counted as
     * done is in st_sessions too, so the sum never falls short. */
    uint64_t sent = atomic_load(&s->opens_sent);
    uint64_t done = atomic_load(&s->opens_done);
    int open = atomic_load(&s->st_sessions);
    if ((uint64_t)open + (sent - done) >= (uint64_t)s->opts.max_sessions)
        return IC_ERR_CAPACITY;
    req *r = calloc(1, sizeof *r);
    if (!r || !(r->reply = calloc(1, sizeof *r->reply)) ||
        (system_prompt && !(r->text = strdup(system_prompt))) ||
        copy_turns(r, turns, n_turns) < 0 || copy_kv(r, kv, kv_len, hist, n_hist) < 0) {
        ic_sched__req_free(r);
        return IC_ERR_NOMEM;
    }
    r->type = REQ_OPEN;
    r->session_id = atomic_fetch_add(&s->next_session_id, 1);
    uint64_t id = r->session_id;
    atomic_store(&s->opens_sent, sent + 1); /* before the scheduler can count it done */
    int rc = submit(s, r);
    if (rc < 0) {
        atomic_store(&s->opens_sent, sent);
        return rc;
    }
    *session_id = id;
    return 0;
}

/* Copies *g into r (r->params.grammar then points at r's copy). */
static int copy_grammar(req *r, const ic_grammar *g)
{
    r->params.grammar = NULL;
    if (!g || !g->gbnf || !g->gbnf[0])
        return 0;
    r->grammar.lazy = g->lazy;
    if (!(r->grammar.gbnf = strdup(g->gbnf)) ||
        (g->prefill && !(r->grammar.prefill = strdup(g->prefill))))
        return IC_ERR_NOMEM;
    if (g->lazy && g->n_triggers > 0) {
        if (!(r->triggers = calloc(g->n_triggers, sizeof *r->triggers)))
            return IC_ERR_NOMEM;
        r->grammar.triggers = r->triggers;
        for (size_t i = 0; i < g->n_triggers; i++) {
            r->grammar.n_triggers = i + 1; /* so req_free frees what is set */
            const ic_grammar_trigger *t = &g->triggers[i];
            if ((t->word && !(r->triggers[i].word = strdup(t->word))) ||
                (t->pattern && !(r->triggers[i].pattern = strdup(t->pattern))))
                return IC_ERR_NOMEM;
        }
    }
    r->params.grammar = &r->grammar;
    return 0;
}

/* Copies p's logit biases into r; IC_ERR_INVAL for a token outside the
 * vocabulary. */
static int copy_logit_bias(const ic_sched *s, req *r, const ic_sample_params *p)
{
    r->params.sample.logit_bias = NULL;
    r->params.sample.n_logit_bias = 0;
    if (p->n_logit_bias <= 0 || !p->logit_bias)
        return 0;
    for (int i = 0; i < p->n_logit_bias; i++) {
        if (p->logit_bias[i].token < 0 || p->logit_bias[i].token >= s->info.n_vocab)
            return IC_ERR_INVAL;
    }
    r->logit_bias = malloc((size_t)p->n_logit_bias * sizeof *r->logit_bias);
    if (!r->logit_bias)
        return IC_ERR_NOMEM;
    memcpy(r->logit_bias, p->logit_bias, (size_t)p->n_logit_bias * sizeof *r->logit_bias);
    r->params.sample.logit_bias = r->logit_bias;
    r->params.sample.n_logit_bias = p->n_logit_bias;
    return 0;
}

static char *dup_or_null(const char *s, int *rc)
{
    char *d = s ? strdup(s) : NULL;
    if (s && !d)
        *rc = IC_ERR_NOMEM;
    return d;
}

/* Copies *ct into r (r->params.chat then points at r's copy). */
static int copy_chat(req *r, const ic_chat_turn *ct)
{
    r->params.chat = NULL;
    if (!ct)
        return 0;
    int rc = 0;
    r->chat = *ct;
    r->chat.tool_results = NULL;
    r->chat.n_tool_results = 0;
    r->chat.tools_json = dup_or_null(ct->tools_json, &rc);
    r->chat.tool_choice = dup_or_null(ct->tool_choice, &rc);
    r->params.chat = &r->chat;
    if (rc < 0 || ct->n_tool_results == 0)
        return rc;
    r->chat_results = calloc(ct->n_tool_results, sizeof *r->chat_results);
    if (!r->chat_results)
        return IC_ERR_NOMEM;
    r->chat.tool_results = r->chat_results;
    for (size_t i = 0; i < ct->n_tool_results && rc == 0; i++) {
        const ic_chat_message *t = &ct->tool_results[i];
        r->chat_results[i].role = "tool";
        r->chat_results[i].content = dup_or_null(t->content ? t->content : "", &rc);
        r->chat_results[i].tool_call_id = dup_or_null(t->tool_call_id, &rc);
        r->chat.n_tool_results = i + 1; /* so req_free frees what is set */
    }
    return rc;
}

int ic_sched_infer(ic_sched *s, uint64_t session_id, uint64_t request_id, const char *prompt,
                   bool raw, const ic_gen_params *params)
{
    uint64_t sent = atomic_load(&s->infers_sent);
    if (sent - atomic_load(&s->infers_started) >= (uint64_t)s->opts.max_queued)
        return IC_ERR_OVERLOADED;
    req *r = calloc(1, sizeof *r);
    int rc = r && (r->reply = calloc(1, sizeof *r->reply)) && (r->text = strdup(prompt))
                 ? 0 : IC_ERR_NOMEM;
    if (rc == 0) {
        r->type = REQ_INFER;
        r->session_id = session_id;
        r->request_id = request_id;
        r->raw = raw;
        r->params = *params;
        for (int i = 0; i < params->n_stop && i < IC_STOP_MAX && rc == 0; i++) {
            r->stop_copies[i] = strdup(params->stop[i]);
            r->params.stop[i] = r->stop_copies[i];
            rc = r->stop_copies[i] ? 0 : IC_ERR_NOMEM;
        }
        if (rc == 0)
            rc = copy_grammar(r, params->grammar);
        if (rc == 0)
            rc = copy_logit_bias(s, r, &params->sample);
        if (rc == 0)
            rc = copy_chat(r, params->chat);
    }
    if (rc < 0) {
        ic_sched__req_free(r);
        return rc;
    }
    atomic_store(&s->infers_sent, sent + 1);
    rc = submit(s, r); /* takes r on every path */
    if (rc < 0)
        atomic_store(&s->infers_sent, sent);
    return rc;
}

static int simple_request(ic_sched *s, enum req_type type, uint64_t session_id,
                          enum ic_close_reason why)
{
    req *r = calloc(1, sizeof *r);
    if (!r)
        return IC_ERR_NOMEM;
    r->type = type;
    r->session_id = session_id;
    r->close_reason = why;
    return submit(s, r);
}

int ic_sched_abort(ic_sched *s, uint64_t session_id)
{
    return simple_request(s, REQ_ABORT, session_id, IC_CLOSE_CLIENT);
}

int ic_sched_sleep(ic_sched *s)
{
    return simple_request(s, REQ_SLEEP, 0, IC_CLOSE_CLIENT);
}

int ic_sched_unload(ic_sched *s)
{
    return simple_request(s, REQ_UNLOAD, 0, IC_CLOSE_CLIENT);
}

int ic_sched_load(ic_sched *s)
{
    return simple_request(s, REQ_LOAD, 0, IC_CLOSE_CLIENT);
}

int ic_sched_close_session(ic_sched *s, uint64_t session_id, enum ic_close_reason reason)
{
    return simple_request(s, REQ_CLOSE, session_id, reason);
}

ic_event *ic_sched_poll_event(ic_sched *s, int timeout_ms)
{
    return ic_queue_pop_wait(s->events, timeout_ms);
}

void ic_sched_model_info(const ic_sched *s, ic_engine_info *out) { *out = s->info; }

void ic_sched_get_opts(const ic_sched *s, ic_sched_opts *out) { *out = s->opts; }

void ic_sched_get_stats(const ic_sched *s, ic_sched_stats *out)
{
    ic_sched *m = (ic_sched *)s; /* atomics are read-only here */
    out->sessions = atomic_load(&m->st_sessions);
    out->generating = atomic_load(&m->st_generating);
    out->queued = atomic_load(&m->st_queued);
    out->kv_cells_used = atomic_load(&m->st_kv_used);
    out->kv_cells_total = s->info.n_ctx_tokens;
    out->tokens_per_second = (double)atomic_load(&m->st_tps_milli) / 1000.0;
    out->steps = atomic_load(&m->st_steps);
    out->max_sessions = s->opts.max_sessions;
    out->state = (enum ic_sched_state)atomic_load(&m->st_state);
    out->last_progress_ms = (double)atomic_load(&m->st_progress_us) / 1000.0;
    out->gpu_temp_c = (double)atomic_load(&m->st_temp_milli) / 1000.0;
    out->sleeps = atomic_load(&m->st_sleeps);
    out->spec_drafted_tokens = atomic_load(&m->st_spec_drafted);
    out->spec_accepted_tokens = atomic_load(&m->st_spec_accepted);
    out->wakes = atomic_load(&m->st_wakes);
    out->last_wake_ms = (double)atomic_load(&m->st_last_wake_us) / 1e3;
}

int ic_sched_session_info(const ic_sched *s, uint64_t session_id,
                          enum ic_session_state *state, int *n_ctx_used_tokens)
{
    for (int i = 0; i < s->opts.max_sessions; i++) {
        slot_pub *p = &s->pub[i];
        if (atomic_load(&p->id) == session_id) {
            *state = (enum ic_session_state)atomic_load(&p->state);
            *n_ctx_used_tokens = atomic_load(&p->n_ctx_used);
            return 0;
        }
    }
    return IC_ERR_NOT_FOUND;
}
