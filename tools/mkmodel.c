/*
 * ic-mkmodel: writes a llama-architecture GGUF with seeded random weights.
 *
 * Tests, the built-in default model and benchmarks all need a model file
 * without downloading a checkpoint; this tool makes one from a vocab-only
 * GGUF (for the tokenizer) and a shape (preset or flags). The same seed and
 * flags give a byte-identical file.
 *
 * How: the metadata is written with gguf.h, then each tensor's f32 data is
 * generated just before it is streamed to the file, so even the 1.1B-param
 * preset (4.4 GB of f32) never sits in memory. Other types are made from
 * that f32 file with llama_model_quantize. Output goes to PATH.tmp and is
 * renamed into place, so an interrupted run never leaves a half file under
 * PATH. With --meta-only 1 it writes the header alone (metadata and tensor
 * descriptors of the final type, no weights): the memory planner's tests get
 * a multi-GB model's shape in well under a megabyte. A single-threaded
 * command-line program; it owns only its files.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ggml.h"
#include "gguf.h"
#include "llama.h"

/* The llama.cpp build the bootstrap installs; names the default vocab path. */
#define MK_LLAMA_TAG "80fb11ac73e6"
#define MK_VOCAB_FILE "ggml-vocab-llama-spm.gguf"
#define MK_CHUNK_FLOATS ((size_t)1 << 20) /* generated and written at once */
#define MK_PROGRESS_MIN_BYTES ((uint64_t)256 << 20) /* smaller: no progress */

/* Model shape; -1 in a field means "not given" while flags are parsed. */
struct mk_shape {
    int64_t n_layer, n_embd, n_head, n_head_kv, n_ff;
    int64_t n_ctx_train_tokens;
};

static const struct mk_preset {
    const char *name;
    struct mk_shape shape;
} mk_presets[] = {
    { "tiny",      { 2,  64,   4,  2, 128,  2048 } }, /* ms per token: tests */
    { "small",     { 4,  256,  8,  4, 704,  4096 } }, /* built-in default */
    { "tinyllama", { 22, 2048, 32, 4, 5632, 2048 } }, /* benchmark, q4_0 */
};

static const struct mk_type {
    const char *name;
    enum llama_ftype ftype;
    enum ggml_type matrix_type; /* what the quantizer makes of weight matrices */
    int64_t row_multiple; /* quant block size every row length must fit */
} mk_types[] = {
    { "f32",  LLAMA_FTYPE_ALL_F32,     GGML_TYPE_F32,  1 },
    { "f16",  LLAMA_FTYPE_MOSTLY_F16,  GGML_TYPE_F16,  1 },
    { "q8_0", LLAMA_FTYPE_MOSTLY_Q8_0, GGML_TYPE_Q8_0, 32 },
    { "q4_0", LLAMA_FTYPE_MOSTLY_Q4_0, GGML_TYPE_Q4_0, 32 },
};

/* One row per integer flag: name, field it sets, largest value accepted. */
static const struct mk_int_flag {
    const char *flag;
    size_t offset; /* into struct mk_shape */
    int64_t max;
} mk_int_flags[] = {
    { "--layers",   offsetof(struct mk_shape, n_layer),            512 },
    { "--embd",     offsetof(struct mk_shape, n_embd),             65536 },
    { "--heads",    offsetof(struct mk_shape, n_head),             1024 },
    { "--kv-heads", offsetof(struct mk_shape, n_head_kv),          1024 },
    { "--ff",       offsetof(struct mk_shape, n_ff),               262144 },
    { "--ctx",      offsetof(struct mk_shape, n_ctx_train_tokens), 1 << 24 },
};

struct mk_opts {
    const char *out_path;
    const char *vocab_path; /* NULL: the default chain in mk_default_vocab */
    const char *name;       /* NULL: "ic-mkmodel-<preset>" */
    const char *template_path; /* NULL: the vocab's own tokenizer.chat_template, if any */
    const struct mk_preset *preset;
    const struct mk_type *type;
    struct mk_shape shape;
    uint64_t seed;
    bool meta_only; /* header only: tensors declared, no weights written */
};

