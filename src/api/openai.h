/* openai.h - the OpenAI-compatible HTTP API's messages: request bodies of
 * POST /v1/chat/completions and /v1/completions to C structs (validated,
 * with errors in OpenAI's shape), and C values to the JSON bodies and SSE
 * chunks the API answers with. See docs/openai.md.
 *
 * Pure functions (any thread; the gateway calls them on the network
 * thread). jansson inside; no jansson type appears here. Like protocol.h
 * for protocol v1, this is the one place that knows the wire format.
 */
#ifndef IC_OPENAI_H
#define IC_OPENAI_H

#include "sched.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IC_OAI_MAX_LOGIT_BIAS 300

enum ic_oai_endpoint {
    IC_OAI_CHAT,        /* POST /v1/chat/completions */
    IC_OAI_COMPLETIONS, /* POST /v1/completions */
};

enum ic_oai_role {
    IC_OAI_ROLE_SYSTEM, /* "developer" is read as system */
    IC_OAI_ROLE_USER,
    IC_OAI_ROLE_ASSISTANT,
    IC_OAI_ROLE_TOOL,
};

/* One tool call of an assistant message in a request; strings owned. */
typedef struct ic_oai_tool_call {
    char *id;               /* "" when the client sent none */
    char *name;
    char *arguments;        /* JSON text (OpenAI sends it as a string) */
} ic_oai_tool_call;

/* One message of a chat request; strings owned. */
typedef struct ic_oai_message {
    enum ic_oai_role role;
    char *content;          /* text (content parts joined); "" when null */
    char *name;             /* optional participant name, or NULL */
    char *tool_call_id;     /* tool: the call this answers, or NULL */
    char *tool_calls_json;  /* assistant: its tool_calls array as JSON text, or NULL */
    ic_oai_tool_call *tool_calls; /* assistant: the same calls, n_tool_calls */
    int n_tool_calls;
} ic_oai_message;

enum ic_oai_format {
    IC_OAI_FORMAT_TEXT,
    IC_OAI_FORMAT_JSON_OBJECT,
    IC_OAI_FORMAT_JSON_SCHEMA, /* schema_json holds the schema */
};

typedef ic_logit_bias ic_oai_logit_bias; /* keys are token ids as strings */

/* A parsed request; free with ic_oai_request_free. */
typedef struct ic_oai_request {
    enum ic_oai_endpoint endpoint;
    char *model;              /* NULL: the default model */
    ic_oai_message *messages; /* chat */
    int n_messages;
    char *prompt;             /* completions */
    bool stream;
    bool include_usage;       /* stream_options.include_usage */
    int max_tokens;           /* 0: not given */
    bool has_temperature, has_top_p, has_seed, has_top_k, has_min_p, has_repeat_penalty;
    float temperature, top_p, min_p, repeat_penalty;
    int top_k;
    uint32_t seed;
    float presence_penalty, frequency_penalty;
    int n_stop;
    char *stop[IC_STOP_MAX];
    ic_oai_logit_bias *logit_bias;
    int n_logit_bias;
    char *user;
    char *tools_json;         /* the tools array as JSON text, or NULL; with a named
                                 tool_choice only that function's definition */
    char *tool_choice;        /* "none", "auto" or "required" (a named function is
                                 read as "required" over that one tool); NULL */
    int parallel_tool_calls;  /* parallel_tool_calls: -1 not given (the template's), 0, 1 */
    enum ic_oai_format format;
    char *schema_json;        /* IC_OAI_FORMAT_JSON_SCHEMA */
    bool logprobs;
    int top_logprobs;
    bool ignore_eos;
    bool has_priority;
    enum ic_priority priority;
} ic_oai_request;

/* An error answer in OpenAI's shape. */
typedef struct ic_oai_error {
    int status;               /* HTTP status */
    const char *type;         /* "invalid_request_error", "authentication_error", ... */
    const char *code;         /* machine code or NULL */
    char param[64];           /* the offending field, or "" */
    char message[256];
} ic_oai_error;

/* Parses a request body for endpoint. Returns 0 and fills out, or
 * IC_ERR_PARSE and fills err (status 400: malformed JSON, a field of the
 * wrong type or out of range, n != 1, a list of prompts, no messages),
 * or IC_ERR_NOMEM. Unknown fields are ignored. */
int ic_oai_parse_request(enum ic_oai_endpoint endpoint, const char *body, size_t len,
                         ic_oai_request *out, ic_oai_error *err);

void ic_oai_request_free(ic_oai_request *r);

/* Fills err for status with OpenAI's type for it, the code (may be NULL)
 * and a printf message. */
