/* plan.c - the GPU split planner (see plan.h): a GGUF header reader and the
 * arithmetic that mirrors llama.cpp's layer placement.
 *
 * Runs on whichever thread calls it (at start-up, the loader thread, before
 * the engine loads the model). Owns nothing but the shape's layer array.
 * Every byte count is int64/uint64 and every product saturates, so a
 * hostile header cannot wrap a size into a small one.
 */
#include "plan.h"
#include "err.h"

#include "gguf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PLAN_MAX_LAYERS 65536 /* more than any real model; bounds the array */

/* --- saturating arithmetic on non-negative byte counts --- */

static int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;
    return __builtin_add_overflow(a, b, &r) ? INT64_MAX : r;
}

static int64_t sat_mul(int64_t a, int64_t b)
{
    int64_t r;
    return __builtin_mul_overflow(a, b, &r) ? INT64_MAX : r;
}

static int64_t sat_u64(uint64_t v) { return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v; }

/* --- reading the header --- */

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* One integer value of any GGUF integer type; arrays (per-layer values,
 * as some architectures store head counts) give their largest element,
 * the conservative choice. Returns false when absent or not integers. */
static bool kv_int(const struct gguf_context *g, const char *arch, const char *suffix, int64_t *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int64_t id = gguf_find_key(g, key);
    if (id < 0)
        return false;
    enum gguf_type t = gguf_get_kv_type(g, id);
    if (t == GGUF_TYPE_ARRAY) {
        enum gguf_type at = gguf_get_arr_type(g, id);
        size_t n = gguf_get_arr_n(g, id);
        if ((at != GGUF_TYPE_INT32 && at != GGUF_TYPE_UINT32) || n == 0)
            return false;
        const uint32_t *u = gguf_get_arr_data(g, id); /* same width either way */
        int64_t best = 0;
        for (size_t i = 0; i < n; i++) {
            int64_t v = at == GGUF_TYPE_INT32 ? (int32_t)u[i] : (int64_t)u[i];
            best = v > best ? v : best;
        }
        *out = best;
        return true;
    }
    switch (t) {
    case GGUF_TYPE_UINT8:  *out = gguf_get_val_u8(g, id); break;
    case GGUF_TYPE_INT8:   *out = gguf_get_val_i8(g, id); break;
    case GGUF_TYPE_UINT16: *out = gguf_get_val_u16(g, id); break;
    case GGUF_TYPE_INT16:  *out = gguf_get_val_i16(g, id); break;
    case GGUF_TYPE_UINT32: *out = gguf_get_val_u32(g, id); break;
    case GGUF_TYPE_INT32:  *out = gguf_get_val_i32(g, id); break;
    case GGUF_TYPE_UINT64: *out = sat_u64(gguf_get_val_u64(g, id)); break;
    case GGUF_TYPE_INT64:  *out = gguf_get_val_i64(g, id); break;
    default: return false;
    }
    return true;
}

/* The layer index of a "blk.<i>." tensor name, or -1. */
static int layer_of(const char *name, int n_layer)
{
    if (strncmp(name, "blk.", 4) != 0 || name[4] < '0' || name[4] > '9')
        return -1;
    char *end;
    long i = strtol(name + 4, &end, 10);
    return *end == '.' && i < n_layer ? (int)i : -1;
}

