/* engine_impl.h - the engine's private struct, shared by engine.c (model,
 * context, batch, samplers) and engine_chat.c (chat formats and the chat
 * tokenizer). Not for any other module: they see only engine.h.
 *
 * Thread: as engine.h says.
 */
#ifndef IC_ENGINE_IMPL_H
#define IC_ENGINE_IMPL_H

#include "engine.h"
#include "chat.h"

#include <llama.h>

#include <stdbool.h>
#include <stdint.h>

struct ic_engine {
    struct llama_model *model;
    struct llama_context *ctx;
    const struct llama_vocab *vocab;
    struct llama_batch batch;     /* n_batch_tokens slots, one seq id each */
    int batch_cap_tokens;
    ic_kv_type type_k, type_v;    /* the context's KV cache types */
    int flash_attn;               /* IC_FLASH_ATTN_*, as asked */
    const char *chat_template;    /* owned by the model; NULL = fallback */
    /* The same template through llama.cpp's Jinja engine (chat.h), as
     * llama-server renders it; NULL when the GGUF has none (plain-text
     * fallback) or Jinja refuses it (then llama_chat_apply_template). */
    ic_chat *jinja;
    struct llama_logit_bias *eog_bias; /* -inf for every EOG token */
    int n_eog;
    struct special *specials;     /* control tokens, longest text first */
    int n_specials;
    int max_token_bytes;          /* longest token text in the vocabulary */
    uint8_t special_first[32];    /* bitmap: bytes that start a control token's text */
    ic_engine_info info;
    ic_engine_opts opts;          /* as created; model_path is model_path_copy */
    char *model_path_copy;
};

/* A control token as text: where the template's own text names one, the
 * chat tokenizer puts the token in (see ic_engine_chat_tokenize). */
struct special {
    ic_token id;
    const char *text;             /* owned by the vocabulary */
    int len;
    bool lstrip, rstrip;          /* it swallows whitespace before / after it */
};

#endif
