/* gateway.h - the protocol's logic on the network thread: authentication,
 * the session table, per-client limits, dispatching client messages to the
 * scheduler and routing its events back to connections, and the HTTP
 * routes. Three files: gateway.c (connections and sessions), routes.c
 * (HTTP), lifecycle.c (timers, stop, reload), sharing gateway_impl.h.
 *
 * Owns: the tokens (ic_auth), the auth throttle, every session's
 * network-side record, metrics subscriptions, the Prometheus metrics
 * (ic_metrics) and the internal watchdog. Borrows the server and,
 * once the model is loaded, the scheduler. Runs on the network thread;
 * the functions marked "any thread" only set atomics and wake it.
 */
#ifndef IC_GATEWAY_H
#define IC_GATEWAY_H

#include "models.h"
#include "sched.h"
#include "server.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ic_gateway ic_gateway;
struct ic_chat; /* engine/chat.h */

typedef struct ic_gateway_opts {
    const char *tokens_path;       /* NULL: no authentication */
    int max_sessions_per_client;   /* default for clients without their own; 0: the
                                    * server's total, or half of it (at least 1) when
                                    * tokens are required */
    size_t max_message_bytes;      /* shown in HELLO; enforced by the server */
    int auth_timeout_s;            /* to authenticate after connecting */
    int auth_max_failures;         /* per network, per auth_window_s, answered at once */
    double auth_window_s;
    int auth_global_max_failures;  /* all networks together, per auth_window_s */
    double auth_max_delay_s;       /* the longest a throttled AUTH's answer waits */
    const char *const *trusted_proxies; /* [n_trusted_proxies]: X-Forwarded-For is */
    int n_trusted_proxies;              /* believed from these (addresses, ADDR/BITS) */
    double shutdown_timeout_s;     /* to flush and close connections */
    const char *listen_url;        /* for the log line when ready */
    const char *metrics_token;     /* GET /metrics takes "Bearer <it>" (with tokens_path
                                    * also any client token); both NULL: open */
    int watchdog_timeout_s;        /* scheduler without progress while work waits: stuck */
    bool log_prompts;              /* debug lines carry prompt text (off by default) */
    int session_idle_timeout_s;    /* a session unused this long closes (idle_timeout); 0: never */
    /* With tokens: unauthenticated connections per address and in all
     * (beyond: closed with 1013); 0: no cap. */
    int max_preauth_per_ip;
    int max_preauth;
    int max_connections;           /* WebSocket connections in all (1013 beyond); 0: no cap */
    /* OpenAI API prompt cache: finished requests' sessions kept with their
     * KV (at most this many; -1: half of the server's sessions; 0: off),
     * reused by a later request whose prompt starts with their text. */
    int prompt_cache;
    bool prompt_cache_per_client;  /* reuse only a client's own entries */
    bool web;                      /* serve the web console at GET / (--no-web: false) */
    /* This replica's name (--node-name; borrowed, outlives the gateway):
     * HELLO's "node", what a proxy routes /ws?affinity=NAME on
     * (deploy/haproxy/). NULL or "": none. */
    const char *node_name;
    /* Durable sessions (docs/protocol.md): the store's directory (NULL:
     * off) and how long a dropped or stored session waits for RESUME. */
    const char *session_store;
    int session_ttl_s;
    /* Parked sessions' KV state kept in host memory, in all; beyond it
     * (or 0) they are recomputed from their conversation on resume. */
    size_t session_ram_bytes;
    /* Several models (api/models.h): the bounds the awake ones are kept
     * in, the least recently used idle ones sleeping for another; zeros:
     * no limit. */
    ic_models_budget models_budget;
} ic_gateway_opts;

/* No tokens, automatic per-client limit, 1 MiB messages, 30 s to AUTH, 5
 * failures a minute, 10 s to shut down, 120 s watchdog, no idle time-out,
 * 16 unauthenticated connections per address and 256 in all, no cap on
 * connections. */
