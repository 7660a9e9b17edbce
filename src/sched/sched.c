/* sched.c - the scheduler thread: sessions as llama sequences, one
 * llama_decode per step for everyone's work (see sched.h).
 *
 * Thread: everything below `--- scheduler thread ---` runs only on the
 * scheduler thread, which owns the engine, the session slots, the prefix
 * cache and all generations. The request functions other threads call
 * live in sched_submit.c. The thermal guard, idle
 * sleep and heartbeat live in sched_power.c, the prefill policy in
 * prefill.c; the types they share in sched_impl.h.
 */
#include "sched.h"
#include "buf.h"
#include "convo.h"
#include "err.h"
#include "log.h"
#include "prefix.h"
#include "queue.h"
#include "sched_impl.h"
#include "spec_draft.h"
#include "utf8.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>



ic_sched_opts ic_sched_opts_default(void)
{
    return (ic_sched_opts){
        .max_sessions = 8,
        .n_ctx_per_session = 2048,
        .max_queued = 64,
        .prefix_slots = 2,
        .max_chunk_tokens = 256,
        .max_step_ms = 50,
        .min_prefill_tokens = 1,
        .slow_step_whole = true,
        .kv_unified = false,
        .temp_resume_delta_c = 5.0,
        .spec_mode = IC_SPEC_OFF,
        .spec_max_tokens = 8,
    };
}

void ic_sched_engine_opts(const ic_sched_opts *o, ic_engine_opts *eo)
{
    eo->kv_unified = o->kv_unified;
    eo->n_seq_max = (uint32_t)(o->max_sessions + o->prefix_slots);
    if (o->kv_unified) {
        /* Prefix cells are shared with the sessions that use them; one
         * extra session's worth holds prefixes whose sessions have gone. */
        eo->n_ctx_tokens =
            o->n_ctx_per_session * (uint32_t)(o->max_sessions + (o->prefix_slots ? 1 : 0));
    } else {
        /* A split cache gives every sequence, prefixes too, its own stream. */
        eo->n_ctx_tokens = o->n_ctx_per_session * eo->n_seq_max;
    }
}

/* ------------------------------------------------------------------ */
/* --- scheduler thread ---                                             */

/* Events wait in s->outbox until the end of the step and go out together:
 * one lock and at most one wake-up per step, however many sessions. When
 * the queue cannot take them (out of memory) they wait for the next turn. */
static void flush_events(ic_sched *s)
{
    if (s->n_outbox == 0)
        return;
    int rc = ic_queue_push_many(s->events, (void *const *)s->outbox, (size_t)s->n_outbox);
    if (rc < 0) {
        ic_log_error("scheduler: %d events wait: %s", s->n_outbox, ic_strerror(rc));
        return;
    }
    if (rc == 1)
        s->wake_pending = true;
    s->n_outbox = 0;
}

/* Answers (END, ERROR, SESSION_CLOSED) may use the whole outbox; TOKENs
 * leave outbox_reserve slots free, more than the answers that can be
 * pending at once (an END and a SESSION_CLOSED per session, an ERROR per
 * queued INFER). Out of memory a TOKEN may be lost, an answer never: each
 * answer's event was allocated before its request was queued. */
static void emit(ic_sched *s, ic_event *ev)
{
    bool answer = ev->type != IC_EVENT_TOKEN;
    int room = s->cap_outbox - (answer ? 0 : s->outbox_reserve);
    if (s->n_outbox >= room) {
        int cap = s->cap_outbox * 2;
        ic_event **o = realloc(s->outbox, (size_t)cap * sizeof *o);
        if (o) {
            s->outbox = o;
            s->cap_outbox = cap;
        } else if (!answer) {
            ic_log_error("session %llu: a token's text was lost (out of memory)",
                         (unsigned long long)ev->session_id);
            ic_event_free(ev);
            return;
        } else if (s->n_outbox == s->cap_outbox) {
            if (ic_queue_push(s->events, ev) < 0) {
                ic_log_error("session %llu: an answer was lost (out of memory)",
                             (unsigned long long)ev->session_id);
                ic_event_free(ev);
            }
            s->wake_pending = true;
            return;
        }
    }
    s->outbox[s->n_outbox++] = ev;
}

/* Sets an event's kind on zeroed memory; NULL stays NULL. */
static ic_event *event_fill(ic_event *ev, enum ic_event_type type, uint64_t session_id,
                            uint64_t request_id)
{
    if (ev) {
        ev->type = type;
        ev->session_id = session_id;
        ev->request_id = request_id;
    }
    return ev;
}

static ic_event *new_event(enum ic_event_type type, uint64_t session_id, uint64_t request_id)
{
    return event_fill(calloc(1, sizeof(ic_event)), type, session_id, request_id);
}

/* An INFER leaves the queued state (refused, started or ended). */
static void infer_taken(ic_sched *s) { atomic_fetch_add(&s->infers_started, 1); }

/* Refuses an INFER with its ERROR. */
static void refuse(ic_sched *s, req *r, int err, const char *msg)
{
    infer_taken(s);
    ic_event *ev = event_fill(r->reply, IC_EVENT_ERROR, r->session_id, r->request_id);
    r->reply = NULL;
    if (!ev)
        return;
    ev->err = err;
    snprintf(ev->message, sizeof ev->message, "%s", msg);
    emit(s, ev);
}

