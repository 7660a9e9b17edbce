/* spec.c - n-gram drafts and their backoff (see spec.h).
 *
 * Why not llama.cpp common's helpers (common/ngram-map.h,
 * common/ngram-cache.h, common/speculative.h): they are C++ over
 * std::vector token copies (the history is copied into a vector per
 * call), common_speculative keeps its own per-sequence state that wants to
 * see every batch (common_speculative_process) and to own the draft/accept
 * cycle of llama-server's slots, and common_ngram_simple_draft looks up
 * 12-token n-grams with no backoff. Our scheduler already holds each
 * session's whole history as one array (the KV cache's tokens), so a
 * backwards scan over it is allocation-free C in the sched layer, and the
 * backoff decides per session and per step how many rows of the shared
 * batch a session may spend.
 *
 * Thread: any (pure; states are owned by their caller).
 */
#include "spec.h"

#include <string.h>

/* The most recent start j < n - k of toks[n-k..n) earlier in toks, or -1. */
static int find_suffix(const ic_token *toks, int n, int k)
{
    const ic_token *pat = toks + n - k;
    for (int j = n - k - 1; j >= 0; j--) {
        if (toks[j] == pat[0] && toks[j + k - 1] == pat[k - 1] &&
            memcmp(toks + j, pat, (size_t)k * sizeof *toks) == 0)
            return j;
    }
    return -1;
}

int ic_spec_ngram_draft(const ic_token *toks, int n, int max_draft, ic_token *out)
{
    if (max_draft > IC_SPEC_MAX_DRAFT)
        max_draft = IC_SPEC_MAX_DRAFT;
    for (int k = IC_SPEC_NGRAM_MAX; k >= IC_SPEC_NGRAM_MIN && max_draft > 0; k--) {
        if (n < k + 1)
            continue;
        int j = find_suffix(toks, n, k);
        if (j < 0)
            continue;
        /* What followed the earlier occurrence, up to the history's end
         * (periodic text then drafts its own period again). */
        int from = j + k, len = n - from < max_draft ? n - from : max_draft;
        memcpy(out, toks + from, (size_t)len * sizeof *toks);
        return len;
    }
    return 0;
}

void ic_spec_backoff_init(ic_spec_backoff *b, int max_tokens)
{
    if (max_tokens > IC_SPEC_MAX_DRAFT)
        max_tokens = IC_SPEC_MAX_DRAFT;
    *b = (ic_spec_backoff){.max_tokens = max_tokens, .len_tokens = max_tokens};
}

int ic_spec_backoff_budget(ic_spec_backoff *b)
{
    if (b->max_tokens <= 0)
        return 0;
    if (b->wait_steps > 0) {
        b->wait_steps--;
        return 0;
    }
    return b->len_tokens;
}

#define DECAY 0.9 /* weight of the past per verified draft */

static void pause_after_miss(ic_spec_backoff *b)
{
    b->misses++;
    b->wait_steps = (1 << (b->misses < 6 ? b->misses : 6)) - 1;
}

double ic_spec_backoff_accept(const ic_spec_backoff *b)
{
    return (b->hits + 1.0) / (b->hits + b->fails + 2.0);
}

void ic_spec_backoff_decline(ic_spec_backoff *b)
{
    b->declines++;
    b->wait_steps = (1 << (b->declines < 6 ? b->declines : 6)) - 1;
    b->len_tokens = 1;
    b->probe = true;
}

void ic_spec_backoff_result(ic_spec_backoff *b, int drafted, int accepted)
{
    if (drafted <= 0 || b->max_tokens <= 0)
        return;
    /* Chance of a token given the ones before it: accepted successes, and
     * one failure unless the draft was taken whole. */
    b->hits = DECAY * b->hits + accepted;
    b->fails = DECAY * b->fails + (accepted < drafted);
    int len = b->len_tokens;
    if (accepted == 0) {
        pause_after_miss(b);
        len /= 2;
    } else {
        b->misses = 0;
        len = accepted >= drafted ? len * 2 : accepted + 1;
    }
    b->len_tokens = len < 1 ? 1 : len > b->max_tokens ? b->max_tokens : len;
}

const char *ic_spec_mode_name(enum ic_spec_mode m)
{
    return m == IC_SPEC_NGRAM ? "ngram" : "off";
}

#define COST_DECAY 0.98 /* weight of the past per step: about the last 50 steps */

void ic_spec_cost_add(ic_spec_cost *c, int rows, double ms)
{
    c->w = COST_DECAY * c->w + 1;
    c->sx = COST_DECAY * c->sx + rows;
    c->sy = COST_DECAY * c->sy + ms;
    c->sxx = COST_DECAY * c->sxx + (double)rows * rows;
    c->sxy = COST_DECAY * c->sxy + rows * ms;
}

bool ic_spec_cost_fit(const ic_spec_cost *c, double *c0_ms, double *c1_ms)
{
    if (c->w < 2)
        return false;
    double mx = c->sx / c->w, my = c->sy / c->w;
    double var = c->sxx / c->w - mx * mx;
    if (var < 0.05) /* (nearly) one row count only: the slope is unknown */
        return false;
    double c1 = (c->sxy / c->w - mx * my) / var;
    if (c1 < 0)
        c1 = 0;
    double c0 = my - c1 * mx;
    if (c0 < 0)
        c0 = 0;
    *c0_ms = c0;
    *c1_ms = c1;
    return true;
}

int ic_spec_pick(double c0_ms, double c1_ms, int n_gen, int n_rows, double accept, int max_k)
{
    /* tokens / ms of the step with k drafts: (n_gen + E_k) / (c0 + c1 (n_rows + k)),
     * E_k = a + a^2 + ... + a^k the expected accepted tokens. A pick must
     * beat no draft by 2 %: estimates are noisy and a wasted row is not. */
    double t0 = c0_ms + c1_ms * n_rows;
    if (t0 <= 0)
        return max_k;
    double best = n_gen / t0 * 1.02, e = 0, p = 1;
    int pick = 0;
    for (int k = 1; k <= max_k; k++) {
        p *= accept;
        e += p;
        double rate = (n_gen + e) / (t0 + c1_ms * k);
        if (rate > best) {
            best = rate;
            pick = k;
        }
    }
    return pick;
}
