/* logprob.c - log-probabilities of sampled tokens for OpenAI's logprobs:
 * the log-softmax of the model's raw logits and the most likely tokens,
 * without sorting the vocabulary (see engine.h). */
#include "engine.h"

#include <math.h>
#include <stdint.h>

#define EXP_BLOCK 256

/* e^x for x <= 0 (a logit minus the maximum), to about 2e-7 relative:
 * x = n ln2 + r with |r| <= ln2/2, e^r by its Taylor series to r^7,
 * times 2^n through the exponent bits. Branch-free float arithmetic, so a
 * loop of it vectorises (libm's expf is a call per element); below -87
 * (e^-87 ~ 1.6e-38) it is 0, which a sum of probabilities cannot see. */
static inline float exp_neg(float x)
{
    x = x < -87.0f ? -87.0f : x; /* also NaN-free for -inf: it gives ~0 */
    float z = x * 1.44269504f + 12582912.0f; /* round(x / ln2) + 1.5 * 2^23 */
    float n = z - 12582912.0f;
    float r = x - n * 0.693145752f - n * 1.42860677e-6f; /* ln2, hi + lo */
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.66666672e-1f + r * (4.16666679e-2f +
              r * (8.33333377e-3f + r * (1.38888892e-3f + r * 1.98412701e-4f))))));
    union { float f; int32_t i; } u = {.f = p};
    u.i += (int32_t)n * (1 << 23);
    return x <= -87.0f ? 0.0f : u.f;
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
    /* Pass 1: the n_top best in top[], kept sorted: scanning ids upwards,
     * a logit that does not beat the worst kept costs one comparison, and
     * equal logits keep the lower id first. */
    int kept = 0;
    for (int i = 0; n_top > 0 && i < n_vocab; i += 8) {
        int end = i + 8 < n_vocab ? i + 8 : n_vocab;
        if (kept == n_top && end == i + 8) { /* 8 at once beside the worst kept */
            float worst = top[n_top - 1].logprob;
            int any = 0;
            for (int k = 0; k < 8; k++)
                any |= logits[i + k] > worst;
            if (!any)
                continue;
        }
        for (int t = i; t < end; t++) {
            float l = logits[t];
            if (kept == n_top && !(l > top[n_top - 1].logprob))
                continue;
            int j = kept < n_top ? kept++ : n_top - 1;
            for (; j > 0 && l > top[j - 1].logprob; j--)
                top[j] = top[j - 1];
            top[j] = (ic_token_logprob){.token = t, .logprob = l};
        }
    }
    /* The maximum: the best kept, else in 8 lanes over fixed-length
     * blocks, which the compiler vectorises. */
    float max = -INFINITY;
    if (kept > 0) {
        max = top[0].logprob;
    } else {
        int i = 0;
        float m[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                      -INFINITY, -INFINITY, -INFINITY, -INFINITY};
        for (; i + EXP_BLOCK <= n_vocab; i += EXP_BLOCK)
            for (int k = 0; k < EXP_BLOCK; k += 8)
                for (int j = 0; j < 8; j++)
                    m[j] = logits[i + k + j] > m[j] ? logits[i + k + j] : m[j];
        for (; i < n_vocab; i++)
            max = logits[i] > max ? logits[i] : max;
        for (int j = 0; j < 8; j++)
            max = m[j] > max ? m[j] : max;
    }
    if (max == -INFINITY) { /* every token masked: nothing is likely */
        for (int k = 0; k < kept; k++)
            top[k].logprob = -INFINITY;
        return kept;
    }
    /* Pass 2: log-sum-exp: the exponents of whole blocks in fixed-length
     * loops that the compiler vectorises (-O2 does only those), each
     * block summed in 8 float lanes and added in double; the rest alone. */
    double sum = 0;
    int i = 0;
    for (; i + EXP_BLOCK <= n_vocab; i += EXP_BLOCK) {
        float buf[EXP_BLOCK], lanes[8] = {0};
        for (int k = 0; k < EXP_BLOCK; k++)
            buf[k] = exp_neg(logits[i + k] - max);
        for (int k = 0; k < EXP_BLOCK; k += 8)
            for (int j = 0; j < 8; j++)
                lanes[j] += buf[k + j];
        for (int j = 0; j < 8; j++)
            sum += lanes[j];
    }
    for (; i < n_vocab; i++)
        sum += exp_neg(logits[i] - max);
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