static session *find_session(ic_sched *s, uint64_t id)
{
    for (int i = 0; i < s->opts.max_sessions; i++) {
        if (s->sessions[i].id == id)
            return &s->sessions[i];
    }
    return NULL;
}

static void publish_session(ic_sched *s, const session *ss)
{
    slot_pub *p = &s->pub[ss->seq];
    atomic_store(&p->state, ss->gen ? (int)ss->gen->state : (int)IC_SESSION_IDLE);
    atomic_store(&p->n_ctx_used, ss->n_hist);
}

/* The cache content of a session computing a shared prefix (for
 * prefix.c), or NULL when it no longer computes. */
static const ic_token *owner_hist(void *ud, uint64_t session_id, int *n)
{
    session *ss = find_session(ud, session_id);
    *n = ss && ss->gen ? ss->n_hist : 0;
    return ss && ss->gen ? ss->hist : NULL;
}

static void gen_free(gen *g)
{
    if (!g)
        return;
    ic_engine_sampler_destroy(g->sampler);
    ic_stop_free(&g->stop);
    ic_buf_free(&g->reply);
    ic_buf_free(&g->raw_piece);
    ic_buf_free(&g->piece_text);
    ic_buf_free(&g->out_text);
    ic_buf_free(&g->lp_bytes);
    ic_event_free(g->end);
    free(g->prompt);
    ic_chat_prompt_free(g->chat);
    free(g->forced);
    free(g->pres_ids);
    free(g->pres_text);
    free(g);
}

static void fill_stats(const gen *g, double t_end, ic_gen_stats *st)
{
    st->prompt_tokens = g->n_prompt_decoded;
    st->context_tokens = g->n_prompt_tokens;
    st->generated_tokens = g->n_generated;
    st->queue_ms = (g->t_start_ms ? g->t_start_ms : t_end) - g->t_submit_ms;
    st->ttft_ms = g->t_first_ms ? g->t_first_ms - g->t_submit_ms : 0;
    st->total_ms = t_end - g->t_submit_ms;
    double gen_s = g->t_first_ms ? (t_end - g->t_first_ms) / 1e3 : 0;
    st->tokens_per_second = g->n_generated > 1 && gen_s > 0 ? (g->n_generated - 1) / gen_s : 0;
    double pre_s = g->t_prefill_done_ms && g->t_start_ms
                       ? (g->t_prefill_done_ms - g->t_start_ms) / 1e3 : 0;
    st->prompt_tokens_per_second = pre_s > 0 ? g->n_prompt_decoded / pre_s : 0;
    st->drafted_tokens = g->n_drafted;
    st->accepted_tokens = g->n_accepted;
}

/* Ends the session's generation: records the reply in the conversation and
 * emits END. The token sampled last is not in the KV cache; the next turn
 * re-tokenizes the reply and decodes what the cache lacks. */
static void finish(ic_sched *s, session *ss, enum ic_end_reason reason)
{
    gen *g = ss->gen;
    if (!g)
        return;
    if (g->state == IC_SESSION_QUEUED)
        infer_taken(s);
    /* A prefix this generation was computing goes: a waiter takes over. */
    ic_prefix_release(s->prefixes, s->engine, ss->id);
    ic_chat_parsed *parsed = g->split ? ic_sched__parse_reply(g) : NULL;
    int kept = parsed ? ic_convo_end_turn_parsed(ss->convo, parsed->content,
                                                 parsed->reasoning_content, parsed->tool_calls,
                                                 parsed->n_tool_calls)
                      : ic_convo_end_turn(ss->convo, g->reply.data ? g->reply.data : "",
                                          g->reply.len);
    if (kept < 0)
        ic_log_error("session %llu: reply not kept in the conversation (out of memory)",
                     (unsigned long long)ss->id);
    ss->first_turn_done = true;
    ic_event *ev = g->end ? event_fill(g->end, IC_EVENT_END, ss->id, g->request_id)
                          : new_event(IC_EVENT_END, ss->id, g->request_id);
    g->end = NULL;
    if (ev) {
        ev->reason = reason;
        ev->parsed = parsed;
        parsed = NULL;
        fill_stats(g, ic_now_ms(), &ev->stats);
        emit(s, ev);
    }
    ic_chat_parsed_free(parsed);
    gen_free(g);
    ss->gen = NULL;
    s->n_active--;
    publish_session(s, ss);
}

/* err: the grammar's problem when it returns IC_ERR_INVAL. cp: the chat
 * render of this turn (its grammar where the request has none, its stop
 * strings with tools), or NULL. */
