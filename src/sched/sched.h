/* sched.h - the continuous-batching scheduler.
 *
 * One scheduler thread owns the engine (model, context, batch, samplers)
 * and every session's conversation and KV cache. Each step it puts one
 * token of every generating session and a fair share of prompt tokens into
 * one llama_decode, then samples every session that has output.
 *
 * Other threads talk to it only through the calls below: requests go in
 * through a bounded queue, events come out through an unbounded queue and
 * a wake-up callback. Sessions and requests are named by integer IDs.
 */
#ifndef IC_SCHED_H
#define IC_SCHED_H

#include "chat.h"
#include "engine.h"
#include "stop.h"
#include "types.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct ic_sched ic_sched;

enum ic_end_reason {
    IC_END_EOS,
    IC_END_LENGTH,
    IC_END_STOP_STRING,
    IC_END_ABORT,
    IC_END_CONTEXT_FULL,
    IC_END_SHUTDOWN,
    IC_END_ERROR,
    IC_END_MODEL_UNLOADED,   /* an admin unloaded or reloaded the model (ic_sched_unload) */
};

/* Why a session went away. */
enum ic_close_reason {
    IC_CLOSE_CLIENT,
    IC_CLOSE_DISCONNECT,
    IC_CLOSE_SHUTDOWN,
    /* Asked for to free the slot of a session that lives on elsewhere (a
     * parked durable session): SESSION_CLOSED carries its KV state and
     * token history, to open it again with ic_sched_open_session_turns. */
    IC_CLOSE_EVICTED,
};

/* What the scheduler as a whole is doing. */
enum ic_sched_state {
    IC_SCHED_READY,
    IC_SCHED_THROTTLED,      /* GPU at the temperature limit: no new prefill, paced decode */
    IC_SCHED_SLEEPING,       /* idle: model and context freed, sessions' KV in host memory */
    IC_SCHED_WAKING,         /* reloading the model after sleep */
};

enum ic_session_state {
    IC_SESSION_IDLE,
    IC_SESSION_QUEUED,
    IC_SESSION_PREFILL,
    IC_SESSION_GENERATING,
};

/* A chat turn driven by the model's Jinja template beyond roles (protocol
 * v1 INFER tools, tool results, reasoning). Everything borrowed by
 * ic_sched_infer, which copies it. */
typedef struct ic_chat_turn {
    const char *tools_json;   /* OpenAI tools array as JSON text; NULL: none */
    const char *tool_choice;  /* "auto" (NULL), "none" or "required" */
    int reasoning;            /* -1: the template's default, 0 off, 1 on */
    /* Most tokens inside the reasoning block; then its end marker is forced
     * (as llama-server's reasoning budget). -1: no limit. */
    int reasoning_budget;
    /* Split the reply: TOKENs of the reasoning block say so (ic_event
     * reasoning), END carries the parse (content, reasoning, tool calls),
     * and the conversation keeps the structured assistant message. */
    bool split;
    /* Tool results (role "tool": content, tool_call_id) added before the
     * prompt's user message; with no_user_turn the prompt adds none. */
    const ic_chat_message *tool_results;
    size_t n_tool_results;
    bool no_user_turn;
} ic_chat_turn;