void ic_oai_error_set(ic_oai_error *err, int status, const char *code, const char *param,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* {"error":{"message","type","param","code"}}: malloc'd, or NULL (no memory). */
char *ic_oai_error_body(const ic_oai_error *err);

/* The generation parameters of a request, over the protocol's defaults. */
void ic_oai_gen_params(const ic_oai_request *r, enum ic_priority max_priority,
                       ic_gen_params *gen);

/* "stop", "length", "tool_calls" for an END reason (abort, shutdown and
 * error have no OpenAI name: NULL). */
const char *ic_oai_finish_reason(enum ic_end_reason reason, bool tool_calls);

/* What a response carries besides text. */
typedef struct ic_oai_usage {
    int prompt_tokens;        /* the whole prompt, cached part included */
    int completion_tokens;
    int cached_tokens;        /* prompt tokens taken from the prompt cache */
} ic_oai_usage;

typedef struct ic_oai_response {
    enum ic_oai_endpoint endpoint;
    const char *id;           /* "chatcmpl-..." / "cmpl-..." */
    const char *model;
    int64_t created;          /* Unix seconds */
    const char *text;         /* content (chat) or text (completions) */
    size_t text_len;
    const char *reasoning;    /* chat: reasoning_content, or NULL */
    const char *tool_calls_json; /* chat: [{id,type,function:{name,arguments}}] or NULL */
    const char *finish_reason;
    ic_oai_usage usage;
    /* The log-probabilities of the tokens this answer (or chunk) carries,
     * in order; n_logprobs 0: "logprobs": null. text_offset (completions):
     * the byte offset in the completion's text of the first of them. */
    const ic_logprobs *const *logprobs;
    int n_logprobs;
    size_t text_offset;
} ic_oai_response;

/* A request's log-probabilities, token by token (copies of the TOKEN
 * events'). Free with ic_oai_lp_list_free. */
typedef struct ic_oai_lp_list {
    ic_logprobs **v;
    int n, cap;
} ic_oai_lp_list;

/* Appends a copy of lp. Returns 0 or IC_ERR_NOMEM. */
int ic_oai_lp_list_push(ic_oai_lp_list *l, const ic_logprobs *lp);
/* Frees the entries (the list stays usable, empty). */
void ic_oai_lp_list_clear(ic_oai_lp_list *l);
void ic_oai_lp_list_free(ic_oai_lp_list *l);
/* Puts the list's entries on r (borrowed), the first at text_offset. */
void ic_oai_lp_list_put(const ic_oai_lp_list *l, size_t text_offset, ic_oai_response *r);
/* The entries went out: adds their bytes to *text_offset, clears. */
void ic_oai_lp_list_sent(ic_oai_lp_list *l, size_t *text_offset);

/* The "token" text OpenAI gives a token of these bytes: the bytes when
 * they are valid UTF-8, else "bytes:\\xNN..." (a piece of a character; the
 * "bytes" field has the raw bytes). malloc'd, or NULL. */
char *ic_oai_token_text(const char *bytes, size_t len);

/* One tool call of an answer, for ic_oai_tool_calls_json. */
typedef struct ic_oai_call_out {
    int index;                /* stream deltas: the call's index; -1: no index */
    const char *id;           /* NULL: omitted (a later delta of the call) */
    const char *name;         /* NULL: omitted (idem) */
    const char *arguments;    /* arguments_len bytes of JSON text (a delta: a piece) */
    size_t arguments_len;
} ic_oai_call_out;

/* [{index?, id, type:"function", function:{name, arguments}}], the
 * tool_calls of a message or of a stream delta: malloc'd JSON, or NULL. */
char *ic_oai_tool_calls_json(const ic_oai_call_out *calls, size_t n);

/* The whole (not streamed) answer: malloc'd JSON, or NULL. */
char *ic_oai_response_body(const ic_oai_response *r);

/* One SSE event "data: {chunk}\n\n" of a streamed answer: the delta is
 * r->text (chat: with role "assistant" when first is true; a first chunk
 * carries the role and empty content), finish_reason when not NULL.
 * malloc'd, *len set; NULL when out of memory. */
char *ic_oai_stream_chunk(const ic_oai_response *r, bool first, size_t *len);

/* The usage chunk (choices empty) for stream_options.include_usage. */
char *ic_oai_stream_usage(const ic_oai_response *r, size_t *len);

/* An error after streaming began: "data: {error}\n\n". */
char *ic_oai_stream_error(const ic_oai_error *err, size_t *len);

/* "data: [DONE]\n\n" (static). */
const char *ic_oai_stream_done(size_t *len);

/* One model of GET /v1/models. */
typedef struct ic_oai_model {
    const char *id;
    int64_t created;
    bool loaded;
} ic_oai_model;

/* GET /v1/models: {"object":"list","data":[...]}; n == 1 and one_object:
 * the model object alone (GET /v1/models/{id}). malloc'd, or NULL. */
char *ic_oai_models_body(const ic_oai_model *models, int n, bool one_object);

#endif
