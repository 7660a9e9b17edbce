/* sched_spec.c - speculative decoding inside the scheduler's step: a
 * generating session's drafts (n-gram, spec.c, or a draft model,
 * spec_draft.c) go into the step's batch after its sampled token, and the
 * step's logits verify them. The drafters and the cost model are
 * elsewhere; this is where they meet the batch.
 *
 * Thread: the scheduler thread only (ic_sched__* in sched_impl.h).
 */
#include "sched_impl.h"
#include "spec_draft.h"

#include <stdatomic.h>

/* Speculation: after the session's sampled token (already in the batch
 * and the history) adds up to the backoff's budget of n-gram draft tokens,
 * each with logits, as many as the cost model says pay (all while it does
 * not know the cost yet), leaving every other generating session its row
 * and prefill some room. reserve: batch rows still owed to others. */
void ic_sched__add_drafts(ic_sched *s, session *ss, int reserve)
{
    gen *g = ss->gen;
    int n = ic_spec_backoff_budget(&g->backoff);
    int left = g->max_tokens - g->n_generated - 1;       /* tokens after `next` */
    int room = (int)s->opts.n_ctx_per_session - ss->n_hist; /* positions left */
    int rows = (int)s->info.n_batch_tokens - ic_engine_batch_size(s->engine) - reserve;
    n = n < left ? n : left;
    n = n < room ? n : room;
    n = n < rows ? n : rows;
    if (n <= 0)
        return;
    ic_token draft[IC_SPEC_MAX_DRAFT];
    /* n-gram drafts cost nothing to find, so the cost model trims them
     * afterwards; a draft model's cost comes first, so it is asked first */
    bool model = s->drafter != NULL;
    if (!model)
        n = ic_spec_ngram_draft(ss->hist, ss->n_hist, n, draft);
    double c0, c1;
    if (n > 0 && g->backoff.probe) {
        g->backoff.probe = false;
        n = 1;
    } else if (n > 0 && ic_spec_cost_fit(&s->spec_cost, &c0, &c1)) {
        /* the step's rows once the others' tokens are in */
        int rows_after = ic_engine_batch_size(s->engine) + reserve - IC_SPEC_PREFILL_ROWS;
        n = ic_spec_pick(c0, c1, s->n_active, rows_after, ic_spec_backoff_accept(&g->backoff), n);
        if (n == 0)
            ic_spec_backoff_decline(&g->backoff);
        else
            g->backoff.declines = 0;
    }
    if (model && n > 0)
        n = ic_spec_drafter_draft(s->drafter, ss->seq, ss->hist, ss->n_hist, n, draft);
    for (int i = 0; i < n; i++) {
        if (ic_engine_batch_add(s->engine, draft[i], ss->n_hist, ss->seq, true) < 0)
            break;
        ic_sched__hist_push(ss, draft[i]);
        g->n_draft++;
    }
}

/* Samples a session's rows of this step in order: its sampled token's row
 * first, then each draft row while the token just sampled equals that
 * row's draft. Every emitted token is a draw of the session's own sampler
 * from the target model's logits after the true text (the draft matched
 * it), so greedy output is the same token for token and sampled output has
 * the same distribution as without speculation (see docs/scheduler.md).
 * The KV cells of rejected drafts are removed. */
void ic_sched__verify(ic_sched *s, session *ss)
{
    gen *g = ss->gen;
    int base = ss->n_step_start, n_draft = g->n_draft, row = g->batch_idx;
    g->n_draft = 0;
    g->n_drafted += n_draft;
    atomic_fetch_add(&s->st_spec_drafted, (uint64_t)n_draft);
    int accepted = 0;
    for (int j = 0;; j++) {
        ss->n_hist = base + 1 + j; /* `next` and the drafts accepted so far */
        ic_logprobs *lp = NULL; /* row j's own logits: right for an accepted draft too */
        ic_token tok = ic_sched__sample(s, g, row + j, &lp);
        bool hit = j < n_draft && tok == ss->hist[base + 1 + j];
        if (hit) {
            accepted++;
            g->n_accepted++;
        }
        ic_sched__on_token(s, ss, tok, lp);
        if (!ss->gen || !hit)
            break;
        g->has_next = false; /* tok is its draft, already decoded */
    }
    atomic_fetch_add(&s->st_spec_accepted, (uint64_t)accepted);
    if (ss->n_hist < base + 1 + n_draft)
        ic_engine_seq_rm(s->engine, ss->seq, ss->n_hist, -1);
    if (ss->gen)
        ic_spec_backoff_result(&g->backoff, n_draft, accepted);
}
