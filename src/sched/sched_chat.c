/* sched_chat.c - the scheduler's side of split chat turns (sched.h
 * ic_chat_turn): which generated text is the reasoning block, its token
 * budget (the end marker forced once it is spent, as llama-server's
 * reasoning budget), and the finished reply parsed by the template's own
 * output parser into content, reasoning and tool calls.
 *
 * Thread: the scheduler thread only.
 */
#include "sched_impl.h"
#include "err.h"
#include "log.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Starts forcing the template's first end-of-reasoning marker. */
static void start_forcing(ic_sched *s, gen *g)
{
    const char *tag = g->chat->thinking_end_tags[0];
    ic_token *toks = NULL;
    int n = 0;
    if (ic_engine_tokenize(s->engine, tag, strlen(tag), false, true, &toks, &n) < 0 || n == 0) {
        free(toks);
        ic_log_warn("reasoning budget: the end marker does not tokenize; not enforced");
        g->think_budget = -1;
        return;
    }
    g->forced = toks;
    g->n_forced = n;
    g->i_forced = 0;
}

/* Does text (len bytes) end, after trailing whitespace, with tag? */
static bool ends_with(const char *text, size_t len, const char *tag)
{
    while (len > 0 && strchr(" \t\r\n", text[len - 1]))
        len--;
    size_t tl = strlen(tag);
    return tl > 0 && len >= tl && memcmp(text + len - tl, tag, tl) == 0;
}

/* The preserved tokens that are single tokens of this vocabulary. */
static void preserved_init(ic_sched *s, gen *g)
{
    const ic_chat_prompt *cp = g->chat;
    if (!cp || cp->n_preserved_tokens == 0)
        return;
    g->pres_ids = calloc(cp->n_preserved_tokens, sizeof *g->pres_ids);
    g->pres_text = calloc(cp->n_preserved_tokens, sizeof *g->pres_text);
    if (!g->pres_ids || !g->pres_text) {
        ic_log_warn("preserved tokens: out of memory; markers stay control tokens");
        return;
    }
    for (size_t i = 0; i < cp->n_preserved_tokens; i++) {
        const char *t = cp->preserved_tokens[i];
        ic_token *toks = NULL;
        int n = 0;
        if (ic_engine_tokenize(s->engine, t, strlen(t), false, true, &toks, &n) == 0 && n == 1) {
            g->pres_ids[g->n_pres] = toks[0];
            g->pres_text[g->n_pres++] = t;
        }
        free(toks);
    }
}

const char *ic_sched__preserved(const gen *g, ic_token tok)
{
    for (int i = 0; i < g->n_pres; i++)
        if (g->pres_ids[i] == tok)
            return g->pres_text[i];
    return NULL;
}

void ic_sched__think_init(ic_sched *s, gen *g, const ic_chat_turn *ct)
{
    if (ct->split)
        preserved_init(s, g);
    g->split = ct->split;
    g->think_budget = ct->reasoning_budget;
    g->think = 2;
    const ic_chat_prompt *cp = g->chat;
    if (!cp || !cp->thinking || cp->n_thinking_end_tags == 0 || !*cp->thinking_start_tag)
        return;
    g->think = 0;
    /* A template that opens the block itself (the DeepSeek R1 distills)
     * ends its generation prompt with the start tag. */
    if (ends_with(cp->generation_prompt, strlen(cp->generation_prompt), cp->thinking_start_tag))
        g->think = 1;
    if (g->think_budget >= 0)
        g->spec = false; /* forced tokens are not drafts */
}

/* Where the text after the start tag begins, once the reply has opened
 * the block: 0 not yet, -1 never (the reply begins with something else). */
static long opened_at(const gen *g, const char *r, size_t n)
{
    size_t lead = 0;
    while (lead < n && strchr(" \t\r\n", r[lead]))
        lead++;
    const char *tag = g->chat->thinking_start_tag;
    size_t tl = strlen(tag), have = n - lead;
    if (have == 0)
        return 0;
    if (memcmp(r + lead, tag, have < tl ? have : tl) != 0)
        return -1;
    return have < tl ? 0 : (long)(lead + tl);
}

static bool blank(const char *r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\r\n", r[i]))
            return false;
    return true;
}

