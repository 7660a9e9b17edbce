/* protocol.h - protocol v1: client JSON messages to C structs, and server
 * messages from C values to JSON text. The one place that knows the wire
 * format and the only builder of ERROR messages. See docs/protocol.md.
 *
 * Pure functions on the network thread (any thread may call them). Uses
 * jansson inside; no jansson type appears here.
 */
#ifndef IC_PROTOCOL_H
#define IC_PROTOCOL_H

#include "gpu.h"
#include "sched.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IC_PROTOCOL_VERSION 1
#define IC_MSG_ID_MAX_BYTES 64

enum ic_msg_type {
    IC_MSG_AUTH,
    IC_MSG_CREATE_SESSION,
    IC_MSG_CLOSE_SESSION,
    IC_MSG_INFER,
    IC_MSG_ABORT,
    IC_MSG_METRICS,
    IC_MSG_SUBSCRIBE_METRICS,
    IC_MSG_RESUME_SESSION,     /* durable sessions (--session-store) */
    IC_MSG_MODEL_LOAD,         /* admin: load (or reload) a model */
    IC_MSG_MODEL_UNLOAD,       /* admin: unload a model */
};

/* Client-visible error codes, in the order of the protocol document. */
enum ic_proto_code {
    IC_CODE_BAD_JSON,
    IC_CODE_BAD_REQUEST,
    IC_CODE_UNKNOWN_TYPE,
    IC_CODE_UNAUTHENTICATED,
    IC_CODE_SESSION_NOT_FOUND,
    IC_CODE_SESSION_LIMIT,
    IC_CODE_CAPACITY,
    IC_CODE_BUSY,
    IC_CODE_NOT_RUNNING,
    IC_CODE_PROMPT_TOO_LONG,
    IC_CODE_MESSAGE_TOO_LARGE,
    IC_CODE_OVERLOADED,
    IC_CODE_INTERNAL,
    IC_CODE_MODEL_NOT_FOUND,
    IC_CODE_FORBIDDEN,
};

/* The client's "id", echoed in every reply to its message. */
typedef struct ic_msg_id {
    bool present;
    bool is_int;
    int64_t i;
    char s[IC_MSG_ID_MAX_BYTES + 1];
} ic_msg_id;

/* Generation parameters as a client sent them: `set` says which were given
 * (bit (1u << IC_PARAM_x)), so session defaults and request values merge. */
enum ic_param {
    IC_PARAM_MAX_TOKENS, IC_PARAM_TEMPERATURE, IC_PARAM_TOP_K, IC_PARAM_TOP_P,
    IC_PARAM_MIN_P, IC_PARAM_REPEAT_PENALTY, IC_PARAM_REPEAT_LAST_N, IC_PARAM_SEED,
    IC_PARAM_STOP, IC_PARAM_IGNORE_EOS, IC_PARAM_PRIORITY, IC_PARAM_ALLOW_SPECIAL,
    IC_PARAM_SPECULATIVE, IC_PARAM_LOGPROBS,
};

typedef struct ic_req_params {
    unsigned set;
    int max_tokens;
    float temperature;
    int top_k;
    float top_p;
    float min_p;
    float repeat_penalty;
    int repeat_last_n;
    uint32_t seed;
    bool ignore_eos;
    bool allow_special;        /* special tokens in user content are parsed */
    bool speculative;          /* false: never draft (serve --spec decides otherwise) */
    int logprobs;              /* -1: none; 0..20: TOKENs carry logprob and this many
                                  top_logprobs */
    enum ic_priority priority;
    int n_stop;
    char *stop[IC_STOP_MAX];   /* owned */
} ic_req_params;

/* A tool result of INFER `messages` ({"role":"tool",...}); strings owned. */
typedef struct ic_proto_tool_result {
    char *tool_call_id;
    char *content;
} ic_proto_tool_result;

/* A parsed client message; free with ic_msg_free. Strings are owned,
 * NUL-terminated and valid UTF-8 (prompt and system may hold U+0000 only
 * as "\u0000" escapes, which are refused). */