/* Keeps llama.cpp's last error line, so our one error line can quote it. */
struct mk_log { char last_error[512]; };

static int mk_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ic-mkmodel: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return -1;
}

static void mk_log_cb(enum ggml_log_level level, const char *text, void *ud)
{
    struct mk_log *log = ud;
    if (level != GGML_LOG_LEVEL_ERROR)
        return; /* llama.cpp's info lines would bury our one line per stage */
    snprintf(log->last_error, sizeof log->last_error, "%s", text);
    log->last_error[strcspn(log->last_error, "\n")] = '\0';
}

static double mk_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * splitmix64: one 64-bit state, statistically strong (passes BigCrush) and
 * the same on every platform, so a seed names one file.
 */
static uint64_t mk_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/*
 * A bell-shaped sample with mean 0 and standard deviation 1: the sum of the
 * four 16-bit lanes of one draw (Irwin-Hall), centred and scaled. Integer
 * sums instead of Box-Muller's log/cos keep files byte-identical across libm
 * versions, and cost one draw per weight, which matters at 1.1B weights.
 */
static float mk_rng_normal(uint64_t *state)
{
    const double lane_sum_std = sqrt((65536.0 * 65536.0 - 1.0) / 3.0); /* 4 lanes * var of one */
    uint64_t x = mk_rng_next(state);
    int32_t sum = (int32_t)((x & 0xffff) + ((x >> 16) & 0xffff) +
                            ((x >> 32) & 0xffff) + (x >> 48));
    return (float)((double)(sum - 2 * 65535) / lane_sum_std);
}

static void mk_usage(FILE *f)
{
    fprintf(f,
        "usage: ic-mkmodel --out PATH [--vocab VOCAB_GGUF] [--preset tiny|small|tinyllama]\n"
        "                  [--layers N] [--embd N] [--heads N] [--kv-heads N] [--ff N] [--ctx N]\n"
        "                  [--type f32|f16|q8_0|q4_0] [--seed S] [--name NAME] [--meta-only 1]\n"
        "                  [--chat-template JINJA_FILE]\n"
        "Writes a llama-architecture GGUF with seeded random weights.\n"
        "  presets: tiny (default) 2 layers, embd 64, 4/2 heads, ff 128, ctx 2048\n"
        "           small  4 layers, embd 256, 8/4 heads, ff 704, ctx 4096\n"
        "           tinyllama  22 layers, embd 2048, 32/4 heads, ff 5632, ctx 2048\n"
        "  explicit flags override the preset; --type defaults to f32, --seed to 42\n"
        "  --meta-only 1 writes the header alone (metadata, tensors of the final type,\n"
        "          no weights): a file llama.cpp cannot run, for reading the shape\n"
        "  --chat-template stores the file's text as tokenizer.chat_template\n"
        "          (replacing the vocab's own)\n"
        "  --vocab defaults to $IC_VOCAB_GGUF, else ${XDG_CACHE_HOME:-$HOME/.cache}/\n"
        "          inferencecenter/llama-" MK_LLAMA_TAG "-cpu/share/inferencecenter/" MK_VOCAB_FILE "\n");
}

static int mk_parse_int(const char *flag, const char *text, int64_t max, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < 1 || v > max)
        return mk_error("%s wants an integer from 1 to %" PRId64 ", got '%s'", flag, max, text);
    *out = v;
    return 0;
}