ic_gateway_opts ic_gateway_opts_default(void);

/* Loads the tokens file (if any). Returns 0, or IC_ERR_IO/IC_ERR_PARSE
 * with a one-line reason in err. */
int ic_gateway_create(const ic_gateway_opts *opts, ic_gateway **out, char *err, size_t errlen);

/* NULL is ok. Call after the server is destroyed. */
void ic_gateway_destroy(ic_gateway *g);

/* The handlers to create the server with. */
void ic_gateway_server_handlers(ic_gateway *g, ic_server_handlers *out);

/* Gives the gateway its server (borrowed). Network thread, before run. */
void ic_gateway_set_server(ic_gateway *g, ic_server *srv);

/* The server's loop has ended and the schedulers have stopped: the
 * session store (--session-store) writes what is queued and its thread
 * ends. Its thread wakes the server, so this comes before
 * ic_server_destroy; ic_gateway_destroy does it when it was not done.
 * Main thread. */
void ic_gateway_finish(ic_gateway *g);

/* The model is loaded: sched (borrowed; must outlive the server loop) now
 * serves, with chat (the model's chat templates: immutable, so the network
 * thread renders with it while the scheduler runs; borrowed, NULL: no chat
 * API) under the name model_id (copied; what /v1/models lists and a
 * request's "model" must name). Any thread. */
void ic_gateway_attach(ic_gateway *g, ic_sched *sched, const struct ic_chat *chat,
                       const char *model_id);

/* One served model, for ic_gateway_attach_models. */
typedef struct ic_gateway_model {
    ic_sched *sched;               /* borrowed, as in ic_gateway_attach */
    const struct ic_chat *chat;    /* borrowed; NULL: no chat API for it */
    const char *name;              /* copied */
    int64_t vram_bytes, ram_bytes; /* its planned footprint awake (0: unknown) */
} ic_gateway_model;

/* As ic_gateway_attach, for several models (at most IC_MODELS_MAX, api/
 * models.h): the first is the default. Model i's scheduler must have been
 * created with session_id_base ic_models_session_base(i). Any thread. */
void ic_gateway_attach_models(ic_gateway *g, const ic_gateway_model *models, int n);

/* One more model (SIGHUP found a new file in --models-dir), after
 * ic_gateway_attach_models: its scheduler was created with session_id_base
 * ic_models_session_base(its index: the number of models before it). One
 * thread at a time. */
void ic_gateway_add_model(ic_gateway *g, const ic_gateway_model *model);

/* Loading failed: the server stops. Any thread. */
void ic_gateway_load_failed(ic_gateway *g);

/* Graceful stop (SIGTERM): generations end with "shutdown", sessions
 * close, connections close with 1001, then the server loop returns. Any
 * thread. */
void ic_gateway_request_stop(ic_gateway *g);

/* Re-reads the tokens file (SIGHUP); keeps the old one if the new is bad.
 * Any thread. */
void ic_gateway_request_reload(ic_gateway *g);

/* The scheduler's wake callback (ud is the gateway). Any thread. */
void ic_gateway_wake(void *ud);

/* True while the internal watchdog sees the scheduler stuck. Network thread. */
bool ic_gateway_stalled(const ic_gateway *g);

/* True when the stop was for a failed load (exit status 1). */
bool ic_gateway_failed(const ic_gateway *g);

/* The model's backend failed for good (an RPC server was lost, engine/
 * rpc.h): running generations end with ERROR internal, new sessions,
 * generations and OpenAI requests are refused, /health answers 503
 * failed, and a stop no longer waits for the scheduler (whose thread will
 * not come back). why is copied; later calls are ignored. Any thread. */
void ic_gateway_engine_failed(ic_gateway *g, const char *why);

/* True once the network thread has taken that in: the process must exit
 * without stopping or freeing the scheduler. Network thread. */
bool ic_gateway_engine_dead(const ic_gateway *g);

#endif
