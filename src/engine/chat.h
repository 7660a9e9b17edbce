/* chat.h - conversations in the model's own chat template, tool calls,
 * reasoning, grammars and JSON schemas: a C facade over llama.cpp's
 * `common` library (chat.cpp is its one C++ translation unit).
 *
 * An ic_chat holds a model's Jinja templates (the default one and, where
 * the GGUF has it, the "tool_use" variant), parsed once. After creation it
 * is immutable and keeps no pointer to the model: any thread may render and
 * parse with it at the same time, and it outlives a model reload.
 *
 * Render turns messages and tool definitions into the prompt text exactly
 * as llama-server (--jinja) does for the same model, and hands back what
 * generation and parsing need: the chat format, a grammar (lazy, with its
 * triggers, for tool calls), preserved tokens, extra stop strings and the
 * output parser. Parse turns a finished or partial output into content,
 * reasoning and tool calls with that parser.
 *
 * JSON crosses this boundary as text (tool definitions, tool-call
 * arguments, schemas); the callers parse it with jansson.
 * Errors: a negative ic_err and a message in the caller's buffer.
 */
#ifndef IC_CHAT_H
#define IC_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" { /* for chat.cpp, which implements it */
#endif

#include "engine.h"

typedef struct ic_chat ic_chat;

/* One tool call: in an assistant message given to render (borrowed), or
 * found by parse (owned by the ic_chat_parsed). */
typedef struct ic_chat_tool_call {
    const char *id;          /* "" or NULL: none (parse: the model gave none) */
    const char *name;
    const char *arguments;   /* JSON text of the arguments object */
} ic_chat_tool_call;

/* One message of a conversation; every pointer borrowed for the call. */
typedef struct ic_chat_message {
    const char *role;              /* system, developer, user, assistant, tool */
    const char *content;           /* NULL: no content (an assistant's tool calls) */
    const char *reasoning_content; /* assistant: earlier reasoning; NULL: none */
    const char *tool_call_id;      /* tool: the call this answers; NULL: none */
    const char *tool_name;         /* tool: the function's name; NULL: none */
    const ic_chat_tool_call *tool_calls; /* assistant: n_tool_calls calls */
    size_t n_tool_calls;
} ic_chat_message;

typedef struct ic_chat_render_opts {
    /* OpenAI tools: [{"type":"function","function":{"name":..,
     * "description":..,"parameters":{..}}}]. NULL or "[]": none. */
    const char *tools_json;
    const char *tool_choice;      /* "auto" (NULL), "required" or "none" */
    int parallel_tool_calls;      /* -1: what the template supports, 0, 1 */
    bool add_generation_prompt;   /* open the assistant's turn */
    int reasoning;                /* -1: on where the template can, 0 off, 1 on */
    /* Constrain the answer (at most one): a JSON Schema (JSON text), or GBNF
     * text. The grammar the template wraps around it comes back in
     * ic_chat_prompt.grammar. NULL: none. */
    const char *json_schema;
    const char *grammar;
} ic_chat_render_opts;

/* What render produces; all owned by it, freed by ic_chat_prompt_free. */
typedef struct ic_chat_prompt {
    char *prompt;                 /* the text to tokenize (special tokens on) */
    int format;                   /* the parser's format id (common_chat_format) */
    const char *format_name;      /* static, e.g. "peg-native" */
    char *generation_prompt;      /* what the prompt ends with for the answer */
    /* Grammar for sampling: NULL when unconstrained. Lazy grammars wait for
     * one of the triggers (tool calls); a strict one starts with
     * generation_prompt, which grammar_prefill says to feed it first. */
    char *grammar;
    bool grammar_lazy;
    ic_grammar_trigger *triggers; /* n_triggers; strings owned here */
    size_t n_triggers;
    char **preserved_tokens;      /* special tokens the parser must see as text */
    size_t n_preserved_tokens;
    char **additional_stops;      /* stop strings the template adds */
    size_t n_additional_stops;
    bool thinking;                /* reasoning is on for this turn */
    char *thinking_start_tag;     /* e.g. "<think>"; "" when none */
    char **thinking_end_tags;     /* e.g. "</think>" */
    size_t n_thinking_end_tags;
    struct ic_chat_syntax *syntax; /* the loaded output parser (opaque) */
} ic_chat_prompt;

/* What parse finds; all owned by it, freed by ic_chat_parsed_free. */
typedef struct ic_chat_parsed {
    char *content;                /* never NULL */
    char *reasoning_content;      /* never NULL; "" when none */
    ic_chat_tool_call *tool_calls;
    size_t n_tool_calls;
} ic_chat_parsed;

/* The ic_chat_render_opts defaults: no tools, generation prompt on,
 * reasoning where the template has it, as llama-server's defaults. */
ic_chat_render_opts ic_chat_render_opts_default(void);

/* Reads the model's chat templates (template_override: Jinja text to use
 * instead; NULL: the GGUF's, else ChatML). Returns 0 and *out, or
 * IC_ERR_TEMPLATE (the template does not parse) / IC_ERR_NOMEM with a
 * message in err. The engine is only read during the call. */
int ic_chat_create(const ic_engine *e, const char *template_override, ic_chat **out, char *err,
                   size_t err_size);

/* Frees the templates; NULL does nothing. */
void ic_chat_destroy(ic_chat *c);

/* True when the template has a reasoning block it can switch on and off;
 * true when it renders tool definitions. */
bool ic_chat_supports_reasoning(const ic_chat *c);
bool ic_chat_supports_tools(const ic_chat *c);

/* Renders msgs (n of them) with the model's template. Returns 0 and *out
 * (free with ic_chat_prompt_free), or with a message in err:
 * IC_ERR_INVAL (bad role, bad tools JSON, schema and grammar together, a
 * schema that does not compile), IC_ERR_TEMPLATE (the template raised an
 * error, e.g. roles out of order), IC_ERR_NOMEM. */
int ic_chat_render(const ic_chat *c, const ic_chat_message *msgs, size_t n,
                   const ic_chat_render_opts *opts, ic_chat_prompt **out, char *err,
                   size_t err_size);

void ic_chat_prompt_free(ic_chat_prompt *p);

/* The ic_grammar to sample p's answer with, pointing into p (valid while
 * p lives); gbnf NULL when the answer is unconstrained. */
ic_grammar ic_chat_prompt_grammar(const ic_chat_prompt *p);

/* Parses the model's output text (the answer alone, without the prompt)
 * with the parser p's render chose. partial: the output may stop anywhere
 * (streaming); the result then holds what is certain so far. Tool calls the
 * model gave no id get id "" (the caller names them, stably across partial
 * parses). Returns 0 and *out (free with ic_chat_parsed_free), or
 * IC_ERR_PARSE (a finished output that does not match the format) or
 * IC_ERR_NOMEM with a message in err. */
int ic_chat_parse(const ic_chat_prompt *p, const char *text, size_t len, bool partial,
                  ic_chat_parsed **out, char *err, size_t err_size);

void ic_chat_parsed_free(ic_chat_parsed *r);

/* Converts a JSON Schema (JSON text) to GBNF. Returns 0 and a malloc'd
 * *gbnf, or IC_ERR_INVAL with the reason in err (not JSON, or a schema the
 * converter refuses). */
int ic_chat_schema_to_grammar(const char *schema_json, char **gbnf, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif

#endif