/* The hyperparameters; returns 0 or IC_ERR_MODEL with err set. */
static int read_hparams(const struct gguf_context *g, ic_model_shape *s, char *err, size_t errlen)
{
    static const char *const required[] = { "block_count", "embedding_length", "attention.head_count" };
    int64_t v[3];
    for (int i = 0; i < 3; i++)
        if (!kv_int(g, s->arch, required[i], &v[i]) || v[i] < 1 || v[i] > INT32_MAX)
            return fail(err, errlen, IC_ERR_MODEL, "no valid %s.%s in the GGUF header", s->arch, required[i]);
    if (v[0] > PLAN_MAX_LAYERS)
        return fail(err, errlen, IC_ERR_MODEL, "%s.block_count %" PRId64 " is implausible", s->arch, v[0]);
    s->n_layer = (int)v[0];
    s->n_embd = (int)v[1];
    s->n_head = (int)v[2];
    int64_t kv = s->n_head, hk = s->n_embd / s->n_head, hv = hk, ff = 0, ctx = 0, vocab = 0;
    kv_int(g, s->arch, "attention.head_count_kv", &kv); /* absent: no GQA */
    kv_int(g, s->arch, "attention.key_length", &hk);
    kv_int(g, s->arch, "attention.value_length", &hv);
    kv_int(g, s->arch, "feed_forward_length", &ff);
    kv_int(g, s->arch, "context_length", &ctx);
    if (!kv_int(g, s->arch, "vocab_size", &vocab)) {
        int64_t id = gguf_find_key(g, "tokenizer.ggml.tokens");
        if (id >= 0 && gguf_get_kv_type(g, id) == GGUF_TYPE_ARRAY)
            vocab = (int64_t)gguf_get_arr_n(g, id);
    }
    int64_t *fields[] = { &kv, &hk, &hv, &ff, &ctx, &vocab };
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
        if (*fields[i] < 0 || *fields[i] > INT32_MAX)
            return fail(err, errlen, IC_ERR_MODEL, "a %s hyperparameter is out of range", s->arch);
    if (kv < 1 || hk < 1 || hv < 1)
        return fail(err, errlen, IC_ERR_MODEL, "%s has no KV heads or a zero head size", s->arch);
    s->n_head_kv = (int)kv;
    s->head_dim_k = (int)hk;
    s->head_dim_v = (int)hv;
    s->n_ff = (int)ff;
    s->n_ctx_train = (int)ctx;
    s->n_vocab = (int)vocab;
    /* F16 K and V: 2 bytes per element; fits easily in 64 bits (each < 2^31) */
    s->kv_bytes_per_cell_layer = ((uint64_t)hk * (uint64_t)kv + (uint64_t)hv * (uint64_t)kv) * 2;
    return 0;
}

/* Parameters, bytes and the weights' dominant type (by bytes of 2-D tensors). */
static void read_identity(const struct gguf_context *g, ic_model_shape *s)
{
    int64_t id = gguf_find_key(g, "general.name");
    if (id >= 0 && gguf_get_kv_type(g, id) == GGUF_TYPE_STRING)
        snprintf(s->name, sizeof s->name, "%s", gguf_get_val_str(g, id));
    uint64_t by_type[GGML_TYPE_COUNT] = {0};
    for (int64_t i = 0; i < gguf_get_n_tensors(g); i++) {
        const int64_t *ne = gguf_get_tensor_ne(g, i);
        uint64_t n = 1;
        for (int d = 0; d < GGML_MAX_DIMS; d++)
            n *= ne[d] > 0 ? (uint64_t)ne[d] : 1;
        s->n_params += n;
        uint64_t bytes = gguf_get_tensor_size(g, i);
        s->file_bytes += bytes;
        enum ggml_type t = gguf_get_tensor_type(g, i);
        if (ne[1] > 1 && (unsigned)t < GGML_TYPE_COUNT)
            by_type[t] += bytes;
    }
    int best = -1;
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        if (by_type[t] && (best < 0 || by_type[t] > by_type[best]))
            best = t;
    }
    snprintf(s->weight_type, sizeof s->weight_type, "%s",
             best >= 0 ? ggml_type_name((enum ggml_type)best) : "?");
}

