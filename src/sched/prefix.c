/* prefix.c - shared system-prompt prefixes (see prefix.h). Scheduler
 * thread only.
 */
#include "prefix.h"
#include "err.h"
#include "log.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Shorter prefixes are not worth a sequence. */
#define MIN_SHARED_TOKENS 8

typedef struct prefix {
    char *system;             /* NULL = free entry */
    int seq;
    ic_token *toks;           /* the prefix's tokens */
    int n_toks;
    bool ready;               /* its cells are in seq */
    uint64_t owner;           /* session computing it, while !ready */
    int owner_seq;            /* that session's sequence */
    uint64_t last_used_step;
} prefix;

struct ic_prefix_cache {
    prefix *slots;
    int n_slots;
};

int ic_prefix_cache_create(int n_slots, int first_seq, ic_prefix_cache **out)
{
    ic_prefix_cache *pc = calloc(1, sizeof *pc);
    if (!pc)
        return IC_ERR_NOMEM;
    pc->slots = calloc(n_slots > 0 ? (size_t)n_slots : 1, sizeof *pc->slots);
    if (!pc->slots) {
        free(pc);
        return IC_ERR_NOMEM;
    }
    pc->n_slots = n_slots;
    for (int i = 0; i < n_slots; i++)
        pc->slots[i].seq = first_seq + i;
    *out = pc;
    return 0;
}

void ic_prefix_cache_destroy(ic_prefix_cache *pc)
{
    if (!pc)
        return;
    for (int i = 0; i < pc->n_slots; i++) {
        free(pc->slots[i].system);
        free(pc->slots[i].toks);
    }
    free(pc->slots);
    free(pc);
}

static void drop(ic_engine *e, prefix *p)
{
    if (p->ready)
        ic_engine_seq_rm(e, p->seq, -1, -1);
    free(p->system);
    free(p->toks);
    int seq = p->seq;
    memset(p, 0, sizeof *p);
    p->seq = seq;
}

static prefix *find(ic_prefix_cache *pc, const char *system)
{
    for (int i = 0; i < pc->n_slots; i++) {
        if (pc->slots[i].system && strcmp(pc->slots[i].system, system) == 0)
            return &pc->slots[i];
    }
    return NULL;
}

/* A free entry, evicting the least recently used ready one if need be;
 * NULL when every entry is still being computed. */
static prefix *alloc(ic_prefix_cache *pc, ic_engine *e)
{
    prefix *victim = NULL;
    for (int i = 0; i < pc->n_slots; i++) {
        prefix *p = &pc->slots[i];
        if (!p->system)
            return p;
        if (p->ready && (!victim || p->last_used_step < victim->last_used_step))
            victim = p;
    }
    if (victim)
        drop(e, victim);
    return victim;
}

int ic_tokens_common_prefix(const ic_token *a, int na, const ic_token *b, int nb)
{
    int n = 0;
    while (n < na && n < nb && a[n] == b[n])
        n++;
    return n;
}

/* Registers a new prefix that session_id will compute. */
static void start(ic_prefix_cache *pc, ic_engine *e, const ic_convo *convo, const char *system,
                  uint64_t session_id, int seq, const ic_token *prompt, int n_prompt,
                  uint64_t step)
{
    ic_token *toks = NULL;
    int n_toks = 0;
    if (ic_convo_system_tokens(convo, e, &toks, &n_toks) < 0)
        return;
    /* A template may merge the system turn's last token with what follows:
     * only the part the prompt really starts with is shareable. */
    int n = ic_tokens_common_prefix(toks, n_toks, prompt, n_prompt);
    prefix *p = n >= MIN_SHARED_TOKENS ? alloc(pc, e) : NULL;
    if (!p || !(p->system = strdup(system))) {
        free(toks);
        return;
    }
    p->toks = toks;
    p->n_toks = n;
    p->owner = session_id;
    p->owner_seq = seq;
    p->ready = false;
    p->last_used_step = step;
}

enum ic_prefix_verdict ic_prefix_attach(ic_prefix_cache *pc, ic_engine *e, const ic_convo *convo,
                                        uint64_t session_id, int seq, const ic_token *prompt,
                                        int n_prompt, uint64_t step, int *n_shared)
{
    *n_shared = 0;
    const char *system = ic_convo_system(convo);
    if (!system || pc->n_slots == 0)
        return IC_PREFIX_NONE;
    prefix *p = find(pc, system);
    if (p && p->ready) {
        int n = ic_tokens_common_prefix(p->toks, p->n_toks, prompt, n_prompt);
        if (n == n_prompt)
            n--; /* the last prompt token must be decoded for its logits */
        if (n <= 0)
            return IC_PREFIX_NONE;
        ic_engine_seq_share(e, p->seq, seq, n);
        p->last_used_step = step;
        *n_shared = n;
        return IC_PREFIX_SHARED;
    }
    if (p)
        return p->owner == session_id ? IC_PREFIX_NONE : IC_PREFIX_WAIT;
    start(pc, e, convo, system, session_id, seq, prompt, n_prompt, step);
    return IC_PREFIX_NONE;
}

void ic_prefix_publish(ic_prefix_cache *pc, ic_engine *e,
                       const ic_token *(*hist)(void *ud, uint64_t session_id, int *n),
                       void *ud)
{
    for (int i = 0; i < pc->n_slots; i++) {
        prefix *p = &pc->slots[i];
        if (!p->system || p->ready)
            continue;
        int done = 0;
        const ic_token *h = hist(ud, p->owner, &done);
        int same = h ? ic_tokens_common_prefix(h, done, p->toks, p->n_toks) : 0;
        if (!h || (same < done && same < p->n_toks)) {
            /* Its session went away, or its cells hold other tokens than
             * the system prompt's: never publish them. */
            drop(e, p);
            continue;
        }
        if (same >= p->n_toks) {
            ic_engine_seq_share(e, p->owner_seq, p->seq, p->n_toks);
            p->ready = true;
            p->owner = 0;
            ic_log_debug("scheduler: shared prefix of %d tokens ready", p->n_toks);
        }
    }
}

void ic_prefix_release(ic_prefix_cache *pc, ic_engine *e, uint64_t session_id)
{
    for (int i = 0; i < pc->n_slots; i++) {
        prefix *p = &pc->slots[i];
        if (p->system && !p->ready && p->owner == session_id)
            drop(e, p);
    }
}

void ic_prefix_drop_ready(ic_prefix_cache *pc, ic_engine *e)
{
    for (int i = 0; i < pc->n_slots; i++) {
        if (pc->slots[i].ready)
            drop(e, &pc->slots[i]);
    }
}

int64_t ic_prefix_cells(const ic_prefix_cache *pc)
{
    int64_t n = 0;
    for (int i = 0; i < pc->n_slots; i++)
        n += pc->slots[i].ready ? pc->slots[i].n_toks : 0;
    return n;
}
