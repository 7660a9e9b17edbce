/* sched_impl.h - the scheduler's private types, shared by sched.c (the
 * step, requests, sessions) and sched_power.c (thermal guard, idle sleep,
 * heartbeat) and prefill.c (how many prompt tokens go into a step). Not
 * for any other module: they see only sched.h.
 *
 * Thread: as each struct says; ic_sched__* functions run on the scheduler
 * thread only.
 */
#ifndef IC_SCHED_IMPL_H
#define IC_SCHED_IMPL_H

#include "buf.h"
#include "clock.h"
#include "convo.h"
#include "engine.h"
#include "prefix.h"
#include "queue.h"
#include "sched.h"
#include "spec.h"
#include "stop.h"
#include "utf8.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

enum req_type { REQ_OPEN, REQ_INFER, REQ_ABORT, REQ_CLOSE, REQ_SLEEP, REQ_UNLOAD, REQ_LOAD };

/* A request from another thread; owned by the queue, then by the
 * scheduler thread, which frees it. */
typedef struct req {
    enum req_type type;
    uint64_t session_id;
    uint64_t request_id;
    char *text;               /* OPEN: system prompt or NULL; INFER: prompt */
    bool raw;
    ic_gen_params params;     /* stop strings point into stop_copies */
    char *stop_copies[IC_STOP_MAX];
    /* params.grammar points at grammar, whose strings are owned here */
    ic_grammar grammar;
    ic_grammar_trigger *triggers;
    ic_logit_bias *logit_bias;   /* params.sample.logit_bias points here */
    ic_chat_turn chat;        /* params.chat points here; strings owned */
    ic_chat_message *chat_results; /* chat.tool_results, strings owned */
    enum ic_close_reason close_reason;
    ic_turn *turns;           /* OPEN: a restored conversation (strings owned) */
    int n_turns;
    uint8_t *kv;              /* OPEN: its KV state, owned, or NULL */
    size_t kv_len;
    ic_token *hist;           /* OPEN: the tokens of that state, owned */
    int n_hist;
    double t_submit_ms;
    /* The answer, allocated by the submitter so that running out of memory
     * on the scheduler thread can never lose it: INFER's END or ERROR,
     * OPEN's and CLOSE's SESSION_CLOSED. NULL for ABORT. */
    ic_event *reply;
} req;

/* One generation (one INFER). Scheduler thread. */
typedef struct gen {
    uint64_t request_id;
    enum ic_session_state state;
    enum ic_priority priority;
    int max_tokens;
    bool ignore_eos;
    bool penalize;            /* repetition penalty on: feed it the prompt */
    ic_sampler *sampler;
    ic_stop stop;
    ic_utf8_stream utf8;
    ic_buf reply;             /* every byte sent in this generation's TOKENs */
    ic_buf raw_piece;         /* scratch: one token's bytes */
    ic_buf piece_text;        /* scratch: one token's text after UTF-8 repair */
    ic_buf out_text;          /* scratch: one token's text after stop strings */
    ic_event *end;            /* this generation's END, allocated up front */
    /* A chat turn rendered by ic_convo_begin_chat_turn: its parser and
     * thinking tags (owned), and the reasoning block's progress. */
    ic_chat_prompt *chat;
    bool split;
    int think;                /* 0: not (yet) in it, 1: inside, 2: ended */
    size_t think_from;        /* reply bytes where the block's text starts */
    int n_think;              /* tokens inside it so far */
    int think_budget;         /* -1: no limit */
    ic_token *forced;         /* the end marker being forced, n_forced tokens */
    int n_forced, i_forced;
    /* The render's preserved tokens that are one token each: their text
     * (in g->chat) is the TOKEN text, control tokens included, so that the
     * parser sees markers such as <|channel|> or [TOOL_CALLS]. */
    ic_token *pres_ids;
    const char **pres_text;
    int n_pres;
    ic_token *prompt;         /* the whole conversation for this turn */
    int n_prompt_tokens;
    int n_prompt_decoded;     /* prompt tokens decoded in this turn */
    ic_token next;            /* sampled, to be decoded next step */
    bool has_next;
    int batch_idx;            /* output row in this step's batch, or -1 */
    /* Speculation: this step's draft tokens follow `next` in the batch
     * (rows batch_idx + 1 .. + n_draft) and in the session's history. */
    bool spec;                /* may draft (serve --spec, not opted out) */
    int n_draft;              /* draft tokens in this step's batch */
    int n_drafted, n_accepted; /* totals of this generation (END stats) */
    ic_spec_backoff backoff;
    int n_generated;
    bool logprobs;            /* TOKENs carry log-probabilities (ic_gen_params) */
    int top_logprobs;
    ic_buf lp_bytes;          /* scratch: their tokens' bytes */
    uint64_t last_served_step;
    uint64_t prefix_group;    /* ic_gen_params: whose cells its first turn may copy */
    double t_submit_ms, t_start_ms, t_first_ms, t_prefill_done_ms, t_last_token_ms;
} gen;