static int gen_init(ic_sched *s, req *r, gen *g, const ic_chat_prompt *cp, char *err,
                    size_t err_size)
{
    g->request_id = r->request_id;
    g->state = IC_SESSION_QUEUED;
    g->priority = r->params.priority;
    g->prefix_group = r->params.prefix_group;
    g->max_tokens = r->params.max_tokens > 0 ? r->params.max_tokens : 1;
    g->ignore_eos = r->params.ignore_eos;
    g->logprobs = r->params.logprobs;
    g->top_logprobs = r->params.top_logprobs;
    g->batch_idx = -1;
    g->spec = s->opts.spec_mode != IC_SPEC_OFF && s->opts.spec_max_tokens > 0 &&
              !r->params.no_speculation;
    ic_spec_backoff_init(&g->backoff, s->opts.spec_max_tokens);
    g->t_submit_ms = r->t_submit_ms;
    ic_utf8_reset(&g->utf8);
    ic_sample_params sp = r->params.sample;
    sp.ban_eog = r->params.ignore_eos;
    g->penalize = ic_sample_params_penalize(&sp);
    const char *stops[IC_STOP_MAX];
    int n_stop = r->params.n_stop;
    memcpy(stops, r->params.stop, (size_t)n_stop * sizeof *stops);
    for (size_t i = 0; cp && r->params.chat->tools_json && i < cp->n_additional_stops &&
                       n_stop < IC_STOP_MAX; i++)
        stops[n_stop++] = cp->additional_stops[i];
    int rc = ic_stop_init(&g->stop, stops, n_stop);
    ic_grammar chat_grammar;
    const ic_grammar *grammar = r->params.grammar;
    if (!grammar && cp && cp->grammar) {
        chat_grammar = ic_chat_prompt_grammar(cp);
        grammar = &chat_grammar;
    }
    if (rc == 0 && grammar)
        rc = ic_engine_sampler_create_constrained(s->engine, &sp, grammar, &g->sampler, err,
                                                  err_size);
    else if (rc == 0)
        rc = ic_engine_sampler_create(s->engine, &sp, &g->sampler);
    return rc;
}

/* A conversation of this many bytes needs at least this many tokens: no
 * token's text is longer than max_token_bytes. */
static size_t min_tokens(const ic_sched *s, size_t bytes)
{
    return bytes / (s->info.max_token_bytes > 0 ? (size_t)s->info.max_token_bytes : 1);
}

/* REQ_INFER: builds the turn's tokens and queues the generation, or
 * refuses it with an ERROR event. */
static void start_generation(ic_sched *s, req *r)
{
    session *ss = find_session(s, r->session_id);
    if (!ss || ss->gen) {
        refuse(s, r, ss ? IC_ERR_BUSY : IC_ERR_NOT_FOUND,
               ss ? "a generation is already running in this session" : "session not found");
        return;
    }
    char msg[192];
    size_t bytes = ic_convo_bytes(ss->convo) + strlen(r->text);
    if (min_tokens(s, bytes) >= s->opts.n_ctx_per_session) {
        /* Refused on its size alone, before any tokenizing. */
        snprintf(msg, sizeof msg, "prompt of %zu bytes needs more than %zu tokens but the "
                 "session context holds %u", bytes, min_tokens(s, bytes) - 1,
                 s->opts.n_ctx_per_session);
        refuse(s, r, IC_ERR_PROMPT_TOO_LONG, msg);
        return;
    }
    gen *g = calloc(1, sizeof *g);
    const char *why = NULL;
    char gerr[160] = "";
    int rc = g ? 0 : IC_ERR_NOMEM;
    if (rc == 0 && r->params.chat && !r->raw) {
        /* tools, tool results, reasoning: the render brings the grammar */
        rc = ic_convo_begin_chat_turn(ss->convo, s->engine, r->text, r->params.chat,
                                      r->params.allow_special, &g->prompt, &g->n_prompt_tokens,
                                      &g->chat, msg, sizeof msg);
        why = rc < 0 ? msg : NULL;
        if (rc == 0 && (rc = gen_init(s, r, g, g->chat, gerr, sizeof gerr)) < 0)
            ic_convo_cancel_turn(ss->convo);
        if (rc == 0)
            ic_sched__think_init(s, g, r->params.chat);
    } else if (rc == 0) {
        rc = gen_init(s, r, g, NULL, gerr, sizeof gerr);
        if (rc == 0)
            rc = ic_convo_begin_turn(ss->convo, s->engine, r->text, r->raw,
                                     r->params.allow_special, &g->prompt, &g->n_prompt_tokens,
                                     &why);
    }
    if (rc == IC_ERR_INVAL && !why) {
        snprintf(msg, sizeof msg, "grammar: %s", gerr[0] ? gerr : "does not compile");
        why = msg;
    }
    if (rc == 0 && g->n_prompt_tokens >= (int)s->opts.n_ctx_per_session) {
        snprintf(msg, sizeof msg, "prompt needs %d tokens but the session context holds %u",
                 g->n_prompt_tokens, s->opts.n_ctx_per_session);
        why = msg;
        rc = IC_ERR_PROMPT_TOO_LONG;
        ic_convo_cancel_turn(ss->convo);
    } else if (rc == 0 && g->n_prompt_tokens == 0) {
        why = "the prompt is empty and the session holds nothing to continue";
        rc = IC_ERR_INVAL;
        ic_convo_cancel_turn(ss->convo);
    }
    if (rc < 0) {
        refuse(s, r, rc, why ? why : ic_strerror(rc));
        gen_free(g);
        return;
    }
    g->end = r->reply;
    r->reply = NULL;
    /* Keep what the cache already holds of this conversation, but never
     * the last prompt token: it must be decoded to get logits. */
    int keep = ic_tokens_common_prefix(ss->hist, ss->n_hist, g->prompt, g->n_prompt_tokens);
    if (keep >= g->n_prompt_tokens)
        keep = g->n_prompt_tokens - 1;
    if (keep < ss->n_hist) {
        ic_engine_seq_rm(s->engine, ss->seq, keep, -1);
        ss->n_hist = keep;
        if (ss->n_shared > keep)
            ss->n_shared = keep;
    }
    ss->gen = g;
    s->n_active++;
    publish_session(s, ss);
}

