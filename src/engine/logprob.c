/* logprob.c - log-probabilities of sampled tokens for OpenAI's logprobs:
 * the log-softmax of the model's raw logits and the most likely tokens,
 * without sorting the vocabulary (see engine.h). */
#include "engine.h"

#include <math.h>

/* True when token a (logit la) ranks before b (lb): higher logit, then
 * lower id, so that equal logits give a stable order. */
static int ranks_before(float la, ic_token a, float lb, ic_token b)
{
    return la > lb || (la == lb && a < b);
}

int ic_logprobs_compute(const float *logits, int n_vocab, ic_token tok, int n_top,
                        float *tok_logprob, ic_token_logprob *top)
{
    *tok_logprob = -INFINITY;
    if (n_top < 0)
        n_top = 0;
    if (n_top > IC_LOGPROBS_MAX)
        n_top = IC_LOGPROBS_MAX;
    if (n_top > n_vocab)
        n_top = n_vocab;
    if (n_vocab <= 0)
        return 0;
    /* Pass 1: the maximum, and the n_top best in top[], kept sorted: a
     * logit below the worst kept costs one comparison. */
    float max = -INFINITY;
    int kept = 0;
    for (int i = 0; i < n_vocab; i++) {
        float l = logits[i];
        if (l > max)
            max = l;
        if (n_top == 0 || (kept == n_top && !ranks_before(l, i, top[kept - 1].logprob,
                                                          top[kept - 1].token)))
            continue;
        int j = kept < n_top ? kept++ : n_top - 1;
        while (j > 0 && ranks_before(l, i, top[j - 1].logprob, top[j - 1].token)) {
            top[j] = top[j - 1];
            j--;
        }
        top[j] = (ic_token_logprob){.token = i, .logprob = l};
    }
    if (max == -INFINITY) { /* every token masked: nothing is likely */
        for (int k = 0; k < kept; k++)
            top[k].logprob = -INFINITY;
        return kept;
    }
    /* Pass 2: log-sum-exp, in double (a vocabulary of 150k floats). */
    double sum = 0;
    for (int i = 0; i < n_vocab; i++)
        sum += exp((double)logits[i] - max);
    double lse = (double)max + log(sum);
    for (int k = 0; k < kept; k++) {
        double lp = (double)top[k].logprob - lse; /* rounding may give +1e-8 */
        top[k].logprob = (float)(lp > 0 ? 0 : lp);
    }
    if (tok >= 0 && tok < n_vocab) {
        double lp = (double)logits[tok] - lse;
        *tok_logprob = (float)(lp > 0 ? 0 : lp);
    }
    return kept;
}

int ic_engine_logprobs(ic_engine *e, int idx, ic_token tok, int n_top, float *tok_logprob,
                       ic_token_logprob *top)
{
    return ic_logprobs_compute(ic_engine_logits(e, idx), ic_engine_n_vocab(e), tok, n_top,
                               tok_logprob, top);
}
