/* convo.h - one session's conversation as text, and the token sequence
 * that the next turn must put in the KV cache.
 *
 * A conversation is either chat (turns formatted with the model's template)
 * or raw (plain text appended as is); the first turn decides. The token
 * sequence of a turn is the whole conversation re-tokenized; the scheduler
 * keeps what the KV cache already holds of it and decodes only the rest.
 * Owned by the scheduler thread.
 */
#ifndef IC_CONVO_H
#define IC_CONVO_H

#include "chat.h"
#include "engine.h"
#include "sched.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct ic_convo ic_convo;

/* Creates an empty conversation with an optional system prompt (copied).
 * Returns 0 or IC_ERR_NOMEM. */
int ic_convo_create(const char *system_prompt, ic_convo **out);

/* NULL is ok. */
void ic_convo_destroy(ic_convo *c);

/* The system prompt, or NULL. */
const char *ic_convo_system(const ic_convo *c);

/* Starts a turn: returns in *toks (malloc'd, caller frees) the tokens of the
 * whole conversation with prompt as its next turn, ready for the reply.
 * Control tokens are parsed only in the chat template's own text (raw text
 * is plain), or everywhere with allow_special. Returns 0, IC_ERR_INVAL
 * (*why says why: raw and chat mixed in one session; an empty or
 * whitespace-only prompt with nothing before it, neither a system prompt
 * nor an earlier turn; control-token text the template rewrote),
 * IC_ERR_TEMPLATE, IC_ERR_TOKENIZE or IC_ERR_NOMEM. */
int ic_convo_begin_turn(ic_convo *c, const ic_engine *e, const char *prompt, bool raw,
                        bool allow_special, ic_token **toks, int *n_toks, const char **why);

/* As ic_convo_begin_turn in chat mode, driven by ct (NULL: the defaults):
 * ct's tool results are added before the prompt's user message (none with
 * ct->no_user_turn), and the conversation is rendered with ct's tools and
 * reasoning by ic_engine_chat_render, whose render (grammar, parser,
 * thinking tags) comes back in *out (the caller frees it). Errors as
 * ic_convo_begin_turn's, with the reason in why. */
int ic_convo_begin_chat_turn(ic_convo *c, const ic_engine *e, const char *prompt,
                             const ic_chat_turn *ct, bool allow_special, ic_token **toks,
                             int *n_toks, ic_chat_prompt **out, char *why, size_t why_size);

/* Ends the chat turn begun last with the reply as its parse split it:
 * content (may be ""), reasoning (NULL or "": none) and tool calls
 * (copied; ids as the client was told). Later renders give the template
 * the structured message, as llama-server's clients send it back. */
int ic_convo_end_turn_parsed(ic_convo *c, const char *content, const char *reasoning,
                             const ic_chat_tool_call *calls, size_t n_calls);

/* Bytes of text the conversation holds (system prompt and every turn):
 * with a new prompt's, a lower bound on the next turn's tokens is this
 * over the longest token's bytes. */
size_t ic_convo_bytes(const ic_convo *c);

/* Ends the turn begun last with the reply text the client received. */
int ic_convo_end_turn(ic_convo *c, const char *reply, size_t len);

/* Adds a finished turn without tokenizing anything: prompt (raw or chat,
 * as ic_convo_begin_turn takes it) and the reply it got. For a session
 * restored from the durable store (its KV cache is recomputed by the next
 * turn). Returns 0, IC_ERR_INVAL (raw and chat mixed) or IC_ERR_NOMEM. */
int ic_convo_restore_turn(ic_convo *c, const char *prompt, bool raw, const char *reply);

/* Forgets the turn begun last (it was refused). */
void ic_convo_cancel_turn(ic_convo *c);

/* Tokens of the system prompt as the conversation starts with it (for
 * sharing its KV cells between sessions). *n_toks is 0 without one. */
int ic_convo_system_tokens(const ic_convo *c, const ic_engine *e, ic_token **toks, int *n_toks);

#endif