typedef struct ic_gen_params {
    ic_sample_params sample;
    /* A session's first turn may start from the KV cells of an idle
     * session of the same non-zero group whose tokens begin the same way
     * (a chat template's header, a system prompt, an earlier request of a
     * conversation): those cells are copied, not decoded. 0: never, and the
     * session never lends its own. The gateway sets it (per client with
     * --prompt-cache-isolation client). */
    uint64_t prefix_group;
    int max_tokens;
    bool ignore_eos;
    enum ic_priority priority;
    int n_stop;
    const char *stop[IC_STOP_MAX]; /* borrowed by ic_sched_infer, which copies */
    /* Parse control tokens (<|im_start|>, ...) in the prompt's text too.
     * Off: in chat mode only the template's own text has control tokens,
     * so a user cannot open a turn of another role; raw text is plain. */
    bool allow_special;
    /* Output constraint (engine.h: GBNF text, lazy triggers, prefill);
     * NULL or no gbnf: unconstrained. Borrowed by ic_sched_infer, which
     * copies it. The scheduler thread compiles it when the generation
     * starts; one that does not compile (or whose prefill it rejects)
     * refuses the INFER with ERROR IC_ERR_INVAL whose message names the
     * problem: never an unconstrained answer. */
    const ic_grammar *grammar;
    /* Never draft for this generation (INFER params.speculative false);
     * the output is the same either way, only the speed differs. */
    bool no_speculation;
    /* Log-probabilities on every TOKEN (ic_event.logprobs): the sampled
     * token's, from the model's raw logits (engine.h), and the
     * top_logprobs (0..IC_LOGPROBS_MAX) most likely tokens'. Off: no cost. */
    bool logprobs;
    int top_logprobs;
    /* Chat mode only: tools, tool results, reasoning (NULL: as before). A
     * grammar the render brings (tool calls) applies when `grammar` is
     * NULL; the template's extra stop strings are added with tools. */
    const ic_chat_turn *chat;
} ic_gen_params;

typedef struct ic_gen_stats {
    int prompt_tokens;        /* tokens decoded for this turn's prompt */
    int context_tokens;       /* the turn's whole token sequence (conversation and
                                 prompt), of which context_tokens - prompt_tokens
                                 were already in the KV cache */
    int generated_tokens;
    double queue_ms;          /* submit -> first prompt token in a batch */
    double ttft_ms;           /* submit -> first generated token */
    double total_ms;          /* submit -> end */
    double tokens_per_second; /* generated tokens after the first, per second */
    double prompt_tokens_per_second;
    int drafted_tokens;       /* speculative draft tokens verified */
    int accepted_tokens;      /* of them, accepted (each one a token gained) */
} ic_gen_stats;

enum ic_event_type {
    IC_EVENT_TOKEN,          /* one generated token's text */
    IC_EVENT_END,            /* a generation ended; exactly one per accepted INFER */
    IC_EVENT_ERROR,          /* an INFER was refused (never followed by END) */
    IC_EVENT_SESSION_CLOSED, /* the session's KV cache is free */
};

/* One token of a TOKEN's log-probabilities: its raw bytes (may be part of
 * a UTF-8 character; a control token has none) are bytes[off .. off+len)
 * of the ic_logprobs that holds it. */
typedef struct ic_logprob_tok {
    ic_token token;
    float logprob;            /* <= 0 */
    uint32_t off, len;
} ic_logprob_tok;

/* A TOKEN's log-probabilities: one allocation of size bytes (copy it
 * whole), owned by the event. */
typedef struct ic_logprobs {
    size_t size;
    ic_logprob_tok sampled;
    int n_top;                /* most likely first */
    ic_logprob_tok top[IC_LOGPROBS_MAX];
    char bytes[];
} ic_logprobs;

/* An event; owned by whoever pops it, freed with ic_event_free. */
typedef struct ic_event {
    enum ic_event_type type;
    uint64_t session_id;
    uint64_t request_id;      /* TOKEN, END, ERROR */
    int index;                /* TOKEN: counts from 0 in each generation */
    double gap_ms;            /* TOKEN: since the generation's previous token (0 for the first) */
    char *text;               /* TOKEN: valid UTF-8, may be ""; owned */
    size_t text_len;
    ic_logprobs *logprobs;    /* TOKEN of a generation with logprobs: owned; else NULL */
    bool reasoning;           /* TOKEN of a split turn: text of the reasoning block */
    /* END of a split turn (ic_chat_turn.split): the reply parsed, its tool
     * calls with the ids the conversation keeps; owned, NULL otherwise. */
    ic_chat_parsed *parsed;
    enum ic_end_reason reason;        /* END */
    enum ic_close_reason close_reason; /* SESSION_CLOSED */
    ic_gen_stats stats;       /* END */
    int err;                  /* ERROR: an ic_err */
    /* SESSION_CLOSED evicted: the sequence's KV state (ic_engine_seq_state_save)
     * and the n_hist tokens it holds; owned, NULL when it could not be
     * kept (the session is then recomputed from its conversation). */
    uint8_t *kv;
    size_t kv_len;
    ic_token *hist;
    int n_hist;
    char message[192];        /* ERROR: for the client */
} ic_event;

