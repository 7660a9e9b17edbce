/* gateway_chat.c - protocol v1's chat fields on the gateway: a session's
 * tools (CREATE_SESSION), and an INFER's tools, tool_choice, tool results
 * and reasoning turned into the scheduler's ic_chat_turn (see
 * docs/protocol.md, "Tools and reasoning"). The scheduler renders the
 * turn with the model's template, constrains tool calls with the
 * template's (lazy) grammar, marks reasoning TOKENs and parses the reply
 * for END.
 *
 * Thread: network thread.
 */
#include "gateway_impl.h"
#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* INFER m's chat fields as the scheduler's turn: 1 when it has none (an
 * INFER as before), 0 (*ct set, *results owned by the caller), or an
 * error with why. */
static int chat_turn(const gw_session *ss, const ic_msg *m, ic_chat_turn *ct,
                     ic_chat_message **results, char *why, size_t why_size)
{
    *results = NULL;
    const char *tools = m->has_tools ? m->tools_json : ss->tools_json;
    bool chatty = tools || m->tool_choice || m->n_tool_results > 0 || m->reasoning >= 0 ||
                  m->reasoning_budget >= 0;
    if (!chatty)
        return 1; /* an INFER as before */
    if (m->raw) {
        snprintf(why, why_size, "tools, tool_choice, messages and reasoning need chat mode "
                 "(raw false)");
        return IC_ERR_INVAL;
    }
    /* A grammar or json_schema given with tools replaces the template's
     * tool-call grammar (a client forcing a call of its own); the reply is
     * still parsed for tool calls by the template's parser. */
    if (m->tool_choice && strcmp(m->tool_choice, "required") == 0 && !tools) {
        snprintf(why, why_size, "tool_choice \"required\" needs tools");
        return IC_ERR_INVAL;
    }
    if (m->n_tool_results > 0) {
        *results = calloc((size_t)m->n_tool_results, sizeof **results);
        if (!*results) {
            snprintf(why, why_size, "out of memory");
            return IC_ERR_NOMEM;
        }
        for (int i = 0; i < m->n_tool_results; i++)
            (*results)[i] = (ic_chat_message){.role = "tool",
                                              .content = m->tool_results[i].content,
                                              .tool_call_id = m->tool_results[i].tool_call_id};
    }
    *ct = (ic_chat_turn){
        .tools_json = tools,
        .tool_choice = m->tool_choice,
        .reasoning = m->reasoning,
        .reasoning_budget = m->reasoning_budget,
        .split = tools != NULL || m->reasoning == 1,
        .tool_results = *results,
        .n_tool_results = (size_t)m->n_tool_results,
        /* tool results with an empty (or no) prompt: the model answers them */
        .no_user_turn = m->n_tool_results > 0 && !*m->prompt,
    };
    return 0;
}

int ic_gw_infer_extras(const gw_session *ss, const ic_msg *m, ic_gen_params *gp,
                       gw_infer_extras *x, char *why, size_t why_size)
{
    memset(x, 0, sizeof *x);
    /* grammar / json_schema: a schema compiles here (its problem is the
     * ERROR's message); GBNF compiles in the scheduler, which refuses one
     * that does not with bad_request. Never an unconstrained answer. */
    x->grammar.gbnf = m->grammar;
    if (m->grammar && !*m->grammar) {
        snprintf(why, why_size, "field 'grammar' must be GBNF text, not empty");
        return IC_ERR_INVAL;
    }
    int rc = m->json_schema ? ic_chat_schema_to_grammar(m->json_schema, &x->gbnf, why, why_size)
                            : 0;
    if (rc < 0)
        return rc;
    if (x->gbnf)
        x->grammar.gbnf = x->gbnf;
    rc = chat_turn(ss, m, &x->turn, &x->results, why, why_size);
    if (rc < 0) {
        ic_gw_infer_extras_free(x);
        return rc;
    }
    if (rc == 0)
        gp->chat = &x->turn;
    if (x->grammar.gbnf)
        gp->grammar = &x->grammar;
    return 0;
}

void ic_gw_infer_extras_free(gw_infer_extras *x)
{
    free(x->gbnf);
    free(x->results);
    x->gbnf = NULL;
    x->results = NULL;
}
