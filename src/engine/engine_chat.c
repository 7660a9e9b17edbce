/* engine_chat.c - a conversation as text in the model's chat template
 * (Jinja through chat.h, llama.cpp's built-in formats, or the plain
 * fallback) and as tokens, with control tokens parsed only in the
 * template's own text (see engine.h).
 *
 * Thread: any (it only reads the engine's vocabulary and templates).
 */
#include "engine_impl.h"
#include "buf.h"
#include "err.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A message's text; "" for an assistant's tool calls alone. */
static const char *text_of(const ic_chat_message *m) { return m->content ? m->content : ""; }

/* Plain text for models without a template; an assistant turn ends with a
 * newline so the next turn's text starts cleanly after generated text. */
static int fallback_format(const ic_chat_message *msgs, size_t n, bool add_assistant, char **out)
{
    ic_buf b = {0};
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *role = msgs[i].role;
        const char *c = text_of(&msgs[i]);
        if (strcmp(role, "system") == 0) {
            rc = ic_buf_append(&b, c, strlen(c));
            rc = rc ? rc : ic_buf_append(&b, "\n\n", 2);
        } else {
            const char *label = strcmp(role, "assistant") == 0 ? "Assistant:" : "User: ";
            rc = ic_buf_append(&b, label, strlen(label));
            rc = rc ? rc : ic_buf_append(&b, c, strlen(c));
            rc = rc ? rc : ic_buf_append(&b, "\n", 1);
        }
    }
    if (rc == 0 && add_assistant)
        rc = ic_buf_append(&b, "Assistant:", 10);
    if (rc < 0) {
        ic_buf_free(&b);
        return rc;
    }
    *out = ic_buf_take(&b);
    return *out ? 0 : IC_ERR_NOMEM;
}

/* The conversation through the model's Jinja template (chat.h), as
 * llama-server renders it, with ro's tools and reasoning (NULL: the
 * defaults). pout: the whole render (NULL: only the text is wanted). */
static int jinja_format(const ic_engine *e, const ic_chat_message *msgs, size_t n,
                        bool add_assistant, const ic_chat_render_opts *ro, char **out,
                        ic_chat_prompt **pout, char *why, size_t why_size)
{
    ic_chat_render_opts o = ro ? *ro : ic_chat_render_opts_default();
    o.add_generation_prompt = add_assistant;
    ic_chat_prompt *p = NULL;
    char scratch[256] = "";
    if (!why || why_size == 0) {
        why = scratch;
        why_size = sizeof scratch;
    }
    int rc = ic_chat_render(e->jinja, msgs, n, &o, &p, why, why_size);
    if (rc < 0) {
        ic_log_debug("chat template: %s", why);
        return rc == IC_ERR_NOMEM || (rc == IC_ERR_INVAL && ro) ? rc : IC_ERR_TEMPLATE;
    }
    *out = p->prompt;
    p->prompt = NULL;
    if (pout)
        *pout = p;
    else
        ic_chat_prompt_free(p);
    return 0;
}

/* ic_engine_chat_format over ic_chat_message; ro non-NULL: through Jinja
 * only (tools and reasoning need it), with the render in *pout. */
