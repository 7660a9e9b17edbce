/* plan.h - the GPU split planner behind `--gpu-layers auto`: how many of a
 * model's layers go to the GPU(s) and how many sessions' KV cache fits.
 *
 * Two steps. ic_plan_read_shape reads a GGUF's header only (never tensor
 * data, so a header-only file works) into an ic_model_shape: bytes per
 * layer, output and input tensors, KV bytes per cell. ic_plan_compute is
 * pure arithmetic over that shape and the free memory the caller measured
 * (the GPU monitor), so it is tested against fake device sizes.
 *
 * It mirrors the pinned llama.cpp's placement (llama-model.cpp,
 * load_tensors): with n_gpu_layers = L > 0 the output layer and the last
 * L-1 repeating layers go to the GPUs; L = n_layer+1 puts every repeating
 * layer there. A device is a GPU or an RPC server (engine/rpc.h), whose
 * free memory is the remote host's. token_embd always stays on the CPU. Each layer's KV cache
 * lives with its layer (offload_kqv). Across several GPUs the layers are
 * split in proportion to each device's free memory.
 *
 * Any thread may call these; the shape belongs to its caller.
 */
#ifndef IC_PLAN_H
#define IC_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IC_PLAN_MAX_DEVICES 16

/* KV cache element types (serve --cache-type-k / --cache-type-v), as
 * llama.cpp stores them: f16 2 bytes an element; q8_0 34 bytes and q4_0
 * 18 bytes a block of 32. */
typedef enum ic_kv_type { IC_KV_F16 = 0, IC_KV_Q8_0 = 1, IC_KV_Q4_0 = 2 } ic_kv_type;

/* "f16", "q8_0", "q4_0" -> *out; -1 for anything else. */
int ic_kv_type_parse(const char *name, ic_kv_type *out);
const char *ic_kv_type_name(ic_kv_type t);
/* Bytes of n_elems elements of t; a quantised type counts whole blocks. */
uint64_t ic_kv_type_bytes(ic_kv_type t, uint64_t n_elems);
/* Elements per block: 1 (f16) or 32; a quantised cache needs head sizes
 * that are multiples of it. */
int ic_kv_type_block(ic_kv_type t);
#define IC_PLAN_DEFAULT_MARGIN_BYTES ((int64_t)512 << 20)

typedef struct ic_model_shape {
    char arch[32];                    /* general.architecture: the key prefix */
    int n_layer;
    uint64_t *layer_bytes;            /* [n_layer] tensors named blk.<i>.*; owned */
    uint64_t output_bytes;            /* output.weight + output_norm; when tied,
                                         token_embd's size (llama copies it) */
    bool output_tied;                 /* no output.weight: the output reuses token_embd,
                                         so output_bytes counts it a second time */
    uint64_t input_bytes;             /* token_embd and anything not in a layer (CPU) */
    uint64_t kv_bytes_per_cell_layer; /* F16 K + V of one cell in one layer
                                         (ic_plan_kv_cell_bytes for other types) */
    int n_embd, n_head, n_head_kv, n_ff, n_vocab, n_ctx_train;
    int head_dim_k, head_dim_v;
    /* What `inferencecenter list` shows. */
    char name[96];                    /* general.name, or "" */
    uint64_t n_params;                /* elements of every tensor */
    uint64_t file_bytes;              /* tensor data bytes */
    char weight_type[16];             /* ggml type holding most of the 2-D weights' bytes
                                         ("q4_0", "f16", ...) */
} ic_model_shape;

/* Reads path's GGUF header (gguf_init_from_file with no_alloc and no ggml
 * context: tensor data is never read). Returns 0 and fills out (free it
 * with ic_plan_shape_free), IC_ERR_IO when the file cannot be opened,
 * IC_ERR_MODEL when it is not a GGUF or lacks a key the plan needs,
 * IC_ERR_NOMEM; on an error err holds one line saying why and out is empty. */
int ic_plan_read_shape(const char *path, ic_model_shape *out, char *err, size_t errlen);