/* Handles one flag that takes a value; returns 0, or -1 after an error line. */
static int mk_parse_flag(struct mk_opts *o, const char *flag, const char *val)
{
    for (size_t i = 0; i < sizeof mk_int_flags / sizeof mk_int_flags[0]; i++) {
        const struct mk_int_flag *f = &mk_int_flags[i];
        if (strcmp(flag, f->flag) == 0)
            return mk_parse_int(flag, val, f->max, (int64_t *)((char *)&o->shape + f->offset));
    }
    if (strcmp(flag, "--out") == 0) {
        o->out_path = val;
    } else if (strcmp(flag, "--vocab") == 0) {
        o->vocab_path = val;
    } else if (strcmp(flag, "--chat-template") == 0) {
        o->template_path = val;
    } else if (strcmp(flag, "--name") == 0) {
        o->name = val;
    } else if (strcmp(flag, "--meta-only") == 0) {
        if (strcmp(val, "0") != 0 && strcmp(val, "1") != 0)
            return mk_error("--meta-only wants 0 or 1, got '%s'", val);
        o->meta_only = val[0] == '1';
    } else if (strcmp(flag, "--seed") == 0) {
        char *end;
        errno = 0;
        o->seed = strtoull(val, &end, 0);
        if (errno != 0 || end == val || *end != '\0' || val[0] == '-')
            return mk_error("--seed wants a non-negative integer, got '%s'", val);
    } else if (strcmp(flag, "--preset") == 0) {
        size_t k = 0, n = sizeof mk_presets / sizeof mk_presets[0];
        while (k < n && strcmp(mk_presets[k].name, val) != 0)
            k++;
        if (k == n)
            return mk_error("unknown preset '%s' (tiny, small, tinyllama)", val);
        o->preset = &mk_presets[k];
    } else if (strcmp(flag, "--type") == 0) {
        size_t k = 0, n = sizeof mk_types / sizeof mk_types[0];
        while (k < n && strcmp(mk_types[k].name, val) != 0)
            k++;
        if (k == n)
            return mk_error("unknown type '%s' (f32, f16, q8_0, q4_0)", val);
        o->type = &mk_types[k];
    } else {
        return mk_error("unknown option '%s' (see --help)", flag);
    }
    return 0;
}

/* Rejects up front the shapes that llama.cpp or its quantizer would refuse. */
static int mk_check_shape(const struct mk_opts *o)
{
    const struct mk_shape *s = &o->shape;
    int64_t q = o->type->row_multiple;
    if (s->n_embd % s->n_head != 0)
        return mk_error("--embd %" PRId64 " is not a multiple of --heads %" PRId64, s->n_embd, s->n_head);
    if (s->n_head % s->n_head_kv != 0)
        return mk_error("--heads %" PRId64 " is not a multiple of --kv-heads %" PRId64, s->n_head, s->n_head_kv);
    if ((s->n_embd / s->n_head) % 2 != 0) /* RoPE rotates pairs of values */
        return mk_error("head size %" PRId64 " (--embd / --heads) must be even", s->n_embd / s->n_head);
    if (s->n_embd % q != 0 || s->n_ff % q != 0)
        return mk_error("type %s needs --embd and --ff to be multiples of %" PRId64 " (got %" PRId64 ", %" PRId64 ")",
                        o->type->name, q, s->n_embd, s->n_ff);
    return 0;
}

/* Returns 0 to run, 1 when --help was printed, -1 after an error line. */
static int mk_parse_args(int argc, char **argv, struct mk_opts *o)
{
    *o = (struct mk_opts){ .preset = &mk_presets[0], .type = &mk_types[0], .seed = 42,
                           .shape = { -1, -1, -1, -1, -1, -1 } };
    for (int i = 1; i < argc; i += 2) { /* every flag but --help takes a value */
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            mk_usage(stdout);
            return 1;
        }
        if (i + 1 >= argc)
            return mk_error("%s needs a value (see --help)", argv[i]);
        if (mk_parse_flag(o, argv[i], argv[i + 1]) != 0)
            return -1;
    }
    if (!o->out_path || strlen(o->out_path) > 4096)
        return mk_error(o->out_path ? "--out PATH is too long" : "--out PATH is required (see --help)");
    int64_t *field = &o->shape.n_layer;
    const int64_t *preset = &o->preset->shape.n_layer;
    for (size_t i = 0; i < sizeof o->shape / sizeof *field; i++)
        if (field[i] < 0)
            field[i] = preset[i];
    return mk_check_shape(o);
}

