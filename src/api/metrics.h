/* metrics.h - the server's Prometheus metrics: counters of generations,
 * tokens, auth failures and client errors, latency histograms, and the
 * rendering of those plus a snapshot of gauges (sessions, KV cells, state,
 * GPUs, host) as Prometheus text exposition format 0.0.4 for GET /metrics.
 *
 * Thread: the network thread only. The gateway observes END stats and TOKEN
 * gaps and renders on GET /metrics, all on that one thread, so nothing here
 * is atomic or locked; another thread must not call into a metrics object.
 * The object owns its counters and histograms; gauges are borrowed from the
 * caller for one render.
 *
 * The metric names and labels are a contract that dashboards and alerts are
 * built on: every name rendered here keeps its spelling.
 */
#ifndef IC_METRICS_H
#define IC_METRICS_H

#include "gpu.h"
#include "protocol.h"
#include "sched.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The Content-Type a /metrics response carries. */
#define IC_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

typedef struct ic_metrics ic_metrics;

/* The latency histograms, all in seconds. */
enum ic_hist {
    IC_HIST_QUEUE_TIME,  /* submit -> first prompt token in a batch */
    IC_HIST_TTFT,        /* submit -> first generated token */
    IC_HIST_INTER_TOKEN, /* gap between consecutive TOKENs of a generation */
    IC_HIST_DURATION,    /* submit -> END */
    IC_HIST_COUNT
};

/* Creates an object with every counter and histogram at zero.
 * Returns 0 or IC_ERR_NOMEM (*out untouched then). */
int ic_metrics_create(ic_metrics **out);

/* Frees the object. NULL is ok. */
void ic_metrics_destroy(ic_metrics *m);

/* Adds one observation of `seconds` to histogram h. A negative value (a
 * clock step) counts as 0; NaN and infinities are dropped, since one of them
 * would turn the histogram's _sum into NaN/Inf for the life of the process.
 * An h out of range is ignored. */
void ic_metrics_observe(ic_metrics *m, enum ic_hist h, double seconds);

/* Counts one ended generation by reason (out of range: "error") and adds its
 * token counts (negative counts add nothing). */
void ic_metrics_generation_ended(ic_metrics *m, enum ic_end_reason reason, int prompt_tokens,
                                 int generated_tokens);

/* Counts one failed AUTH. */
void ic_metrics_auth_failed(ic_metrics *m);

/* Adds prompt tokens taken from the prompt cache (KV kept from earlier work). */
void ic_metrics_prompt_cache_hit(ic_metrics *m, int tokens);

/* Counts one answered HTTP request by route (a static name, e.g.
 * "/v1/chat/completions"; unknown paths "other") and status. At most
 * IC_METRICS_MAX_HTTP distinct pairs are kept; later new pairs count as
 * route "other", status 0. */
#define IC_METRICS_MAX_HTTP 64
void ic_metrics_http_request(ic_metrics *m, const char *route, int status);

/* Counts one ERROR message sent to a client, by code (out of range: "internal"). */
void ic_metrics_error(ic_metrics *m, enum ic_proto_code code);

/* Durable sessions (--session-store) at scrape time. */
enum ic_restore_from {
    IC_RESTORE_CELLS,         /* still in the KV cache (a parked session) */
    IC_RESTORE_RAM,           /* KV state from host memory */
    IC_RESTORE_DISK,          /* KV state from the store */
    IC_RESTORE_RECOMPUTE,     /* from the conversation */
    IC_RESTORE_COUNT
};

typedef struct ic_metrics_durable {
    int parked;                /* live sessions whose connection dropped */
    int stored;                /* sessions only in the store (after a restart) */
    uint64_t resumes;          /* SESSION_RESUMED sent */
    uint64_t restores[IC_RESTORE_COUNT];
    int64_t store_bytes;
    int64_t ram_bytes;         /* parked sessions' KV states in host memory */
    int64_t store_queue;       /* store jobs (writes, reads, removals) not yet done */
    uint64_t write_errors;
    /* Store writes (temp file to directory fsync): n_le bucket bounds in
     * seconds (borrowed) and n_le + 1 counts (not cumulative). */
    const double *write_le;
    int n_le;
    const uint64_t *write_buckets;
    double write_sum_s;
} ic_metrics_durable;

/* The values read at scrape time, all borrowed for the call. */
/* One model's numbers (api/models.h keeps one per model). Network thread. */
#define IC_METRICS_LOAD_BOUNDS 10  /* seconds: 0.05 0.1 0.25 0.5 1 2.5 5 10 30 60, then +Inf */
typedef struct ic_metrics_model {
    const char *name;
    bool loaded;
    uint64_t swaps;            /* put to sleep for another model */
    uint64_t load_bucket[IC_METRICS_LOAD_BOUNDS + 1]; /* per bucket, not cumulative */
    double load_sum_s;
    uint64_t load_count;
} ic_metrics_model;

/* Counts one load (a wake after sleep, an admin's load) of seconds. */
void ic_metrics_model_load(ic_metrics_model *mm, double seconds);

typedef struct ic_metrics_gauges {
    const char *state;         /* "loading","ready","throttled","sleeping","stuck"; NULL: none */
    int sessions;              /* open sessions */
    int sessions_max;          /* server-wide session limit */
    int generating;            /* generations running now */
    int queued;                /* generations waiting for the scheduler */
    int64_t kv_cells_used;
    int64_t kv_cells_total;
    int gpu_layers;            /* layers offloaded to the GPU */
    int connections;           /* open WebSocket connections */
    bool stalled;              /* the internal watchdog saw the scheduler stall */
    uint64_t steps;            /* scheduler steps since start (a counter) */
    uint64_t spec_drafted;     /* speculative draft tokens verified (a counter) */
    uint64_t spec_accepted;    /* of them, accepted (a counter) */
    const ic_hw_sample *hw;    /* NULL: no GPU or host samples rendered */
    const char *version;       /* NULL: "" */
    const char *llama_commit;  /* NULL: "" */
    const ic_metrics_durable *durable; /* NULL: all zero */
    const ic_metrics_model *models; /* [n_models]; per-model families (none: 0) */
    int n_models;
} ic_metrics_gauges;

/* Renders every metric (each family with # HELP and # TYPE, families whose
 * samples are missing, like GPUs on a host without any, keep those two
 * lines). Returns 0 and a malloc'd NUL-terminated text in *out (the caller
 * frees it) with its length in *len (len may be NULL), or IC_ERR_NOMEM. */
int ic_metrics_render(const ic_metrics *m, const ic_metrics_gauges *g, char **out, size_t *len);

#endif
