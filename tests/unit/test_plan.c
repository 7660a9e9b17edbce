/* test_plan.c - the GPU split planner: GGUF header reading on the tiny
 * models and on header-only files ic-mkmodel writes into a mkdtemp
 * directory (a 2 GB model's shape in under a megabyte), then the split
 * against fake device and host sizes, each boundary checked by recomputing
 * the documented formula here, independently of plan.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "err.h"
#include "plan.h"
#include "testutil.h"

#include "gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define GIB ((int64_t)1 << 30)
#define MIB ((int64_t)1 << 20)

static char dir[64]; /* mkdtemp directory of this run, removed at the end */

/* Runs ic-mkmodel --meta-only M --out DIR/name plus args (NULL-ended);
 * returns the path, or NULL (test skipped) without $IC_MKMODEL. */
static const char *make_model(bool meta_only, const char *name, ...)
{
    static char path[8][256];
    static int next;
    const char *bin = getenv("IC_MKMODEL");
    if (!bin || access(bin, X_OK) != 0)
        return NULL;
    char *out = path[next++ % 8];
    snprintf(out, 256, "%s/%s", dir, name);
    const char *argv[32] = { bin, "--meta-only", meta_only ? "1" : "0", "--out", out };
    int argc = 5;
    va_list ap;
    va_start(ap, name);
    for (const char *a; (a = va_arg(ap, const char *)) != NULL && argc < 31;)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return out;
}

/* A 2.1 GB q4_0 model (35 layers of n_embd 3072, GQA 24/8 heads), header only. */
static const char *big_model(void)
{
    const char *p = make_model(true, "big-q4_0.gguf", "--layers", "35", "--embd", "3072", "--heads", "24",
                                "--kv-heads", "8", "--ff", "8192", "--type", "q4_0", NULL);
    if (!p)
        skip();
    return p;
}

static void read_ok(const char *path, ic_model_shape *s)
{
    char err[256];
    int rc = ic_plan_read_shape(path, s, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "%s: %s\n", path, err);
    assert_int_equal(rc, 0);
}

/* Sum of every tensor's size as gguf itself reports it. */
static uint64_t gguf_total_bytes(const char *path)
{
    struct gguf_context *g = gguf_init_from_file(path, (struct gguf_init_params){ .no_alloc = true, .ctx = NULL });
    assert_non_null(g);
    uint64_t sum = 0;
    for (int64_t i = 0; i < gguf_get_n_tensors(g); i++)
        sum += gguf_get_tensor_size(g, i);
    gguf_free(g);
    return sum;
}

static uint64_t shape_total_bytes(const ic_model_shape *s)
{
    uint64_t sum = s->input_bytes + s->output_bytes;
    for (int i = 0; i < s->n_layer; i++)
        sum += s->layer_bytes[i];
    return sum;
}

/* --- the formula of plan.h, recomputed for one device --- */

static int64_t cells_of(const ic_plan_input *in, int sessions)
{
    return (int64_t)(sessions + in->n_extra_seqs) * in->n_ctx_per_session;
}

/* GPU use with n_gpu_layers = ngl: the output and the last ngl-1 layers. */
static int64_t gpu_use(const ic_model_shape *s, const ic_plan_input *in, int ngl, int sessions)
{
    if (ngl == 0)
        return 0;
    int64_t bytes = (int64_t)s->output_bytes + ic_plan_compute_bytes(s, in->n_batch_tokens, in->n_ctx_per_session);
    for (int il = s->n_layer - (ngl - 1); il < s->n_layer; il++)
        bytes += (int64_t)s->layer_bytes[il] + cells_of(in, sessions) * (int64_t)s->kv_bytes_per_cell_layer;
    return bytes;
}

/* Host use with no GPU: everything, plus one compute buffer. */
static int64_t cpu_only_use(const ic_model_shape *s, const ic_plan_input *in, int sessions)
{
    return (int64_t)shape_total_bytes(s) + cells_of(in, sessions) * (int64_t)s->kv_bytes_per_cell_layer * s->n_layer +
           ic_plan_compute_bytes(s, in->n_batch_tokens, in->n_ctx_per_session);
}