/* A session: one llama sequence and its conversation. Scheduler thread. */
typedef struct session {
    uint64_t id;              /* 0 = free slot */
    int seq;                  /* llama sequence id (the slot index) */
    ic_convo *convo;
    ic_token *hist;           /* tokens in the KV cache at positions 0..n_hist-1;
                               * cap_hist = n_ctx_per_session + 1 from the open
                               * on, so a step never allocates for it */
    int n_hist, cap_hist;
    int n_step_start;         /* n_hist before this step's batch (for rollback) */
    int n_shared;             /* leading cells shared with a prefix entry */
    uint64_t prefix_group;    /* of its last INFER (ic_gen_params); 0: lends nothing */
    bool first_turn_done;
    gen *gen;
    ic_event *closed;         /* its SESSION_CLOSED, allocated with the OPEN */
    uint8_t *saved_kv;        /* while sleeping: the sequence's KV state, or NULL */
    size_t saved_kv_len;
} session;

/* What other threads may read about a slot. One writer: the scheduler. */
typedef struct slot_pub {
    _Atomic uint64_t id;
    _Atomic int state;
    _Atomic int n_ctx_used;
} slot_pub;

struct ic_sched {
    ic_sched_opts opts;       /* immutable after create */
    ic_engine_info info;      /* immutable after create */
    pthread_t thread;
    bool thread_started;      /* touched only by create/stop callers */
    ic_queue *requests;       /* req *, bounded */
    ic_queue *events;         /* ic_event *, unbounded */
    _Atomic bool stop;
    _Atomic bool stopped;
    /* Admission counters, each with one writer. The submitting thread
     * (open/infer callers, one at a time: the gateway's) counts what it
     * sent; the scheduler counts what it took and how many sessions are
     * open. In flight = sent - done, never negative for the submitter,
     * which reads after its own writes. */
    _Atomic uint64_t opens_sent;     /* writer: submitter */
    _Atomic uint64_t infers_sent;    /* writer: submitter */
    _Atomic uint64_t opens_done;     /* writer: scheduler; OPENs handled */
    _Atomic uint64_t infers_started; /* writer: scheduler; INFERs out of the queue state */
    _Atomic int st_sessions;         /* writer: scheduler; sessions open */
    _Atomic uint64_t next_session_id;
    slot_pub *pub;            /* [max_sessions] */
    _Atomic int st_generating, st_queued;
    _Atomic int64_t st_kv_used;
    _Atomic uint64_t st_steps;
    _Atomic uint64_t st_tps_milli; /* tokens/s x 1000 */
    _Atomic int st_state;          /* enum ic_sched_state */
    _Atomic int64_t st_progress_us; /* CLOCK_MONOTONIC us of the loop's last turn */
    _Atomic int64_t st_temp_milli;  /* thermal guard's last reading x 1000; < 0 none */
    _Atomic uint64_t st_sleeps;
    _Atomic uint64_t st_spec_drafted, st_spec_accepted; /* writer: scheduler */
    _Atomic uint64_t st_wakes;
    _Atomic int64_t st_last_wake_us; /* how long the last wake took */

    /* --- scheduler thread only --- */
    ic_engine *engine;
    session *sessions;        /* [max_sessions] */
    ic_prefix_cache *prefixes;
    uint64_t step;
    int n_active;             /* sessions with a generation */
    bool wake_pending;
    ic_event **outbox;        /* this step's events, not yet in the queue */
    int n_outbox, cap_outbox;
    int outbox_reserve;       /* slots TOKENs leave to answers (see emit) */
    uint64_t tps_tokens;
    double tps_window_start_ms;
    ic_engine_opts engine_opts; /* to reload after sleep; model_path is model_path */
    char *model_path;
    bool throttled;           /* thermal guard holds prefill, paces decode */
    bool sleeping;            /* engine is NULL; sessions' KV in saved_kv */
    double temp_checked_ms;   /* last thermal reading */
    double last_work_ms;      /* last loop turn with a generation */
    double last_beat_ms;      /* last heartbeat callback */
    double last_decode_ms;    /* duration of the last llama_decode */
    double decode_ms;         /* prefill.c: a decode-only step, measured (0: not yet) */
    struct ic_spec_drafter *drafter; /* serve --spec draft; NULL otherwise */
    ic_spec_cost spec_cost;   /* what a step's rows cost (speculation) */
    double prompt_ms;         /* prefill.c: one prompt token's share of a step (0: not yet) */
    uint64_t decode_probe_step; /* step of the last decode-only measurement */
};

