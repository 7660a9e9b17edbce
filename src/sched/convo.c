/* convo.c - conversation text and turn tokens (see convo.h). Scheduler
 * thread only.
 */
#include "convo.h"
#include "buf.h"
#include "chat.h"
#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum convo_mode { MODE_NONE, MODE_CHAT, MODE_RAW };

typedef struct msg {
    char *role;              /* static string: "system", "user", "assistant", "tool" */
    char *content;           /* owned; NULL: an assistant's tool calls alone */
    char *reasoning;         /* assistant: its reasoning (split replies), or NULL */
    char *tool_call_id;      /* tool: the call it answers, or NULL */
    ic_chat_tool_call *calls; /* assistant: its tool calls, strings owned */
    size_t n_calls;
} msg;

struct ic_convo {
    char *system;            /* owned, or NULL */
    enum convo_mode mode;
    msg *msgs;               /* chat turns, system first when there is one */
    size_t n_msgs, cap_msgs;
    size_t turn_msgs;        /* n_msgs before the open turn's messages */
    bool rich;               /* a message has tool calls, a tool result or reasoning:
                                every render goes through ic_engine_chat_render */
    ic_buf raw;              /* raw mode: the whole text so far */
    size_t raw_committed;    /* raw mode: bytes of raw before the open turn */
    bool turn_open;
    bool turn_set_mode;      /* the open turn is the first: cancelling it resets */
};

int ic_convo_create(const char *system_prompt, ic_convo **out)
{
    ic_convo *c = calloc(1, sizeof *c);
    if (!c)
        return IC_ERR_NOMEM;
    if (system_prompt && *system_prompt && !(c->system = strdup(system_prompt))) {
        free(c);
        return IC_ERR_NOMEM;
    }
    *out = c;
    return 0;
}

static void msg_free(msg *m)
{
    free(m->content);
    free(m->reasoning);
    free(m->tool_call_id);
    for (size_t i = 0; i < m->n_calls; i++) {
        free((char *)m->calls[i].id);
        free((char *)m->calls[i].name);
        free((char *)m->calls[i].arguments);
    }
    free(m->calls);
    memset(m, 0, sizeof *m);
}

void ic_convo_destroy(ic_convo *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_msgs; i++)
        msg_free(&c->msgs[i]);
    free(c->msgs);
    free(c->system);
    ic_buf_free(&c->raw);
    free(c);
}

const char *ic_convo_system(const ic_convo *c) { return c->system; }

/* Room for one more message. */
static int grow(ic_convo *c)
{
    if (c->n_msgs == c->cap_msgs) {
        size_t cap = c->cap_msgs ? c->cap_msgs * 2 : 8;
        msg *m = realloc(c->msgs, cap * sizeof *m);
        if (!m)
            return IC_ERR_NOMEM;
        c->msgs = m;
        c->cap_msgs = cap;
    }
    return 0;
}

static int push_msg(ic_convo *c, const char *role, const char *content, size_t len)
{
    if (grow(c) < 0)
        return IC_ERR_NOMEM;
    char *copy = strndup(content, len);
    if (!copy)
        return IC_ERR_NOMEM;
    c->msgs[c->n_msgs++] = (msg){.role = (char *)role, .content = copy};
    return 0;
}

/* The function whose call id answers, from the assistant messages before. */
static const char *tool_name_for(const ic_convo *c, const char *id)
{
    for (size_t k = c->n_msgs; id && k-- > 0;)
        for (size_t i = 0; i < c->msgs[k].n_calls; i++)
            if (c->msgs[k].calls[i].id && strcmp(c->msgs[k].calls[i].id, id) == 0)
                return c->msgs[k].calls[i].name;
    return NULL;
}

/* Tokens of the chat so far (ending with the open user turn) with the
 * assistant's turn opened. */
static int tokenize_chat(const ic_convo *c, const ic_engine *e, bool allow_special,
                         ic_token **toks, int *n_toks)
{
    ic_chat_msg *cm = malloc((c->n_msgs ? c->n_msgs : 1) * sizeof *cm);
    if (!cm)
        return IC_ERR_NOMEM;
    for (size_t i = 0; i < c->n_msgs; i++)
        cm[i] = (ic_chat_msg){.role = c->msgs[i].role, .content = c->msgs[i].content};
    int rc = ic_engine_chat_tokenize(e, cm, c->n_msgs, true, allow_special, toks, n_toks);
    free(cm);
    return rc;
}

/* The conversation as chat.h's messages (malloc'd, pointing into c). */
static ic_chat_message *rich_messages(const ic_convo *c)
{
    ic_chat_message *cm = calloc(c->n_msgs ? c->n_msgs : 1, sizeof *cm);
    for (size_t i = 0; cm && i < c->n_msgs; i++) {
        const msg *m = &c->msgs[i];
        cm[i] = (ic_chat_message){.role = m->role, .content = m->content,
                                  .reasoning_content = m->reasoning,
                                  .tool_call_id = m->tool_call_id,
                                  .tool_calls = m->calls, .n_tool_calls = m->n_calls};
        if (m->tool_call_id)
            cm[i].tool_name = tool_name_for(c, m->tool_call_id);
    }
    return cm;
}

