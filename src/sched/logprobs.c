/* logprobs.c - sampling with log-probabilities: the sampled token's and
 * the most likely tokens', from the row's raw logits (engine.h), packed
 * with their bytes into one allocation that a TOKEN event carries.
 * Scheduler thread. */
#include "buf.h"
#include "sched_impl.h"

#include <stdlib.h>
#include <string.h>

/* Appends tok's bytes to the scratch and says where they are. */
static void put_token(ic_engine *e, ic_buf *bytes, ic_token tok, float logprob,
                      ic_logprob_tok *out)
{
    size_t off = bytes->len;
    if (ic_engine_token_piece(e, tok, bytes) < 0)
        bytes->len = off; /* out of memory: no bytes for this one */
    *out = (ic_logprob_tok){.token = tok, .logprob = logprob, .off = (uint32_t)off,
                            .len = (uint32_t)(bytes->len - off)};
}

/* The log-probabilities of tok at row idx, or NULL (out of memory). */
static ic_logprobs *row_logprobs(ic_engine *e, ic_buf *bytes, int idx, ic_token tok, int n_top)
{
    ic_token_logprob top[IC_LOGPROBS_MAX];
    float lp = 0;
    int n = ic_engine_logprobs(e, idx, tok, n_top, &lp, top);
    ic_logprob_tok sampled, tops[IC_LOGPROBS_MAX];
    ic_buf_clear(bytes);
    put_token(e, bytes, tok, lp, &sampled);
    for (int i = 0; i < n; i++)
        put_token(e, bytes, top[i].token, top[i].logprob, &tops[i]);
    size_t size = sizeof(ic_logprobs) + bytes->len;
    ic_logprobs *out = malloc(size);
    if (!out)
        return NULL;
    out->size = size;
    out->sampled = sampled;
    out->n_top = n;
    memcpy(out->top, tops, (size_t)n * sizeof *tops);
    if (bytes->len)
        memcpy(out->bytes, bytes->data, bytes->len);
    return out;
}

ic_token ic_sched__sample(ic_sched *s, gen *g, int idx, ic_logprobs **lp)
{
    ic_token tok = ic_sched__next_token(s, g, idx); /* a forced marker, or a draw */
    *lp = g->logprobs ? row_logprobs(s->engine, &g->lp_bytes, idx, tok, g->top_logprobs) : NULL;
    return tok;
}
