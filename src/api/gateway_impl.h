/* gateway_impl.h - the gateway's private state, shared by its three files
 * and by nothing else (no other module includes it):
 *
 *   gateway.c    connections and sessions: client messages, scheduler
 *                events, sending; the bottom of the three
 *   routes.c     HTTP: the route table and its handlers    -> gateway.c
 *   lifecycle.c  create/destroy, the server's handlers, timers (watchdog,
 *                idle sessions, metrics subscriptions, auth time-outs
 *                and delayed AUTH answers),
 *                attach, stop, tokens reload                -> both
 *
 * Calls go one way, down that list. Names starting ic_gw_ are private to
 * the gateway. Everything here belongs to the network thread, except the
 * atomics at the end of struct ic_gateway.
 */
#ifndef IC_GATEWAY_IMPL_H
#define IC_GATEWAY_IMPL_H

#include "auth.h"
#include "buf.h"
#include "chat.h"
#include "gateway.h"
#include "gpu.h"
#include "idmap.h"
#include "metrics.h"
#include "models.h"
#include "protocol.h"
#include "queue.h"
#include "store.h"
#include "throttle.h"

#include <stdatomic.h>

#define CLOSE_GOING_AWAY 1001
#define CLOSE_TOO_BIG 1009
#define CLOSE_INTERNAL 1011
#define CLOSE_TRY_LATER 1013       /* a connection cap: come back later */
#define CLOSE_AUTH_FAILED 4001
#define CLOSE_AUTH_TIMEOUT 4002
#define CLOSE_TOKEN_REVOKED 4003

/* A client's connection as the gateway sees it. Network thread. */
typedef struct client_conn {
    uint64_t id;
    char addr[IC_CLIENT_ADDR_MAX]; /* the client's, through trusted proxies */
    char count_key[IC_CLIENT_NAME_MAX + 1]; /* whose session count this uses */
    bool authed;
    /* A throttled AUTH, checked, whose answer waits for the connection's
     * timer (throttle.h): 0 none, 1 the token was right, 2 it was wrong. */
    int auth_pending;
    ic_client_cfg pending_cfg; /* for 1 */
    ic_msg_id auth_id;
    bool closing;              /* a close was asked for: its messages are ignored */
    ic_client_cfg client;
    int max_sessions;
    /* The token it authenticated with, re-checked when the tokens file is
     * reloaded (ic_auth keeps hashes only, and has no lookup by name);
     * wiped and freed with the connection. NULL on an open server. */
    char *token;
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
    char *tools_json;          /* CREATE_SESSION tools (JSON text), or NULL */
    bool running;              /* an INFER awaits its END or ERROR */
    bool abort_sent;
    bool closing;
    bool evicted;              /* a prompt-cache entry closed to free its slot */
    const char *close_reason;  /* static; overrides the scheduler's (idle_timeout) */
    double last_used_ms;       /* CLOCK_MONOTONIC: created, last INFER/ABORT, last END */
    double submitted_ms;       /* CLOCK_MONOTONIC: the running INFER's submission */
    /* Lost-END detection (out of memory in the scheduler): sweeps in a row
     * that found the scheduler done with the running INFER and no END. */
    int lost_checks;
    int lost_advances;         /* of the scheduler's progress since the first */
    double lost_progress_ms;   /* its progress stamp at the last such sweep */
    bool lost_quiet;           /* nothing generating or queued at the last one */
    uint64_t request_id;
    char rid[24];
    ic_msg_id infer_id;
    ic_msg_id close_id;
    /* An HTTP request's session (openai_http.c): its events go to on_event
     * instead of a connection, and oai is that file's state (freed there). */
    struct oai_req *oai;
    void (*on_event)(ic_gateway *g, struct gw_session *ss, const ic_event *ev);
    /* A finished request's session kept for the prompt cache: its whole
     * text (prompt and answer), whose client it was, when it was used. */
    char *cache_text;
    size_t cache_len;
    char cache_owner[IC_CLIENT_NAME_MAX + 1];
    /* Durable sessions (--session-store, durable.c): the record that
     * outlives this one, or NULL. muted: a generation of a session moved
     * to another connection, whose TOKENs and END go to nobody. */
    struct gw_durable *dur;
    bool muted;
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
    int n_preauth;             /* connections not (yet) authenticated */
    uint64_t next_request;
    ic_sched *sched;           /* the default model's (models.m[0]); NULL while loading */
    ic_models models;          /* every served model; a session's is read off its ID */
    const char *model_names[IC_MODELS_MAX]; /* into models, for HELLO */
    bool stopping;
    bool conns_closed;         /* the stop's second half: every connection was told 1001 */
    bool failed;
    bool stalled;              /* the watchdog's verdict at its last check */
    bool engine_dead;          /* the backend failed (ic_gateway_engine_failed): serve nothing */
    int n_gpu_layers;
    int n_ctx_per_session;
    int max_sessions;
    double temp_limit_c;       /* the thermal guard's limit; <= 0: none */
    const ic_chat *chat;       /* the model's chat templates (borrowed); NULL: none */
    uint64_t *parked;          /* prompt-cache sessions, least recently used first */
    struct oai_job *oai_waiting; /* OpenAI requests waiting for a closing entry's slot */
    int n_parked, cap_parked;
    int n_evicting;            /* evicted entries whose SESSION_CLOSED is still to come */
    char model_id[128];        /* the served model's name in the OpenAI API */
    int64_t model_created_s;   /* Unix time it was loaded */
    int tick_ms;               /* server timer 0's period while serving; 0: not armed */
    /* Durable sessions (durable.c): the store (NULL: off) and every
     * durable record by the number of its session id. */
    ic_store *store;
    ic_idmap durables;
    ic_queue *dur_done;        /* the store thread's finished writes (dur_done *) */
    ic_idmap dur_waits;        /* write tag -> the record whose END waits for it */
    uint64_t dur_next_tag;
    _Atomic bool dur_quiet;    /* at destroy: the store's last writes wake nobody */
    int n_dur_parked;          /* sessions whose connection dropped (evicted or not) */
    size_t dur_ram_bytes;      /* parked sessions' KV state held in memory */
    uint64_t dur_resumes;      /* SESSION_RESUMED sent */
    uint64_t dur_restores[IC_RESTORE_COUNT];
    /* The shutdown's KV saves (ic_gw_durable_stop): when it began
     * (CLOCK_MONOTONIC; 0: not yet), how many were queued and their bytes,
     * the store's dropped and failed counts then. */
    double dur_stop_ms;
    int dur_stop_saved;
    size_t dur_stop_bytes;
    uint64_t dur_stop_dropped0, dur_stop_errors0;
    /* Set from other threads, read on the network thread. */
    _Atomic(ic_sched *) attach_pending; /* published after pending_chat and _model_id */
    ic_models pending_models;  /* written before attach_pending / n_published is published */
    _Atomic int n_published;   /* entries of pending_models ready (ic_gateway_add_model) */
    _Atomic bool load_failed;
    _Atomic bool stop_requested;
    _Atomic bool reload_requested;
    _Atomic bool engine_fail_claimed;   /* the first ic_gateway_engine_failed writes why */
    _Atomic bool engine_failed;         /* published after engine_failed_why */
    char engine_failed_why[256];
};