/* Sorts every tensor's bytes into layers, output and input. */
static void read_tensors(const struct gguf_context *g, ic_model_shape *s)
{
    read_identity(g, s);
    uint64_t embd_bytes = 0;
    bool has_output = false;
    for (int64_t i = 0; i < gguf_get_n_tensors(g); i++) {
        const char *name = gguf_get_tensor_name(g, i);
        uint64_t bytes = gguf_get_tensor_size(g, i);
        int layer = layer_of(name, s->n_layer);
        if (layer >= 0) {
            s->layer_bytes[layer] += bytes;
        } else if (strncmp(name, "output.", 7) == 0 || strncmp(name, "output_norm.", 12) == 0) {
            s->output_bytes += bytes;
            has_output |= strcmp(name, "output.weight") == 0;
        } else {
            s->input_bytes += bytes;
            if (strcmp(name, "token_embd.weight") == 0) {
                embd_bytes = bytes;
                if (s->n_vocab == 0)
                    s->n_vocab = (int)gguf_get_tensor_ne(g, i)[1];
            }
        }
    }
    /* Tied embeddings: llama.cpp loads token_embd a second time as the
     * output matrix, into the output layer's buffer (a GPU's when offloaded). */
    s->output_tied = !has_output;
    if (s->output_tied)
        s->output_bytes += embd_bytes;
}

