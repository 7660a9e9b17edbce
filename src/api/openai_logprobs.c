/* openai_logprobs.c - OpenAI's logprobs: the per-token values the
 * scheduler puts on TOKEN events (sched.h ic_logprobs), kept per request
 * and written in chat's shape or the legacy completions' shape. See
 * docs/openai.md. Pure functions and a list; any thread.
 */
#include "openai_lp.h"
#include "err.h"
#include "utf8.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ic_oai_lp_list_push(ic_oai_lp_list *l, const ic_logprobs *lp)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 64;
        ic_logprobs **v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v)
            return IC_ERR_NOMEM;
        l->v = v;
        l->cap = cap;
    }
    ic_logprobs *c = malloc(lp->size);
    if (!c)
        return IC_ERR_NOMEM;
    memcpy(c, lp, lp->size);
    l->v[l->n++] = c;
    return 0;
}

void ic_oai_lp_list_clear(ic_oai_lp_list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->v[i]);
    l->n = 0;
}

void ic_oai_lp_list_free(ic_oai_lp_list *l)
{
    ic_oai_lp_list_clear(l);
    free(l->v);
    memset(l, 0, sizeof *l);
}

void ic_oai_lp_list_put(const ic_oai_lp_list *l, size_t text_offset, ic_oai_response *r)
{
    r->logprobs = (const ic_logprobs *const *)l->v;
    r->n_logprobs = l->n;
    r->text_offset = text_offset;
}

void ic_oai_lp_list_sent(ic_oai_lp_list *l, size_t *text_offset)
{
    for (int i = 0; i < l->n; i++)
        *text_offset += l->v[i]->sampled.len;
    ic_oai_lp_list_clear(l);
}

char *ic_oai_token_text(const char *bytes, size_t len)
{
    if (ic_utf8_valid(bytes, len))
        return strndup(len ? bytes : "", len);
    char *out = malloc(6 + 4 * len + 1);
    if (!out)
        return NULL;
    memcpy(out, "bytes:", 6);
    for (size_t i = 0; i < len; i++)
        snprintf(out + 6 + 4 * i, 5, "\\x%02x", (unsigned char)bytes[i]);
    out[6 + 4 * len] = '\0';
    return out;
}

/* JSON has no -Infinity: OpenAI's stand-in for "never". */
static json_t *logprob_value(float lp)
{
    return json_real(isfinite(lp) ? (double)lp : -9999.0);
}

static json_t *token_string(const ic_logprobs *lp, const ic_logprob_tok *t)
{
    char *s = ic_oai_token_text(lp->bytes + t->off, t->len);
    json_t *j = s ? json_string(s) : NULL;
    free(s);
    return j;
}

static json_t *bytes_array(const ic_logprobs *lp, const ic_logprob_tok *t)
{
    json_t *a = json_array();
    for (uint32_t i = 0; a && i < t->len; i++) {
        if (json_array_append_new(a, json_integer((unsigned char)lp->bytes[t->off + i])) < 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

/* {token, logprob, bytes} */
static json_t *token_object(const ic_logprobs *lp, const ic_logprob_tok *t)
{
    return json_pack("{s:o,s:o,s:o}", "token", token_string(lp, t), "logprob",
                     logprob_value(t->logprob), "bytes", bytes_array(lp, t));
}

/* chat: {token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]} */
static json_t *chat_entry(const ic_logprobs *lp)
{
    json_t *top = json_array();
    for (int i = 0; top && i < lp->n_top; i++) {
        if (json_array_append_new(top, token_object(lp, &lp->top[i])) < 0) {
            json_decref(top);
            return NULL;
        }
    }
    json_t *e = top ? token_object(lp, &lp->sampled) : NULL;
    if (!e || json_object_set_new(e, "top_logprobs", top) < 0) {
        json_decref(e);
        json_decref(top);
        return NULL;
    }
    return e;
}

static json_t *chat_logprobs(const ic_oai_response *r)
{
    json_t *content = json_array();
    for (int i = 0; content && i < r->n_logprobs; i++) {
        if (json_array_append_new(content, chat_entry(r->logprobs[i])) < 0) {
            json_decref(content);
            return NULL;
        }
    }
    return content ? json_pack("{s:o,s:n}", "content", content, "refusal") : NULL;
}

/* {"<token>": logprob, ...} of one legacy entry */
static json_t *legacy_top(const ic_logprobs *lp)
{
    json_t *o = json_object();
    for (int i = 0; o && i < lp->n_top; i++) {
        char *s = ic_oai_token_text(lp->bytes + lp->top[i].off, lp->top[i].len);
        if (!s || json_object_set_new(o, s, logprob_value(lp->top[i].logprob)) < 0) {
            free(s);
            json_decref(o);
            return NULL;
        }
        free(s);
    }
    return o;
}

static json_t *legacy_logprobs(const ic_oai_response *r)
{
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array();
    json_t *offsets = json_array();
    size_t off = r->text_offset;
    bool ok = tokens && lps && tops && offsets;
    for (int i = 0; ok && i < r->n_logprobs; i++) {
        const ic_logprobs *lp = r->logprobs[i];
        ok = json_array_append_new(tokens, token_string(lp, &lp->sampled)) == 0 &&
             json_array_append_new(lps, logprob_value(lp->sampled.logprob)) == 0 &&
             json_array_append_new(tops, legacy_top(lp)) == 0 &&
             json_array_append_new(offsets, json_integer((json_int_t)off)) == 0;
        off += lp->sampled.len;
    }
    if (!ok) {
        json_decref(tokens);
        json_decref(lps);
        json_decref(tops);
        json_decref(offsets);
        return NULL;
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", tokens, "token_logprobs", lps,
                     "top_logprobs", tops, "text_offset", offsets);
}

json_t *ic_oai__logprobs_json(const ic_oai_response *r)
{
    if (r->n_logprobs <= 0 || !r->logprobs)
        return json_null();
    return r->endpoint == IC_OAI_CHAT ? chat_logprobs(r) : legacy_logprobs(r);
}
