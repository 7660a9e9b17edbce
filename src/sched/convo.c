/* convo.c - conversation text and turn tokens (see convo.h). Scheduler
 * thread only.
 */
#include "convo.h"
#include "buf.h"
#include "err.h"

#include <stdlib.h>
#include <string.h>

enum convo_mode { MODE_NONE, MODE_CHAT, MODE_RAW };

typedef struct msg {
    char *role;              /* static string: "system", "user", "assistant" */
    char *content;           /* owned */
} msg;

struct ic_convo {
    char *system;            /* owned, or NULL */
    enum convo_mode mode;
    msg *msgs;               /* chat turns, system first when there is one */
    size_t n_msgs, cap_msgs;
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

void ic_convo_destroy(ic_convo *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_msgs; i++)
        free(c->msgs[i].content);
    free(c->msgs);
    free(c->system);
    ic_buf_free(&c->raw);
    free(c);
}

const char *ic_convo_system(const ic_convo *c) { return c->system; }

static int push_msg(ic_convo *c, const char *role, const char *content, size_t len)
{
    if (c->n_msgs == c->cap_msgs) {
        size_t cap = c->cap_msgs ? c->cap_msgs * 2 : 8;
        msg *m = realloc(c->msgs, cap * sizeof *m);
        if (!m)
            return IC_ERR_NOMEM;
        c->msgs = m;
        c->cap_msgs = cap;
    }
    char *copy = strndup(content, len);
    if (!copy)
        return IC_ERR_NOMEM;
    c->msgs[c->n_msgs++] = (msg){.role = (char *)role, .content = copy};
    return 0;
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

size_t ic_convo_bytes(const ic_convo *c)
{
    if (c->mode == MODE_RAW)
        return c->raw.len;
    size_t n = c->mode == MODE_NONE && c->system ? strlen(c->system) : 0;
    for (size_t i = 0; i < c->n_msgs; i++)
        n += strlen(c->msgs[i].content);
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
    return push_msg(c, "user", prompt, strlen(prompt));
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
    else
        rc = tokenize_chat(c, e, allow_special, toks, n_toks);
    if (rc == IC_ERR_INVAL)
        *why = "a message holds control-token text that the chat template rewrote";
    if (rc < 0)
        ic_convo_cancel_turn(c);
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
            free(c->msgs[i].content);
        c->n_msgs = 0;
        ic_buf_clear(&c->raw);
        c->mode = MODE_NONE;
        return;
    }
    if (c->mode == MODE_RAW) {
        c->raw.len = c->raw_committed;
        if (c->raw.data)
            c->raw.data[c->raw.len] = '\0';
    } else if (c->n_msgs > 0) {
        free(c->msgs[--c->n_msgs].content);
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