typedef struct ic_sched_opts {
    int max_sessions;            /* sessions held at once */
    uint32_t n_ctx_per_session;  /* tokens of context per session */
    int max_queued;              /* generations waiting to start; beyond: overloaded */
    int prefix_slots;            /* shared system-prompt prefixes kept; in a split
                                  * KV cache each costs a session's cells */
    int max_chunk_tokens;        /* most prompt tokens of one session per step */
    /* While sessions decode, a step's prompt tokens are bounded by time:
     * the step takes at most this long (and at most 1.5x a step of the
     * decoding sessions alone); a prompt-only step at most 4x this. 0: by
     * count only (max_chunk_tokens, the batch). See prefill.c. */
    int max_step_ms;
    /* ...but each step carries at least this many prompt tokens while
     * prompts wait (a turn's few new tokens then go in at once; the step
     * grows by what they cost). 1: the time bound alone. */
    int min_prefill_tokens;
    /* Where the decoding sessions' step alone already takes about
     * max_step_ms or more (a slow CPU, a big model, many sessions), the
     * time bound cannot hold. true (the default): prompts then go in by
     * count (max_chunk_tokens a session, the batch), as if max_step_ms were
     * 0; false: they get a quarter of a decode-only step's time. */
    bool slow_step_whole;
    bool kv_unified;             /* one KV buffer for all (see docs/scheduler.md) */
    /* Called from the scheduler thread after events were added to an empty
     * queue; must be cheap and thread-safe (e.g. lws_cancel_service). */
    void (*wake)(void *ud);
    void *wake_ud;
    /* Thermal guard: at or above temp_limit_c the scheduler admits no new
     * prefill and paces decoding (one step's time of rest after each step)
     * until the hottest GPU is temp_resume_delta_c below the limit.
     * read_temp_c runs on the scheduler thread at most once a second while
     * work runs and returns the hottest GPU's temperature, or < 0 when
     * unknown. temp_limit_c <= 0 or read_temp_c NULL: off. */
    double temp_limit_c;
    double temp_resume_delta_c;
    double (*read_temp_c)(void *ud);
    void *temp_ud;
    /* Idle sleep: after this long without work the sessions' KV state goes
     * to host memory and the model and context are freed; the next INFER
     * reloads them (0 = never). */
    int idle_unload_s;
    /* Session IDs start after this (several schedulers in one server keep
     * them apart: api/models.h); 0 for a server with one model. */
    uint64_t session_id_base;
    /* Called from the scheduler loop at most every heartbeat_interval_ms
     * (and at least that often, idle included, when set): a hung decode
     * stops it (the systemd watchdog). NULL: none. */
    void (*heartbeat)(void *ud);
    void *heartbeat_ud;
    int heartbeat_interval_ms;
    /* Speculative decoding (spec.h): each generating session may add up
     * to spec_max_tokens draft tokens after its sampled one to the step's
     * batch; they are verified in the same llama_decode as everyone's
     * work. enum ic_spec_mode; IC_SPEC_OFF: never. IC_SPEC_DRAFT drafts
     * with the model at draft_model_path (spec_draft.h; its vocabulary
     * must be the engine's, or ic_sched_create fails). */
    int spec_mode;
    int spec_max_tokens;
    const char *draft_model_path; /* copied */
} ic_sched_opts;

