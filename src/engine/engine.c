/* engine.c - model, context, batch, tokens, chat format and samplers on
 * llama.cpp's C API. The only file that includes llama.h.
 *
 * Thread: whichever thread created the engine (see engine.h). Owns the
 * llama_model, the llama_context and the llama_batch.
 */
#include "engine_impl.h"
#include "chat.h"
#include "buf.h"
#include "err.h"
#include "log.h"

#include <llama.h>

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>



struct ic_sampler {
    struct llama_sampler *chain;
    struct llama_sampler *grammar; /* NULL: unconstrained; not in the chain */
    llama_token_data *cand;        /* n_vocab candidates, when grammar */
};

ic_engine_opts ic_engine_opts_default(void)
{
    return (ic_engine_opts){
        .model_path = NULL,
        .n_gpu_layers = 0,
        .n_threads = 0,
        .n_ctx_tokens = 4096,
        .n_seq_max = 1,
        .n_batch_tokens = 512,
        .kv_unified = false,
        .type_k = IC_KV_F16,
        .type_v = IC_KV_F16,
        .flash_attn = IC_FLASH_ATTN_AUTO,
        .progress = false,
    };
}

int ic_flash_attn_parse(const char *name, int *out)
{
    static const struct { const char *name; int mode; } modes[] = {
        { "auto", IC_FLASH_ATTN_AUTO }, { "off", IC_FLASH_ATTN_OFF }, { "on", IC_FLASH_ATTN_ON } };
    for (size_t i = 0; name && i < sizeof modes / sizeof modes[0]; i++)
        if (strcmp(name, modes[i].name) == 0) {
            *out = modes[i].mode;
            return 0;
        }
    return -1;
}

const char *ic_flash_attn_name(int mode)
{
    return mode == IC_FLASH_ATTN_ON ? "on" : mode == IC_FLASH_ATTN_OFF ? "off" : "auto";
}

const char *ic_engine_kv_check(ic_kv_type type_k, ic_kv_type type_v, int flash_attn)
{
    (void)type_k;
    if (type_v != IC_KV_F16 && flash_attn == IC_FLASH_ATTN_OFF)
        return "a quantised V cache (--cache-type-v q8_0/q4_0) needs flash attention: "
               "use --flash-attn auto or on, or --cache-type-v f16";
    return NULL;
}

static enum ggml_type ggml_kv_type(ic_kv_type t)
{
    return t == IC_KV_Q8_0 ? GGML_TYPE_Q8_0 : t == IC_KV_Q4_0 ? GGML_TYPE_Q4_0 : GGML_TYPE_F16;
}

ic_sample_params ic_sample_params_default(void)
{
    return (ic_sample_params){
        .temperature = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.0f,
        .repeat_last_n_tokens = 64,
        .seed = LLAMA_DEFAULT_SEED,
    };
}

/* The last error line llama.cpp logged on this thread (a grammar that
 * does not compile says why only there). */
static _Thread_local char last_llama_error[256];

/* llama.cpp logs in fragments (GGML_LOG_LEVEL_CONT continues a line); join
 * them per thread and hand whole lines to ic_log at debug level, so that a
 * failed load prints our one clear line and not llama's internals. */
static void llama_log_to_ic(enum ggml_log_level level, const char *text, void *ud)
{
    (void)ud;
    static _Thread_local char line[1024];
    static _Thread_local size_t len;
    static _Thread_local enum ggml_log_level line_level;
    if (len == 0 && level != GGML_LOG_LEVEL_CONT)
        line_level = level;
    for (const char *p = text; *p; p++) {
        if (*p == '\n' || len == sizeof line - 1) {
            line[len] = '\0';
            if (len)
                ic_log_debug("llama: %s", line);
            if (len && line_level == GGML_LOG_LEVEL_ERROR) {
                size_t n = len < sizeof last_llama_error ? len : sizeof last_llama_error - 1;
                memcpy(last_llama_error, line, n);
                last_llama_error[n] = '\0';
            }
            len = 0;
            if (*p == '\n')
                continue;
        }
        line[len++] = *p;
    }
}

bool ic_engine_supports_gpu(void) { return llama_supports_gpu_offload(); }

void ic_engine_global_init(void)
{
    llama_log_set(llama_log_to_ic, NULL);
    llama_backend_init();
}