typedef struct ic_msg {
    enum ic_msg_type type;
    ic_msg_id id;
    char *token;               /* AUTH */
    char *session_id;          /* CLOSE_SESSION, INFER, ABORT, RESUME_SESSION */
    char *resume_token;        /* RESUME_SESSION */
    char *system;              /* CREATE_SESSION, NULL when absent */
    char *model;               /* CREATE_SESSION, NULL when absent (the default model);
                                  MODEL_LOAD, MODEL_UNLOAD (required) */
    char *prompt;              /* INFER */
    bool raw;                  /* INFER */
    char *grammar;             /* INFER: GBNF text constraining the answer, or NULL */
    char *json_schema;         /* INFER: a JSON Schema (as JSON text), or NULL */
    char *tools_json;          /* CREATE_SESSION, INFER: `tools` as JSON text; NULL: none
                                  (absent or []) */
    bool has_tools;            /* INFER: `tools` was given ([] too: no tools this turn) */
    char *tool_choice;         /* INFER: "auto", "none", "required", or NULL */
    ic_proto_tool_result *tool_results; /* INFER `messages`: n_tool_results */
    int n_tool_results;
    bool no_prompt;            /* INFER: `prompt` absent (allowed with messages); prompt "" */
    int reasoning;             /* INFER: -1 absent, 0 false, 1 true */
    int reasoning_budget;      /* INFER: -1 absent, else 0 ... 1,000,000 tokens */
    ic_req_params params;      /* CREATE_SESSION, INFER */
    int interval_ms;           /* SUBSCRIBE_METRICS: 0 stops, else >= 250 */
} ic_msg;

/* Why a message was refused. */
typedef struct ic_proto_error {
    enum ic_proto_code code;
    char message[160];         /* names the offending field */
    ic_msg_id id;              /* the id, when it could be read */
} ic_proto_error;

/* Parses one text frame. Returns 0 and fills *out, or IC_ERR_PARSE and
 * fills *err (code bad_json, bad_request or unknown_type). */
int ic_proto_parse(const char *text, size_t len, ic_msg *out, ic_proto_error *err);

/* Frees what ic_proto_parse allocated in msg; the struct itself is the caller's. */
void ic_msg_free(ic_msg *msg);

/* Copies params (strings included). Returns 0 or IC_ERR_NOMEM. */
int ic_req_params_copy(ic_req_params *dst, const ic_req_params *src);

/* Frees the strings of params. */
void ic_req_params_free(ic_req_params *p);

/* Fills gen with the protocol defaults (max_tokens 256, temperature 0.8,
 * top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.0, repeat_last_n 64,
 * random seed, no stop, ignore_eos false, allow_special false, priority
 * normal), then
 * session_defaults, then request (either may be NULL). Stop strings point
 * into the params they came from. Priority is capped at max_priority. */
void ic_proto_gen_params(const ic_req_params *session_defaults, const ic_req_params *request,
                         enum ic_priority max_priority, ic_gen_params *gen);

/* Reads a session id "s<N>" strictly: N is 1 to 2^64-1 in decimal digits,
 * without sign, spaces or leading zeros ("s+1", "s01", "s-1", "s1 " and
 * "s18446744073709551616" name no session). Returns 0 and *out, or
 * IC_ERR_NOT_FOUND. */
int ic_proto_session_num(const char *session_id, uint64_t *out);

/* The protocol's name of a code ("bad_json", ...). */
const char *ic_proto_code_name(enum ic_proto_code code);

/* The client-visible code for an ic_err from the scheduler. */
enum ic_proto_code ic_proto_code_from_err(int err);

/* --- server messages: each returns malloc'd JSON text, or NULL when out
 * of memory. id may be NULL (or not present): then no "id" member. --- */

typedef struct ic_hello {
    const char *version;
    bool auth_required;
    const char *model_name;
    uint64_t n_params;
    uint64_t size_bytes;
    int n_ctx_train;
    int64_t max_message_bytes;
    int max_sessions_per_client;
    int max_sessions;          /* server-wide, after the memory plan */
    int n_ctx_per_session;
    const char *cache_type_k;  /* "f16", "q8_0", "q4_0"; NULL: not shown */
    const char *cache_type_v;
    const char *flash_attn;    /* "auto", "on", "off"; NULL: not shown */
    const char *node;          /* the replica's --node-name; NULL or "": no "node" member */
    const char *const *models; /* [n_models] every model's name, the default first; */
    int n_models;              /* 0: no "models" member */
} ic_hello;

/* model_name NULL: no "model" member (before AUTH on a server with tokens). */
char *ic_proto_hello(const ic_hello *h);
char *ic_proto_auth_success(const char *client, int max_sessions, const ic_msg_id *id);
/* As ic_proto_auth_success, with the "model" object of HELLO taken from
 * model (NULL or model_name NULL: none), for servers whose HELLO had none. */