/* The scheduler of a session's model (NULL: that model is not loaded). */
static inline ic_sched *ic_gw_sched(const ic_gateway *g, uint64_t session_id)
{
    return ic_models_sched_of(&g->models, session_id);
}

/* What clients are told after the backend failed. */
#define IC_GW_ENGINE_DEAD_MSG "the model's backend failed (an RPC server was lost); this " \
                              "server must be restarted"

/* Ends every running generation with ERROR internal (the backend failed). */
void ic_gw_fail_running(ic_gateway *g);

/* --- gateway.c: connections, sessions, events ---------------------- */

/* Sends a built message (NULL: out of memory, logged and dropped). */
void ic_gw_send_json(ic_gateway *g, uint64_t conn, char *json);

/* Every client-visible error goes through here. */
void ic_gw_send_error(ic_gateway *g, uint64_t conn, enum ic_proto_code code, const char *message,
                      const char *sid, const ic_msg_id *id);

/* Closes a connection and stops handling its messages. */
void ic_gw_close_conn(ic_gateway *g, client_conn *c, int code, const char *reason);

/* The per-client session limit for clients without their own. */
int ic_gw_default_max_sessions(const ic_gateway *g);

/* The server's state as METRICS, /metrics and /health name it; hw is a
 * reading just taken for the answer (NULL: none, as for /health). */
const char *ic_gw_server_state(const ic_gateway *g, const ic_sched_stats *st,
                               const ic_hw_sample *hw);

/* Sends METRICS to c. */
void ic_gw_send_metrics(ic_gateway *g, client_conn *c, const ic_msg_id *id);