/* Tokens of the chat through ic_engine_chat_render with ct's options. */
static int render_chat(const ic_convo *c, const ic_engine *e, const ic_chat_turn *ct,
                       bool allow_special, ic_token **toks, int *n_toks, ic_chat_prompt **out,
                       char *why, size_t why_size)
{
    ic_chat_message *cm = rich_messages(c);
    if (!cm)
        return IC_ERR_NOMEM;
    ic_chat_render_opts o = ic_chat_render_opts_default();
    if (ct) {
        o.tools_json = ct->tools_json;
        o.tool_choice = ct->tool_choice;
        o.reasoning = ct->reasoning;
    }
    int rc = ic_engine_chat_render(e, cm, c->n_msgs, &o, allow_special, toks, n_toks, out, why,
                                   why_size);
    free(cm);
    return rc;
}

size_t ic_convo_bytes(const ic_convo *c)
{
    if (c->mode == MODE_RAW)
        return c->raw.len;
    size_t n = c->mode == MODE_NONE && c->system ? strlen(c->system) : 0;
    for (size_t i = 0; i < c->n_msgs; i++) {
        const msg *m = &c->msgs[i];
        n += m->content ? strlen(m->content) : 0;
        n += m->reasoning ? strlen(m->reasoning) : 0;
        for (size_t k = 0; k < m->n_calls; k++)
            n += strlen(m->calls[k].name) + strlen(m->calls[k].arguments);
    }
    return n;
}

/* Nothing but whitespace. */
static bool blank(const char *t) { return t[strspn(t, " \t\r\n\f\v")] == '\0'; }

static int open_turn(ic_convo *c, const char *prompt, bool raw, const char **why)
{
    enum convo_mode want = raw ? MODE_RAW : MODE_CHAT;
    if (c->mode != MODE_NONE && c->mode != want) {
        *why = raw ? "this session is a chat; raw prompts need a new session"
                   : "this session holds raw text; chat prompts need a new session";
        return IC_ERR_INVAL;
    }
    c->turn_set_mode = c->mode == MODE_NONE;
    if (c->mode == MODE_NONE) {
        c->mode = want;
        int rc = 0;
        if (c->system && raw)
            rc = ic_buf_append(&c->raw, c->system, strlen(c->system));
        else if (c->system)
            rc = push_msg(c, "system", c->system, strlen(c->system));
        if (rc < 0)
            return rc;
    }
    if (raw) {
        c->raw_committed = c->raw.len;
        return ic_buf_append(&c->raw, prompt, strlen(prompt));
    }
    c->turn_msgs = c->n_msgs;
    return prompt ? push_msg(c, "user", prompt, strlen(prompt)) : 0;
}

int ic_convo_begin_turn(ic_convo *c, const ic_engine *e, const char *prompt, bool raw,
                        bool allow_special, ic_token **toks, int *n_toks, const char **why)
{
    static const char *unused;
    if (!why)
        why = &unused;
    *toks = NULL;
    *n_toks = 0;
    if (c->turn_open)
        ic_convo_cancel_turn(c);
    if (blank(prompt) && ic_convo_bytes(c) == 0 && c->n_msgs == 0) {
        /* Nothing to generate from (a vocabulary without BOS would give
         * no token at all). With context, an empty turn continues it. */
        *why = "the prompt is empty and the session holds nothing to continue";
        return IC_ERR_INVAL;
    }
    int rc = open_turn(c, prompt, raw, why);
    if (rc < 0)
        return rc;
    c->turn_open = true;
    if (raw)
        rc = ic_engine_tokenize(e, c->raw.data, c->raw.len, true, allow_special, toks, n_toks);
    else if (c->rich) {
        ic_chat_prompt *p = NULL;
        char reason[160];
        rc = render_chat(c, e, NULL, allow_special, toks, n_toks, &p, reason, sizeof reason);
        ic_chat_prompt_free(p);
    } else
        rc = tokenize_chat(c, e, allow_special, toks, n_toks);
    if (rc == IC_ERR_INVAL)
        *why = "a message holds control-token text that the chat template rewrote";
    if (rc < 0)
        ic_convo_cancel_turn(c);
    return rc;
}