static ic_plan_input one_card(int64_t free_bytes, int sessions, uint32_t ctx)
{
    ic_plan_input in = ic_plan_input_default();
    in.n_devices = 1;
    in.device_free_bytes[0] = free_bytes;
    in.device_names[0] = "Fake GPU";
    in.n_sessions = sessions;
    in.n_ctx_per_session = ctx;
    return in;
}

/* --- tests --- */

static void tiny_shapes_add_up(void **state)
{
    (void)state;
    const char *types[] = { "f32", "q4_0" };
    uint64_t layer0[2];
    for (int t = 0; t < 2; t++) {
        ic_model_shape s;
        read_ok(test_tiny_path(types[t]), &s);
        assert_string_equal(s.arch, "llama");
        assert_int_equal(s.n_layer, 2);
        assert_int_equal(s.n_embd, 64);
        assert_int_equal(s.n_head, 4);
        assert_int_equal(s.n_head_kv, 2);
        assert_int_equal(s.n_ff, 128);
        assert_int_equal(s.n_ctx_train, 2048);
        assert_true(s.n_vocab > 1000);
        assert_false(s.output_tied);
        assert_int_equal(s.kv_bytes_per_cell_layer, (16 * 2 + 16 * 2) * 2); /* head 16, 2 KV heads, F16 */
        assert_true(s.layer_bytes[0] > 0 && s.layer_bytes[0] == s.layer_bytes[1]);
        assert_true(s.input_bytes > 0 && s.output_bytes > 0);
        assert_int_equal(shape_total_bytes(&s), gguf_total_bytes(test_tiny_path(types[t])));
        layer0[t] = s.layer_bytes[0];
        ic_plan_shape_free(&s);
        assert_null(s.layer_bytes);
    }
    assert_true(layer0[1] * 4 < layer0[0]); /* q4_0 is ~1/7 the size of f32 */
}

/* A header-only file declares what the real quantized file holds: the
 * tiny models, and the small preset for q4_0 (embd 256: output.weight
 * becomes q6_k there, q8_0 in tiny). */
static void header_only_matches_real_file(void **state)
{
    (void)state;
    const char *types[] = { "f16", "q8_0", "q4_0", "q4_0" };
    for (int t = 0; t < 4; t++) {
        const char *preset = t < 3 ? "tiny" : "small";
        char name[32];
        snprintf(name, sizeof name, "%s-%s.gguf", preset, types[t]);
        const char *p = make_model(true, name, "--preset", preset, "--type", types[t], NULL);
        const char *full = t < 3 ? test_tiny_path(types[t])
                                 : make_model(false, "small-q4_0-full.gguf", "--preset", preset, "--type", types[t], NULL);
        if (!p || !full)
            skip();
        ic_model_shape real, meta;
        read_ok(full, &real);
        read_ok(p, &meta);
        assert_int_equal(meta.n_layer, real.n_layer);
        for (int i = 0; i < real.n_layer; i++)
            assert_int_equal(meta.layer_bytes[i], real.layer_bytes[i]);
        assert_int_equal(meta.input_bytes, real.input_bytes);
        assert_int_equal(meta.output_bytes, real.output_bytes);
        ic_plan_shape_free(&real);
        ic_plan_shape_free(&meta);
    }
}

static void tiny_fits_entirely(void **state)
{
    (void)state;
    ic_model_shape s;
    read_ok(test_tiny_path("f32"), &s);
    ic_plan_input in = one_card(3 * GIB, 4, 2048);
    ic_plan p;
    ic_plan_compute(&s, &in, &p);
    assert_int_equal(p.n_gpu_layers, s.n_layer + 1);
    assert_int_equal(p.n_layers_gpu, 2);
    assert_int_equal(p.n_layers_cpu, 0);
    assert_true(p.output_on_gpu);
    assert_int_equal(p.max_sessions, 4);
    assert_int_equal(p.vram_bytes, gpu_use(&s, &in, s.n_layer + 1, 4));
    assert_int_equal(p.kv_bytes_per_session, 2048 * 128 * 2);
    assert_non_null(strstr(p.summary, "2 of 2 layers on GPU 0 (Fake GPU), 0 on CPU"));
    ic_plan_shape_free(&s);
}

