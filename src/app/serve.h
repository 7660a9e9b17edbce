/* serve.h - what `inferencecenter serve` shares between its wiring
 * (cmd_serve.c: options, threads, the server loop) and its model loader
 * (serve_load.c: the memory plan, loading, residency at start, SIGHUP's
 * rescan). Internal to app/.
 */
#ifndef IC_SERVE_H
#define IC_SERVE_H

#include "chat.h"
#include "gateway.h"
#include "gpu.h"
#include "model_list.h"
#include "models.h"
#include "options.h"
#include "sched.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define GPU_LAYERS_AUTO (-2)
_Static_assert(GPU_LAYERS_AUTO == IC_MODEL_GPU_LAYERS_AUTO, "models.ini's auto");

typedef struct serve_args {
    const char *config;
    const char *model;         /* the default model: the first of list */
    ic_opt_list models;        /* --model, repeatable */
    const char *models_dir;
    ic_model_list list;        /* what is served (check_args fills it) */
    const char *host;
    int port;
    const char *tokens;
    bool insecure_no_auth;
    int max_sessions;
    int max_sessions_per_client; /* 0: --max-sessions */
    int ctx_size;
    int threads;               /* 0: all cores */
    int gpu_layers;            /* GPU_LAYERS_AUTO or a count */
    int vram_margin_mib;
    float temp_limit_c;        /* 0 = no thermal guard */
    int idle_unload_s;         /* 0 = never */
    int batch;
    int max_step_ms;
    int min_prefill_tokens;
    int slow_step_prompts;     /* 0 whole, 1 share */
    bool kv_unified;
    int cache_type_k;          /* ic_kv_type */
    int cache_type_v;
    int flash_attn;            /* IC_FLASH_ATTN_* */
    int prefix_cache;
    int spec;                  /* enum ic_spec_mode */
    int spec_max;
    const char *draft_model;   /* --spec draft */
    const char *metrics_token;
    int watchdog_timeout_s;
    int log_level;             /* enum ic_log_level */
    int log_format;            /* enum ic_log_format */
    bool log_prompts;
    int session_idle_timeout_s;
    const char *session_store; /* NULL: sessions are not durable */
    int session_ttl_s;
    int session_ram_mib;
    int max_preauth_per_ip;
    int max_preauth;
    int max_connections;       /* sockets; 0: from the fd limit */
    int max_body_bytes;
    ic_opt_list allow_origins;
    ic_opt_list allow_hosts;
    int header_timeout_s;
    int http_idle_timeout_s;
    bool no_web;
    ic_opt_list trusted_proxies;
    int auth_global_failures;
    float auth_max_delay_s;
    int prompt_cache;          /* -1: half of --max-sessions */
    int max_loaded_models;     /* 0: no count bound (memory decides) */
    int models_ram_mib;        /* 0: the RAM available at start */
    int prompt_cache_isolation; /* 0 shared, 1 client */
    const char *node_name;     /* NULL: none */
    const char *tls_cert;      /* both or neither: TLS on the port */
    const char *tls_key;
    const char *rpc;           /* "host:port,host:port": llama.cpp RPC servers */
    bool rpc_insecure;         /* allow non-loopback RPC addresses */
    ic_opt_owned owned;        /* strings from the config file */
} serve_args;


/* Shared by main and the loader thread; the loader writes, main reads
 * after joining it. */
typedef struct serve_loader {
    const serve_args *args;
    ic_gateway *gw;
    int n;                     /* models loaded, each with its scheduler and templates */
    /* Residency (set before the thread starts, serve_residency): the bounds
     * the gateway keeps the awake models in, and each model's planned
     * footprint (as the gateway's entries). */
    ic_models_budget budget;
    int64_t vram_bytes[IC_MODEL_LIST_MAX];
    int64_t ram_bytes[IC_MODEL_LIST_MAX];
    /* SIGHUP's rescan of --models-dir (one at a time, after the first
     * load): list is what is served, so is the schedulers' options. */
    ic_model_list list;
    ic_sched_opts so;
    atomic_bool loaded_all;    /* the loader thread is done (successfully) */
    atomic_bool rescanning;
    atomic_bool tearing_down;  /* main: the server loop has returned */
    bool rescan_started;       /* rescan_tid is to be joined (signal thread, then main) */
    pthread_t rescan_tid;
    ic_sched *sched[IC_MODEL_LIST_MAX];
    ic_gpu_monitor *thermal;   /* the scheduler threads' monitor */
    ic_chat *chat[IC_MODEL_LIST_MAX]; /* the models' chat templates (the gateway borrows them) */
} serve_loader;

/* The residency bounds and every model's planned footprint (weights, the
 * KV cache of its sessions, compute; each planned as if alone) into ld:
 * memory is the GPUs' free VRAM less --vram-margin and the RAM available
 * now (or --models-ram), with --max-loaded-models as a count bound on top.
 * Logs the budget when there are several models. Before the loader starts. */
void serve_residency(serve_loader *ld);

/* The loader thread: loads every model in turn (putting awake ones to
 * sleep first when the next does not fit beside them), starts their
 * schedulers and attaches them to the gateway. arg: the serve_loader. */
void *serve_load_models(void *arg);

/* SIGHUP: rescans --models-dir on a thread of its own (unless the first
 * load or an earlier rescan still runs). Signal thread. */
void serve_start_rescan(serve_loader *ld);

#endif