/* Copies into ss the leading KV cells of the idle session of its group
 * whose tokens share the longest start with ss's prompt (at least
 * MIN_BORROW tokens), as automatic prefix caching does: a chat template's
 * header, a system prompt, an earlier request of the same conversation.
 * The lender keeps its cells; in a split KV cache its stream is copied
 * whole and the tail dropped, so there the prefix must be at least
 * 1/COPY_PER_TOKEN of a session's context. Returns how many tokens ss now holds. */
#define MIN_BORROW 4
#define COPY_PER_TOKEN 128
static int borrow_prefix(ic_sched *s, session *ss, const gen *g)
{
    if (g->prefix_group == 0)
        return 0;
    session *best = NULL;
    int best_n = MIN_BORROW - 1;
    for (int i = 0; i < s->opts.max_sessions; i++) {
        session *o = &s->sessions[i];
        if (o == ss || !o->id || o->gen || o->prefix_group != g->prefix_group ||
            o->n_hist <= best_n)
            continue;
        int n = ic_tokens_common_prefix(o->hist, o->n_hist, g->prompt, g->n_prompt_tokens);
        if (n > best_n) {
            best = o;
            best_n = n;
        }
    }
    if (!best)
        return 0;
    if (best_n >= g->n_prompt_tokens)
        best_n = g->n_prompt_tokens - 1; /* the last prompt token gives the logits */
    if (best_n < MIN_BORROW)
        return 0;
    /* In a split buffer the lender's whole stream is copied: worth it only
     * when the tokens saved are at least 1/COPY_PER_TOKEN of the cells
     * copied (a cell's K and V move in about the time a GPU decodes a
     * prompt token's share of a batch; on a CPU copying is far cheaper). */
    if (!s->info.kv_unified && (int64_t)best_n * COPY_PER_TOKEN < s->opts.n_ctx_per_session)
        return 0;
    ic_engine_seq_share(s->engine, best->seq, ss->seq, best_n);
    ss->n_shared = 0; /* counted as its own: the lender may drop its copy */
    ic_log_debug("scheduler: session %llu starts from %d cells of session %llu",
                 (unsigned long long)ss->id, best_n, (unsigned long long)best->id);
    return best_n;
}

/* QUEUED -> PREFILL when it may start (its shared prefix is ready). */
static void admit(ic_sched *s, session *ss)
{
    gen *g = ss->gen;
    if (ss->n_hist == 0 && !ss->first_turn_done) {
        int shared = 0;
        enum ic_prefix_verdict v =
            ic_prefix_attach(s->prefixes, s->engine, ss->convo, ss->id, ss->seq, g->prompt,
                             g->n_prompt_tokens, s->step, &shared);
        if (v == IC_PREFIX_WAIT)
            return;
        if (shared == 0) {
            shared = borrow_prefix(s, ss, g);
        } else {
            ss->n_shared = shared;
        }
        for (int i = 0; i < shared; i++)
            ic_sched__hist_push(ss, g->prompt[i]);
    }
    ss->prefix_group = g->prefix_group;
    if (g->penalize) {
        /* Repetition penalties see the prompt as llama.cpp's server does. */
        int from = g->n_prompt_tokens > 64 ? g->n_prompt_tokens - 64 : 0;
        for (int i = from; i < g->n_prompt_tokens; i++)
            ic_engine_sampler_accept(g->sampler, g->prompt[i]);
    }
    g->state = IC_SESSION_PREFILL;
    infer_taken(s);
    publish_session(s, ss);
}

/* Runs one token's text through UTF-8 repair and stop strings into
 * g->out_text; flush ends both streams. Returns 1 on a stop-string match. */
static int token_text(ic_sched *s, gen *g, ic_token tok, bool is_eog, bool flush)
{
    ic_buf_clear(&g->raw_piece);
    ic_buf_clear(&g->piece_text);
    ic_buf_clear(&g->out_text);
    /* a split chat turn's preserved tokens are text, control tokens too */
    const char *pres = g->n_pres && !is_eog ? ic_sched__preserved(g, tok) : NULL;
    if (pres)
        ic_utf8_push(&g->utf8, pres, strlen(pres), &g->piece_text);
    else if (!is_eog && ic_engine_token_piece(s->engine, tok, &g->raw_piece) == 0 &&
             g->raw_piece.len)
        ic_utf8_push(&g->utf8, g->raw_piece.data, g->raw_piece.len, &g->piece_text);
    if (flush)
        ic_utf8_flush(&g->utf8, &g->piece_text);
    int matched = ic_stop_push(&g->stop, g->piece_text.data ? g->piece_text.data : "",
                               g->piece_text.len, &g->out_text);
    if (matched == 0 && flush)
        ic_stop_flush(&g->stop, &g->out_text);
    return matched == 1;
}

/* Handles a freshly sampled token: one TOKEN event (which takes lp, its
 * log-probabilities or NULL), and END when a stop condition holds. */