static void big_model_splits_on_3gb_card(void **state)
{
    (void)state;
    const char *path = big_model();
    uint64_t declared = gguf_total_bytes(path);
    fprintf(stderr, "big model: %.2f GB of tensors declared\n", (double)declared / 1e9);
    assert_true(declared > 2050000000ull && declared < 2150000000ull);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    assert_true(ftell(f) < 4 * MIB); /* the header alone */
    fclose(f);

    ic_model_shape s;
    read_ok(path, &s);
    assert_int_equal(s.n_layer, 35);
    assert_int_equal(s.kv_bytes_per_cell_layer, 128 * 8 * 2 * 2);
    ic_plan_input in = one_card(2800 * MIB, 4, 2048); /* a 3 GiB card, ~2.8 GiB free */
    ic_plan p;
    ic_plan_compute(&s, &in, &p);
    fprintf(stderr, "%s\n", p.summary);
    assert_true(p.n_layers_gpu > 0 && p.n_layers_gpu < s.n_layer);
    assert_int_equal(p.n_layers_gpu + p.n_layers_cpu, s.n_layer);
    assert_int_equal(p.n_gpu_layers, p.n_layers_gpu + 1);
    assert_true(p.output_on_gpu);
    assert_int_equal(p.max_sessions, 4);
    int64_t budget = in.device_free_bytes[0] - in.margin_bytes;
    assert_int_equal(p.vram_bytes, gpu_use(&s, &in, p.n_gpu_layers, 4));
    assert_true(gpu_use(&s, &in, p.n_gpu_layers, 4) <= budget);
    assert_true(gpu_use(&s, &in, p.n_gpu_layers + 1, 4) > budget);
    /* host: the rest of the weights, their KV and a compute buffer */
    assert_true(p.ram_bytes > (int64_t)s.input_bytes + (int64_t)s.layer_bytes[0] * p.n_layers_cpu);
    /* fewer sessions leave room for more layers */
    ic_plan_input one = in;
    one.n_sessions = 1;
    ic_plan p1;
    ic_plan_compute(&s, &one, &p1);
    assert_true(p1.n_gpu_layers > p.n_gpu_layers);
    ic_plan_shape_free(&s);
}

static void no_devices_means_cpu(void **state)
{
    (void)state;
    ic_model_shape s;
    read_ok(test_tiny_path("f32"), &s);
    ic_plan_input in = ic_plan_input_default();
    in.n_sessions = 3;
    in.n_ctx_per_session = 1024;
    ic_plan p;
    ic_plan_compute(&s, &in, &p);
    assert_int_equal(p.n_gpu_layers, 0);
    assert_int_equal(p.n_layers_cpu, s.n_layer);
    assert_false(p.output_on_gpu);
    assert_int_equal(p.vram_bytes, 0);
    assert_int_equal(p.max_sessions, 3);
    assert_int_equal(p.ram_bytes, cpu_only_use(&s, &in, 3));
    assert_non_null(strstr(p.summary, "no GPU"));
    ic_plan_shape_free(&s);
}

static void tiny_card_gets_nothing(void **state)
{
    (void)state;
    ic_model_shape s;
    read_ok(test_tiny_path("f32"), &s);
    ic_plan_input in = one_card(256 * MIB, 2, 2048); /* less than the 512 MiB margin */
    ic_plan p;
    ic_plan_compute(&s, &in, &p);
    assert_int_equal(p.n_gpu_layers, 0);
    assert_false(p.output_on_gpu);
    assert_int_equal(p.vram_bytes, 0);
    assert_int_equal(p.max_sessions, 2);
    assert_non_null(strstr(p.summary, "0 of 2 layers on GPU 0"));
    ic_plan_shape_free(&s);
}