/* Writes DIR/inferencecenter/REST into buf, DIR being the cache directory. */
static int mk_cache_path(char *buf, size_t size, const char *dir, const char *dir_sub, const char *rest)
{
    int n = snprintf(buf, size, "%s%s/inferencecenter/%s", dir, dir_sub, rest);
    if (n < 0 || (size_t)n >= size)
        return mk_error("cache directory path too long: %s%s", dir, dir_sub);
    return 0;
}

/* Resolves the default vocab path into buf (see mk_usage). */
static int mk_default_vocab(char *buf, size_t size)
{
    const char *env = getenv("IC_VOCAB_GGUF"), *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    if (env && *env) {
        snprintf(buf, size, "%s", env);
        return 0;
    }
    const char *dir = xdg && *xdg ? xdg : home, *dir_sub = xdg && *xdg ? "" : "/.cache";
    if (!dir || !*dir)
        return mk_error("no --vocab, IC_VOCAB_GGUF or HOME to find the vocab GGUF");
    if (mk_cache_path(buf, size, dir, dir_sub, "llama-" MK_LLAMA_TAG "-cpu/share/inferencecenter/" MK_VOCAB_FILE) != 0)
        return -1;
    if (access(buf, R_OK) == 0)
        return 0;
    /* Until the bootstrap has installed it, the source tree's copy is the same file. */
    char src[4096];
    if (mk_cache_path(src, sizeof src, dir, dir_sub, "src/llama.cpp-" MK_LLAMA_TAG "/models/" MK_VOCAB_FILE) == 0 &&
        access(src, R_OK) == 0)
        snprintf(buf, size, "%s", src);
    return 0;
}

/*
 * Opens the vocab GGUF and keeps only its tokenizer.* pairs, so that
 * gguf_set_kv copies the tokenizer and none of the vocab file's own
 * llama.* shape keys. Returns NULL after an error line.
 */
static struct gguf_context *mk_load_vocab(const char *path, const struct mk_log *log, int64_t *n_vocab)
{
    FILE *probe = fopen(path, "rb");
    if (!probe) {
        mk_error("cannot read vocab '%s': %s", path, strerror(errno));
        return NULL;
    }
    fclose(probe);
    struct gguf_context *v = gguf_init_from_file(path, (struct gguf_init_params){ .no_alloc = true, .ctx = NULL });
    if (!v) {
        mk_error("vocab '%s' is not a valid GGUF file: %s", path, log->last_error);
        return NULL;
    }
    int64_t tokens = gguf_find_key(v, "tokenizer.ggml.tokens");
    if (tokens < 0 || gguf_get_kv_type(v, tokens) != GGUF_TYPE_ARRAY || gguf_get_arr_n(v, tokens) == 0) {
        mk_error("vocab '%s' has no tokenizer.ggml.tokens array", path);
        gguf_free(v);
        return NULL;
    }
    *n_vocab = (int64_t)gguf_get_arr_n(v, tokens);
    for (int64_t i = gguf_get_n_kv(v) - 1; i >= 0; i--)
        if (strncmp(gguf_get_key(v, i), "tokenizer.", 10) != 0)
            gguf_remove_key(v, gguf_get_key(v, i));
    return v;
}

/*
 * The type llama_model_quantize gives a tensor (llama-quant.cpp, for the
 * types we offer): norms stay f32, matrices take the file's type, except
 * that a 32-block quant's output.weight becomes q6_k, or q8_0 where rows
 * are not a multiple of q6_k's 256. Only the header-only mode uses it; the
 * full mode writes f32 and lets the quantizer decide.
 */