void ic_sched__on_token(ic_sched *s, session *ss, ic_token tok, ic_logprobs *lp)
{
    gen *g = ss->gen;
    double t = ic_now_ms();
    double gap_ms = g->n_generated ? t - g->t_last_token_ms : 0;
    g->t_last_token_ms = t;
    if (g->n_generated++ == 0) {
        g->t_first_ms = t;
        g->t_prefill_done_ms = t;
        g->state = IC_SESSION_GENERATING;
    }
    s->tps_tokens++;
    bool eog = !g->ignore_eos && ic_engine_token_is_eog(s->engine, tok);
    bool full = ss->n_hist >= (int)s->opts.n_ctx_per_session; /* no room to decode tok */
    bool last = eog || full || g->n_generated >= g->max_tokens;
    bool stopped = token_text(s, g, tok, eog, last);
    ic_event *ev = new_event(IC_EVENT_TOKEN, ss->id, g->request_id);
    if (ev) {
        ev->index = g->n_generated - 1;
        ev->gap_ms = gap_ms;
        ev->text_len = g->out_text.len;
        ev->text = ic_buf_take(&g->out_text);
        ev->logprobs = lp;
        if (ev->text)
            ic_buf_append(&g->reply, ev->text, ev->text_len);
        bool think = ic_sched__think_token(s, g); /* the budget counts here too */
        ev->reasoning = g->split && think;
        emit(s, ev);
    } else {
        free(lp);
    }
    if (stopped)
        finish(s, ss, IC_END_STOP_STRING);
    else if (eog)
        finish(s, ss, IC_END_EOS);
    else if (g->n_generated >= g->max_tokens)
        finish(s, ss, IC_END_LENGTH);
    else if (full)
        finish(s, ss, IC_END_CONTEXT_FULL);
    else {
        g->next = tok;
        g->has_next = true;
    }
}

/* The decode failed: forget this step's tokens of every session in the
 * batch and end their generations with an error. */
static void rollback_step(ic_sched *s, int err)
{
    for (int i = 0; i < s->opts.max_sessions; i++) {
        session *ss = &s->sessions[i];
        if (!ss->id || ss->n_hist == ss->n_step_start)
            continue;
        ic_engine_seq_rm(s->engine, ss->seq, ss->n_step_start, -1);
        ss->n_hist = ss->n_step_start;
        if (ss->gen) {
            ic_log_error("session %llu: generation ended: %s", (unsigned long long)ss->id,
                         ic_strerror(err));
            finish(s, ss, IC_END_ERROR);
        }
    }
}

/* One step: decode tokens first, then prompt chunks, one llama_decode,
 * then sample. Returns true if anything was decoded. */
static bool step(ic_sched *s)
{
    ic_engine_batch_clear(s->engine);
    /* Rows owed to sessions not yet added (one each) and to prefill. */
    int reserve = s->n_active + IC_SPEC_PREFILL_ROWS;
    for (int i = 0; i < s->opts.max_sessions; i++) {
        session *ss = &s->sessions[i];
        ss->n_step_start = ss->n_hist;
        gen *g = ss->gen;
        if (!g)
            continue;
        g->batch_idx = -1;
        g->n_draft = 0;
        reserve--;
        if (g->state == IC_SESSION_QUEUED && !s->throttled)
            admit(s, ss);
        if (g->state == IC_SESSION_GENERATING && g->has_next) {
            g->batch_idx = ic_engine_batch_add(s->engine, g->next, ss->n_hist, ss->seq, true);
            ic_sched__hist_push(ss, g->next);
            g->has_next = false;
            if (g->spec && !s->throttled)
                ic_sched__add_drafts(s, ss, reserve);
        }
    }
    int n_decoding = ic_engine_batch_size(s->engine);
    if (!s->throttled) /* the thermal guard holds every prompt */
        ic_sched__prefill(s, n_decoding);
    int n_prompt = ic_engine_batch_size(s->engine) - n_decoding;
    if (ic_engine_batch_size(s->engine) == 0)
        return false;
    s->step++;
    double t0 = ic_now_ms();
    int rc = ic_engine_decode(s->engine);
    if (rc == IC_ERR_CONTEXT_FULL) {
        /* The shared cache is out of cells: give back cached prefixes no
         * session holds and try once more. */
        ic_prefix_drop_ready(s->prefixes, s->engine);
        rc = ic_engine_decode(s->engine);
    }
    s->last_decode_ms = ic_now_ms() - t0;
    atomic_fetch_add(&s->st_steps, 1);
    if (rc < 0) {
        rollback_step(s, rc);
        return true;
    }
    ic_sched__step_measured(s, n_decoding, n_prompt, s->last_decode_ms);
    if (n_prompt == 0 && s->opts.spec_mode != IC_SPEC_OFF)
        ic_spec_cost_add(&s->spec_cost, n_decoding, s->last_decode_ms);
    ic_prefix_publish(s->prefixes, s->engine, owner_hist, s);
    for (int i = 0; i < s->opts.max_sessions; i++) {
        session *ss = &s->sessions[i];
        if (ss->gen && ss->gen->batch_idx >= 0 && ss->gen->n_draft > 0) {
            ic_sched__verify(s, ss);
        } else if (ss->gen && ss->gen->batch_idx >= 0) {
            ic_logprobs *lp = NULL;
            ic_token tok = ic_sched__sample(s, ss->gen, ss->gen->batch_idx, &lp);
            ic_sched__on_token(s, ss, tok, lp);
        }
        if (ss->id)
            publish_session(s, ss);
    }
    return true;
}

static void publish_stats(ic_sched *s);

/* Puts an evicted session's KV state back into its new sequence (asleep:
 * into saved_kv, which the wake-up restores). What does not fit is
 * recomputed by the next turn. */