char *ic_proto_auth_success_model(const char *client, int max_sessions, const ic_hello *model,
                                  const ic_msg_id *id);
char *ic_proto_auth_failed(const char *reason, const ic_msg_id *id);
char *ic_proto_session_created(const char *session_id, int n_ctx, const ic_msg_id *id);
/* SESSION_CREATED of a durable session: with its resume_token. */
char *ic_proto_session_created_durable(const char *session_id, int n_ctx,
                                       const char *resume_token, const ic_msg_id *id);
char *ic_proto_session_resumed(const char *session_id, int n_ctx_used, const ic_msg_id *id);
/* MODEL_STATUS: the answer to MODEL_LOAD / MODEL_UNLOAD (and the body of
 * POST /admin/models/NAME/load|unload): the model and whether it will be
 * loaded once the scheduler has done it. */
char *ic_proto_model_status(const char *model, bool loaded, const ic_msg_id *id);

/* As ic_proto_session_created, with "model": the session's model, and a
 * durable session's "resume_token" (each NULL: none). */
char *ic_proto_session_created_model(const char *session_id, int n_ctx, const char *model,
                                     const char *resume_token, const ic_msg_id *id);
char *ic_proto_session_closed(const char *session_id, const char *reason, const ic_msg_id *id);
char *ic_proto_token(const char *session_id, const char *request_id, int index, const char *text,
                     size_t text_len, const ic_msg_id *id);
/* As ic_proto_token, with "logprob" and "top_logprobs" from lp (NULL:
 * none, as ic_proto_token). */
char *ic_proto_token_lp(const char *session_id, const char *request_id, int index,
                        const char *text, size_t text_len, const ic_logprobs *lp,
                        const ic_msg_id *id);
char *ic_proto_end(const char *session_id, const char *request_id, enum ic_end_reason reason,
                   const ic_gen_stats *stats, const ic_msg_id *id);
/* TOKEN with "channel" (NULL: none, as ic_proto_token): "reasoning" for
 * the text of a reasoning block. */
char *ic_proto_token_channel(const char *session_id, const char *request_id, int index,
                             const char *text, size_t text_len, const char *channel,
                             const ic_msg_id *id);
/* TOKEN with both: "channel" (NULL: none) and lp's log-probabilities
 * (NULL: none). */
char *ic_proto_token_full(const char *session_id, const char *request_id, int index,
                          const char *text, size_t text_len, const char *channel,
                          const ic_logprobs *lp, const ic_msg_id *id);
/* END of a split chat turn: parsed (NULL: as ic_proto_end) adds "content",
 * "reasoning_content" and, when the model called tools, "tool_calls"
 * ([{id, type:"function", function:{name, arguments}}], arguments a JSON
 * string as OpenAI's) with reason "tool_calls" where it would be eos or
 * stop_string. */
char *ic_proto_end_parsed(const char *session_id, const char *request_id,
                          enum ic_end_reason reason, const ic_gen_stats *stats,
                          const ic_chat_parsed *parsed, const ic_msg_id *id);
/* The one builder of ERROR messages; session_id may be NULL. (Not named
 * ic_proto_error: that is the type above, and C has one namespace for both.) */
char *ic_proto_error_msg(enum ic_proto_code code, const char *message, const char *session_id,
                         const ic_msg_id *id);

typedef struct ic_metrics_session {
    char session_id[32];
    enum ic_session_state state;
    int n_ctx_used;
} ic_metrics_session;

typedef struct ic_metrics_msg {
    int64_t timestamp_ms;
    const char *state;         /* "loading", "ready", "throttled", "sleeping" */
    ic_sched_stats engine;
    int n_gpu_layers;
    double temp_limit_c;       /* the thermal guard's limit; 0: off */
    const ic_gpu_reading *gpus;
    int n_gpus;
    double cpu_pct;
    int64_t ram_used_bytes;
    int64_t ram_total_bytes;
    const ic_metrics_session *sessions;
    int n_sessions;
} ic_metrics_msg;

char *ic_proto_metrics(const ic_metrics_msg *m, const ic_msg_id *id);

/* HTTP bodies (compact JSON, malloc'd; NULL when out of memory):
 * {"status":status,"state":state} for /health, {"error":message} otherwise. */
char *ic_proto_http_health(const char *status, const char *state);
char *ic_proto_http_error(const char *message);

#endif