int ic_convo_begin_chat_turn(ic_convo *c, const ic_engine *e, const char *prompt,
                             const ic_chat_turn *ct, bool allow_special, ic_token **toks,
                             int *n_toks, ic_chat_prompt **out, char *why, size_t why_size)
{
    const char *reason = NULL;
    *toks = NULL;
    *n_toks = 0;
    *out = NULL;
    if (c->turn_open)
        ic_convo_cancel_turn(c);
    bool user = !(ct && ct->no_user_turn);
    size_t n_results = ct ? ct->n_tool_results : 0;
    if (user && n_results == 0 && blank(prompt) && ic_convo_bytes(c) == 0 && c->n_msgs == 0) {
        snprintf(why, why_size, "the prompt is empty and the session holds nothing to continue");
        return IC_ERR_INVAL;
    }
    int rc = open_turn(c, NULL, false, &reason);
    if (rc < 0) {
        if (reason)
            snprintf(why, why_size, "%s", reason);
        return rc;
    }
    c->turn_open = true;
    for (size_t i = 0; rc == 0 && i < n_results; i++) {
        const ic_chat_message *t = &ct->tool_results[i];
        rc = push_msg(c, "tool", t->content ? t->content : "", t->content ? strlen(t->content) : 0);
        if (rc == 0 && t->tool_call_id &&
            !(c->msgs[c->n_msgs - 1].tool_call_id = strdup(t->tool_call_id)))
            rc = IC_ERR_NOMEM;
        c->rich = true;
    }
    if (rc == 0 && user)
        rc = push_msg(c, "user", prompt, strlen(prompt));
    if (rc == 0)
        rc = render_chat(c, e, ct, allow_special, toks, n_toks, out, why, why_size);
    if (rc < 0)
        ic_convo_cancel_turn(c);
    return rc;
}

/* A copy of the parse's tool calls onto m. */
static int copy_calls(msg *m, const ic_chat_tool_call *calls, size_t n)
{
    if (n == 0)
        return 0;
    if (!(m->calls = calloc(n, sizeof *m->calls)))
        return IC_ERR_NOMEM;
    for (; m->n_calls < n; m->n_calls++) {
        ic_chat_tool_call *d = &m->calls[m->n_calls];
        const ic_chat_tool_call *t = &calls[m->n_calls];
        d->id = strdup(t->id ? t->id : "");
        d->name = strdup(t->name ? t->name : "");
        d->arguments = strdup(t->arguments ? t->arguments : "{}");
        if (!d->id || !d->name || !d->arguments) {
            m->n_calls++; /* so msg_free frees what is set */
            return IC_ERR_NOMEM;
        }
    }
    return 0;
}

int ic_convo_end_turn_parsed(ic_convo *c, const char *content, const char *reasoning,
                             const ic_chat_tool_call *calls, size_t n_calls)
{
    if (!c->turn_open)
        return 0;
    c->turn_open = false;
    if (c->mode != MODE_CHAT)
        return IC_ERR_INVAL;
    const char *text = content ? content : "";
    int rc = push_msg(c, "assistant", text, strlen(text));
    if (rc < 0)
        return rc;
    msg *m = &c->msgs[c->n_msgs - 1];
    if (n_calls > 0 && !*text) {
        free(m->content); /* the calls alone, as OpenAI's null content */
        m->content = NULL;
    }
    if (reasoning && *reasoning && !(m->reasoning = strdup(reasoning)))
        rc = IC_ERR_NOMEM;
    if (rc == 0)
        rc = copy_calls(m, calls, n_calls);
    c->rich = true;
    return rc;
}

int ic_convo_end_turn(ic_convo *c, const char *reply, size_t len)
{
    if (!c->turn_open)
        return 0;
    c->turn_open = false;
    if (c->mode == MODE_RAW)
        return ic_buf_append(&c->raw, reply, len);
    return push_msg(c, "assistant", reply, len);
}

int ic_convo_restore_turn(ic_convo *c, const char *prompt, bool raw, const char *reply)
{
    const char *why;
    if (c->turn_open)
        ic_convo_cancel_turn(c);
    int rc = open_turn(c, prompt, raw, &why);
    if (rc < 0)
        return rc;
    c->turn_open = true;
    return ic_convo_end_turn(c, reply, strlen(reply));
}

void ic_convo_cancel_turn(ic_convo *c)
{
    if (!c->turn_open)
        return;
    c->turn_open = false;
    if (c->turn_set_mode) {
        /* A refused first turn leaves the conversation as it was created. */
        for (size_t i = 0; i < c->n_msgs; i++)
            msg_free(&c->msgs[i]);
        c->n_msgs = 0;
        c->rich = false;
        ic_buf_clear(&c->raw);
        c->mode = MODE_NONE;
        return;
    }
    if (c->mode == MODE_RAW) {
        c->raw.len = c->raw_committed;
        if (c->raw.data)
            c->raw.data[c->raw.len] = '\0';
    } else {
        while (c->n_msgs > c->turn_msgs)
            msg_free(&c->msgs[--c->n_msgs]);
    }
}

int ic_convo_system_tokens(const ic_convo *c, const ic_engine *e, ic_token **toks, int *n_toks)
{
    *toks = NULL;
    *n_toks = 0;
    if (!c->system)
        return 0;
    if (c->mode == MODE_RAW)
        return ic_engine_tokenize(e, c->system, strlen(c->system), true, false, toks, n_toks);
    ic_chat_msg sys = {.role = "system", .content = c->system};
    return ic_engine_chat_tokenize(e, &sys, 1, false, false, toks, n_toks);
}