static enum ggml_type mk_tensor_type(const struct mk_type *type, const char *name, int64_t ne0, int64_t ne1)
{
    if (ne1 <= 0)
        return GGML_TYPE_F32;
    if (strcmp(name, "output.weight") == 0 && type->matrix_type == GGML_TYPE_Q4_0)
        return ne0 % ggml_blck_size(GGML_TYPE_Q6_K) == 0 ? GGML_TYPE_Q6_K : GGML_TYPE_Q8_0;
    return type->matrix_type;
}

static void mk_add_tensor(struct gguf_context *g, struct ggml_context *t, const struct mk_type *type,
                          const char *name, int64_t ne0, int64_t ne1)
{
    enum ggml_type tt = type ? mk_tensor_type(type, name, ne0, ne1) : GGML_TYPE_F32;
    struct ggml_tensor *tensor = ne1 > 0 ? ggml_new_tensor_2d(t, tt, ne0, ne1)
                                         : ggml_new_tensor_1d(t, tt, ne0);
    ggml_set_name(tensor, name);
    gguf_add_tensor(g, tensor); /* copies the descriptor; t may be freed after */
}

/* Tensor shapes as llama_model_llama::load_arch_tensors creates them; all
 * f32 when type is NULL, else the types type would be quantized to. */
static void mk_add_tensors(struct gguf_context *g, const struct mk_shape *s, int64_t n_vocab,
                           const struct mk_type *type)
{
    size_t n_tensors = 3 + 9 * (size_t)s->n_layer;
    struct ggml_init_params p = { ggml_tensor_overhead() * n_tensors, NULL, true };
    struct ggml_context *t = ggml_init(p);
    int64_t n_embd_kv = s->n_embd / s->n_head * s->n_head_kv;
    char name[GGML_MAX_NAME];

    mk_add_tensor(g, t, type, "token_embd.weight", s->n_embd, n_vocab);
    for (int64_t l = 0; l < s->n_layer; l++) {
        static const char *const parts[] = { "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                             "ffn_norm", "ffn_gate", "ffn_up", "ffn_down" };
        const int64_t ne[9][2] = { { s->n_embd, 0 }, { s->n_embd, s->n_embd }, { s->n_embd, n_embd_kv },
                                   { s->n_embd, n_embd_kv }, { s->n_embd, s->n_embd }, { s->n_embd, 0 },
                                   { s->n_embd, s->n_ff }, { s->n_embd, s->n_ff }, { s->n_ff, s->n_embd } };
        for (int i = 0; i < 9; i++) {
            snprintf(name, sizeof name, "blk.%" PRId64 ".%s.weight", l, parts[i]);
            mk_add_tensor(g, t, type, name, ne[i][0], ne[i][1]);
        }
    }
    mk_add_tensor(g, t, type, "output_norm.weight", s->n_embd, 0);
    mk_add_tensor(g, t, type, "output.weight", s->n_embd, n_vocab);
    ggml_free(t);
}

static struct gguf_context *mk_build_meta(const struct mk_opts *o, const struct gguf_context *vocab, int64_t n_vocab)
{
    const struct mk_shape *s = &o->shape;
    struct gguf_context *g = gguf_init_empty();
    char name[256];
    snprintf(name, sizeof name, "ic-mkmodel-%s", o->preset->name);
    gguf_set_val_str(g, "general.architecture", "llama");
    gguf_set_val_str(g, "general.name", o->name ? o->name : name);
    /* the quantizer rewrites it; a header-only file names its final type */
    gguf_set_val_u32(g, "general.file_type", o->meta_only ? o->type->ftype : LLAMA_FTYPE_ALL_F32);
    gguf_set_val_u32(g, "llama.vocab_size", (uint32_t)n_vocab);
    gguf_set_val_u32(g, "llama.context_length", (uint32_t)s->n_ctx_train_tokens);
    gguf_set_val_u32(g, "llama.embedding_length", (uint32_t)s->n_embd);
    gguf_set_val_u32(g, "llama.block_count", (uint32_t)s->n_layer);
    gguf_set_val_u32(g, "llama.feed_forward_length", (uint32_t)s->n_ff);
    gguf_set_val_u32(g, "llama.attention.head_count", (uint32_t)s->n_head);
    gguf_set_val_u32(g, "llama.attention.head_count_kv", (uint32_t)s->n_head_kv);
    gguf_set_val_u32(g, "llama.rope.dimension_count", (uint32_t)(s->n_embd / s->n_head));
    gguf_set_val_f32(g, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gguf_set_val_f32(g, "llama.rope.freq_base", 10000.0f);
    gguf_set_kv(g, vocab);
    mk_add_tensors(g, s, n_vocab, o->meta_only ? o->type : NULL);
    return g;
}

static int mk_write_bytes(FILE *f, const void *data, size_t size, const char *path)
{
    if (fwrite(data, 1, size, f) != size)
        return mk_error("writing '%s' failed: %s", path, strerror(errno));
    return 0;
}

/* Zero-fills from the current position up to offset (GGUF alignment). */
static int mk_pad_to(FILE *f, uint64_t *pos, uint64_t offset, const char *path)
{
    static const char zeros[GGUF_DEFAULT_ALIGNMENT]; /* we never set general.alignment */
    size_t n = (size_t)(offset - *pos);
    if (n > sizeof zeros)
        return mk_error("internal error: %zu bytes of padding at %" PRIu64, n, *pos);
    *pos = offset;
    return n > 0 && mk_write_bytes(f, zeros, n, path) != 0 ? -1 : 0;
}

/*
 * The standard deviation of a weight matrix. Projections get 1/sqrt(row
 * length), so each keeps its output near unit variance and the logits are
 * neither flat nor huge. Embeddings get 1, and the projections that write
 * into the residual stream are shrunk by 1/sqrt(2 * n_layer) (GPT-2's init),
 * so the current token still dominates the stream after many layers: without
 * that, deep random models drift into repeating one token.
 */
static double mk_tensor_std(const char *name, int64_t row_len, int64_t n_layer)
{
    if (strcmp(name, "token_embd.weight") == 0)
        return 1.0;
    double std = 1.0 / sqrt((double)row_len);
    if (strstr(name, ".attn_output.") || strstr(name, ".ffn_down."))
        std /= sqrt(2.0 * (double)n_layer);
    return std;
}

/*
 * Streams tensor i's data in chunks through buf (MK_CHUNK_FLOATS floats).
 * 1-D tensors are RMS-norm weights, set to 1; matrices are random.
 */
static int mk_write_tensor(FILE *f, const struct gguf_context *g, int64_t i, uint64_t *rng,
                           float *buf, uint64_t *pos, const char *path)
{
    const int64_t *ne = gguf_get_tensor_ne(g, i);
    size_t n_floats = gguf_get_tensor_size(g, i) / sizeof(float);
    bool is_norm = ne[1] == 1;
    int64_t n_layer = (gguf_get_n_tensors(g) - 3) / 9;
    float scale = (float)mk_tensor_std(gguf_get_tensor_name(g, i), ne[0], n_layer);
    for (size_t done = 0; done < n_floats;) {
        size_t n = n_floats - done < MK_CHUNK_FLOATS ? n_floats - done : MK_CHUNK_FLOATS;
        for (size_t j = 0; j < n; j++)
            buf[j] = is_norm ? 1.0f : mk_rng_normal(rng) * scale;
        if (mk_write_bytes(f, buf, n * sizeof(float), path) != 0)
            return -1;
        done += n;
    }
    *pos += n_floats * sizeof(float);
    return 0;
}

/* Writes the whole f32 model to path: metadata first, then each tensor. */
static int mk_write_f32(const struct gguf_context *g, uint64_t seed, const char *path)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return mk_error("cannot create '%s': %s", path, strerror(errno));
    float *buf = malloc(MK_CHUNK_FLOATS * sizeof(float));
    uint64_t rng = seed;
    int rc = buf ? 0 : mk_error("out of memory");
    if (rc == 0 && !gguf_write_to_file_ptr(g, f, true))
        rc = mk_error("writing the metadata of '%s' failed: %s", path, strerror(errno));
    uint64_t pos = rc == 0 ? (uint64_t)ftello(f) : 0, data_offset = pos;
    uint64_t total_bytes = 0, next_report_bytes = 0;
    int64_t n = gguf_get_n_tensors(g);
    for (int64_t i = 0; i < n; i++)
        total_bytes += gguf_get_tensor_size(g, i);
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        uint64_t done_bytes = pos - data_offset;
        if (total_bytes >= MK_PROGRESS_MIN_BYTES && done_bytes >= next_report_bytes) {
            fprintf(stderr, "ic-mkmodel:   f32 weights %3d%% (%" PRIu64 " of %" PRIu64 " MiB)\n",
                    (int)(done_bytes * 100 / total_bytes), done_bytes >> 20, total_bytes >> 20);
            next_report_bytes = done_bytes + total_bytes / 10;
        }
        rc = mk_pad_to(f, &pos, data_offset + gguf_get_tensor_offset(g, i), path);
        if (rc == 0)
            rc = mk_write_tensor(f, g, i, &rng, buf, &pos, path);
    }
    if (rc == 0) /* gguf's own writer pads after the last tensor too */
        rc = mk_pad_to(f, &pos, GGML_PAD(pos, gguf_get_alignment(g)), path);
    free(buf);
    if (fclose(f) != 0 && rc == 0)
        rc = mk_error("closing '%s' failed: %s", path, strerror(errno));
    return rc;
}

