/* engine.h - the model and its inference context; the only module that
 * includes llama.h.
 *
 * An ic_engine holds one loaded model, one llama context with n_seq_max
 * sequences, and one token batch. The thread that creates it (the scheduler
 * thread in `serve`, the main thread in `generate`) is its only user, with
 * one exception: the model facts in ic_engine_info are immutable after
 * creation and any thread may read a copy of them.
 */
#ifndef IC_ENGINE_H
#define IC_ENGINE_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "plan.h" /* ic_kv_type */

typedef struct ic_engine ic_engine;
typedef struct ic_sampler ic_sampler;
typedef int32_t ic_token;

/* --flash-attn: auto lets llama.cpp decide (it turns flash attention on
 * when the backend supports it, and always for a quantised V cache). */
enum { IC_FLASH_ATTN_AUTO = -1, IC_FLASH_ATTN_OFF = 0, IC_FLASH_ATTN_ON = 1 };

/* "auto", "on", "off" -> *out; -1 for anything else. */
int ic_flash_attn_parse(const char *name, int *out);
const char *ic_flash_attn_name(int mode);

/* NULL when the combination can be created, else why not (one line):
 * a quantised V cache needs flash attention, so --flash-attn off with
 * q8_0/q4_0 V is refused before any load. */
const char *ic_engine_kv_check(ic_kv_type type_k, ic_kv_type type_v, int flash_attn);

typedef struct ic_engine_opts {
    const char *model_path;
    int n_gpu_layers;        /* layers offloaded to a GPU; -1 = all */
    int n_threads;           /* 0 = number of online CPUs */
    uint32_t n_ctx_tokens;   /* whole KV cache, all sequences together */
    uint32_t n_seq_max;      /* sequences the context can hold at once */
    uint32_t n_batch_tokens; /* most tokens in one decode */
    bool kv_unified;         /* one KV buffer shared by all sequences */
    ic_kv_type type_k, type_v; /* KV cache element types (f16 default) */
    int flash_attn;          /* IC_FLASH_ATTN_AUTO, _OFF or _ON */
    bool progress;           /* draw a load progress bar on stderr */
    /* Called now and then while the model loads (on the loading thread),
     * e.g. to keep a watchdog fed through a long load. NULL: none. */
    void (*load_tick)(void *ud);
    void *load_tick_ud;
} ic_engine_opts;

typedef struct ic_engine_info {
    char name[128];          /* general.name, else the model description */
    uint64_t n_params;
    uint64_t size_bytes;     /* tensor bytes, as llama.cpp reports */
    uint64_t file_bytes;     /* size of the GGUF file */
    int n_ctx_train_tokens;
    int n_layer;
    int n_vocab;
    bool has_chat_template;
    int max_token_bytes;     /* longest token text: bytes / this <= tokens */
    uint32_t n_ctx_tokens;   /* actual KV cache size of the context */
    uint32_t n_seq_max;
    uint32_t n_batch_tokens;
    int n_gpu_layers;        /* offloaded, as llama counts them (0..n_layer+1) */
    bool kv_unified;
    ic_kv_type type_k, type_v; /* the context's KV cache types */
    int flash_attn;          /* as asked (auto, off, on) */
} ic_engine_info;

typedef struct ic_chat_msg {
    const char *role;        /* "system", "user" or "assistant" */
    const char *content;
} ic_chat_msg;

/* An additive bias on one token's logit (OpenAI's logit_bias). */
typedef struct ic_logit_bias {
    ic_token token;
    float bias;
} ic_logit_bias;

typedef struct ic_sample_params {
    float temperature;       /* 0 = greedy */
    int top_k;               /* <= 0 disables */
    float top_p;             /* 1 disables */
    float min_p;             /* 0 disables */
    float repeat_penalty;    /* 1 disables */
    int repeat_last_n_tokens;
    /* OpenAI's penalties, over the same last repeat_last_n_tokens: the
     * logit of a token seen c times there drops by c * frequency_penalty +
     * presence_penalty (c > 0). 0 disables. */
    float presence_penalty;
    float frequency_penalty;
    /* Added to the logits before anything else; tokens outside the
     * vocabulary are skipped (callers check: see ic_sched_infer). Borrowed
     * by ic_engine_sampler_create*, which copy it. NULL: none. */
    const ic_logit_bias *logit_bias;
    int n_logit_bias;
    uint32_t seed;
    bool ban_eog;            /* never sample end-of-generation tokens */
} ic_sample_params;