static void restore_kv(ic_sched *s, session *ss, req *r)
{
    if (r->n_hist >= ss->cap_hist)
        return;
    if (s->sleeping) {
        ss->saved_kv = r->kv;
        ss->saved_kv_len = r->kv_len;
        r->kv = NULL;
    } else if (ic_engine_seq_state_restore(s->engine, ss->seq, r->kv, r->kv_len) < 0) {
        ic_log_warn("session %llu: its KV state does not fit; recomputing it",
                    (unsigned long long)ss->id);
        ic_engine_seq_rm(s->engine, ss->seq, -1, -1);
        return;
    }
    memcpy(ss->hist, r->hist, (size_t)r->n_hist * sizeof *ss->hist);
    ss->n_hist = r->n_hist;
    ss->first_turn_done = true;
}

static void open_session(ic_sched *s, req *r)
{
    session *ss = NULL;
    for (int i = 0; i < s->opts.max_sessions && !ss; i++) {
        if (!s->sessions[i].id)
            ss = &s->sessions[i];
    }
    /* The admission check left a slot free. The history holds a whole
     * context, so no step ever allocates for it. */
    int cap = (int)s->opts.n_ctx_per_session + 1;
    ic_token *hist = ss ? malloc((size_t)cap * sizeof *hist) : NULL;
    int rc = hist ? ic_convo_create(r->text, &ss->convo) : IC_ERR_NOMEM;
    for (int i = 0; rc == 0 && i < r->n_turns; i++)
        rc = ic_convo_restore_turn(ss->convo, r->turns[i].prompt, r->turns[i].raw,
                                   r->turns[i].reply);
    if (rc < 0) {
        ic_log_error("scheduler: could not open session %llu: %s",
                     (unsigned long long)r->session_id, ic_strerror(rc));
        free(hist);
        if (ss) {
            ic_convo_destroy(ss->convo);
            ss->convo = NULL;
        }
        atomic_fetch_add(&s->opens_done, 1);
        ic_event *ev = event_fill(r->reply, IC_EVENT_SESSION_CLOSED, r->session_id, 0);
        r->reply = NULL;
        if (ev) {
            ev->close_reason = IC_CLOSE_SHUTDOWN;
            emit(s, ev);
        }
        return;
    }
    ss->id = r->session_id;
    ss->hist = hist;
    ss->cap_hist = cap;
    ss->n_hist = ss->n_shared = 0;
    ss->first_turn_done = false; /* a restored one too: it may share its system prompt */
    ss->closed = r->reply; /* its SESSION_CLOSED */
    r->reply = NULL;
    if (r->kv)
        restore_kv(s, ss, r);
    atomic_fetch_add(&s->st_sessions, 1); /* before opens_done: see ic_sched_open_session */
    atomic_fetch_add(&s->opens_done, 1);
    atomic_store(&s->pub[ss->seq].id, ss->id);
    publish_session(s, ss);
}

/* An evicted session's KV state and tokens go into its SESSION_CLOSED
 * (asleep: the state saved for the sleep). Out of memory: none, and the
 * session is recomputed where it opens again. */
static void evict_kv(ic_sched *s, session *ss, ic_event *ev)
{
    if (ss->n_hist == 0)
        return;
    if (s->sleeping) {
        ev->kv = ss->saved_kv;
        ev->kv_len = ss->saved_kv_len;
        ss->saved_kv = NULL;
    } else if (ic_engine_seq_state_save(s->engine, ss->seq, &ev->kv, &ev->kv_len) < 0) {
        ev->kv = NULL;
    }
    if (ev->kv && !(ev->hist = malloc((size_t)ss->n_hist * sizeof *ev->hist))) {
        free(ev->kv);
        ev->kv = NULL;
    }
    if (!ev->kv)
        return;
    memcpy(ev->hist, ss->hist, (size_t)ss->n_hist * sizeof *ev->hist);
    ev->n_hist = ss->n_hist;
}

static void close_session(ic_sched *s, session *ss, enum ic_close_reason why)
{
    if (ss->gen)
        finish(s, ss, why == IC_CLOSE_SHUTDOWN ? IC_END_SHUTDOWN : IC_END_ABORT);
    if (why == IC_CLOSE_EVICTED && ss->closed)
        evict_kv(s, ss, ss->closed);
    if (s->engine)
        ic_engine_seq_rm(s->engine, ss->seq, -1, -1);
    ic_convo_destroy(ss->convo);
    free(ss->hist);
    free(ss->saved_kv);
    int seq = ss->seq;
    uint64_t id = ss->id;
    ic_event *ev = event_fill(ss->closed, IC_EVENT_SESSION_CLOSED, id, 0);
    memset(ss, 0, sizeof *ss);
    ss->seq = seq;
    atomic_store(&s->pub[seq].id, 0);
    atomic_store(&s->pub[seq].n_ctx_used, 0);
    atomic_store(&s->pub[seq].state, IC_SESSION_IDLE);
    atomic_fetch_sub(&s->st_sessions, 1);
    publish_stats(s); /* who sees SESSION_CLOSED sees the cells freed */
    if (ev) {
        ev->close_reason = why;
        emit(s, ev);
    }
}

/* An admin's unload (running generations end model_unloaded, then the
 * model sleeps) or load: a sleeping model wakes; an awake one is unloaded
 * and loaded again from its file, which may have changed, so its
 * sessions' KV is not restored but recomputed from their conversations. */
