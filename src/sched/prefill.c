/* prefill.c - how many prompt tokens of which sessions go into a step:
 * chunked prefill bounded by time, not by count, so that a long prompt
 * never stalls the sessions that decode (stall-free batching as in
 * Sarathi-Serve).
 *
 * The step's cost is modelled as decode_ms (a step of the decoding
 * sessions alone, measured on steps without prompt tokens, re-probed every
 * PROBE_EVERY steps) plus prompt_ms per prompt token (measured on steps
 * with prompt tokens). While sessions decode, a step may take at most
 * min(max_step_ms, SLOWDOWN x decode_ms): inter-token latency stays within
 * SLOWDOWN of what it is without prompts, and prompts still progress (at
 * least MIN_PROMPT tokens a step, or opts.min_prefill_tokens, and at least PROMPT_SHARE x decode_ms of
 * prompt work where decoding alone nearly fills max_step_ms). With nobody decoding, a step holds
 * prompt tokens worth SOLO_STEPS x max_step_ms (and at least
 * max_chunk_tokens), so an ABORT or a CLOSE waits about that at most.
 *
 * Thread: the scheduler thread only (ic_sched__* in sched_impl.h).
 */
#include "prefill.h"
#include "sched_impl.h"

#include "log.h"

#include <stdlib.h>

#define SLOWDOWN 1.5       /* a decoding session's step may grow by this factor */
#define SOLO_STEPS 4       /* a prefill-only step may take this many max_step_ms */
#define PROBE_EVERY 32     /* steps between decode-only measurements */
#define ALPHA 0.25         /* weight of a new measurement */
#define FIRST_CHUNK 16     /* prompt tokens of a step before prompt_ms is known */
#define MIN_PROMPT 1       /* prompt tokens of a step at least, while others decode */
#define PROMPT_SHARE 0.25  /* while others decode, prompts may add this share of a step */
#define MIN_TARGET 0.25    /* while others decode, a step may always take this x max_step_ms */
#define SOLO_MIN 128       /* prompt tokens of a step at least, while nobody decodes */

static int prio_weight(enum ic_priority p)
{
    return p == IC_PRIORITY_HIGH ? 4 : p == IC_PRIORITY_NORMAL ? 2 : 1;
}

static int prompt_left(const session *ss) { return ss->gen->n_prompt_tokens - ss->n_hist; }

/* Orders prefill candidates: higher priority first, then the prompt with
 * the least left to decode (shortest remaining first gives the lowest mean
 * time to first token), then the one served longest ago. */
static int cmp_candidates(const void *a, const void *b)
{
    const session *x = *(session *const *)a, *y = *(session *const *)b;
    if (x->gen->priority != y->gen->priority)
        return (int)y->gen->priority - (int)x->gen->priority;
    if (prompt_left(x) != prompt_left(y))
        return prompt_left(x) - prompt_left(y);
    return x->gen->last_served_step < y->gen->last_served_step ? -1
           : x->gen->last_served_step > y->gen->last_served_step;
}

/* Adds up to n prompt tokens of ss to the batch; asks for logits when
 * the prompt's last token goes in. */
static void add_prompt_tokens(ic_sched *s, session *ss, int n)
{
    gen *g = ss->gen;
    if (n > 0 && g->t_start_ms == 0)
        g->t_start_ms = ic_now_ms();
    for (int i = 0; i < n; i++) {
        int pos = ss->n_hist;
        bool last = pos == g->n_prompt_tokens - 1;
        int idx = ic_engine_batch_add(s->engine, g->prompt[pos], pos, ss->seq, last);
        ic_sched__hist_push(ss, g->prompt[pos]);
        g->n_prompt_decoded++;
        if (last)
            g->batch_idx = idx;
    }
    g->last_served_step = s->step;
}

int ic_prefill_budget(const ic_prefill_model *m, int n_decoding, int budget)
{
    if (m->max_step_ms <= 0)
        return budget; /* count only: max_chunk_tokens and the batch */
    if (n_decoding > 0 && (m->decode_ms <= 0 || m->probe_due))
        return 0; /* measure the decoding sessions alone now and then */
    if (m->prompt_ms <= 0)
        return FIRST_CHUNK < budget ? FIRST_CHUNK : budget;
    double target = n_decoding == 0 ? SOLO_STEPS * m->max_step_ms
                    : m->decode_ms * SLOWDOWN < m->max_step_ms ? m->decode_ms * SLOWDOWN
                                                                     : m->max_step_ms;
    /* Steps far shorter than max_step_ms (a small model) may still grow to
     * a fraction of it: nobody sees that latency, and 1.5x of a 1 ms step
     * would hold a prompt to a token or two a step. */
    if (n_decoding > 0 && target < m->max_step_ms * MIN_TARGET)
        target = m->max_step_ms * MIN_TARGET;
    double room = n_decoding == 0 ? target : target - m->decode_ms;
    /* Where the decoding sessions alone take about max_step_ms or more (a
     * big model, many sessions, a slow or busy machine), the bound cannot
     * hold. Trickling prompts in then keeps the streams steadier but makes
     * every waiting session's first token many steps later and keeps the
     * batch narrow (on a CPU a step of 16 rows costs 5x one row, not 16x):
     * by default they go in by count; slow_step_whole false still
     * gives them a share of the step rather than a token a step (which made
     * a long prompt wait minutes behind streaming ones). */
    if (n_decoding > 0 && room < PROMPT_SHARE * m->decode_ms) {
        if (m->slow_step_whole)
            return budget;
        room = PROMPT_SHARE * m->decode_ms;
    }
    /* A prompt token costs no more than a decoding session's token: the
     * estimate from small chunks also carries each step's fixed cost (and
     * on a busy machine, preemption), which must not starve prompts. */
    double per = m->prompt_ms;
    if (n_decoding > 0 && per > m->decode_ms / n_decoding)
        per = m->decode_ms / n_decoding;
    double k = room / per;
    /* Floors keep the cost model measured and prompts moving: alone, a
     * step is never smaller than the count-based chunk was. */
    int floor = n_decoding == 0 ? (m->max_chunk_tokens > SOLO_MIN ? m->max_chunk_tokens
                                                                         : SOLO_MIN)
                                : m->min_prefill_tokens > MIN_PROMPT
                                      ? m->min_prefill_tokens
                                      : MIN_PROMPT;
    int n = k < floor ? floor : k > budget ? budget : (int)k;
    return n < budget ? n : budget;
}