/* A lazy grammar's trigger: it starts constraining once the output
 * matches. pattern: a regex matched against the output from its start (the
 * grammar is fed the text from the first capture group on). word: the
 * literal text, or NULL; a word that is one token of the vocabulary
 * triggers on that token instead of the pattern. */
typedef struct ic_grammar_trigger {
    const char *word;
    const char *pattern;
} ic_grammar_trigger;

/* A GBNF constraint on sampling; every pointer borrowed for the call. */
typedef struct ic_grammar {
    const char *gbnf;                   /* NULL or "": no constraint */
    bool lazy;                          /* idle until a trigger matches */
    const ic_grammar_trigger *triggers; /* n_triggers (lazy only) */
    size_t n_triggers;
    /* Text the grammar consumes before the first sampled token (the part
     * of the answer the prompt already holds); NULL: none. */
    const char *prefill;
} ic_grammar;

/* Defaults: 1 sequence, 4096 tokens of context, batch 512, CPU only. */
ic_engine_opts ic_engine_opts_default(void);

/* The protocol's sampling defaults (temperature 0.8, top_k 40, ...). */
ic_sample_params ic_sample_params_default(void);

/* True when p's penalties (repeat, frequency or presence) are on: the
 * sampler then wants the prompt's last tokens (ic_engine_sampler_accept). */
bool ic_sample_params_penalize(const ic_sample_params *p);

/* True when this llama.cpp build can offload layers to a GPU. */
bool ic_engine_supports_gpu(void);

/* Initialises llama.cpp's backends and routes its logging into ic_log.
 * Call once per process before ic_engine_create. */
void ic_engine_global_init(void);

/* Loads the model and creates its context. Returns 0 and *out, or
 * IC_ERR_IO (missing or unreadable file), IC_ERR_MODEL (not a GGUF model,
 * truncated), IC_ERR_CONTEXT or IC_ERR_NOMEM; *errmsg (static) says why. */
int ic_engine_create(const ic_engine_opts *opts, ic_engine **out, const char **errmsg);

/* Frees everything; NULL does nothing. */
void ic_engine_destroy(ic_engine *e);

/* Copies the model facts. */
void ic_engine_get_info(const ic_engine *e, ic_engine_info *out);

/* Tokenizes text. add_bos adds the model's BOS when the model wants one;
 * special parses control tokens such as <|im_end|>. Returns 0 and a
 * malloc'd array (caller frees) in *tokens, or IC_ERR_TOKENIZE/NOMEM. */
int ic_engine_tokenize(const ic_engine *e, const char *text, size_t len, bool add_bos,
                       bool special, ic_token **tokens, int *n_tokens);

/* Appends the bytes of one token (may be a partial UTF-8 character) to
 * out, however long the piece. Control tokens give no bytes. Returns 0,
 * IC_ERR_INVAL (not a token of this vocabulary) or IC_ERR_NOMEM. */
int ic_engine_token_piece(const ic_engine *e, ic_token tok, ic_buf *out);

/* True for end-of-generation tokens (EOS, EOT, ...). */
bool ic_engine_token_is_eog(const ic_engine *e, ic_token tok);

/* Formats a conversation with the model's chat template, or with the
 * plain-text fallback when it has none. The template runs in llama.cpp's
 * Jinja engine (chat.h), so the text is llama-server's for the same model;
 * a template Jinja refuses goes through llama_chat_apply_template.
 * add_assistant opens the assistant's turn. Returns 0 and a malloc'd
 * string in *out, or IC_ERR_TEMPLATE (the template raised an error, e.g.
 * roles out of the order it wants) / IC_ERR_NOMEM. */