static int mk_quantize(const char *in, const char *out, const struct mk_type *type, const struct mk_log *log)
{
    struct llama_model_quantize_params p = llama_model_quantize_default_params();
    p.nthread = 0; /* all cores */
    p.ftype = type->ftype;
    if (llama_model_quantize(in, out, &p) != 0)
        return mk_error("converting to %s failed: %s", type->name,
                        log->last_error[0] ? log->last_error : "llama_model_quantize returned an error");
    return 0;
}

/*
 * Builds the model at tmp_path (through f32_path for types other than f32)
 * and renames it to the output path. Removes both temporaries on every path.
 */
static int mk_make(const struct mk_opts *o, struct gguf_context *meta, const struct mk_log *log,
                   const char *tmp_path, const char *f32_path)
{
    bool convert = o->type->ftype != LLAMA_FTYPE_ALL_F32;
    const char *f32_out = convert ? f32_path : tmp_path;
    double t0 = mk_now_s();
    fprintf(stderr, "ic-mkmodel: writing f32 weights to %s\n", f32_out);
    int rc = mk_write_f32(meta, o->seed, f32_out);
    if (rc == 0 && convert) {
        fprintf(stderr, "ic-mkmodel: converting to %s (%.1f s so far)\n", o->type->name, mk_now_s() - t0);
        rc = mk_quantize(f32_path, tmp_path, o->type, log);
    }
    if (convert)
        unlink(f32_path);
    if (rc == 0 && rename(tmp_path, o->out_path) != 0)
        rc = mk_error("renaming '%s' to '%s' failed: %s", tmp_path, o->out_path, strerror(errno));
    if (rc != 0) {
        unlink(tmp_path);
        return -1;
    }
    struct stat st = { 0 };
    stat(o->out_path, &st);
    fprintf(stderr, "ic-mkmodel: wrote %s (%s, %.1f MiB) in %.1f s\n", o->out_path, o->type->name,
            (double)st.st_size / (1 << 20), mk_now_s() - t0);
    return 0;
}

