/* spec.h - speculative decoding's drafter: n-gram (prompt-lookup) drafts
 * from a session's own tokens, and the backoff that stops a session from
 * drafting while its drafts keep failing.
 *
 * Pure functions over token arrays and a small per-generation state: no
 * engine, no allocation. The scheduler (sched.c) puts the drafts into the
 * same batch as everyone's work and verifies them there.
 *
 * Thread: any; the scheduler thread is the one user (a backoff state
 * belongs to one generation, owned by that thread).
 */
#ifndef IC_SPEC_H
#define IC_SPEC_H

#include "engine.h" /* ic_token */

#include <stdbool.h>

/* Longest draft one session may propose in one step (--spec-max's limit). */
#define IC_SPEC_MAX_DRAFT 64

/* serve --spec: which drafter the scheduler uses. */
enum ic_spec_mode { IC_SPEC_OFF, IC_SPEC_NGRAM, IC_SPEC_DRAFT };

/* Lookup n-gram sizes: the longest suffix of the history (ngram_max
 * tokens down to ngram_min) that occurred before proposes what followed it. */
#define IC_SPEC_NGRAM_MIN 2
#define IC_SPEC_NGRAM_MAX 4

/* Proposes up to max_draft tokens that continue toks[0..n): finds the
 * most recent earlier occurrence of the history's last k tokens (k from
 * IC_SPEC_NGRAM_MAX down to IC_SPEC_NGRAM_MIN, the longest that occurs)
 * and copies what followed it into out (max_draft entries). Returns how
 * many were written (0: no earlier occurrence). */
int ic_spec_ngram_draft(const ic_token *toks, int n, int max_draft, ic_token *out);

/* Per-generation backoff: how long the next draft may be. A draft that is
 * accepted whole doubles it (up to max_tokens), one accepted in part
 * shortens it to one past what was accepted; one with nothing accepted
 * halves it and pauses drafting for 1, 3, 7, ... 63 steps as the misses
 * go on in a row, so text that does not repeat pays almost nothing. */
typedef struct ic_spec_backoff {
    int max_tokens;           /* --spec-max */
    int len_tokens;           /* the next draft's length, 1..max_tokens */
    int misses;               /* drafts in a row with nothing accepted */
    int wait_steps;           /* steps left without drafting */
    double hits, fails;       /* decayed counts of draft tokens accepted / rejected */
    bool probe;               /* the next draft is a probe: no cost check */
    int declines;             /* cost-model refusals in a row (a pick resets it) */
} ic_spec_backoff;

/* The generation's estimated chance that a draft token is accepted given
 * the ones before it were (starts at 1/2). */
double ic_spec_backoff_accept(const ic_spec_backoff *b);

/* The cost model said no: pause 1, 3, ... 63 steps as the refusals go on
 * in a row (whatever the probes between them gave), after which one
 * one-token draft probes (probe is set: the caller drafts it without
 * asking the cost model, so the estimate can change). The caller clears
 * declines when the cost model picks a draft again. */
void ic_spec_backoff_decline(ic_spec_backoff *b);

void ic_spec_backoff_init(ic_spec_backoff *b, int max_tokens);

/* The most tokens this step may draft (0 while paused); counts the step. */
int ic_spec_backoff_budget(ic_spec_backoff *b);

/* Records a verified draft: drafted tokens proposed, accepted of them taken. */
void ic_spec_backoff_result(ic_spec_backoff *b, int drafted, int accepted);

/* What a step costs, learned from the steps themselves: ms = c0 + c1 x
 * rows over steps without prompt tokens (a decayed least-squares fit, so
 * it follows a changing load). On a GPU c1 is next to nothing and long
 * drafts pay; on a CPU every row costs compute and only drafts likely to
 * be accepted do. */
typedef struct ic_spec_cost {
    double w, sx, sy, sxx, sxy;  /* decayed sums: x rows, y ms */
} ic_spec_cost;

/* Adds one step of rows batch rows (no prompt tokens) that took ms. */
void ic_spec_cost_add(ic_spec_cost *c, int rows, double ms);

/* The fitted c0 and c1 (ms, ms per row); false until steps of different
 * row counts were seen (then drafting is tried, which teaches it). */
bool ic_spec_cost_fit(const ic_spec_cost *c, double *c0_ms, double *c1_ms);

/* The draft length in [0, max_k] that gives the step the most expected
 * tokens per ms: n_gen generating sessions' tokens in n_rows rows so far,
 * each draft token accepted with probability accept (given the ones
 * before it). 0: drafting does not pay. */
int ic_spec_pick(double c0_ms, double c1_ms, int n_gen, int n_rows, double accept, int max_k);

/* "off", "ngram": the command line's names. */
const char *ic_spec_mode_name(enum ic_spec_mode m);

#endif