int ic_engine_chat_format(const ic_engine *e, const ic_chat_msg *msgs, size_t n,
                          bool add_assistant, char **out);

/* Formats a conversation (as ic_engine_chat_format) and tokenizes it with
 * the model's BOS. Control tokens such as <|im_start|> are parsed only in
 * the template's own text: a message's content is plain text, so a user
 * cannot type a role marker (allow_special: parsed in content too, as
 * llama.cpp's server does). Returns 0 and a malloc'd array (caller frees),
 * IC_ERR_INVAL (a content holding control-token text that the template
 * rewrote, so it cannot be told apart), IC_ERR_TEMPLATE, IC_ERR_TOKENIZE or
 * IC_ERR_NOMEM. */
int ic_engine_chat_tokenize(const ic_engine *e, const ic_chat_msg *msgs, size_t n,
                            bool add_assistant, bool allow_special, ic_token **toks,
                            int *n_toks);

/* As ic_engine_chat_tokenize (the assistant's turn opened), for messages
 * with tool calls, tool results and earlier reasoning (chat.h's
 * ic_chat_message), rendered with opts (tools, tool_choice, reasoning)
 * through the model's Jinja template. *prompt gets the whole render
 * (grammar, triggers, the output parser, thinking tags; free it with
 * ic_chat_prompt_free). Returns 0, IC_ERR_INVAL with the reason in why
 * (bad tools, a model whose template does not run in Jinja, control-token
 * text the template rewrote), IC_ERR_TEMPLATE (why: the template's error),
 * IC_ERR_TOKENIZE or IC_ERR_NOMEM. */
struct ic_chat_message;
struct ic_chat_render_opts;
struct ic_chat_prompt;
int ic_engine_chat_render(const ic_engine *e, const struct ic_chat_message *msgs, size_t n,
                          const struct ic_chat_render_opts *opts, bool allow_special,
                          ic_token **toks, int *n_toks, struct ic_chat_prompt **prompt,
                          char *why, size_t why_size);

/* Empties the batch. */
void ic_engine_batch_clear(ic_engine *e);

/* Adds a token of sequence seq at position pos. Returns its index in the
 * batch, or IC_ERR_INVAL when the batch is full. With logits, the decode
 * computes this token's output so it can be sampled. */
int ic_engine_batch_add(ic_engine *e, ic_token tok, int32_t pos, int seq, bool logits);

/* Tokens in the batch now. */
int ic_engine_batch_size(const ic_engine *e);

/* Runs one llama_decode over the batch. Returns 0, IC_ERR_CONTEXT_FULL
 * (no KV slot; nothing was changed) or IC_ERR_DECODE. */
int ic_engine_decode(ic_engine *e);

/* Removes positions [p0, p1) of a sequence from the KV cache (p1 < 0: to
 * the end). */
void ic_engine_seq_rm(ic_engine *e, int seq, int32_t p0, int32_t p1);

/* Makes positions [0, n) of src the whole content of dst, which must be
 * empty: a unified KV cache shares the cells (no copy); a cache split per
 * sequence copies src's whole stream at the next decode (one memcpy of the
 * stream, far cheaper than decoding the tokens again) and drops the rest. */
void ic_engine_seq_share(ic_engine *e, int src, int dst, int32_t n);

/* Creates a sampler for params. Returns 0 and *out, or IC_ERR_NOMEM. */
int ic_engine_sampler_create(const ic_engine *e, const ic_sample_params *p, ic_sampler **out);

/* As ic_engine_sampler_create, constrained by grammar g (NULL or no gbnf:
 * unconstrained). Every sampled token is one the grammar allows (see
 * ic_engine_sample); ban_eog is ignored under a strict grammar (it must be
 * able to end); a grammar no token can continue ends the answer with EOG. Returns 0 and *out, or
 * IC_ERR_INVAL with the reason in err (the grammar does not compile, the
 * prefill does not fit it), or IC_ERR_NOMEM. Trigger patterns must be valid
 * ECMAScript regexes (chat.cpp checks the ones it hands out). Any thread while the engine lives: it only reads the
 * vocabulary. */