/* Writes only the header (what --meta-only asks for), through tmp_path. */
static int mk_make_meta(const struct mk_opts *o, const struct gguf_context *meta, const char *tmp_path)
{
    uint64_t declared_bytes = 0;
    for (int64_t i = 0; i < gguf_get_n_tensors(meta); i++)
        declared_bytes += gguf_get_tensor_size(meta, i);
    int rc = gguf_write_to_file(meta, tmp_path, /*only_meta=*/true) ? 0
             : mk_error("writing the header '%s' failed: %s", tmp_path, strerror(errno));
    if (rc == 0 && rename(tmp_path, o->out_path) != 0)
        rc = mk_error("renaming '%s' to '%s' failed: %s", tmp_path, o->out_path, strerror(errno));
    if (rc != 0) {
        unlink(tmp_path);
        return -1;
    }
    fprintf(stderr, "ic-mkmodel: wrote the header of %s (%s, %.1f MiB of tensors declared, none written)\n",
            o->out_path, o->type->name, (double)declared_bytes / (1 << 20));
    return 0;
}

/* Stores a chat template file's text as tokenizer.chat_template. */
static int mk_set_template(struct gguf_context *g, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return mk_error("cannot read chat template '%s': %s", path, strerror(errno));
    char *text = NULL;
    long len = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (len >= 0 && len < (1L << 24) && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)len + 1)))
        text[fread(text, 1, (size_t)len, f)] = '\0';
    fclose(f);
    if (!text)
        return mk_error("cannot read chat template '%s'", path);
    gguf_set_val_str(g, "tokenizer.chat_template", text);
    free(text);
    return 0;
}