static int chat_format(const ic_engine *e, const ic_chat_message *msgs, size_t n,
                       bool add_assistant, const ic_chat_render_opts *ro, char **out,
                       ic_chat_prompt **pout, char *why, size_t why_size)
{
    *out = NULL;
    if (ro && !e->jinja) {
        if (why && why_size)
            snprintf(why, why_size, "this model's chat template does not run in the Jinja "
                     "engine, so it cannot render tools or reasoning");
        return IC_ERR_INVAL;
    }
    if (!e->chat_template && !ro)
        return fallback_format(msgs, n, add_assistant, out);
    if (e->jinja)
        return jinja_format(e, msgs, n, add_assistant, ro, out, pout, why, why_size);
    struct llama_chat_message *lm = calloc(n ? n : 1, sizeof *lm);
    if (!lm)
        return IC_ERR_NOMEM;
    size_t need = 0;
    for (size_t i = 0; i < n; i++) {
        lm[i].role = msgs[i].role;
        lm[i].content = text_of(&msgs[i]);
        need += strlen(lm[i].content) + 64;
    }
    int cap = (int)need + 256;
    char *buf = malloc((size_t)cap);
    int len = buf ? llama_chat_apply_template(e->chat_template, lm, n, add_assistant, buf, cap) : -1;
    if (buf && len >= cap) {
        cap = len + 1;
        char *p = realloc(buf, (size_t)cap);
        buf = p ? p : (free(buf), NULL);
        len = buf ? llama_chat_apply_template(e->chat_template, lm, n, add_assistant, buf, cap) : -1;
    }
    free(lm);
    if (!buf)
        return IC_ERR_NOMEM;
    if (len < 0) {
        /* A Jinja-only template this llama.cpp cannot apply without common/. */
        free(buf);
        return fallback_format(msgs, n, add_assistant, out);
    }
    buf[len] = '\0';
    *out = buf;
    return 0;
}

/* The role/content pairs as chat messages (malloc'd; NULL: no memory). */
static ic_chat_message *as_messages(const ic_chat_msg *msgs, size_t n)
{
    ic_chat_message *cm = calloc(n ? n : 1, sizeof *cm);
    for (size_t i = 0; cm && i < n; i++)
        cm[i] = (ic_chat_message){.role = msgs[i].role, .content = msgs[i].content};
    return cm;
}

int ic_engine_chat_format(const ic_engine *e, const ic_chat_msg *msgs, size_t n,
                          bool add_assistant, char **out)
{
    *out = NULL;
    ic_chat_message *cm = as_messages(msgs, n);
    if (!cm)
        return IC_ERR_NOMEM;
    int rc = chat_format(e, cm, n, add_assistant, NULL, out, NULL, NULL, 0);
    free(cm);
    return rc == IC_ERR_INVAL ? IC_ERR_TEMPLATE : rc;
}

/* Token list being built by chat_tokenize. */
typedef struct tok_list {
    ic_token *v;
    int n, cap;
} tok_list;

static int tok_push(tok_list *l, const ic_token *t, int n)
{
    if (l->n + n > l->cap) {
        int cap = l->cap ? l->cap : 64;
        while (cap < l->n + n)
            cap *= 2;
        ic_token *v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v)
            return IC_ERR_NOMEM;
        l->v = v;
        l->cap = cap;
    }
    memcpy(l->v + l->n, t, (size_t)n * sizeof *t);
    l->n += n;
    return 0;
}

/* Plain text (no control tokens parsed) onto the list. */
static int tok_text(const ic_engine *e, tok_list *l, const char *text, size_t len)
{
    if (len == 0)
        return 0;
    ic_token *t = NULL;
    int n = 0;
    int rc = ic_engine_tokenize(e, text, len, false, false, &t, &n);
    if (rc == 0)
        rc = tok_push(l, t, n);
    free(t);
    return rc;
}

/* The control token whose text starts at p (at most len bytes), or NULL. */
static const struct special *special_at(const ic_engine *e, const char *p, size_t len)
{
    unsigned char c = (unsigned char)*p;
    if (!(e->special_first[c / 8] & (1u << (c % 8))))
        return NULL;
    for (int i = 0; i < e->n_specials; i++) {
        const struct special *sp = &e->specials[i];
        if ((size_t)sp->len <= len && memcmp(p, sp->text, (size_t)sp->len) == 0)
            return sp;
    }
    return NULL;
}

static bool has_special(const ic_engine *e, const char *c)
{
    for (size_t k = 0, len = strlen(c); k < len; k++) {
        if (special_at(e, c + k, len - k))
            return true;
    }
    return false;
}

static size_t trimmed(const char *c, size_t len, size_t *lead)
{
    size_t a = 0;
    while (a < len && strchr(" \t\n\r", c[a]))
        a++;
    while (len > a && strchr(" \t\n\r", c[len - 1]))
        len--;
    *lead = a;
    return len - a;
}