static void two_devices_share_layers(void **state)
{
    (void)state;
    ic_model_shape s;
    read_ok(big_model(), &s);
    ic_plan_input in = one_card(2 * GIB, 4, 2048);
    ic_plan single;
    ic_plan_compute(&s, &in, &single);
    in.n_devices = 2;
    in.device_free_bytes[1] = 2 * GIB;
    in.device_names[1] = "Fake GPU";
    ic_plan p;
    ic_plan_compute(&s, &in, &p);
    fprintf(stderr, "%s\n", p.summary);
    assert_true(p.n_gpu_layers > single.n_gpu_layers);
    assert_true(p.n_layers_gpu < s.n_layer); /* 4 GiB less two margins: not all */
    for (int d = 0; d < 2; d++)
        assert_true(p.device_vram_bytes[d] > 0 && p.device_vram_bytes[d] <= in.device_free_bytes[d] - in.margin_bytes);
    assert_int_equal(p.vram_bytes, p.device_vram_bytes[0] + p.device_vram_bytes[1]);
    assert_non_null(strstr(p.summary, "2 devices ("));
    char per_dev[128];
    snprintf(per_dev, sizeof per_dev, "(Fake GPU: %d, Fake GPU: %d + output)", p.device_layers[0],
             p.device_layers[1]);
    assert_non_null(strstr(p.summary, per_dev));
    assert_int_equal(p.device_layers[0] + p.device_layers[1], p.n_layers_gpu);
    assert_true(p.device_output[1] && !p.device_output[0]);

    /* Unequal cards: llama.cpp splits by free memory, margin-blind, so the
     * small card (and its own compute buffer) bounds the total. */
    in.device_free_bytes[0] = 3 * GIB;
    in.device_free_bytes[1] = GIB + GIB / 2;
    ic_plan_compute(&s, &in, &p);
    fprintf(stderr, "%s\n", p.summary);
    assert_true(p.n_layers_gpu > 0 && p.n_layers_gpu < s.n_layer);
    assert_true(p.device_vram_bytes[0] > p.device_vram_bytes[1]);
    for (int d = 0; d < 2; d++)
        assert_true(p.device_vram_bytes[d] <= in.device_free_bytes[d] - in.margin_bytes);

    in.device_free_bytes[0] = in.device_free_bytes[1] = 3 * GIB; /* 6 GiB: all of it */
    ic_plan_compute(&s, &in, &p);
    assert_int_equal(p.n_gpu_layers, s.n_layer + 1);
    assert_true(p.device_vram_bytes[0] > GIB && p.device_vram_bytes[1] > GIB);
    ic_plan_shape_free(&s);
}

static void short_host_ram_lowers_sessions(void **state)
{
    (void)state;
    ic_model_shape s;
    read_ok(big_model(), &s);
    ic_plan_input in = ic_plan_input_default();
    in.n_sessions = 8;
    in.n_ctx_per_session = 2048;
    in.n_extra_seqs = 1;
    /* room for the weights and 2.5 sessions' KV (plus the prefix sequence) */
    int64_t kv_session = (int64_t)2048 * (int64_t)s.kv_bytes_per_cell_layer * s.n_layer;
    in.host_available_bytes = cpu_only_use(&s, &in, 2) + kv_session / 2;
    ic_plan p;
    ic_plan_compute(&s, &in, &p);
    fprintf(stderr, "%s\n", p.summary);
    assert_int_equal(p.max_sessions, 2);
    assert_true(p.host_fits);
    assert_int_equal(p.ram_bytes, cpu_only_use(&s, &in, p.max_sessions));
    assert_true(cpu_only_use(&s, &in, p.max_sessions) <= in.host_available_bytes);
    assert_true(cpu_only_use(&s, &in, p.max_sessions + 1) > in.host_available_bytes);
    assert_non_null(strstr(p.summary, "of 8 wanted"));

    /* less than the weights: one session, marked as not fitting */
    in.host_available_bytes = (int64_t)s.input_bytes;
    ic_plan_compute(&s, &in, &p);
    assert_int_equal(p.max_sessions, 1);
    assert_false(p.host_fits);

    /* with a GPU holding part of the model the host needs less */
    in = one_card(2800 * MIB, 8, 2048);
    ic_plan gpu_plan;
    ic_plan_compute(&s, &in, &gpu_plan);
    in.host_available_bytes = gpu_plan.ram_bytes - 1;
    ic_plan_compute(&s, &in, &p);
    assert_true(p.max_sessions >= 1 && p.max_sessions < 8);
    assert_true(p.ram_bytes <= in.host_available_bytes);
    assert_true(p.n_gpu_layers >= gpu_plan.n_gpu_layers);
    ic_plan_shape_free(&s);
}

