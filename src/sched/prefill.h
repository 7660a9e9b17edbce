/* prefill.h - the time model that bounds a step's prompt tokens (prefill.c),
 * as a pure function of what the scheduler measured, so that it can be
 * tested without a model. Thread: any (no state).
 */
#ifndef IC_PREFILL_H
#define IC_PREFILL_H

#include <stdbool.h>

typedef struct ic_prefill_model {
    int max_step_ms;        /* ic_sched_opts.max_step_ms; 0: by count only */
    int min_prefill_tokens; /* ic_sched_opts.min_prefill_tokens */
    int max_chunk_tokens;   /* ic_sched_opts.max_chunk_tokens */
    bool slow_step_whole;   /* ic_sched_opts.slow_step_whole */
    double decode_ms;       /* a decode-only step, measured (0: not yet) */
    double prompt_ms;       /* one prompt token's share of a step (0: not yet) */
    bool probe_due;         /* time to measure a decode-only step again */
} ic_prefill_model;

/* The most prompt tokens a step may carry while n_decoding sessions decode,
 * at most budget (the batch's free rows): 0 for a decode-only probe step. */
int ic_prefill_budget(const ic_prefill_model *m, int n_decoding, int budget);

#endif