/* Gives the answer of a throttled AUTH whose delay is over (the
 * connection's timer, while c->auth_pending). */
void ic_gw_finish_pending_auth(ic_gateway *g, client_conn *c);

/* The server's handlers for connections (lifecycle.c hands them out). */
void ic_gw_on_open(ic_gateway *g, uint64_t id, const char *addr, const char *forwarded_for);
void ic_gw_on_message(ic_gateway *g, uint64_t id, const char *data, size_t len, bool binary);
void ic_gw_on_too_large(ic_gateway *g, uint64_t id);
void ic_gw_on_close(ic_gateway *g, uint64_t id);

/* Opens a scheduler session for client_key (a count key) within limit
 * sessions. Returns 0 and *out (registered; freed when SESSION_CLOSED
 * comes), IC_ERR_CAPACITY (the client's limit: *at_limit true, or the
 * server's), IC_ERR_OVERLOADED or IC_ERR_NOMEM. */
int ic_gw_session_open(ic_gateway *g, const char *client_key, int limit, const char *system,
                       gw_session **out, bool *at_limit);
/* As ic_gw_session_open, on the model of index model (models.h). */
int ic_gw_session_open_on(ic_gateway *g, int model, const char *client_key, int limit,
                          const char *system, gw_session **out, bool *at_limit);

/* Submits a generation for ss and marks it running (request id, lost-END
 * watch reset, the sweep armed). Returns 0 or ic_sched_infer's error. */
/* What an INFER adds to its generation parameters besides params
 * (gateway_chat.c): its grammar or compiled json_schema, and its chat turn
 * (tools, tool results, reasoning). Borrows m's and ss's strings. */
typedef struct gw_infer_extras {
    ic_grammar grammar;
    char *gbnf;                /* json_schema's grammar, owned */
    ic_chat_turn turn;
    ic_chat_message *results;  /* turn.tool_results, owned */
} gw_infer_extras;

/* Fills *x from INFER m (ss's tools where m gives none) and points gp at
 * it. Returns 0, IC_ERR_INVAL with a bad_request message in why (naming
 * the problem: never an unconstrained answer), or IC_ERR_NOMEM. Free x
 * with ic_gw_infer_extras_free after the submit, on every path. */
int ic_gw_infer_extras(const gw_session *ss, const ic_msg *m, ic_gen_params *gp,
                       gw_infer_extras *x, char *why, size_t why_size);
void ic_gw_infer_extras_free(gw_infer_extras *x);

/* Which sessions' KV cells an OpenAI request's new session may start from
 * (ic_gen_params.prefix_group): any idle OpenAI session's, or with
 * --prompt-cache-isolation client only its own client's; none with
 * --prompt-cache 0. WebSocket sessions keep their own (0). */
uint64_t ic_gw_prefix_group(const ic_gateway *g, const char *client);

int ic_gw_session_submit(ic_gateway *g, gw_session *ss, const char *prompt, bool raw,
                         const ic_gen_params *gp);

/* Moves a session's place in the per-client counts from its client to
 * client_key (within limit; "" counts for nobody). Returns 0 or
 * IC_ERR_CAPACITY (client_key at its limit) / IC_ERR_NOMEM. */
int ic_gw_session_recount(ic_gateway *g, gw_session *ss, const char *client_key, int limit);

/* Routes every scheduler event waiting in the queue. */
void ic_gw_drain_events(ic_gateway *g);

/* Idle sessions past session_idle_timeout_s close (idle_timeout), and
 * generations whose END was lost end with an ERROR. now_ms: CLOCK_MONOTONIC. */
void ic_gw_sweep_sessions(ic_gateway *g, double now_ms);

/* Arms server timer 0 (the watchdog and the sweep) for its next tick:
 * every second while the sweep has work (a generation running, or
 * sessions open under session_idle_timeout_s), else a quarter of the
 * watchdog's time-out (at least 1 s), so an idle server sleeps. soon: only
 * shorten a longer period already armed (a session or INFER just came).
 * Does nothing while stopping (timer 0 is then the shutdown time-out). */
void ic_gw_arm_tick(ic_gateway *g, bool soon);

/* Frees every record (at destroy). */
void ic_gw_free_all(ic_gateway *g);

/* As ic_gw_session_open, with a conversation already holding n_turns
 * (a durable session restored from its record) and, when kv is not NULL,
 * the KV state and tokens of its evicted SESSION_CLOSED (borrowed). */