static void kv_types_parse_and_count(void **state)
{
    (void)state;
    ic_kv_type t;
    assert_int_equal(ic_kv_type_parse("f16", &t), 0);
    assert_int_equal(t, IC_KV_F16);
    assert_int_equal(ic_kv_type_parse("q8_0", &t), 0);
    assert_int_equal(t, IC_KV_Q8_0);
    assert_int_equal(ic_kv_type_parse("q4_0", &t), 0);
    assert_int_equal(t, IC_KV_Q4_0);
    assert_int_equal(ic_kv_type_parse("q4_1", &t), -1);
    assert_int_equal(ic_kv_type_parse("F16", &t), -1);
    assert_int_equal(ic_kv_type_parse("", &t), -1);
    assert_int_equal(ic_kv_type_parse(NULL, &t), -1);
    assert_string_equal(ic_kv_type_name(IC_KV_Q4_0), "q4_0");
    /* ggml's row sizes: 32 elements are 64, 34 and 18 bytes */
    assert_int_equal(ic_kv_type_bytes(IC_KV_F16, 1024), 2048);
    assert_int_equal(ic_kv_type_bytes(IC_KV_Q8_0, 1024), 32 * 34);
    assert_int_equal(ic_kv_type_bytes(IC_KV_Q4_0, 1024), 32 * 18);
    assert_int_equal(ic_kv_type_bytes(IC_KV_Q8_0, 33), 2 * 34); /* whole blocks */
    assert_int_equal(ic_kv_type_block(IC_KV_F16), 1);
    assert_int_equal(ic_kv_type_block(IC_KV_Q8_0), 32);

    ic_model_shape s;
    read_ok(big_model(), &s); /* head 128, 8 KV heads: 1024 elements of K and of V */
    assert_int_equal(ic_plan_kv_cell_bytes(&s, IC_KV_F16, IC_KV_F16), 2 * 2048);
    assert_int_equal(ic_plan_kv_cell_bytes(&s, IC_KV_Q8_0, IC_KV_Q8_0), 2 * 32 * 34);
    assert_int_equal(ic_plan_kv_cell_bytes(&s, IC_KV_Q8_0, IC_KV_F16), 32 * 34 + 2048);
    assert_int_equal(ic_plan_kv_cell_bytes(&s, IC_KV_Q4_0, IC_KV_Q4_0), 2 * 32 * 18);
    ic_plan_shape_free(&s);
}

/* The same host memory holds >= 1.8x the q8_0 sessions (64/34 = 1.88x the
 * cells), and the plan line names the types. */
static void quantised_kv_fits_more_sessions(void **state)
{
    (void)state;
    ic_model_shape s;
    read_ok(big_model(), &s);
    ic_plan_input in = ic_plan_input_default();
    in.n_sessions = 64;
    in.n_ctx_per_session = 2048;
    int64_t kv_f16 = (int64_t)2048 * (int64_t)s.kv_bytes_per_cell_layer * s.n_layer;
    in.host_available_bytes = cpu_only_use(&s, &in, 10) + kv_f16 / 2;
    ic_plan f16, q8, q4;
    ic_plan_compute(&s, &in, &f16);
    assert_int_equal(f16.max_sessions, 10);
    assert_int_equal(f16.kv_bytes_per_session, kv_f16);
    assert_non_null(strstr(f16.summary, "KV f16/f16"));
    in.type_k = in.type_v = IC_KV_Q8_0;
    ic_plan_compute(&s, &in, &q8);
    fprintf(stderr, "%s\n", q8.summary);
    assert_int_equal(q8.kv_bytes_per_session, (int64_t)2048 * 2 * 32 * 34 * s.n_layer);
    assert_true(q8.max_sessions * 10 >= f16.max_sessions * 18);
    assert_true(q8.ram_bytes <= in.host_available_bytes);
    assert_non_null(strstr(q8.summary, "KV q8_0/q8_0"));
    in.type_k = in.type_v = IC_KV_Q4_0;
    ic_plan_compute(&s, &in, &q4);
    assert_true(q4.max_sessions > q8.max_sessions);

    /* on a GPU: the KV of more layers fits beside the weights */
    ic_plan_input g = one_card(2800 * MIB, 8, 4096);
    ic_plan gf16, gq8;
    ic_plan_compute(&s, &g, &gf16);
    g.type_k = g.type_v = IC_KV_Q8_0;
    ic_plan_compute(&s, &g, &gq8);
    assert_true(gq8.n_gpu_layers >= gf16.n_gpu_layers);
    assert_true(gq8.vram_bytes <= 2800 * MIB - g.margin_bytes);
    ic_plan_shape_free(&s);
}

