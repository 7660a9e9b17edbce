/* spec_draft.h - speculative decoding's draft model (serve --spec draft
 * --draft-model PATH): a second, smaller model of the same vocabulary that
 * proposes the next tokens of a session greedily; the target model then
 * verifies them in the scheduler's one batched step (sched.c), exactly as
 * it verifies n-gram drafts.
 *
 * The drafter owns its own llama context with the target's shape (as many
 * sequences and cells); sequence i of the drafter shadows sequence i of
 * the target. It remembers which tokens each of its sequences holds and,
 * before drafting, keeps the longest prefix they share with the session's
 * history and decodes only the rest: whatever the scheduler did to the
 * target's cells in between (a rejected draft, a rewound turn, a shared
 * prompt, sleep and restore) the draft context follows without being told.
 *
 * Written for the batched step rather than taken from common's
 * speculative helpers (common_speculative_*), which draft for one
 * sequence in a context of their own making and re-tokenise text; here
 * the tokens are the scheduler's and the sequences are the sessions'.
 *
 * Thread: the scheduler thread only.
 */
#ifndef IC_SPEC_DRAFT_H
#define IC_SPEC_DRAFT_H

#include "engine.h"

#include <stddef.h>

typedef struct ic_spec_drafter ic_spec_drafter;

/* Loads the draft model at path with target's context shape (sequences,
 * cells, batch, threads, KV types; all layers on the GPU when the target
 * has any there) and checks that it shares target's vocabulary (the same
 * number of tokens, the same text for each, the same end-of-generation
 * tokens). Returns 0 and *out; IC_ERR_MODEL with why filled when the
 * vocabularies differ or the file does not load; IC_ERR_NOMEM. */
int ic_spec_drafter_create(const char *path, const ic_engine *target, ic_spec_drafter **out,
                           char *why, size_t why_cap);

/* Frees the drafter and its model; NULL does nothing. */
void ic_spec_drafter_destroy(ic_spec_drafter *d);

/* Proposes up to max tokens (<= IC_SPEC_MAX_DRAFT) that continue
 * hist[0..n) in sequence seq: the draft model's greedy continuation.
 * Decodes the part of hist the draft context lacks first. Returns how
 * many were written to out (0 when the draft model failed or is asleep
 * and cannot be reloaded). */
int ic_spec_drafter_draft(ic_spec_drafter *d, int seq, const ic_token *hist, int n, int max,
                          ic_token *out);

/* The scheduler sleeps: the draft model is freed too (and its sequences
 * forgotten); the next draft loads it again. */
void ic_spec_drafter_sleep(ic_spec_drafter *d);

#endif