static void unload_or_reload(ic_sched *s, bool load)
{
    if (!s->sleeping) {
        for (int i = 0; i < s->opts.max_sessions; i++)
            if (s->sessions[i].id && s->sessions[i].gen)
                finish(s, &s->sessions[i], IC_END_MODEL_UNLOADED);
        if (s->engine)
            ic_sched__sleep(s, load ? "reloading" : "unloaded by an admin");
        if (load) {
            for (int i = 0; i < s->opts.max_sessions; i++) {
                session *ss = &s->sessions[i];
                free(ss->saved_kv);
                ss->saved_kv = NULL;
                ss->saved_kv_len = 0;
                ss->n_hist = 0;
            }
        }
    }
    if (load && s->sleeping && ic_sched__wake(s) < 0)
        ic_log_error("the model could not be loaded: it stays unloaded until the next request");
}

static void handle_request(ic_sched *s, req *r)
{
    session *ss;
    switch (r->type) {
    case REQ_OPEN: open_session(s, r); break;
    case REQ_INFER:
        if (s->sleeping && ic_sched__wake(s) < 0) {
            refuse(s, r, IC_ERR_MODEL, "the model could not be reloaded after idle sleep");
            break;
        }
        start_generation(s, r);
        break;
    case REQ_ABORT:
        if ((ss = find_session(s, r->session_id)) && ss->gen)
            finish(s, ss, IC_END_ABORT);
        break;
    case REQ_CLOSE:
        if ((ss = find_session(s, r->session_id)))
            close_session(s, ss, r->close_reason);
        break;
    case REQ_SLEEP:
        if (!s->sleeping && s->n_active == 0 && s->engine)
            ic_sched__sleep(s, "asked to make room for another model");
        break;
    case REQ_UNLOAD:
    case REQ_LOAD:
        unload_or_reload(s, r->type == REQ_LOAD);
        break;
    }
    ic_sched__req_free(r);
}

/* Gauges for other threads, and the generated tokens/s over ~1 s windows. */
static void publish_stats(ic_sched *s)
{
    int generating = 0, queued = 0;
    int64_t used = 0;
    for (int i = 0; i < s->opts.max_sessions; i++) {
        session *ss = &s->sessions[i];
        used += ss->n_hist - ss->n_shared;
        if (ss->gen && ss->gen->state == IC_SESSION_QUEUED)
            queued++;
        else if (ss->gen)
            generating++;
    }
    used += ic_prefix_cells(s->prefixes);
    atomic_store(&s->st_generating, generating);
    atomic_store(&s->st_queued, queued);
    atomic_store(&s->st_kv_used, used);
    double t = ic_now_ms();
    if (t - s->tps_window_start_ms >= 1000.0 || s->n_active == 0) {
        double dt = (t - s->tps_window_start_ms) / 1e3;
        uint64_t milli = dt > 0 && s->n_active ? (uint64_t)(s->tps_tokens * 1000.0 / dt) : 0;
        atomic_store(&s->st_tps_milli, milli);
        s->tps_tokens = 0;
        s->tps_window_start_ms = t;
    }
}

static void *sched_main(void *arg)
{
    ic_sched *s = arg;
    bool worked = false;
    while (!atomic_load(&s->stop)) {
        /* Idle: sleep until a request arrives. Busy: take what is there.
         * Work that cannot run yet is looked at again every 100 ms. */
        int wait = s->n_outbox ? 10 : ic_sched__loop_wait_ms(s, worked); /* 10: events wait */
        req *r = wait == 0 ? ic_queue_pop(s->requests) : ic_queue_pop_wait(s->requests, wait);
        bool took = r != NULL;
        for (; r; r = ic_queue_pop(s->requests))
            handle_request(s, r);
        if (took)
            publish_stats(s); /* the watchdog must see new work before a long step */
        ic_sched__beat(s);
        if (s->n_active)
            ic_sched__thermal_check(s);
        worked = s->n_active && !atomic_load(&s->stop) && s->engine && step(s);
        if (s->n_active)
            s->last_work_ms = ic_now_ms();
        else if (s->opts.idle_unload_s > 0 && !s->sleeping && !atomic_load(&s->stop) &&
                 ic_now_ms() - s->last_work_ms >= s->opts.idle_unload_s * 1000.0)
            ic_sched__sleep(s, NULL);
        publish_stats(s);
        flush_events(s);
        if (s->wake_pending && s->opts.wake) {
            s->wake_pending = false;
            s->opts.wake(s->opts.wake_ud);
        }
    }
    /* Shutdown: drain requests so every INFER gets its END or ERROR. */
    for (req *r; (r = ic_queue_pop(s->requests));)
        handle_request(s, r);
    for (int i = 0; i < s->opts.max_sessions; i++) {
        if (s->sessions[i].id)
            close_session(s, &s->sessions[i], IC_CLOSE_SHUTDOWN);
    }
    publish_stats(s);
    flush_events(s);
    atomic_store(&s->stopped, true);
    if (s->opts.wake)
        s->opts.wake(s->opts.wake_ud);
    return NULL;
}