int ic_plan_read_shape(const char *path, ic_model_shape *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (err && errlen > 0)
        err[0] = '\0';
    FILE *probe = fopen(path, "rb");
    if (!probe)
        return fail(err, errlen, IC_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    fclose(probe);
    struct gguf_context *g = gguf_init_from_file(path, (struct gguf_init_params){ .no_alloc = true, .ctx = NULL });
    if (!g)
        return fail(err, errlen, IC_ERR_MODEL, "'%s' is not a readable GGUF file", path);
    int rc = 0;
    int64_t arch = gguf_find_key(g, "general.architecture");
    if (arch < 0 || gguf_get_kv_type(g, arch) != GGUF_TYPE_STRING)
        rc = fail(err, errlen, IC_ERR_MODEL, "'%s' has no general.architecture", path);
    else if (strlen(gguf_get_val_str(g, arch)) >= sizeof out->arch)
        rc = fail(err, errlen, IC_ERR_MODEL, "'%s': architecture name too long", path);
    if (rc == 0) {
        snprintf(out->arch, sizeof out->arch, "%s", gguf_get_val_str(g, arch));
        rc = read_hparams(g, out, err, errlen);
    }
    if (rc == 0) {
        out->layer_bytes = calloc((size_t)out->n_layer, sizeof *out->layer_bytes);
        rc = out->layer_bytes ? 0 : fail(err, errlen, IC_ERR_NOMEM, "out of memory");
    }
    if (rc == 0)
        read_tensors(g, out);
    gguf_free(g);
    if (rc != 0)
        ic_plan_shape_free(out);
    return rc;
}

void ic_plan_shape_free(ic_model_shape *s)
{
    if (!s)
        return;
    free(s->layer_bytes);
    memset(s, 0, sizeof *s);
}

/* --- the arithmetic --- */

ic_plan_input ic_plan_input_default(void)
{
    return (ic_plan_input){ .margin_bytes = IC_PLAN_DEFAULT_MARGIN_BYTES, .n_sessions = 1,
                            .n_ctx_per_session = 4096, .n_batch_tokens = 512 };
}

/* --- KV cache types --- */

int ic_kv_type_parse(const char *name, ic_kv_type *out)
{
    static const char *const names[] = { "f16", "q8_0", "q4_0" };
    for (int i = 0; name && i < 3; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (ic_kv_type)i;
            return 0;
        }
    return -1;
}

const char *ic_kv_type_name(ic_kv_type t)
{
    return t == IC_KV_Q8_0 ? "q8_0" : t == IC_KV_Q4_0 ? "q4_0" : "f16";
}

int ic_kv_type_block(ic_kv_type t)
{
    return t == IC_KV_F16 ? 1 : 32;
}

uint64_t ic_kv_type_bytes(ic_kv_type t, uint64_t n_elems)
{
    if (t == IC_KV_F16)
        return n_elems * 2;
    uint64_t blocks = (n_elems + 31) / 32; /* ggml_row_size: whole blocks */
    return blocks * (t == IC_KV_Q8_0 ? 34 : 18);
}

uint64_t ic_plan_kv_cell_bytes(const ic_model_shape *s, ic_kv_type type_k, ic_kv_type type_v)
{
    uint64_t kv = s->n_head_kv > 0 ? (uint64_t)s->n_head_kv : 0;
    if ((type_k == IC_KV_F16 && type_v == IC_KV_F16) || kv == 0 || s->head_dim_k < 1 || s->head_dim_v < 1)
        return s->kv_bytes_per_cell_layer; /* f16, as read from the header */
    return ic_kv_type_bytes(type_k, (uint64_t)s->head_dim_k * kv) +
           ic_kv_type_bytes(type_v, (uint64_t)s->head_dim_v * kv);
}

int64_t ic_plan_compute_bytes(const ic_model_shape *s, uint32_t n_batch, uint32_t n_kv_cells)
{
    int64_t n_embd_kv = sat_mul(s->n_head_kv, s->head_dim_k > s->head_dim_v ? s->head_dim_k : s->head_dim_v);
    int64_t ff = s->n_ff > 0 ? s->n_ff : sat_mul(4, s->n_embd); /* unknown: the usual 4x */
    int64_t logits = sat_mul(sat_mul(n_batch, s->n_vocab), 4);
    int64_t act_per_token = sat_add(sat_add(sat_mul(4, s->n_embd), sat_mul(2, n_embd_kv)), sat_mul(3, ff));
    int64_t act = sat_mul(sat_mul(n_batch, act_per_token), 4);
    int64_t scores = sat_mul(sat_mul(sat_mul(n_batch, n_kv_cells), s->n_head), 4);
    return sat_add(sat_add(logits, act), scores);
}

/* Expected use for one candidate (n_gpu_layers, sessions). */
typedef struct plan_usage {
    int64_t dev[IC_PLAN_MAX_DEVICES];
    int dev_layers[IC_PLAN_MAX_DEVICES]; /* repeating layers, and the output layer */
    bool dev_output[IC_PLAN_MAX_DEVICES];
    int64_t ram;
    int64_t compute;
} plan_usage;

static int n_devices_of(const ic_plan_input *in)
{
    return in->n_devices < 0 ? 0 : in->n_devices > IC_PLAN_MAX_DEVICES ? IC_PLAN_MAX_DEVICES : in->n_devices;
}

/* The device of GPU layer j of act, as llama.cpp picks it: the first split
 * point above j/act, split points being cumulative shares of free memory
 * (floats, as llama.cpp computes them, so boundaries agree). */
static int device_of(const float *splits, int n_dev, int j, int act)
{
    float x = (float)j / (float)act;
    for (int d = 0; d < n_dev; d++)
        if (splits[d] > x)
            return d;
    return n_dev - 1;
}

static void usage_of(const ic_model_shape *s, const ic_plan_input *in, int ngl, int sessions, plan_usage *u)
{
    int n_dev = n_devices_of(in), n_layer = s->n_layer;
    float splits[IC_PLAN_MAX_DEVICES], sum = 0;
    for (int d = 0; d < n_dev; d++) {
        sum += in->device_free_bytes[d] > 0 ? (float)in->device_free_bytes[d] : 0.0f;
        splits[d] = sum;
    }
    for (int d = 0; d < n_dev; d++) /* no free memory anywhere: equal shares */
        splits[d] = sum > 0 ? splits[d] / sum : (float)(d + 1) / (float)n_dev;
    int64_t seqs = sat_add(sessions, in->n_extra_seqs > 0 ? in->n_extra_seqs : 0);
    int64_t cells = sat_mul(seqs, in->n_ctx_per_session);
    int64_t kv_layer = sat_mul(cells, sat_u64(ic_plan_kv_cell_bytes(s, in->type_k, in->type_v)));
    uint32_t span = in->kv_unified ? (uint32_t)(cells > UINT32_MAX ? UINT32_MAX : cells) : in->n_ctx_per_session;
    memset(u, 0, sizeof *u);
    u->compute = ic_plan_compute_bytes(s, in->n_batch_tokens, span);
    u->ram = sat_u64(s->input_bytes);
    int start = n_layer + 1 - ngl > 0 ? n_layer + 1 - ngl : 0, act = ngl < n_layer + 1 ? ngl : n_layer + 1;
    bool used[IC_PLAN_MAX_DEVICES] = { false }, cpu_used = false;
    for (int il = 0; il <= n_layer; il++) { /* il == n_layer: the output layer */
        int64_t bytes = il < n_layer ? sat_add(sat_u64(s->layer_bytes[il]), kv_layer) : sat_u64(s->output_bytes);
        if (n_dev == 0 || il < start) {
            /* a tied output on the CPU reads token_embd's own (mapped) copy */
            u->ram = sat_add(u->ram, il == n_layer && s->output_tied ? 0 : bytes);
            cpu_used = true;
            continue;
        }
        int d = device_of(splits, n_dev, il - start, act);
        u->dev[d] = sat_add(u->dev[d], bytes);
        if (il < n_layer)
            u->dev_layers[d]++;
        else
            u->dev_output[d] = true;
        used[d] = true;
    }
    for (int d = 0; d < n_dev; d++)
        if (used[d])
            u->dev[d] = sat_add(u->dev[d], u->compute);
    if (cpu_used) /* the CPU runs the layers it holds */
        u->ram = sat_add(u->ram, u->compute);
}

static bool fits_devices(const ic_plan_input *in, const plan_usage *u)
{
    int64_t margin = in->margin_bytes > 0 ? in->margin_bytes : 0;
    for (int d = 0; d < n_devices_of(in); d++)
        if (u->dev[d] > 0 && u->dev[d] > in->device_free_bytes[d] - margin)
            return false;
    return true;
}

/* The largest n_gpu_layers that fits the GPUs for this many sessions. */
static int choose_layers(const ic_model_shape *s, const ic_plan_input *in, int sessions, plan_usage *u)
{
    int ngl = n_devices_of(in) > 0 ? s->n_layer + 1 : 0;
    for (; ngl > 0; ngl--) {
        usage_of(s, in, ngl, sessions, u);
        if (fits_devices(in, u))
            return ngl;
    }
    usage_of(s, in, 0, sessions, u);
    return 0;
}

static bool fits_host(const ic_plan_input *in, const plan_usage *u)
{
    return in->host_available_bytes <= 0 || u->ram <= in->host_available_bytes;
}

/* Fewer sessions until the host part fits: the most in [1, want) that do,
 * by bisection (fewer sessions never need more RAM: fewer cells, and at
 * least as many layers on the GPUs). Sets *ok false when even 1 does not. */
static int reduce_sessions(const ic_model_shape *s, const ic_plan_input *in, int want, bool *ok)
{
    plan_usage u;
    int lo = 0, hi = want - 1; /* answer in [lo, hi]; 0 = none fits */
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        choose_layers(s, in, mid, &u);
        if (fits_host(in, &u))
            lo = mid;
        else
            hi = mid - 1;
    }
    *ok = lo >= 1;
    return lo >= 1 ? lo : 1;
}