/* Counters and gauges, readable from any thread. */
typedef struct ic_sched_stats {
    int sessions;
    int generating;           /* generations in prefill or decode */
    int queued;               /* generations waiting to start */
    int64_t kv_cells_used;
    int64_t kv_cells_total;
    double tokens_per_second; /* generated tokens/s over the last second or so */
    uint64_t steps;           /* decode steps since start */
    int max_sessions;
    enum ic_sched_state state;
    double last_progress_ms;  /* CLOCK_MONOTONIC ms of the loop's last turn */
    double gpu_temp_c;        /* last reading of the thermal guard; < 0 none */
    uint64_t sleeps;          /* times the model was unloaded for idleness */
    uint64_t spec_drafted_tokens;  /* draft tokens verified since start */
    uint64_t spec_accepted_tokens; /* of them, accepted */
    uint64_t wakes;           /* times it was loaded again after a sleep */
    double last_wake_ms;      /* how long the last of those loads took (KV restore included) */
} ic_sched_stats;

/* max_sessions 8, 2048 tokens each, 64 queued, 2 prefixes, 256-token
 * chunks, 50 ms steps, a KV cache split per sequence; no thermal guard, no idle sleep,
 * no heartbeat (the temperature hysteresis is 5 degrees when enabled), no
 * speculation (spec_max_tokens 8 once turned on). */
ic_sched_opts ic_sched_opts_default(void);

/* The engine options that hold opts' sessions (and prefixes) in one context. */
void ic_sched_engine_opts(const ic_sched_opts *opts, ic_engine_opts *eo);

/* Creates the scheduler and starts its thread. Takes ownership of engine
 * on every path (it is destroyed on failure too); with idle_unload_s the
 * scheduler reloads it from the options it was created with. Returns 0,
 * IC_ERR_NOMEM, IC_ERR_INVAL (engine too small for opts) or IC_ERR_SYS. */
int ic_sched_create(ic_engine *engine, const ic_sched_opts *opts, ic_sched **out);

/* Stops the thread: running generations end with IC_END_SHUTDOWN, sessions
 * close with IC_CLOSE_SHUTDOWN; those events stay in the queue to be
 * polled. Idempotent. Any thread except the scheduler's. */
void ic_sched_stop(ic_sched *s);

/* Asks the thread to stop, as ic_sched_stop does, without waiting for it:
 * the step in progress finishes first. Its END and SESSION_CLOSED events
 * come through the queue and the wake callback as usual; ic_sched_stopped
 * is true once the last of them is queued. Any thread. */
void ic_sched_request_stop(ic_sched *s);
bool ic_sched_stopped(const ic_sched *s);

/* Stops (if needed) and frees everything, the engine included. NULL is ok. */
void ic_sched_destroy(ic_sched *s);

/* The options it runs with (immutable). Any thread. */
void ic_sched_get_opts(const ic_sched *s, ic_sched_opts *out);

/* Model facts (immutable). Any thread. */
void ic_sched_model_info(const ic_sched *s, ic_engine_info *out);

/* Opens a session, optionally with a system prompt (copied). Returns 0 and
 * its ID, IC_ERR_CAPACITY (max_sessions reached), IC_ERR_OVERLOADED or
 * IC_ERR_NOMEM. Open and infer come from one thread at a time (the
 * submitter: the gateway's network thread), which owns the admission
 * counters; abort and close from any thread. */
int ic_sched_open_session(ic_sched *s, const char *system_prompt, uint64_t *session_id);

/* A finished turn of a conversation, for ic_sched_open_session_turns. */
typedef struct ic_turn {
    const char *prompt;       /* as INFER gave it */
    bool raw;
    const char *reply;        /* the text of its TOKENs */
} ic_turn;

/* As ic_sched_open_session, with a conversation that already holds these
 * turns (everything copied; a durable session restored from its store):
 * its KV cache is empty, so the next INFER decodes the whole conversation.
 * Turns that mix raw and chat close the session at once (SESSION_CLOSED
 * shutdown, logged), as an open the scheduler cannot do. */
int ic_sched_open_session_turns(ic_sched *s, const char *system_prompt, const ic_turn *turns,
                                int n_turns, uint64_t *session_id);

