/* spec_draft.c - the draft model of speculative decoding (see spec_draft.h).
 */
#include "spec_draft.h"

#include "buf.h"
#include "err.h"
#include "log.h"
#include "spec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ic_spec_drafter {
    ic_engine_opts opts;   /* for reloads; model_path is path */
    char *path;
    ic_engine *e;          /* NULL while asleep */
    ic_sampler *greedy;
    int n_seq;
    uint32_t n_batch;
    ic_token **toks;       /* per sequence: the tokens its cells hold, in order */
    int *n_toks;
    int cap_toks;          /* entries of each toks[i] */
    bool reload_failed;    /* said once */
};

/* Same vocabulary: size, every token's text, end-of-generation marks. */
static int same_vocab(const ic_engine *a, const ic_engine *b, char *why, size_t cap)
{
    ic_engine_info ia, ib;
    ic_engine_get_info(a, &ia);
    ic_engine_get_info(b, &ib);
    if (ia.n_vocab != ib.n_vocab) {
        snprintf(why, cap, "the draft model has %d tokens, the model %d", ib.n_vocab,
                 ia.n_vocab);
        return IC_ERR_MODEL;
    }
    ic_buf pa = {0}, pb = {0};
    int rc = 0;
    for (ic_token t = 0; t < ia.n_vocab && rc == 0; t++) {
        ic_buf_clear(&pa);
        ic_buf_clear(&pb);
        if (ic_engine_token_piece(a, t, &pa) < 0 || ic_engine_token_piece(b, t, &pb) < 0) {
            rc = IC_ERR_NOMEM;
            snprintf(why, cap, "out of memory comparing the vocabularies");
        } else if (pa.len != pb.len || (pa.len && memcmp(pa.data, pb.data, pa.len) != 0) ||
                   ic_engine_token_is_eog(a, t) != ic_engine_token_is_eog(b, t)) {
            rc = IC_ERR_MODEL;
            snprintf(why, cap, "token %d differs between the draft model and the model", t);
        }
    }
    ic_buf_free(&pa);
    ic_buf_free(&pb);
    return rc;
}

static int load(ic_spec_drafter *d, const char **errmsg)
{
    int rc = ic_engine_create(&d->opts, &d->e, errmsg);
    if (rc < 0)
        return rc;
    ic_sample_params p = ic_sample_params_default();
    p.temperature = 0;
    p.repeat_penalty = 1; /* no state: one sampler serves every sequence */
    p.presence_penalty = 0;
    p.frequency_penalty = 0;
    rc = ic_engine_sampler_create(d->e, &p, &d->greedy);
    if (rc < 0) {
        ic_engine_destroy(d->e);
        d->e = NULL;
        *errmsg = "out of memory";
    }
    return rc;
}

int ic_spec_drafter_create(const char *path, const ic_engine *target, ic_spec_drafter **out,
                           char *why, size_t why_cap)
{
    *out = NULL;
    ic_spec_drafter *d = calloc(1, sizeof *d);
    if (!d)
        return IC_ERR_NOMEM;
    ic_engine_info ti;
    ic_engine_get_info(target, &ti);
    ic_engine_get_opts(target, &d->opts);
    d->path = strdup(path);
    d->n_seq = (int)ti.n_seq_max;
    d->n_batch = ti.n_batch_tokens;
    d->cap_toks = (int)(ti.kv_unified ? ti.n_ctx_tokens : ti.n_ctx_tokens / ti.n_seq_max) +
                  IC_SPEC_MAX_DRAFT;
    d->toks = calloc((size_t)d->n_seq, sizeof *d->toks);
    d->n_toks = calloc((size_t)d->n_seq, sizeof *d->n_toks);
    if (!d->path || !d->toks || !d->n_toks) {
        ic_spec_drafter_destroy(d);
        return IC_ERR_NOMEM;
    }
    d->opts.model_path = d->path;
    d->opts.n_gpu_layers = ti.n_gpu_layers > 0 ? -1 : 0;
    d->opts.progress = false;
    d->opts.load_tick = NULL;
    d->opts.load_tick_ud = NULL;
    const char *err = NULL;
    int rc = load(d, &err);
    if (rc < 0) {
        snprintf(why, why_cap, "cannot load the draft model %s: %s", path, err ? err : "?");
        ic_spec_drafter_destroy(d);
        return rc == IC_ERR_NOMEM ? rc : IC_ERR_MODEL;
    }
    rc = same_vocab(target, d->e, why, why_cap);
    if (rc < 0) {
        ic_spec_drafter_destroy(d);
        return rc;
    }
    *out = d;
    return 0;
}

