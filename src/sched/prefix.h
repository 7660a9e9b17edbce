/* prefix.h - shared system-prompt prefixes: the KV cells of a system
 * prompt, computed once by the first session that needs them, kept in a
 * sequence of their own and given (ic_engine_seq_share: shared cells in a
 * unified KV cache, one stream copy in a split one) to every later session
 * that starts with the same system prompt.
 *
 * Owned by the scheduler thread.
 */
#ifndef IC_PREFIX_H
#define IC_PREFIX_H

#include "convo.h"
#include "engine.h"

#include <stdint.h>

typedef struct ic_prefix_cache ic_prefix_cache;

enum ic_prefix_verdict {
    IC_PREFIX_NONE,   /* nothing shared: decode the whole prompt */
    IC_PREFIX_SHARED, /* the first *n_shared cells are already in the session's sequence */
    IC_PREFIX_WAIT,   /* another session is computing this prefix: ask again next step */
};

/* A cache of n_slots prefixes using sequences first_seq.. first_seq+n_slots-1.
 * Returns 0 or IC_ERR_NOMEM. */
int ic_prefix_cache_create(int n_slots, int first_seq, ic_prefix_cache **out);

/* Frees the cache's memory (the KV cells go with the engine). NULL is ok. */
void ic_prefix_cache_destroy(ic_prefix_cache *pc);

/* For a session starting its first turn: shares a ready prefix of its
 * system prompt, or, when there is none, makes the session the one that
 * computes it (see ic_prefix_publish). prompt is the turn's whole token
 * sequence. */
enum ic_prefix_verdict ic_prefix_attach(ic_prefix_cache *pc, ic_engine *e, const ic_convo *convo,
                                        uint64_t session_id, int seq, const ic_token *prompt,
                                        int n_prompt, uint64_t step, int *n_shared);

/* After a decode step: a prefix whose computing session has decoded past
 * it is copied into the prefix's own sequence and becomes ready, but only
 * when those cells hold exactly the prefix's tokens. hist returns the
 * tokens of a session's cache (*n of them), or NULL if it no longer
 * computes; then, or when its cells hold other tokens, the entry is
 * dropped and a waiter takes over. */
void ic_prefix_publish(ic_prefix_cache *pc, ic_engine *e,
                       const ic_token *(*hist)(void *ud, uint64_t session_id, int *n),
                       void *ud);

/* The session's generation ended: a prefix it was still computing is
 * dropped (its cells were never published), so that the sessions waiting
 * for it take over at their next admission instead of waiting forever. */
void ic_prefix_release(ic_prefix_cache *pc, ic_engine *e, uint64_t session_id);

/* Drops every ready prefix, giving its cells back. */
void ic_prefix_drop_ready(ic_prefix_cache *pc, ic_engine *e);

/* How many leading tokens a and b have in common. */
int ic_tokens_common_prefix(const ic_token *a, int na, const ic_token *b, int nb);

/* KV cells held by ready prefixes. */
int64_t ic_prefix_cells(const ic_prefix_cache *pc);

#endif