/* What the load progress callback does: a bar on a terminal, a tick. */
typedef struct load_progress {
    bool bar;
    int last_pct;
    void (*tick)(void *ud);
    void *tick_ud;
} load_progress;

static bool on_load_progress(float progress, void *ud)
{
    load_progress *lp = ud;
    if (lp->tick)
        lp->tick(lp->tick_ud);
    int pct = (int)(progress * 100.0f);
    if (!lp->bar || pct == lp->last_pct)
        return true;
    lp->last_pct = pct;
    char bar[41];
    int fill = pct * 40 / 100;
    for (int i = 0; i < 40; i++)
        bar[i] = i < fill ? '#' : ' ';
    bar[40] = '\0';
    fprintf(stderr, "\rloading model [%s] %3d%%%s", bar, pct, pct >= 100 ? "\n" : "");
    fflush(stderr);
    return true;
}

/* Checks the file before llama.cpp sees it, so that the common mistakes get
 * a precise message. */
static int check_model_file(const char *path, uint64_t *size, const char **errmsg)
{
    struct stat st;
    if (!path || stat(path, &st) != 0) {
        *errmsg = errno == EACCES ? "model file is not readable" : "model file does not exist";
        return IC_ERR_IO;
    }
    if (!S_ISREG(st.st_mode)) {
        *errmsg = "model path is not a regular file";
        return IC_ERR_IO;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        *errmsg = "model file is not readable";
        return IC_ERR_IO;
    }
    char magic[4] = {0};
    size_t n = fread(magic, 1, 4, f);
    fclose(f);
    if (n != 4 || memcmp(magic, "GGUF", 4) != 0) {
        *errmsg = "model file is not a GGUF file (bad magic)";
        return IC_ERR_MODEL;
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

static void fill_info(ic_engine *e, const ic_engine_opts *opts, uint64_t file_bytes)
{
    ic_engine_info *in = &e->info;
    if (llama_model_meta_val_str(e->model, "general.name", in->name, sizeof in->name) < 0)
        llama_model_desc(e->model, in->name, sizeof in->name);
    in->n_params = llama_model_n_params(e->model);
    in->size_bytes = llama_model_size(e->model);
    in->file_bytes = file_bytes;
    in->n_ctx_train_tokens = llama_model_n_ctx_train(e->model);
    in->n_layer = llama_model_n_layer(e->model);
    in->n_vocab = llama_vocab_n_tokens(e->vocab);
    in->has_chat_template = e->chat_template != NULL;
    in->max_token_bytes = e->max_token_bytes;
    in->n_ctx_tokens = llama_n_ctx(e->ctx);
    in->n_seq_max = llama_n_seq_max(e->ctx);
    in->type_k = e->type_k;
    in->type_v = e->type_v;
    in->flash_attn = e->flash_attn;
    in->n_batch_tokens = llama_n_batch(e->ctx);
    /* llama's count: the output layer and the last n-1 repeating layers;
     * n_layer + 1 (or -1) is everything. 0 when this build cannot offload. */
    int all = in->n_layer + 1, n = opts->n_gpu_layers;
    in->n_gpu_layers = !llama_supports_gpu_offload() ? 0 : n < 0 || n > all ? all : n;
    in->kv_unified = opts->kv_unified;
}

/* Lists the end-of-generation tokens once, for samplers that ban them. */
static int collect_eog(ic_engine *e)
{
    int n_vocab = llama_vocab_n_tokens(e->vocab), n = 0;
    for (int t = 0; t < n_vocab; t++)
        n += llama_vocab_is_eog(e->vocab, t);
    e->eog_bias = calloc(n ? (size_t)n : 1, sizeof *e->eog_bias);
    if (!e->eog_bias)
        return IC_ERR_NOMEM;
    for (int t = 0; t < n_vocab; t++) {
        if (llama_vocab_is_eog(e->vocab, t))
            e->eog_bias[e->n_eog++] = (struct llama_logit_bias){.token = t, .bias = -INFINITY};
    }
    return 0;
}

static int cmp_special(const void *a, const void *b)
{
    const struct special *x = a, *y = b;
    return y->len - x->len;
}

/* The tokens llama_tokenize parses only with parse_special: control and
 * unknown ones (user-defined tokens it always parses). */
static int collect_specials(ic_engine *e)
{
    int n_vocab = llama_vocab_n_tokens(e->vocab), n = 0;
    const int want = LLAMA_TOKEN_ATTR_CONTROL | LLAMA_TOKEN_ATTR_UNKNOWN;
    for (int t = 0; t < n_vocab; t++)
        n += (llama_vocab_get_attr(e->vocab, t) & want) != 0;
    e->specials = calloc(n ? (size_t)n : 1, sizeof *e->specials);
    if (!e->specials)
        return IC_ERR_NOMEM;
    for (int t = 0; t < n_vocab; t++) {
        const char *any = llama_vocab_get_text(e->vocab, t);
        int len = any ? (int)strlen(any) : 0;
        if (len > e->max_token_bytes)
            e->max_token_bytes = len;
        int attr = (int)llama_vocab_get_attr(e->vocab, t);
        const char *text = (attr & want) ? llama_vocab_get_text(e->vocab, t) : NULL;
        if (!text || !*text)
            continue;
        e->specials[e->n_specials++] = (struct special){
            .id = t, .text = text, .len = (int)strlen(text),
            .lstrip = (attr & LLAMA_TOKEN_ATTR_LSTRIP) != 0,
            .rstrip = (attr & LLAMA_TOKEN_ATTR_RSTRIP) != 0};
        unsigned char c = (unsigned char)text[0];
        e->special_first[c / 8] |= (uint8_t)(1u << (c % 8));
    }
    qsort(e->specials, (size_t)e->n_specials, sizeof *e->specials, cmp_special);
    return 0;
}

/* The model's attention head size (key_length or value_length in its
 * metadata; absent: n_embd / n_head, as llama.cpp defaults it). */
static int head_dim(const ic_engine *e, const char *which)
{
    char arch[64], key[128], val[32];
    if (llama_model_meta_val_str(e->model, "general.architecture", arch, sizeof arch) > 0) {
        snprintf(key, sizeof key, "%s.attention.%s", arch, which);
        if (llama_model_meta_val_str(e->model, key, val, sizeof val) > 0 && atoi(val) > 0)
            return atoi(val);
    }
    int n_head = llama_model_n_head(e->model);
    return n_head > 0 ? llama_model_n_embd(e->model) / n_head : 0;
}

static int create_context(ic_engine *e, const ic_engine_opts *opts, const char **errmsg)
{
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = opts->n_ctx_tokens;
    cp.n_batch = opts->n_batch_tokens;
    cp.n_ubatch = opts->n_batch_tokens;
    cp.n_seq_max = opts->n_seq_max;
    int threads = opts->n_threads > 0 ? opts->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.kv_unified = opts->kv_unified;
    cp.type_k = ggml_kv_type(opts->type_k);
    cp.type_v = ggml_kv_type(opts->type_v);
    cp.flash_attn_type = opts->flash_attn == IC_FLASH_ATTN_ON    ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                         : opts->flash_attn == IC_FLASH_ATTN_OFF ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                                                                 : LLAMA_FLASH_ATTN_TYPE_AUTO;
    cp.no_perf = true;
    const char *why = ic_engine_kv_check(opts->type_k, opts->type_v, opts->flash_attn);
    if (why) {
        *errmsg = why;
        return IC_ERR_INVAL;
    }
    /* llama.cpp needs head sizes that are whole blocks of a quantised type */
    if (head_dim(e, "key_length") % ic_kv_type_block(opts->type_k) != 0 ||
        head_dim(e, "value_length") % ic_kv_type_block(opts->type_v) != 0) {
        *errmsg = "the model's attention head size is not a multiple of 32, which a q8_0/q4_0 "
                  "KV cache needs: use --cache-type-k f16 --cache-type-v f16";
        return IC_ERR_INVAL;
    }
    e->ctx = llama_init_from_model(e->model, cp);
    if (!e->ctx) {
        *errmsg = opts->type_k != IC_KV_F16 || opts->type_v != IC_KV_F16
                      ? "could not create the inference context with a quantised KV cache (not enough "
                        "memory, or the backend lacks flash attention for it?)"
                      : "could not create the inference context (not enough memory for the KV cache?)";
        return IC_ERR_CONTEXT;
    }
    e->type_k = opts->type_k;
    e->type_v = opts->type_v;
    e->flash_attn = opts->flash_attn;
    e->batch_cap_tokens = (int)llama_n_batch(e->ctx);
    e->batch = llama_batch_init(e->batch_cap_tokens, 0, 1);
    return 0;
}

int ic_engine_create(const ic_engine_opts *opts, ic_engine **out, const char **errmsg)
{
    static const char *unused;
    if (!errmsg)
        errmsg = &unused;
    *out = NULL;
    uint64_t file_bytes = 0;
    int rc = check_model_file(opts->model_path, &file_bytes, errmsg);
    if (rc < 0)
        return rc;
    ic_engine *e = calloc(1, sizeof *e);
    if (!e) {
        *errmsg = "out of memory";
        return IC_ERR_NOMEM;
    }
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = opts->n_gpu_layers;
    load_progress lp = {.bar = opts->progress && isatty(STDERR_FILENO), .last_pct = -1,
                        .tick = opts->load_tick, .tick_ud = opts->load_tick_ud};
    if (lp.bar || lp.tick) {
        mp.progress_callback = on_load_progress;
        mp.progress_callback_user_data = &lp;
    }
    e->model = llama_model_load_from_file(opts->model_path, mp);
    if (!e->model) {
        *errmsg = "could not load the model (truncated, corrupt or unsupported GGUF)";
        free(e);
        return IC_ERR_MODEL;
    }
    e->vocab = llama_model_get_vocab(e->model);
    e->chat_template = llama_model_chat_template(e->model, NULL);
    rc = create_context(e, opts, errmsg);
    if (rc == 0 && (collect_eog(e) < 0 || collect_specials(e) < 0)) {
        *errmsg = "out of memory";
        rc = IC_ERR_NOMEM;
    }
    char why[256];
    if (rc == 0 && e->chat_template && ic_chat_create(e, NULL, &e->jinja, why, sizeof why) < 0)
        ic_log_warn("chat template: Jinja refuses it (%s); using llama.cpp's built-in formats", why);
    if (rc < 0) {
        ic_engine_destroy(e);
        return rc;
    }
    fill_info(e, opts, file_bytes);
    e->opts = *opts;
    e->model_path_copy = strdup(opts->model_path);
    if (!e->model_path_copy) {
        ic_engine_destroy(e);
        *errmsg = "out of memory";
        return IC_ERR_NOMEM;
    }
    e->opts.model_path = e->model_path_copy;
    *out = e;
    return 0;
}

void ic_engine_destroy(ic_engine *e)
{
    if (!e)
        return;
    if (e->ctx) {
        llama_batch_free(e->batch);
        llama_free(e->ctx);
    }
    ic_chat_destroy(e->jinja);
    llama_model_free(e->model);
    free(e->eog_bias);
    free(e->specials);
    free(e->model_path_copy);
    free(e);
}

void ic_engine_get_info(const ic_engine *e, ic_engine_info *out) { *out = e->info; }

int ic_engine_tokenize(const ic_engine *e, const char *text, size_t len, bool add_bos,
                       bool special, ic_token **tokens, int *n_tokens)
{
    *tokens = NULL;
    *n_tokens = 0;
    if (len > INT32_MAX / 2)
        return IC_ERR_TOKENIZE;
    bool bos = add_bos && llama_vocab_get_add_bos(e->vocab);
    /* A token covers at least one byte, plus BOS/EOS. */
    int cap = (int)len + 2;
    ic_token *buf = malloc((size_t)cap * sizeof *buf);
    if (!buf)
        return IC_ERR_NOMEM;
    int n = llama_tokenize(e->vocab, text, (int32_t)len, buf, cap, bos, special);
    if (n < 0) {
        free(buf);
        return IC_ERR_TOKENIZE;
    }
    *tokens = buf;
    *n_tokens = n;
    return 0;
}

int ic_engine_token_piece(const ic_engine *e, ic_token tok, ic_buf *out)
{
    if (tok < 0 || tok >= e->info.n_vocab)
        return IC_ERR_INVAL;
    char small[256];
    int n = llama_token_to_piece(e->vocab, tok, small, (int32_t)sizeof small, 0, false);
    if (n >= 0)
        return ic_buf_append(out, small, (size_t)n);
    /* Longer than any usual piece: -n is the length it needs. */
    char *big = malloc((size_t)-n);
    if (!big)
        return IC_ERR_NOMEM;
    int m = llama_token_to_piece(e->vocab, tok, big, -n, 0, false);
    int rc = m < 0 ? IC_ERR_INVAL : ic_buf_append(out, big, (size_t)m);
    free(big);
    return rc;
}

bool ic_engine_token_is_eog(const ic_engine *e, ic_token tok)
{
    return llama_vocab_is_eog(e->vocab, tok);
}

void ic_engine_batch_clear(ic_engine *e) { e->batch.n_tokens = 0; }

int ic_engine_batch_size(const ic_engine *e) { return e->batch.n_tokens; }

int ic_engine_batch_add(ic_engine *e, ic_token tok, int32_t pos, int seq, bool logits)
{
    struct llama_batch *b = &e->batch;
    int i = b->n_tokens;
    if (i >= e->batch_cap_tokens)
        return IC_ERR_INVAL;
    b->token[i] = tok;
    b->pos[i] = pos;
    b->n_seq_id[i] = 1;
    b->seq_id[i][0] = seq;
    b->logits[i] = logits;
    b->n_tokens++;
    return i;
}

int ic_engine_decode(ic_engine *e)
{
    int rc = llama_decode(e->ctx, e->batch);
    if (rc == 0)
        return 0;
    if (rc == 1)
        return IC_ERR_CONTEXT_FULL;
    ic_log_error("llama_decode failed with code %d on a batch of %d tokens", rc,
                 e->batch.n_tokens);
    return IC_ERR_DECODE;
}

void ic_engine_seq_rm(ic_engine *e, int seq, int32_t p0, int32_t p1)
{
    llama_memory_seq_rm(llama_get_memory(e->ctx), seq, p0, p1);
}

void ic_engine_seq_share(ic_engine *e, int src, int dst, int32_t n)
{
    llama_memory_t mem = llama_get_memory(e->ctx);
    if (e->info.kv_unified) {
        llama_memory_seq_cp(mem, src, dst, 0, n);
        return;
    }
    /* Across streams llama.cpp copies only whole buffers (a partial range
     * asserts): copy everything, then drop what lies past n. */
    llama_memory_seq_cp(mem, src, dst, -1, -1);
    llama_memory_seq_rm(mem, dst, n, -1);
}

/* Feeds the grammar the tokens of text, each checked first: accepting a
 * token the grammar forbids throws inside llama.cpp. As common_sampler_init,
 * a leading space the tokenizer adds before a special token is skipped. */
/* Tokens whose pieces spell exactly text, for feeding a grammar: text is
 * tokenized behind a prefix (none, then newlines) and the tokens after the
 * prefix's are kept when their pieces make text. The prefix absorbs what a
 * tokenizer adds in front (an SPM vocabulary's space): without it,
 * "<|im_start|>" on a vocabulary that lacks the token starts with the
 * piece " <", which no grammar for "<|im_start|>" accepts (llama-server
 * skips such a piece, and then misses the "<"). Returns 0 and *toks
 * (malloc'd) from *from on, or an ic_err. */
static int spelling_tokens(const ic_engine *e, const char *text, ic_token **toks, int *n,
                           int *from)
{
    static const char *const prefixes[] = { "", "\n", "\n\n" };
    size_t tlen = strlen(text);
    for (size_t p = 0; p < sizeof prefixes / sizeof *prefixes; p++) {
        ic_buf in = {0}, spelled = {0};
        int rc = ic_buf_append(&in, prefixes[p], strlen(prefixes[p]));
        rc = rc ? rc : ic_buf_append(&in, text, tlen);
        rc = rc ? rc : ic_engine_tokenize(e, in.data, in.len, false, true, toks, n);
        ic_buf_free(&in);
        if (rc < 0)
            return rc;
        size_t *start = malloc(((size_t)*n + 1) * sizeof *start);
        for (int i = 0; start && i < *n && rc == 0; i++) {
            char piece[256];
            int np = llama_token_to_piece(e->vocab, (*toks)[i], piece, sizeof piece, 0, true);
            start[i] = spelled.len;
            rc = np < 0 ? IC_ERR_INVAL : ic_buf_append(&spelled, piece, (size_t)np);
        }
        for (int k = 0; start && rc == 0 && k <= *n; k++) {
            size_t off = k < *n ? start[k] : spelled.len;
            if (spelled.len - off == tlen && memcmp(spelled.data + off, text, tlen) == 0) {
                *from = k;
                free(start);
                ic_buf_free(&spelled);
                return 0;
            }
        }
        free(start);
        ic_buf_free(&spelled);
        free(*toks);
        *toks = NULL;
        if (!start)
            return IC_ERR_NOMEM;
    }
    return IC_ERR_TOKENIZE;
}

static int grammar_prefill(const ic_engine *e, struct llama_sampler *grammar, const char *text,
                           char *err, size_t err_size)
{
    ic_token *toks = NULL;
    int n = 0, from = 0;
    int rc = spelling_tokens(e, text, &toks, &n, &from);
    if (rc != 0) {
        snprintf(err, err_size, "the grammar's prefill does not tokenize");
        return rc;
    }
    for (int i = from; i < n && rc == 0; i++) {
        llama_token_data one = { toks[i], 1.0f, 0.0f };
        llama_token_data_array arr = { &one, 1, -1, false };
        llama_sampler_apply(grammar, &arr);
        if (arr.data[0].logit == -INFINITY) {
            snprintf(err, err_size, "the grammar does not accept the answer's start \"%s\"", text);
            rc = IC_ERR_INVAL;
        } else {
            llama_sampler_accept(grammar, toks[i]);
        }
    }
    free(toks);
    return rc;
}

/* Builds the grammar sampler for g; *out NULL when g has no grammar. */
static int grammar_create(const ic_engine *e, const ic_grammar *g, struct llama_sampler **out,
                          char *err, size_t err_size)
{
    *out = NULL;
    if (!g || !g->gbnf || !g->gbnf[0])
        return 0;
    size_t n = g->n_triggers;
    const char **patterns = calloc(n ? n : 1, sizeof *patterns);
    llama_token *tokens = calloc(n ? n : 1, sizeof *tokens);
    size_t n_patterns = 0, n_tokens = 0;
    if (!patterns || !tokens) {
        free(patterns);
        free(tokens);
        snprintf(err, err_size, "out of memory");
        return IC_ERR_NOMEM;
    }
    for (size_t i = 0; g->lazy && i < n; i++) {
        const ic_grammar_trigger *t = &g->triggers[i];
        ic_token *word = NULL;
        int nw = 0;
        if (t->word && ic_engine_tokenize(e, t->word, strlen(t->word), false, true, &word, &nw) == 0 &&
            nw == 1)
            tokens[n_tokens++] = word[0];
        else if (t->pattern)
            patterns[n_patterns++] = t->pattern;
        free(word);
    }
    last_llama_error[0] = '\0';
    struct llama_sampler *s =
        g->lazy ? llama_sampler_init_grammar_lazy_patterns(e->vocab, g->gbnf, "root", patterns, n_patterns,
                                                           tokens, n_tokens)
                : llama_sampler_init_grammar(e->vocab, g->gbnf, "root");
    free(patterns);
    free(tokens);
    if (!s) {
        snprintf(err, err_size, "the grammar does not compile%s%s", last_llama_error[0] ? ": " : "",
                 last_llama_error);
        return IC_ERR_INVAL;
    }
    if (!g->lazy && g->prefill && g->prefill[0]) {
        int rc = grammar_prefill(e, s, g->prefill, err, err_size);
        if (rc != 0) {
            llama_sampler_free(s);
            return rc;
        }
    }
    *out = s;
    return 0;
}

bool ic_sample_params_penalize(const ic_sample_params *p)
{
    return p->repeat_last_n_tokens != 0 &&
           (p->repeat_penalty != 1.0f || p->frequency_penalty != 0.0f ||
            p->presence_penalty != 0.0f);
}

/* The caller's logit biases (those inside the vocabulary), as llama's own
 * sampler, which copies them. */
static int add_logit_bias(const ic_engine *e, struct llama_sampler *chain,
                          const ic_sample_params *p)
{
    struct llama_logit_bias *b = malloc((size_t)p->n_logit_bias * sizeof *b);
    if (!b)
        return IC_ERR_NOMEM;
    int n = 0;
    for (int i = 0; i < p->n_logit_bias; i++) {
        if (p->logit_bias[i].token >= 0 && p->logit_bias[i].token < e->info.n_vocab)
            b[n++] = (struct llama_logit_bias){ p->logit_bias[i].token, p->logit_bias[i].bias };
    }
    if (n > 0)
        llama_sampler_chain_add(chain, llama_sampler_init_logit_bias(e->info.n_vocab, n, b));
    free(b);
    return 0;
}

int ic_engine_sampler_create(const ic_engine *e, const ic_sample_params *p, ic_sampler **out)
{
    return ic_engine_sampler_create_constrained(e, p, NULL, out, NULL, 0);
}

int ic_engine_sampler_create_constrained(const ic_engine *e, const ic_sample_params *p,
                                         const ic_grammar *g, ic_sampler **out, char *err,
                                         size_t err_size)
{
    *out = NULL;
    char scratch[8];
    if (!err) {
        err = scratch;
        err_size = sizeof scratch;
    }
    struct llama_sampler *grammar = NULL;
    int rc = grammar_create(e, g, &grammar, err, err_size);
    if (rc != 0)
        return rc;
    ic_sampler *s = calloc(1, sizeof *s);
    struct llama_sampler_chain_params cp = llama_sampler_chain_default_params();
    cp.no_perf = true;
    if (s) {
        s->chain = llama_sampler_chain_init(cp);
        s->grammar = grammar;
        if (grammar)
            s->cand = malloc((size_t)e->info.n_vocab * sizeof *s->cand);
    }
    if (!s || !s->chain || (grammar && !s->cand)) {
        llama_sampler_free(grammar);
        if (s) {
            llama_sampler_free(s->chain);
            free(s->cand);
        }
        free(s);
        snprintf(err, err_size, "out of memory");
        return IC_ERR_NOMEM;
    }
    /* The order of llama.cpp's own server: logit biases, penalties, then truncation,
     * then temperature, then the draw (the grammar: see ic_engine_sample). */
    if (p->n_logit_bias > 0 && add_logit_bias(e, s->chain, p) < 0) {
        ic_engine_sampler_destroy(s);
        snprintf(err, err_size, "out of memory");
        return IC_ERR_NOMEM;
    }
    if (p->ban_eog && e->n_eog > 0 && !(grammar && !g->lazy))
        llama_sampler_chain_add(s->chain, llama_sampler_init_logit_bias(e->info.n_vocab, e->n_eog,
                                                                         e->eog_bias));
    if (ic_sample_params_penalize(p))
        llama_sampler_chain_add(s->chain, llama_sampler_init_penalties(
                                              e->info.n_vocab, p->repeat_last_n_tokens,
                                              p->repeat_penalty, p->frequency_penalty,
                                              p->presence_penalty));
    if (p->temperature <= 0.0f) {
        llama_sampler_chain_add(s->chain, llama_sampler_init_greedy());
    } else {
        if (p->top_k > 0)
            llama_sampler_chain_add(s->chain, llama_sampler_init_top_k(p->top_k));
        if (p->top_p < 1.0f)
            llama_sampler_chain_add(s->chain, llama_sampler_init_top_p(p->top_p, 1));
        if (p->min_p > 0.0f)
            llama_sampler_chain_add(s->chain, llama_sampler_init_min_p(p->min_p, 1));
        llama_sampler_chain_add(s->chain, llama_sampler_init_temp(p->temperature));
        llama_sampler_chain_add(s->chain, llama_sampler_init_dist(p->seed));
    }
    *out = s;
    return 0;
}

void ic_engine_sampler_destroy(ic_sampler *s)
{
    if (!s)
        return;
    llama_sampler_free(s->chain);
    llama_sampler_free(s->grammar);
    free(s->cand);
    free(s);
}

void ic_engine_sampler_accept(ic_sampler *s, ic_token tok) { llama_sampler_accept(s->chain, tok); }

bool ic_engine_sampler_accept_forced(ic_sampler *s, ic_token tok)
{
    if (s->grammar) {
        /* a token the grammar refuses would throw inside llama.cpp */
        llama_token_data one = { tok, 1.0f, 0.0f };
        llama_token_data_array single = { &one, 1, -1, false };
        llama_sampler_apply(s->grammar, &single);
        if (one.logit == -INFINITY)
            return false;
        llama_sampler_accept(s->grammar, tok);
    }
    llama_sampler_accept(s->chain, tok);
    return true;
}

/* Loads the logits of batch index idx as candidates. */
static llama_token_data_array candidates(ic_engine *e, ic_sampler *s, int idx)
{
    const float *logits = llama_get_logits_ith(e->ctx, idx);
    for (int i = 0; i < e->info.n_vocab; i++)
        s->cand[i] = (llama_token_data){ i, logits[i], 0.0f };
    return (llama_token_data_array){ s->cand, (size_t)e->info.n_vocab, -1, false };
}

ic_token ic_engine_sample(ic_engine *e, ic_sampler *s, int idx)
{
    if (!s->grammar)
        return llama_sampler_sample(s->chain, e->ctx, idx);
    /* As llama-server: draw without the grammar, keep the token if the
     * grammar allows it (one check instead of one per vocabulary entry),
     * else draw again with the grammar applied to every candidate. Without
     * truncation that is exactly the grammar-masked distribution (an
     * allowed t comes with p(t) + (1 - A) p(t) / A = p(t) / A, A the
     * allowed mass); with top-k/p the second draw truncates the masked set. */
    llama_token_data_array cur = candidates(e, s, idx);
    llama_sampler_apply(s->chain, &cur);
    llama_token id = cur.selected >= 0 ? cur.data[cur.selected].id : LLAMA_TOKEN_NULL;
    llama_token_data one = { id, 1.0f, 0.0f };
    llama_token_data_array single = { &one, 1, -1, false };
    if (id != LLAMA_TOKEN_NULL)
        llama_sampler_apply(s->grammar, &single);
    if (id == LLAMA_TOKEN_NULL || one.logit == -INFINITY) {
        cur = candidates(e, s, idx);
        llama_sampler_apply(s->grammar, &cur);
        bool any = false;
        for (size_t i = 0; i < cur.size && !any; i++)
            any = cur.data[i].logit != -INFINITY;
        if (!any) /* a dead end (no token spells what the grammar needs): stop */
            return e->n_eog > 0 ? e->eog_bias[0].token : llama_vocab_eos(e->vocab);
        llama_sampler_apply(s->chain, &cur);
        id = cur.data[cur.selected].id;
    }
    llama_sampler_accept(s->grammar, id);
    llama_sampler_accept(s->chain, id);
    return id;
}

const float *ic_engine_logits(ic_engine *e, int idx) { return llama_get_logits_ith(e->ctx, idx); }

int ic_engine_n_vocab(const ic_engine *e) { return e->info.n_vocab; }

int ic_engine_seq_state_save(ic_engine *e, int seq, uint8_t **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    size_t need = llama_state_seq_get_size(e->ctx, seq);
    uint8_t *buf = malloc(need ? need : 1);
    if (!buf)
        return IC_ERR_NOMEM;
    size_t got = llama_state_seq_get_data(e->ctx, buf, need, seq);
    if (got == 0 && need > 0) {
        free(buf);
        return IC_ERR_NOMEM;
    }
    *data = buf;
    *len = got;
    return 0;
}

int ic_engine_seq_state_restore(ic_engine *e, int seq, const uint8_t *data, size_t len)
{
    if (len == 0)
        return 0;
    return llama_state_seq_set_data(e->ctx, data, len, seq) > 0 ? 0 : IC_ERR_CONTEXT;
}

const struct llama_model *ic_engine_llama_model(const ic_engine *e) { return e->model; }

void ic_engine_get_opts(const ic_engine *e, ic_engine_opts *out) { *out = e->opts; }

static bool is_rpc_device(ggml_backend_dev_t dev)
{
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    return reg && strcmp(ggml_backend_reg_name(reg), "RPC") == 0;
}

/* One device's entry: RPC devices are named by their server. */
static void describe_device(ggml_backend_dev_t dev, ic_engine_device *d)
{
    size_t free_b = 0, total_b = 0;
    ggml_backend_dev_memory(dev, &free_b, &total_b);
    if (is_rpc_device(dev))
        snprintf(d->name, sizeof d->name, "RPC %s", ggml_backend_dev_description(dev));
    else
        snprintf(d->name, sizeof d->name, "%s", ggml_backend_dev_description(dev));
    d->free_bytes = (int64_t)free_b;
    d->total_bytes = (int64_t)total_b;
}

int ic_engine_gpu_devices(ic_engine_device *out, int cap)
{
    /* llama.cpp's order (llama.cpp, default device selection): RPC
     * servers first, then the local GPUs, so the planner's split points
     * fall where llama.cpp's do. */
    int n = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < ggml_backend_dev_count() && n < cap; i++) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            if (ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_GPU ||
                is_rpc_device(dev) != (pass == 0))
                continue;
            describe_device(dev, &out[n++]);
        }
    }
    return n;
}