/* The most prompt tokens this step may carry by the time model. */
static int time_budget(ic_sched *s, int n_decoding, int budget)
{
    ic_prefill_model m = {
        .max_step_ms = s->opts.max_step_ms,
        .min_prefill_tokens = s->opts.min_prefill_tokens,
        .max_chunk_tokens = s->opts.max_chunk_tokens,
        .slow_step_whole = s->opts.slow_step_whole,
        .decode_ms = s->decode_ms,
        .prompt_ms = s->prompt_ms,
        .probe_due = s->step - s->decode_probe_step >= PROBE_EVERY,
    };
    return ic_prefill_budget(&m, n_decoding, budget);
}

void ic_sched__prefill(ic_sched *s, int n_decoding)
{
    session *cand[256];
    int n = 0, weights = 0;
    for (int i = 0; i < s->opts.max_sessions && n < 256; i++) {
        session *ss = &s->sessions[i];
        if (ss->gen && ss->gen->state == IC_SESSION_PREFILL) {
            cand[n++] = ss;
            weights += prio_weight(ss->gen->priority);
        }
    }
    int budget = (int)s->info.n_batch_tokens - n_decoding;
    if (n == 0 || budget <= 0)
        return;
    budget = time_budget(s, n_decoding, budget);
    if (budget <= 0)
        return;
    qsort(cand, (size_t)n, sizeof *cand, cmp_candidates);
    /* First a quarter of the budget by priority weight (so every prompt
     * progresses: no starvation), then the rest in candidate order. While
     * others compete a session takes at most its priority's multiple of
     * max_chunk_tokens per step. */
    bool compete = n > 1 || n_decoding > 0;
    int given[256] = {0};
    int total = budget;
    for (int pass = 0; pass < 2 && budget > 0; pass++) {
        for (int i = 0; i < n && budget > 0; i++) {
            gen *g = cand[i]->gen;
            int w = prio_weight(g->priority);
            int cap = compete && s->opts.max_chunk_tokens > 0
                          ? s->opts.max_chunk_tokens * w / 2 : total;
            int left = g->n_prompt_tokens - cand[i]->n_hist - given[i];
            int share = pass == 0 ? total * w / (4 * weights) : budget;
            if (share < 1)
                share = 1;
            int k = left < share ? left : share;
            if (k > cap - given[i])
                k = cap - given[i];
            if (k <= 0)
                continue;
            given[i] += k;
            budget -= k;
        }
    }
    for (int i = 0; i < n; i++)
        add_prompt_tokens(s, cand[i], given[i]);
}

void ic_sched__step_measured(ic_sched *s, int n_decoding, int n_prompt, double ms)
{
    ic_log_debug("scheduler: step %llu: %d decoding, %d prompt tokens, %.2f ms (model: "
                 "decode %.2f ms, %.4f ms per prompt token)", (unsigned long long)s->step,
                 n_decoding, n_prompt, ms, s->decode_ms, s->prompt_ms);
    /* A sample counts for at most twice the estimate: a step the OS
     * preempted (a busy machine) must not shrink every later chunk. */
    if (n_prompt == 0 && n_decoding > 0) {
        if (s->decode_ms > 0 && ms > 2 * s->decode_ms)
            ms = 2 * s->decode_ms;
        s->decode_ms = s->decode_ms > 0 ? (1 - ALPHA) * s->decode_ms + ALPHA * ms : ms;
        s->decode_probe_step = s->step;
        return;
    }
    if (n_prompt < 1)
        return;
    double rest = n_decoding > 0 ? ms - s->decode_ms : ms;
    double per = (rest > 0 ? rest : ms * 0.5) / n_prompt;
    if (s->prompt_ms > 0 && per > 2 * s->prompt_ms)
        per = 2 * s->prompt_ms;
    s->prompt_ms = s->prompt_ms > 0 ? (1 - ALPHA) * s->prompt_ms + ALPHA * per : per;
}