void ic_spec_drafter_destroy(ic_spec_drafter *d)
{
    if (!d)
        return;
    ic_spec_drafter_sleep(d);
    for (int i = 0; d->toks && i < d->n_seq; i++)
        free(d->toks[i]);
    free(d->toks);
    free(d->n_toks);
    free(d->path);
    free(d);
}

void ic_spec_drafter_sleep(ic_spec_drafter *d)
{
    if (!d || !d->e)
        return;
    ic_engine_sampler_destroy(d->greedy);
    d->greedy = NULL;
    ic_engine_destroy(d->e);
    d->e = NULL;
    for (int i = 0; i < d->n_seq; i++)
        d->n_toks[i] = 0;
}

/* Decodes hist[from..n) into seq (logits on the last only). Returns the
 * last token's batch row, or a negative error (seq then holds from). */
static int feed(ic_spec_drafter *d, int seq, const ic_token *hist, int from, int n)
{
    int row = -1;
    for (int i = from; i < n;) {
        ic_engine_batch_clear(d->e);
        int end = i + (int)d->n_batch < n ? i + (int)d->n_batch : n;
        for (int j = i; j < end; j++)
            row = ic_engine_batch_add(d->e, hist[j], j, seq, j == n - 1);
        if (row < 0 || ic_engine_decode(d->e) < 0) {
            ic_engine_seq_rm(d->e, seq, from, -1);
            return IC_ERR_DECODE;
        }
        i = end;
    }
    return row;
}

int ic_spec_drafter_draft(ic_spec_drafter *d, int seq, const ic_token *hist, int n, int max,
                          ic_token *out)
{
    if (seq < 0 || seq >= d->n_seq || n <= 0 || max <= 0)
        return 0;
    max = max < IC_SPEC_MAX_DRAFT ? max : IC_SPEC_MAX_DRAFT;
    if (n + max > d->cap_toks)
        return 0;
    if (!d->e) {
        if (d->reload_failed)
            return 0;
        const char *err = NULL;
        if (load(d, &err) < 0) {
            ic_log_error("the draft model %s does not load again (%s): no more drafts",
                         d->path, err ? err : "?");
            d->reload_failed = true;
            return 0;
        }
    }
    if (!d->toks[seq] && !(d->toks[seq] = malloc((size_t)d->cap_toks * sizeof(ic_token))))
        return 0;
    ic_token *have = d->toks[seq];
    /* keep what the history still begins with, and one token less than
     * all of it: the last one must be decoded again for its logits */
    int keep = 0, limit = d->n_toks[seq] < n - 1 ? d->n_toks[seq] : n - 1;
    while (keep < limit && have[keep] == hist[keep])
        keep++;
    if (keep < d->n_toks[seq])
        ic_engine_seq_rm(d->e, seq, keep, -1);
    d->n_toks[seq] = keep;
    int row = feed(d, seq, hist, keep, n);
    if (row < 0)
        return 0;
    memcpy(have + keep, hist + keep, (size_t)(n - keep) * sizeof *hist);
    d->n_toks[seq] = n;
    int k = 0;
    for (;;) {
        ic_token t = ic_engine_sample(d->e, d->greedy, row);
        out[k++] = t;
        if (k == max || ic_engine_token_is_eog(d->e, t))
            break;
        ic_engine_batch_clear(d->e);
        row = ic_engine_batch_add(d->e, t, n + k - 1, seq, true);
        if (row < 0 || ic_engine_decode(d->e) < 0) {
            ic_engine_seq_rm(d->e, seq, n + k - 1, -1);
            break;
        }
        have[n + k - 1] = t;
        d->n_toks[seq] = n + k;
    }
    return k;
}