int ic_gw_session_open_turns(ic_gateway *g, int model, const char *client_key, int limit,
                             const char *system, const ic_turn *turns, int n_turns,
                             const ic_event *kv, gw_session **out, bool *at_limit);

/* --- durable.c: durable sessions (--session-store) ----------------- */

/* Opens the store and loads its records (at create; with opts.session_store).
 * Returns 0 or an error with a one-line reason in err. */
int ic_gw_durable_open(ic_gateway *g, char *err, size_t errlen);

/* Writes what is queued and ends the store's thread (ic_gateway_finish;
 * again: nothing). */
void ic_gw_durable_finish(ic_gateway *g);

/* ic_gw_durable_finish, then frees every record (at destroy). */
void ic_gw_durable_close(ic_gateway *g);

/* Makes ss (just opened for CREATE_SESSION) durable: an unguessable id in
 * ss->sid and its resume token (64 hex digits) in token. Returns 0 or
 * IC_ERR_NOMEM / IC_ERR_SYS. */
int ic_gw_durable_attach(ic_gateway *g, gw_session *ss, const char *system, char token[65]);

/* The live session sid names, held by connection c (not closing), or NULL. */
gw_session *ic_gw_durable_find(ic_gateway *g, const client_conn *c, const char *sid);

/* The conversation's record follows the session's events. */
void ic_gw_durable_on_infer(gw_session *ss, const char *prompt, bool raw);
void ic_gw_durable_on_event(ic_gateway *g, gw_session *ss, ic_event *ev);

/* ss's connection went: a durable session is parked (its generation
 * aborted) and true returned; false for any other. */
bool ic_gw_durable_park(ic_gateway *g, gw_session *ss);

/* An END for ss's connection (json, taken over when true is returned)
 * waits until the turn's record is on disk: a client that saw END can
 * resume after a crash. */
bool ic_gw_durable_hold_end(ic_gateway *g, gw_session *ss, char *json);

/* Sends the ENDs whose records the store has written (from the wake-up). */
void ic_gw_durable_drain(ic_gateway *g);

/* True while ss is parked. */
bool ic_gw_durable_parked(const gw_session *ss);

/* RESUME_SESSION on connection c. */
void ic_gw_durable_resume(ic_gateway *g, client_conn *c, const ic_msg *m);

/* Fills the durable sessions' metrics; buckets has room for the store's. */
void ic_gw_durable_metrics(ic_gateway *g, ic_metrics_durable *out, uint64_t *buckets);

/* The graceful stop begins (before the scheduler is asked to stop): the
 * KV state of held idle sessions and of parked ones in host memory goes
 * to the store, within the shutdown time-out. */
void ic_gw_durable_stop(ic_gateway *g);

/* Parked and stored sessions past --session-ttl go. now_ms: CLOCK_MONOTONIC. */
void ic_gw_durable_sweep(ic_gateway *g, double now_ms);
bool ic_gw_durable_sweep_needed(const ic_gateway *g);

/* --- openai_http.c: the OpenAI API's requests ----------------------- */

void ic_gw_oai_chat(ic_gateway *g, const ic_http_request *req, ic_http_response *resp);
void ic_gw_oai_completions(ic_gateway *g, const ic_http_request *req, ic_http_response *resp);
void ic_gw_oai_models(ic_gateway *g, const ic_http_request *req, ic_http_response *resp);
/* A streamed or deferred request's client went away. */
void ic_gw_oai_gone(ic_gateway *g, uint64_t http_id);
/* Frees a request's state (at destroy); NULL is ok. */
void ic_gw_oai_free(struct oai_req *o);
/* Frees the requests still waiting for a session (at destroy). */
void ic_gw_oai_free_waiting(ic_gateway *g);
/* The backend failed: answers every waiting request 503 backend_failed
 * (the cache entry each waits for will never close). */
void ic_gw_oai_fail_waiting(ic_gateway *g);

/* --- admin.c: an admin's model operations --------------------------- */

/* MODEL_LOAD / MODEL_UNLOAD from c (forbidden unless its token is admin). */
void ic_gw_on_model_admin(ic_gateway *g, client_conn *c, const ic_msg *m);
/* POST /admin/models/NAME/load|unload with an admin's bearer token. */
void ic_gw_http_model_admin(ic_gateway *g, const ic_http_request *req, ic_http_response *resp);

/* --- routes.c: HTTP ----------------------------------------------- */

void ic_gw_on_http(ic_gateway *g, const ic_http_request *req, ic_http_response *resp);

#endif
