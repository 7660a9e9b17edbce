/* models.h - the served models: one entry per model (its name, and once
 * loaded its scheduler and chat templates), and which model a session
 * belongs to.
 *
 * Every model has its own scheduler (src/sched), created with
 * ic_models_session_base(index) as its first session ID, so session IDs
 * are unique across models and a session's model is read off its ID: no
 * table is needed to route a call or an event. Index 0 is the default
 * model (the first --model, or the first file of --models-dir).
 *
 * Owned by the gateway, on the network thread; the schedulers are
 * borrowed (cmd_serve creates and destroys them).
 */
#ifndef IC_MODELS_H
#define IC_MODELS_H

#include "metrics.h"
#include "sched.h"

#include <stdbool.h>
#include <stdint.h>

#define IC_MODELS_MAX 16
#define IC_MODEL_NAME_MAX 128

struct ic_chat; /* engine/chat.h */

/* One model. Network thread. */
typedef struct ic_model_entry {
    char name[IC_MODEL_NAME_MAX];  /* what HELLO lists and "model" names */
    ic_sched *sched;               /* borrowed; NULL: not loaded */
    const struct ic_chat *chat;    /* borrowed; NULL: no chat template */
    int64_t created_s;             /* Unix time it was attached */
    /* Residency (ic_models_make_room): false once it was asked to sleep
     * for another model, until its next INFER. */
    bool resident;
    double last_used_ms;           /* CLOCK_MONOTONIC: its last INFER */
    int64_t vram_bytes, ram_bytes; /* its planned footprint awake (0: unknown) */
    ic_metrics_model metrics;      /* its Prometheus numbers (swaps, load times) */
    uint64_t wakes_seen;           /* its scheduler's wakes counted into metrics */
} ic_model_entry;

typedef struct ic_models {
    int n;
    ic_model_entry m[IC_MODELS_MAX];
} ic_models;

/* The first session ID of model index's scheduler (its opts'
 * session_id_base). Pure. */
uint64_t ic_models_session_base(int index);

/* The model index a session ID belongs to. Pure. */
int ic_models_index_of(uint64_t session_id);

/* The scheduler of session_id's model; NULL when that model is not
 * loaded. */
ic_sched *ic_models_sched_of(const ic_models *ms, uint64_t session_id);

/* The index of the model called name; NULL or "" names the default (0).
 * Returns -1 when there is none by that name. */
int ic_models_find(const ic_models *ms, const char *name);

/* Sums the loaded models' gauges into *out (state: the first model's,
 * or LOADING-like WAKING when any model is waking; last progress: the
 * oldest of those with work). Returns the number of loaded models. */
int ic_models_stats(const ic_models *ms, ic_sched_stats *out);

/* The bounds the awake models are kept in. */
typedef struct ic_models_budget {
    int max_loaded;     /* models awake at once; 0: no count bound */
    int64_t vram_bytes; /* the awake models' planned VRAM together at most; 0: no bound */
    int64_t ram_bytes;  /* their planned host RAM together at most; 0: no bound */
} ic_models_budget;

/* One model as the residency choice sees it. */
typedef struct ic_models_room_item {
    bool awake;          /* loaded and not asleep (or asked to sleep) */
    bool busy;           /* a generation runs or waits on it: never chosen */
    double last_used_ms; /* the least recent is chosen first */
    int64_t vram_bytes, ram_bytes; /* its footprint awake */
} ic_models_room_item;

/* Which awake models go to sleep so that model want (awake or not) fits:
 * the least recently used idle ones first, until the count and both byte
 * bounds hold with want awake. Writes their indices to out (room for n)
 * in that order and returns how many; *fits is false when the bounds do
 * not hold even then (want loads anyway, over the budget). Pure. */
int ic_models_choose_sleepers(const ic_models_room_item *m, int n, int want,
                              const ic_models_budget *b, int *out, bool *fits);

/* Before an INFER on model: when that model sleeps, the models
 * ic_models_choose_sleepers picks are asked to sleep (ic_sched_sleep;
 * their sessions' KV goes to host memory). When the budget cannot be met
 * the model loads anyway (over the budget, logged). Marks model used at
 * now_ms. Returns how many models were asked to sleep. */
int ic_models_make_room(ic_models *ms, int model, const ic_models_budget *b, double now_ms);

/* Counts the loads the schedulers finished since the last call into each
 * model's metrics, and refreshes their loaded gauges and names. */
void ic_models_update_metrics(ic_models *ms);

/* True when model i is loaded and awake (not sleeping, not asked to). */
bool ic_models_loaded(const ic_models *ms, int i);

/* Asks every loaded scheduler to stop (ic_sched_request_stop). */
void ic_models_request_stop(const ic_models *ms);

/* True when every loaded scheduler has stopped. */
bool ic_models_stopped(const ic_models *ms);

#endif