static double gib(int64_t b) { return (double)b / (double)(1 << 30); }

/* Appends to a NUL-terminated line, truncating at size: a log line may be cut. */
__attribute__((format(printf, 3, 4)))
static void append(char *buf, size_t size, const char *fmt, ...)
{
    size_t len = strlen(buf);
    if (len + 1 >= size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, size - len, fmt, ap);
    va_end(ap);
}

static void write_summary(const ic_model_shape *s, const ic_plan_input *in, int want, ic_plan *p)
{
    int n_dev = n_devices_of(in);
    char *b = p->summary;
    size_t n = sizeof p->summary;
    b[0] = '\0';
    if (n_dev == 0) {
        append(b, n, "GPU split: no GPU, %d layers on CPU; expected RAM %.2f GiB", s->n_layer, gib(p->ram_bytes));
    } else {
        append(b, n, "GPU split: %d of %d layers on ", p->n_layers_gpu, s->n_layer);
        if (n_dev > 1)
            append(b, n, "%d devices", n_dev);
        else if (in->device_names[0])
            append(b, n, "GPU 0 (%.48s)", in->device_names[0]);
        else
            append(b, n, "GPU 0");
        if (n_dev > 1) { /* where the layers go: "(RPC 10.0.0.2:50052: 11, CUDA0: 12 + output)" */
            append(b, n, " (");
            for (int d = 0; d < n_dev; d++)
                append(b, n, "%s%.40s: %d%s", d ? ", " : "",
                       in->device_names[d] ? in->device_names[d] : "?", p->device_layers[d],
                       p->device_output[d] ? " + output" : "");
            append(b, n, ")");
        }
        int64_t free_sum = 0, margin = in->margin_bytes > 0 ? in->margin_bytes : 0;
        for (int d = 0; d < n_dev; d++)
            free_sum = sat_add(free_sum, in->device_free_bytes[d] > 0 ? in->device_free_bytes[d] : 0);
        append(b, n, ", %d on CPU%s; expected VRAM %.2f GiB of %.2f GiB free (margin %" PRId64 " MiB)",
               p->n_layers_cpu, p->output_on_gpu ? "" : ", output on CPU", gib(p->vram_bytes), gib(free_sum),
               margin >> 20);
    }
    append(b, n, "; %d sessions x %u tokens (KV %s/%s, %.1f MiB each)", p->max_sessions,
           in->n_ctx_per_session, ic_kv_type_name(in->type_k), ic_kv_type_name(in->type_v),
           (double)p->kv_bytes_per_session / (double)(1 << 20));
    if (p->max_sessions < want)
        append(b, n, " (of %d wanted: RAM)", want);
    if (!p->host_fits)
        append(b, n, " (RAM short: %.2f GiB needed, %.2f available)", gib(p->ram_bytes),
               gib(in->host_available_bytes));
}