/* Appends a token to the session's history; the array holds a whole
 * context, which the scheduler never exceeds. */
static inline void ic_sched__hist_push(session *ss, ic_token t)
{
    if (ss->n_hist < ss->cap_hist)
        ss->hist[ss->n_hist++] = t;
}

/* Puts prompt tokens of the sessions in prefill into this step's batch,
 * bounded by time while n_decoding sessions decode (prefill.c). */
void ic_sched__prefill(ic_sched *s, int n_decoding);

/* Feeds a finished step's duration into prefill.c's cost model. */
void ic_sched__step_measured(ic_sched *s, int n_decoding, int n_prompt, double ms);


/* Samples the session's token from batch row idx; with logprobs also its
 * log-probabilities from the same row's raw logits into *lp (malloc'd,
 * NULL when off or out of memory). logprobs.c. */
ic_token ic_sched__sample(ic_sched *s, gen *g, int idx, ic_logprobs **lp);

/* Frees a request (a void * for the queue); NULL is ok (sched_submit.c). */
void ic_sched__req_free(void *p);

/* Reads the hottest GPU at most once a second (call only while work runs)
 * and switches the thermal guard, with temp_resume_delta_c of hysteresis. */
void ic_sched__thermal_check(ic_sched *s);

/* Idle sleep: saves every session's KV state to host memory and frees the
 * engine. */
void ic_sched__sleep(ic_sched *s, const char *why);

/* Reloads the engine and restores the sessions' KV state. Returns 0 or the
 * engine's error (then it stays asleep). */
int ic_sched__wake(ic_sched *s);

/* Records the loop's progress and calls the heartbeat callback at most
 * every heartbeat_interval_ms. */
void ic_sched__beat(ic_sched *s);

/* The engine's load_tick during a reload (ud is the scheduler): the
 * heartbeat goes on through a long load. */
void ic_sched__reload_tick(void *ud);

/* How long the loop may wait for a request before its next turn (-1: until
 * one comes); worked says whether the last turn decoded. */
int ic_sched__loop_wait_ms(ic_sched *s, bool worked);

/* Split chat turns (sched_chat.c). think_init: after the render, from
 * the turn's options; think_token: after a token's text joined the reply,
 * whether that text is the reasoning block's (and starts forcing the end
 * marker when the budget is spent); next_token: the forced token, else a
 * sample; parse_reply: the reply through the render's parser (NULL only
 * when out of memory), calls without an id named call_r<request>_<i>. */
void ic_sched__think_init(ic_sched *s, gen *g, const ic_chat_turn *ct);
/* The text of tok where it is one of the turn's preserved tokens, or NULL. */
const char *ic_sched__preserved(const gen *g, ic_token tok);
bool ic_sched__think_token(ic_sched *s, gen *g);
ic_token ic_sched__next_token(ic_sched *s, gen *g, int idx);
ic_chat_parsed *ic_sched__parse_reply(const gen *g);

/* --- the step's tokens (sched.c) and its speculation (sched_spec.c) --- */

/* Batch rows that drafts leave to prefill in every step. */
#define IC_SPEC_PREFILL_ROWS 16

/* One sampled token of ss's generation (lp: its log-probabilities, owned
 * by the event, or NULL): text, stop strings, limits, END. */
void ic_sched__on_token(ic_sched *s, session *ss, ic_token tok, ic_logprobs *lp);

/* After ss's sampled token went into the batch: its drafts, as many as
 * the backoff and the cost model allow; reserve: batch rows still owed to
 * others. */
void ic_sched__add_drafts(ic_sched *s, session *ss, int reserve);

/* After the decode: samples ss's rows in order while they match its
 * drafts, emits each token, removes the rejected drafts' cells. */
void ic_sched__verify(ic_sched *s, session *ss);

#endif