int ic_engine_sampler_create_constrained(const ic_engine *e, const ic_sample_params *p,
                                         const ic_grammar *g, ic_sampler **out, char *err,
                                         size_t err_size);

/* The llama.cpp model, for chat.cpp, the one other file on llama.cpp's
 * (and common's) headers; read-only, valid while the engine lives. */
struct llama_model;
const struct llama_model *ic_engine_llama_model(const ic_engine *e);

/* Frees a sampler; NULL does nothing. */
void ic_engine_sampler_destroy(ic_sampler *s);

/* Feeds a token the sampler did not pick (prompt history) into its
 * repetition state. */
void ic_engine_sampler_accept(ic_sampler *s, ic_token tok);

/* Feeds a token chosen instead of a sampled one (a forced end of the
 * reasoning block) into the sampler's grammar, when it has one, and its
 * repetition state, as ic_engine_sample does with the token it picks.
 * False (nothing fed) when the grammar does not allow the token. */
bool ic_engine_sampler_accept_forced(ic_sampler *s, ic_token tok);

/* Samples (and accepts) the next token from the output of batch index idx. */
ic_token ic_engine_sample(ic_engine *e, ic_sampler *s, int idx);

/* Log-probabilities (OpenAI's logprobs), from the model's raw logits:
 * the log-softmax over the whole vocabulary before any sampler (logit
 * bias, penalties, truncation, temperature, grammar), as llama-server's
 * default (post_sampling_probs off). */
#define IC_LOGPROBS_MAX 20

typedef struct ic_token_logprob {
    ic_token token;
    float logprob;
} ic_token_logprob;

/* The log-softmax of logits[0..n_vocab) at tok into *tok_logprob (<= 0;
 * -INFINITY for a token out of range), and the n_top (clamped to 0..
 * IC_LOGPROBS_MAX and n_vocab) most likely tokens in top, most likely
 * first (equal logits: lower id first). One pass keeps the n_top best in
 * a small sorted array (no sort of the vocabulary), one more sums the
 * exponents. Returns how many went into top. Pure: any thread. */
int ic_logprobs_compute(const float *logits, int n_vocab, ic_token tok, int n_top,
                        float *tok_logprob, ic_token_logprob *top);

/* ic_logprobs_compute over the raw logits of batch index idx of the last
 * decode (valid until the next decode). */
int ic_engine_logprobs(ic_engine *e, int idx, ic_token tok, int n_top, float *tok_logprob,
                       ic_token_logprob *top);

/* The raw logits of batch index idx of the last decode (n_vocab floats). */
const float *ic_engine_logits(ic_engine *e, int idx);

/* The vocabulary's size. */
int ic_engine_n_vocab(const ic_engine *e);

/* Copies a sequence's KV state (its cells and positions) into a malloc'd
 * host buffer: *data (caller frees) of *len bytes; an empty sequence gives
 * a small header. Returns 0 or IC_ERR_NOMEM. */
int ic_engine_seq_state_save(ic_engine *e, int seq, uint8_t **data, size_t *len);

/* Puts a state saved by ic_engine_seq_state_save (from an engine of the
 * same model and context shape) into sequence seq, which must be empty.
 * Returns 0, or IC_ERR_CONTEXT when the state does not fit or match. */
int ic_engine_seq_state_restore(ic_engine *e, int seq, const uint8_t *data, size_t len);

/* The options the engine was created with; model_path points into the
 * engine (valid while it lives). */
void ic_engine_get_opts(const ic_engine *e, ic_engine_opts *out);

/* A GPU as llama.cpp's backends see it. */
typedef struct ic_engine_device {
    char name[96];
    int64_t free_bytes;
    int64_t total_bytes;
} ic_engine_device;

/* Lists the GPU devices of this build's backends (none on a CPU build),
 * with their free memory now. Returns how many were written (at most cap).
 * After ic_engine_global_init; any thread that owns no engine call. */
int ic_engine_gpu_devices(ic_engine_device *out, int cap);

#endif