void ic_plan_compute(const ic_model_shape *s, const ic_plan_input *in, ic_plan *out)
{
    memset(out, 0, sizeof *out);
    int want = in->n_sessions > 0 ? in->n_sessions : 1;
    plan_usage u;
    int ngl = choose_layers(s, in, want, &u);
    out->max_sessions = want;
    out->host_fits = true;
    if (!fits_host(in, &u)) {
        out->max_sessions = reduce_sessions(s, in, want, &out->host_fits);
        ngl = choose_layers(s, in, out->max_sessions, &u);
    }
    out->n_gpu_layers = ngl;
    out->n_layers_gpu = ngl > 1 ? ngl - 1 : 0;
    out->n_layers_cpu = s->n_layer - out->n_layers_gpu;
    out->output_on_gpu = ngl >= 1;
    for (int d = 0; d < n_devices_of(in); d++) {
        out->device_vram_bytes[d] = u.dev[d];
        out->device_layers[d] = u.dev_layers[d];
        out->device_output[d] = u.dev_output[d];
        out->vram_bytes = sat_add(out->vram_bytes, u.dev[d]);
    }
    out->ram_bytes = u.ram;
    out->compute_bytes = u.compute;
    out->kv_bytes_per_session = sat_mul(sat_mul(in->n_ctx_per_session,
                                                sat_u64(ic_plan_kv_cell_bytes(s, in->type_k, in->type_v))),
                                        s->n_layer);
    write_summary(s, in, want, out);
}

int ic_plan_fewer_layers(int n_gpu_layers)
{
    if (n_gpu_layers <= 0)
        return 0;
    int next = (int)((int64_t)n_gpu_layers * 3 / 4);
    return next < n_gpu_layers ? next : n_gpu_layers - 1;
}