static void bad_files_are_reported(void **state)
{
    (void)state;
    ic_model_shape s;
    char err[256] = "";
    char path[128];
    snprintf(path, sizeof path, "%s/missing.gguf", dir);
    assert_int_equal(ic_plan_read_shape(path, &s, err, sizeof err), IC_ERR_IO);
    assert_non_null(strstr(err, "missing.gguf"));
    assert_null(s.layer_bytes);

    snprintf(path, sizeof path, "%s/not-a-model.gguf", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("this is not a GGUF file, only some text\n", f);
    fclose(f);
    err[0] = '\0';
    assert_int_equal(ic_plan_read_shape(path, &s, err, sizeof err), IC_ERR_MODEL);
    assert_true(strlen(err) > 0);

    /* a valid GGUF that lacks the shape keys */
    snprintf(path, sizeof path, "%s/no-keys.gguf", dir);
    struct gguf_context *g = gguf_init_empty();
    gguf_set_val_str(g, "general.architecture", "llama");
    gguf_set_val_u32(g, "llama.embedding_length", 64);
    assert_true(gguf_write_to_file(g, path, true));
    gguf_free(g);
    err[0] = '\0';
    assert_int_equal(ic_plan_read_shape(path, &s, err, sizeof err), IC_ERR_MODEL);
    assert_non_null(strstr(err, "llama.block_count"));
    assert_null(s.layer_bytes);
}

static void fewer_layers_reaches_zero(void **state)
{
    (void)state;
    assert_int_equal(ic_plan_fewer_layers(0), 0);
    assert_int_equal(ic_plan_fewer_layers(-5), 0);
    assert_int_equal(ic_plan_fewer_layers(1), 0);
    assert_int_equal(ic_plan_fewer_layers(33), 24);
    int n = 33, steps = 0;
    while (n > 0) {
        int next = ic_plan_fewer_layers(n);
        assert_true(next < n && next >= 0);
        n = next;
        steps++;
    }
    assert_true(steps < 33); /* faster than one at a time */
    assert_true(ic_plan_fewer_layers(2147483647) < 2147483647);
}

/* Saturation: absurd inputs give huge numbers, never wrapped small ones. */
static void huge_inputs_saturate(void **state)
{
    (void)state;
    uint64_t layers[2] = { UINT64_MAX / 2, UINT64_MAX / 2 };
    ic_model_shape s = { .arch = "llama", .n_layer = 2, .layer_bytes = layers, .output_bytes = 1,
                         .kv_bytes_per_cell_layer = UINT64_MAX, .n_embd = INT32_MAX, .n_head = INT32_MAX,
                         .n_head_kv = INT32_MAX, .n_vocab = INT32_MAX, .head_dim_k = 1, .head_dim_v = 1 };
    assert_int_equal(ic_plan_compute_bytes(&s, UINT32_MAX, UINT32_MAX), INT64_MAX);
    ic_plan_input in = one_card(INT64_MAX, INT32_MAX, UINT32_MAX);
    in.host_available_bytes = GIB;
    ic_plan p;
    ic_plan_compute(&s, &in, &p);
    assert_int_equal(p.n_gpu_layers, 0);
    assert_int_equal(p.max_sessions, 1);
    assert_false(p.host_fits);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/ic-test-plan-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tiny_shapes_add_up),
        cmocka_unit_test(header_only_matches_real_file),
        cmocka_unit_test(tiny_fits_entirely),
        cmocka_unit_test(big_model_splits_on_3gb_card),
        cmocka_unit_test(no_devices_means_cpu),
        cmocka_unit_test(tiny_card_gets_nothing),
        cmocka_unit_test(two_devices_share_layers),
        cmocka_unit_test(short_host_ram_lowers_sessions),
        cmocka_unit_test(kv_types_parse_and_count),
        cmocka_unit_test(quantised_kv_fits_more_sessions),
        cmocka_unit_test(bad_files_are_reported),
        cmocka_unit_test(fewer_layers_reaches_zero),
        cmocka_unit_test(huge_inputs_saturate),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