/* Where each message's content lies in the formatted text: spans[2i],
 * spans[2i+1] = [start, end). The template is formatted a second time with
 * a marker for each content; the text must then be the marker text's
 * template pieces with each content (or the content trimmed, as some
 * templates do) in the markers' places. Returns false when it is not. */
static bool locate_contents(const ic_engine *e, const char *text, const ic_chat_message *msgs,
                            size_t n, bool add_assistant, const ic_chat_render_opts *ro,
                            size_t *spans)
{
    ic_chat_message *mm = calloc(n ? n : 1, sizeof *mm);
    char (*marks)[24] = malloc((n ? n : 1) * sizeof *marks);
    char *mtext = NULL;
    bool ok = mm && marks;
    for (size_t i = 0; ok && i < n; i++) {
        snprintf(marks[i], sizeof marks[i], "\x02%zu\x03", i);
        mm[i] = msgs[i];
        if (msgs[i].content)
            mm[i].content = marks[i];
    }
    ok = ok && chat_format(e, mm, n, add_assistant, ro, &mtext, NULL, NULL, 0) == 0;
    const char *tp = text, *mp = mtext;
    for (size_t i = 0; ok && i < n; i++) {
        if (!msgs[i].content) { /* tool calls alone: no content to find */
            spans[2 * i] = spans[2 * i + 1] = (size_t)(tp - text);
            continue;
        }
        const char *hit = strstr(mp, marks[i]);
        size_t plen = hit ? (size_t)(hit - mp) : 0;
        ok = hit && strncmp(tp, mp, plen) == 0;
        if (!ok)
            break;
        tp += plen;
        mp = hit + strlen(marks[i]);
        const char *c = msgs[i].content;
        size_t len = strlen(c), lead = 0;
        if (strncmp(tp, c, len) != 0) {
            len = trimmed(c, len, &lead);
            ok = strncmp(tp, c + lead, len) == 0;
        }
        spans[2 * i] = (size_t)(tp - text);
        spans[2 * i + 1] = spans[2 * i] + len;
        tp += len;
    }
    ok = ok && strcmp(tp, mp) == 0;
    free(mtext);
    free(marks);
    free(mm);
    return ok;
}

/* Tokenizes formatted chat text: control tokens only outside the content
 * spans, every run of plain text between them as llama_tokenize would (an
 * SPM vocabulary's leading space included), with lstrip/rstrip honoured. */
static int tokenize_spans(const ic_engine *e, const char *text, const size_t *spans, size_t n,
                          tok_list *out)
{
    size_t len = strlen(text), run = 0, i = 0, k = 0;
    int rc = 0;
    while (i < len && rc == 0) {
        while (k < n && i >= spans[2 * k + 1])
            k++;
        if (k < n && i >= spans[2 * k] && i < spans[2 * k + 1]) {
            i = spans[2 * k + 1]; /* content: plain text */
            continue;
        }
        size_t lim = (k < n ? spans[2 * k] : len) - i; /* never into content */
        const struct special *sp = special_at(e, text + i, lim);
        if (!sp) {
            i++;
            continue;
        }
        size_t end = i;
        while (sp->lstrip && end > run && strchr(" \t\n\r", text[end - 1]))
            end--;
        rc = tok_text(e, out, text + run, end - run);
        if (rc == 0)
            rc = tok_push(out, &sp->id, 1);
        i += (size_t)sp->len;
        while (sp->rstrip && i < len && strchr(" \t\n\r", text[i]))
            i++;
        run = i;
    }
    return rc ? rc : tok_text(e, out, text + run, len - run);
}

/* Formats and tokenizes (see ic_engine_chat_tokenize); ro and pout as
 * chat_format's. */