/* Frees layer_bytes and zeroes s. NULL and an empty shape are fine. */
void ic_plan_shape_free(ic_model_shape *s);

typedef struct ic_plan_input {
    int n_devices;                                   /* GPUs; 0 = CPU only */
    int64_t device_free_bytes[IC_PLAN_MAX_DEVICES];  /* free VRAM per GPU now */
    const char *device_names[IC_PLAN_MAX_DEVICES];   /* optional, for the summary; borrowed */
    int64_t margin_bytes;          /* kept free on each GPU (--vram-margin) */
    int64_t host_available_bytes;  /* RAM available for the CPU part; <= 0 unknown */
    int n_sessions;                /* sessions wanted (--max-sessions), >= 1 */
    int n_extra_seqs;              /* prefix-cache sequences, a session's cells each */
    uint32_t n_ctx_per_session;    /* cells per session (tokens) */
    uint32_t n_batch_tokens;       /* for the compute buffer estimate */
    bool kv_unified;               /* one KV stream: attention spans every cell */
    ic_kv_type type_k, type_v;     /* KV cache element types (default f16) */
} ic_plan_input;

/* K + V bytes of one cell in one layer with these cache types. */
uint64_t ic_plan_kv_cell_bytes(const ic_model_shape *s, ic_kv_type type_k, ic_kv_type type_v);

/* Zero devices, 512 MiB margin, host unknown, 1 session x 4096, batch 512,
 * f16 K and V. */
ic_plan_input ic_plan_input_default(void);

typedef struct ic_plan {
    int n_gpu_layers;          /* value for llama's n_gpu_layers: 0..n_layer+1 */
    int n_layers_gpu;          /* repeating layers on the GPUs */
    int n_layers_cpu;          /* repeating layers on the CPU */
    bool output_on_gpu;
    int max_sessions;          /* sessions planned for: 1..n_sessions */
    bool host_fits;            /* false: RAM is short even for max_sessions (1) */
    int64_t vram_bytes;        /* expected GPU use, all devices: weights + KV + compute */
    int64_t device_vram_bytes[IC_PLAN_MAX_DEVICES]; /* the same per device */
    int device_layers[IC_PLAN_MAX_DEVICES];  /* repeating layers on each device */
    bool device_output[IC_PLAN_MAX_DEVICES]; /* the output layer is on that device */
    int64_t ram_bytes;         /* expected host use: CPU weights + CPU KV + compute */
    int64_t kv_bytes_per_session; /* all layers, wherever they are */
    int64_t compute_bytes;     /* ic_plan_compute_bytes for the planned cells */
    char summary[512];         /* one log line: layers (per device when several),
                                  expected VRAM, sessions */
} ic_plan;

/*
 * Chooses the split. Layers first: the largest n_gpu_layers whose weights,
 * KV for (n_sessions + n_extra_seqs) * n_ctx_per_session cells and a
 * compute buffer fit every GPU's free - margin. Then sessions: when the
 * host part is known not to fit host_available_bytes, the session count is
 * lowered (layers re-chosen for each count) to the most that fit, at least
 * 1. Without devices n_gpu_layers is 0. Pure: no allocation, no I/O.
 */
void ic_plan_compute(const ic_model_shape *s, const ic_plan_input *in, ic_plan *out);

/* The next try after a load with n_gpu_layers failed: 3/4 of it, at least
 * one fewer, never below 0. */
int ic_plan_fewer_layers(int n_gpu_layers);

/*
 * Compute-buffer estimate for one device, in bytes, conservative: logits
 * (n_batch * n_vocab * 4), live activations (n_batch * (4 n_embd +
 * 2 n_embd_kv + 3 n_ff) * 4) and the attention scores without flash
 * attention (n_batch * n_kv_cells * n_head * 4). n_kv_cells is the cells one
 * attention spans: a session's, or the whole cache when unified.
 */
int64_t ic_plan_compute_bytes(const ic_model_shape *s, uint32_t n_batch, uint32_t n_kv_cells);

#endif