/* As ic_sched_open_session_turns, with the KV state and token history an
 * evicted SESSION_CLOSED carried (copied): the session's cells are put
 * back (kv NULL, or a state that does not fit: recomputed by the next
 * turn, logged). */
int ic_sched_open_session_kv(ic_sched *s, const char *system_prompt, const ic_turn *turns,
                             int n_turns, const uint8_t *kv, size_t kv_len,
                             const ic_token *hist, int n_hist, uint64_t *session_id);

/* Starts a generation: prompt is the next user turn (chat-formatted) or,
 * with raw, text appended as is. Everything is copied. Returns 0 when
 * queued (then exactly one END follows, or one ERROR if the scheduler
 * refuses it: prompt_too_long, checked on the byte size before any
 * tokenizing where the bytes alone cannot fit; IC_ERR_INVAL for an empty
 * or whitespace-only prompt in a session with nothing in its context),
 * IC_ERR_INVAL at once for a logit bias on a token outside the vocabulary,
 * IC_ERR_OVERLOADED or IC_ERR_NOMEM. The caller ensures one generation per
 * session at a time. The submitter thread (see ic_sched_open_session). */
int ic_sched_infer(ic_sched *s, uint64_t session_id, uint64_t request_id, const char *prompt,
                   bool raw, const ic_gen_params *params);

/* Ends the session's running generation within one step (END abort).
 * Any thread. Returns 0 or IC_ERR_NOMEM. */
int ic_sched_abort(ic_sched *s, uint64_t session_id);

/* Ends any generation (END abort), frees the KV cache, then emits
 * SESSION_CLOSED with reason. Any thread. Returns 0 or IC_ERR_NOMEM. */
int ic_sched_close_session(ic_sched *s, uint64_t session_id, enum ic_close_reason reason);

/* Puts the model to sleep now, as idle sleep does (sessions' KV state to
 * host memory, model and context freed; the next INFER reloads them),
 * unless a generation runs or waits: then nothing happens. For a server
 * that holds only some of its models at once (api/models.h). Any thread.
 * Returns 0 or IC_ERR_NOMEM. */
int ic_sched_sleep(ic_sched *s);

/* An admin's unload: running generations end with IC_END_MODEL_UNLOADED,
 * then the model sleeps as with ic_sched_sleep (its sessions stay, their
 * KV in host memory; the next INFER loads it again). Any thread. Returns 0
 * or IC_ERR_NOMEM. */
int ic_sched_unload(ic_sched *s);

/* An admin's load: a sleeping model loads now (its sessions' KV restored);
 * a loaded one is reloaded from its file, which may have changed (running
 * generations end IC_END_MODEL_UNLOADED; sessions recompute their KV from
 * their conversations). Any thread. Returns 0 or IC_ERR_NOMEM. */
int ic_sched_load(ic_sched *s);

/* Pops the next event, waiting up to timeout_ms (0 = not at all, -1 =
 * forever). Returns NULL if there is none. One consumer thread. */
ic_event *ic_sched_poll_event(ic_sched *s, int timeout_ms);

/* Frees an event; NULL is ok. */
void ic_event_free(ic_event *ev);

/* Reads the gauges. Any thread. */
void ic_sched_get_stats(const ic_sched *s, ic_sched_stats *out);

/* A session's state and context use; IC_ERR_NOT_FOUND if it is not open.
 * Any thread (values may be a step old). */
int ic_sched_session_info(const ic_sched *s, uint64_t session_id,
                          enum ic_session_state *state, int *n_ctx_used_tokens);

/* Names as the protocol, tokens file and command line spell them
 * (sched_names.c; pure, any thread); the priority's are in types.h. */
const char *ic_end_reason_name(enum ic_end_reason r);
const char *ic_close_reason_name(enum ic_close_reason r);
const char *ic_session_state_name(enum ic_session_state s);
const char *ic_sched_state_name(enum ic_sched_state s);

#endif