static int mk_run(const struct mk_opts *o, const struct mk_log *log)
{
    char vocab_path[4096];
    if (o->vocab_path)
        snprintf(vocab_path, sizeof vocab_path, "%s", o->vocab_path);
    else if (mk_default_vocab(vocab_path, sizeof vocab_path) != 0)
        return -1;
    int64_t n_vocab = 0;
    struct gguf_context *vocab = mk_load_vocab(vocab_path, log, &n_vocab);
    if (!vocab)
        return -1;
    const struct mk_shape *s = &o->shape;
    fprintf(stderr, "ic-mkmodel: vocab %s (%" PRId64 " tokens)\n", vocab_path, n_vocab);
    fprintf(stderr, "ic-mkmodel: %s: layers %" PRId64 ", embd %" PRId64 ", heads %" PRId64 "/%" PRId64
            ", ff %" PRId64 ", ctx %" PRId64 ", %s, seed %" PRIu64 "\n", o->preset->name, s->n_layer,
            s->n_embd, s->n_head, s->n_head_kv, s->n_ff, s->n_ctx_train_tokens, o->type->name, o->seed);
    struct gguf_context *meta = mk_build_meta(o, vocab, n_vocab);
    gguf_free(vocab);
    if (o->template_path && mk_set_template(meta, o->template_path) != 0) {
        gguf_free(meta);
        return -1;
    }
    char tmp_path[4200], f32_path[4200];
    snprintf(tmp_path, sizeof tmp_path, "%s.tmp", o->out_path); /* length checked by mk_parse_args */
    snprintf(f32_path, sizeof f32_path, "%s.f32.tmp", o->out_path);
    int rc = o->meta_only ? mk_make_meta(o, meta, tmp_path) : mk_make(o, meta, log, tmp_path, f32_path);
    gguf_free(meta);
    return rc;
}

int main(int argc, char **argv)
{
    struct mk_opts opts;
    int parsed = mk_parse_args(argc, argv, &opts);
    if (parsed != 0)
        return parsed > 0 ? 0 : 1;
    struct mk_log log = { "" };
    llama_log_set(mk_log_cb, &log); /* also routes ggml's and gguf's logs */
    llama_backend_init();
    int rc = mk_run(&opts, &log);
    llama_backend_free();
    return rc == 0 ? 0 : 1;
}