static int check_engine(const ic_sched_opts *o, const ic_engine_info *in)
{
    ic_engine_opts want = ic_engine_opts_default();
    ic_sched_engine_opts(o, &want);
    if (o->max_sessions < 1 || o->max_sessions > 256 || o->n_ctx_per_session < 16) {
        ic_log_error("scheduler: max sessions must be 1..256 and context at least 16 tokens");
        return IC_ERR_INVAL;
    }
    if (in->n_seq_max < want.n_seq_max || in->n_ctx_tokens < want.n_ctx_tokens ||
        in->kv_unified != o->kv_unified) {
        ic_log_error("scheduler: engine holds %u sequences and %u tokens; %u and %u needed",
                     in->n_seq_max, in->n_ctx_tokens, want.n_seq_max, want.n_ctx_tokens);
        return IC_ERR_INVAL;
    }
    /* Every generating session needs a batch row each step, and prefill
     * must still get some: that keeps every session progressing. */
    if ((int)in->n_batch_tokens < 2 * o->max_sessions) {
        ic_log_error("scheduler: batch of %u tokens is too small for %d sessions",
                     in->n_batch_tokens, o->max_sessions);
        return IC_ERR_INVAL;
    }
    return 0;
}

static int alloc_tables(ic_sched *s)
{
    int n = s->opts.max_sessions;
    s->sessions = calloc((size_t)n, sizeof *s->sessions);
    s->pub = calloc((size_t)n, sizeof *s->pub);
    if (!s->sessions || !s->pub ||
        ic_prefix_cache_create(s->opts.prefix_slots, n, &s->prefixes) < 0)
        return IC_ERR_NOMEM;
    for (int i = 0; i < n; i++)
        s->sessions[i].seq = i;
    s->outbox_reserve = 2 * n + s->opts.max_queued + 16;
    s->cap_outbox = s->outbox_reserve + 64;
    s->outbox = malloc((size_t)s->cap_outbox * sizeof *s->outbox);
    if (!s->outbox)
        return IC_ERR_NOMEM;
    /* Unbounded, and still bounded in practice: INFERs by max_queued, OPENs
     * by max_sessions, ABORT/CLOSE by one per session (the gateway never
     * repeats them). A close must never be refused. */
    if (ic_queue_create(0, &s->requests) < 0 ||
        ic_queue_create(0, &s->events) < 0)
        return IC_ERR_NOMEM;
    return 0;
}

int ic_sched_create(ic_engine *engine, const ic_sched_opts *opts, ic_sched **out)
{
    *out = NULL;
    ic_sched *s = calloc(1, sizeof *s);
    if (!s) {
        ic_engine_destroy(engine);
        return IC_ERR_NOMEM;
    }
    s->engine = engine;
    s->opts = *opts;
    ic_engine_get_info(engine, &s->info);
    ic_engine_get_opts(engine, &s->engine_opts);
    s->model_path = strdup(s->engine_opts.model_path);
    s->engine_opts.model_path = s->model_path;
    s->engine_opts.progress = false;
    s->engine_opts.load_tick = ic_sched__reload_tick;
    s->engine_opts.load_tick_ud = s;
    atomic_init(&s->next_session_id, opts->session_id_base + 1);
    atomic_init(&s->st_temp_milli, -1000);
    s->tps_window_start_ms = s->last_work_ms = ic_now_ms();
    atomic_init(&s->st_progress_us, (int64_t)(s->last_work_ms * 1000.0));
    int rc = s->model_path ? check_engine(&s->opts, &s->info) : IC_ERR_NOMEM;
    if (rc == 0)
        rc = alloc_tables(s);
    if (rc == 0 && opts->spec_mode == IC_SPEC_DRAFT) {
        char why[256] = "";
        rc = opts->draft_model_path
                 ? ic_spec_drafter_create(opts->draft_model_path, engine, &s->drafter, why,
                                          sizeof why)
                 : IC_ERR_INVAL;
        if (rc < 0)
            ic_log_error("speculation: %s", why[0] ? why : "no draft model given");
    }
    s->opts.draft_model_path = NULL; /* borrowed: only the drafter keeps it */
    if (rc == 0 && pthread_create(&s->thread, NULL, sched_main, s) != 0)
        rc = IC_ERR_SYS;
    if (rc < 0) {
        ic_sched_destroy(s);
        return rc;
    }
    s->thread_started = true;
    *out = s;
    return 0;
}

void ic_sched_request_stop(ic_sched *s)
{
    if (!s)
        return;
    atomic_store(&s->stop, true);
    ic_queue_interrupt(s->requests);
}

bool ic_sched_stopped(const ic_sched *s) { return !s || atomic_load(&s->stopped); }

void ic_sched_stop(ic_sched *s)
{
    if (!s || !s->thread_started)
        return;
    atomic_store(&s->stop, true);
    ic_queue_interrupt(s->requests);
    pthread_join(s->thread, NULL);
    s->thread_started = false;
}

void ic_sched_destroy(ic_sched *s)
{
    if (!s)
        return;
    ic_sched_stop(s);
    ic_queue_destroy(s->requests, ic_sched__req_free);
    ic_queue_destroy(s->events, (void (*)(void *))ic_event_free);
    for (int i = 0; s->sessions && i < s->opts.max_sessions; i++)
        ic_event_free(s->sessions[i].closed);
    free(s->sessions);
    ic_prefix_cache_destroy(s->prefixes);
    for (int i = 0; i < s->n_outbox; i++)
        ic_event_free(s->outbox[i]);
    free(s->outbox);
    free(s->pub);
    ic_spec_drafter_destroy(s->drafter);
    ic_engine_destroy(s->engine);
    free(s->model_path);
    free(s);
}