static bool holds(const char *hay, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; k > 0 && i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0)
            return true;
    return false;
}

bool ic_sched__think_token(ic_sched *s, gen *g)
{
    if (!g->chat || g->think == 2)
        return false;
    const char *r = g->reply.data ? g->reply.data : "";
    size_t n = g->reply.len;
    if (g->think == 0) {
        long at = opened_at(g, r, n);
        if (at < 0)
            g->think = 2;
        if (at == 0) /* a start of the tag, spelled in pieces: reasoning */
            return !blank(r, n);
        if (at < 0)
            return false;
        g->think = 1;
        g->think_from = (size_t)at;
    } else {
        g->n_think++;
    }
    for (size_t i = 0; i < g->chat->n_thinking_end_tags; i++) {
        if (holds(r + g->think_from, n - g->think_from, g->chat->thinking_end_tags[i])) {
            g->think = 2;
            return true;
        }
    }
    if (g->think_budget >= 0 && g->n_think >= g->think_budget && !g->forced)
        start_forcing(s, g);
    return true;
}

ic_token ic_sched__next_token(ic_sched *s, gen *g, int idx)
{
    if (g->think == 1 && g->think_budget == 0 && !g->forced && g->n_generated == 0)
        start_forcing(s, g); /* no reasoning at all: the block ends at once */
    if (g->forced && g->i_forced < g->n_forced) {
        ic_token tok = g->forced[g->i_forced++];
        if (ic_engine_sampler_accept_forced(g->sampler, tok))
            return tok;
        /* the turn's grammar does not allow the marker here: sample */
        ic_log_debug("reasoning budget: the grammar refuses the end marker; not enforced");
        g->i_forced = g->n_forced;
        g->think_budget = -1;
    }
    return ic_engine_sample(s->engine, g->sampler, idx);
}

/* The reply as plain content (the parser found nothing it is sure of). */
static ic_chat_parsed *as_content(const char *text, size_t len)
{
    ic_chat_parsed *p = calloc(1, sizeof *p);
    if (p && (!(p->content = strndup(text, len)) || !(p->reasoning_content = strdup("")))) {
        ic_chat_parsed_free(p);
        p = NULL;
    }
    return p;
}

/* A reply cut off (max_tokens) inside a call: calls whose arguments are
 * not a whole JSON object (some parsers hand a cut-off call back even
 * from a finished parse) are dropped, so that END and the kept
 * conversation (which the template renders, parsing them) hold whole
 * calls only. */
static void drop_cut_calls(ic_chat_parsed *p)
{
    size_t keep = 0;
    for (size_t i = 0; i < p->n_tool_calls; i++) {
        ic_chat_tool_call *c = &p->tool_calls[i];
        json_t *v = c->arguments ? json_loads(c->arguments, JSON_DECODE_ANY, NULL) : NULL;
        bool whole = v && json_is_object(v);
        json_decref(v);
        if (whole && c->name && *c->name) {
            p->tool_calls[keep++] = *c;
            continue;
        }
        free((char *)c->id);
        free((char *)c->name);
        free((char *)c->arguments);
    }
    p->n_tool_calls = keep;
}

ic_chat_parsed *ic_sched__parse_reply(const gen *g)
{
    const char *text = g->reply.data ? g->reply.data : "";
    size_t len = g->reply.len;
    ic_chat_parsed *p = NULL;
    if (g->chat && ic_chat_parse(g->chat, text, len, false, &p, NULL, 0) < 0)
        ic_chat_parse(g->chat, text, len, true, &p, NULL, 0);
    if (!p)
        p = as_content(text, len);
    drop_cut_calls(p);
    /* Calls the model gave no id are named after the request, so the
     * client's tool results can answer them by id. */
    for (size_t i = 0; p && i < p->n_tool_calls; i++) {
        ic_chat_tool_call *c = &p->tool_calls[i];
        if (c->id && *c->id)
            continue;
        char id[48];
        snprintf(id, sizeof id, "call_r%llu_%zu", (unsigned long long)g->request_id, i);
        char *own = strdup(id);
        if (!own)
            continue;
        free((char *)c->id);
        c->id = own;
    }
    return p;
}