static int chat_tokenize(const ic_engine *e, const ic_chat_message *msgs, size_t n,
                         bool add_assistant, bool allow_special, const ic_chat_render_opts *ro,
                         ic_token **toks, int *n_toks, ic_chat_prompt **pout, char *why,
                         size_t why_size)
{
    *toks = NULL;
    *n_toks = 0;
    char *text = NULL;
    ic_chat_prompt *prompt = NULL;
    int rc = chat_format(e, msgs, n, add_assistant, ro, &text, pout ? &prompt : NULL, why,
                         why_size);
    if (rc < 0)
        return rc;
    if (allow_special) {
        rc = ic_engine_tokenize(e, text, strlen(text), true, true, toks, n_toks);
        goto out;
    }
    size_t *spans = malloc((n ? n : 1) * 2 * sizeof *spans);
    tok_list l = {0};
    ic_token bos = llama_vocab_bos(e->vocab), eos = llama_vocab_eos(e->vocab);
    bool add_bos = llama_vocab_get_add_bos(e->vocab) && bos != LLAMA_TOKEN_NULL;
    rc = spans ? 0 : IC_ERR_NOMEM;
    /* Where no content holds control-token text, the whole text tokenizes
     * as the span-aware way would (the branch below); the marker render
     * that finds the spans is then skipped: a Jinja render costs as much as
     * a few decode steps of a small model. */
    bool plain = true;
    for (size_t i = 0; i < n && plain; i++)
        plain = !has_special(e, text_of(&msgs[i]));
    if (rc == 0 && plain) {
        for (size_t i = 0; i < 2 * n; i++)
            spans[i] = 0;
    } else if (rc == 0 && !locate_contents(e, text, msgs, n, add_assistant, ro, spans)) {
        /* Unknown layout: safe to parse as a whole only when no content
         * holds control-token text. */
        for (size_t i = 0; i < n && rc == 0; i++)
            rc = has_special(e, text_of(&msgs[i])) ? IC_ERR_INVAL : 0;
        for (size_t i = 0; i < 2 * n; i++)
            spans[i] = 0;
        if (rc < 0 && why && why_size)
            snprintf(why, why_size, "a message holds control-token text that the chat "
                     "template rewrote");
    }
    if (rc == 0 && add_bos)
        rc = tok_push(&l, &bos, 1);
    if (rc == 0)
        rc = tokenize_spans(e, text, spans, n, &l);
    if (rc == 0 && llama_vocab_get_add_eos(e->vocab) && eos != LLAMA_TOKEN_NULL)
        rc = tok_push(&l, &eos, 1);
    free(spans);
    if (rc == 0 && !l.v && !(l.v = malloc(sizeof *l.v))) /* callers free a non-NULL array */
        rc = IC_ERR_NOMEM;
    if (rc < 0) {
        free(l.v);
    } else {
        *toks = l.v;
        *n_toks = l.n;
    }
out:
    if (rc == 0 && pout && prompt) {
        prompt->prompt = text; /* the render keeps its text */
        *pout = prompt;
    } else {
        free(text);
        ic_chat_prompt_free(prompt);
    }
    return rc;
}

int ic_engine_chat_tokenize(const ic_engine *e, const ic_chat_msg *msgs, size_t n,
                            bool add_assistant, bool allow_special, ic_token **toks,
                            int *n_toks)
{
    *toks = NULL;
    *n_toks = 0;
    ic_chat_message *cm = as_messages(msgs, n);
    if (!cm)
        return IC_ERR_NOMEM;
    int rc = chat_tokenize(e, cm, n, add_assistant, allow_special, NULL, toks, n_toks, NULL,
                           NULL, 0);
    free(cm);
    return rc;
}

int ic_engine_chat_render(const ic_engine *e, const ic_chat_message *msgs, size_t n,
                          const ic_chat_render_opts *opts, bool allow_special, ic_token **toks,
                          int *n_toks, ic_chat_prompt **prompt, char *why, size_t why_size)
{
    ic_chat_render_opts dflt = ic_chat_render_opts_default();
    *prompt = NULL;
    return chat_tokenize(e, msgs, n, true, allow_special, opts ? opts : &dflt, toks, n_toks,
                         prompt, why, why_size);
}
