/* cmd_serve.c - `inferencecenter serve`: the server.
 *
 * Wiring only. Threads: the main thread runs the network loop (server +
 * gateway); a loader thread plans the GPU split, loads the model and
 * starts the scheduler (which then runs its own thread); a signal thread
 * turns SIGTERM/SIGINT into a graceful stop (a second one exits at once)
 * and SIGHUP into a tokens reload.
 *
 * Options come from the command line and, with --config FILE, from an
 * INI-style file whose keys are the long option names; flags win.
 */
#include "serve.h"

#include "cli.h"
#include "cmd.h"
#include "config.h"
#include "engine.h"
#include "err.h"
#include "gateway.h"
#include "gpu.h"
#include "host.h"
#include "log.h"
#include "model_list.h"
#include "models.h"
#include "notify.h"
#include "options.h"
#include "plan.h"
#include "rpc.h"
#include "sched.h"
#include "server.h"
#include "spec.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>


static const char usage_head[] =
    "usage: inferencecenter serve [--model PATH] [options]\n"
    "\n"
    "Serves the model to WebSocket clients at ws://HOST:PORT/ws (protocol v1,\n"
    "see docs/protocol.md); GET /health and GET /metrics (Prometheus) on the same port.\n"
    "Every option is also a --config key (docs/options.md).\n"
    "\n";

static int parse_gpu_layers(const char *arg, void *field)
{
    if (strcmp(arg, "auto") == 0) {
        *(int *)field = GPU_LAYERS_AUTO;
        return 0;
    }
    return ic_cli_parse_int(arg, 0, 100000, field);
}

static int parse_log_level(const char *arg, void *field)
{
    enum ic_log_level lv;
    if (ic_log_level_parse(arg, &lv) < 0)
        return IC_ERR_INVAL;
    *(int *)field = (int)lv;
    return 0;
}

static int parse_kv_type(const char *arg, void *field)
{
    ic_kv_type t;
    if (ic_kv_type_parse(arg, &t) < 0)
        return IC_ERR_INVAL;
    *(int *)field = (int)t;
    return 0;
}

static int parse_flash_attn(const char *arg, void *field)
{
    return ic_flash_attn_parse(arg, (int *)field) < 0 ? IC_ERR_INVAL : 0;
}

static int parse_log_format(const char *arg, void *field)
{
    enum ic_log_format f;
    if (ic_log_format_parse(arg, &f) < 0)
        return IC_ERR_INVAL;
    *(int *)field = (int)f;
    return 0;
}

static const char *const isolation_choices[] = {"shared", "client", NULL};
static const char *const slow_step_choices[] = {"whole", "share", NULL}; /* serve_args */
static const char *const spec_choices[] = {"off", "ngram", "draft", NULL}; /* enum ic_spec_mode */

#define F(field) offsetof(serve_args, field)

/* Every `serve` option: one row each (options.h). */
static const ic_option serve_options[] = {
    {.name = "model", .short_name = 'm', .type = IC_OPT_LIST, .offset = F(models),
     .metavar = "PATH", .def_help = "the built-in default model",
     .help = "GGUF model; repeat it to serve several (the first is the default), each named "
             "by its file name without .gguf."},
    {.name = "models-dir", .type = IC_OPT_STRING, .offset = F(models_dir), .metavar = "DIR",
     .help = "Serve every *.gguf file in DIR too (after the --model files, sorted by name); "
             "DIR/models.ini names aliases with their own ctx-size and gpu-layers; SIGHUP "
             "rescans."},
    {.name = "max-loaded-models", .type = IC_OPT_INT, .offset = F(max_loaded_models),
     .metavar = "N", .def = "0", .lo = 0, .hi = IC_MODEL_LIST_MAX,
     .def_help = "no count bound: the memory budget decides",
     .help = "With several models, at most N awake at once (on top of the memory budget): a "
             "request for a sleeping one first puts the least recently used idle ones to sleep "
             "(their sessions' KV kept in host memory)."},
    {.name = "models-ram", .type = IC_OPT_INT, .offset = F(models_ram_mib), .metavar = "MIB",
     .def = "0", .lo = 0, .hi = 1 << 30, .def_help = "the RAM available at start",
     .help = "With several models, the host memory their awake plans (weights, KV cache, "
             "compute) may take together; the GPUs' free VRAM less --vram-margin bounds their "
             "VRAM."},
    {.name = "config", .type = IC_OPT_STRING, .offset = F(config), .metavar = "FILE",
     .flags = IC_OPT_NO_CONFIG,
     .help = "Read options from FILE: `key = value` lines, keys are the long option names; "
             "flags win."},
    {.name = "host", .type = IC_OPT_STRING, .offset = F(host), .metavar = "ADDR",
     .def = "127.0.0.1", .help = "Address to listen on."},
    {.name = "port", .type = IC_OPT_INT, .offset = F(port), .metavar = "N", .def = "8765",
     .lo = 1, .hi = 65535, .help = "Port for /ws, /health and /metrics."},
    {.name = "tokens", .type = IC_OPT_STRING, .offset = F(tokens), .metavar = "FILE",
     .help = "Require API tokens from FILE (see `token add`)."},
    {.name = "insecure-no-auth", .type = IC_OPT_FLAG, .offset = F(insecure_no_auth),
     .help = "Allow a non-loopback address without --tokens."},
    {.name = "max-sessions", .type = IC_OPT_INT, .offset = F(max_sessions), .metavar = "N",
     .def = "8", .lo = 1, .hi = 256,
     .help = "Sessions held at once, server-wide (fewer when memory cannot hold their KV "
             "cache)."},
    {.name = "max-sessions-per-client", .type = IC_OPT_INT,
     .offset = F(max_sessions_per_client), .metavar = "N",
     .def_help = "--max-sessions; half of it with --tokens",
     .lo = 1, .hi = 4096, .help = "Default per-client session limit."},
    {.name = "ctx-size", .type = IC_OPT_INT, .offset = F(ctx_size), .metavar = "N",
     .def = "2048", .lo = 64, .hi = 1 << 20, .help = "Context tokens per session."},
    {.name = "threads", .type = IC_OPT_INT, .offset = F(threads), .metavar = "N",
     .def_help = "all cores", .lo = 1, .hi = 1024, .help = "CPU threads."},
    {.name = "gpu-layers", .type = IC_OPT_CUSTOM, .offset = F(gpu_layers),
     .metavar = "auto|N", .def = "auto", .parse = parse_gpu_layers,
     .help = "Layers on the GPU; auto: as many as fit the free VRAM with the KV cache and "
             "--vram-margin."},
    {.name = "vram-margin", .type = IC_OPT_INT, .offset = F(vram_margin_mib), .metavar = "MIB",
     .def = "512", .lo = 0, .hi = 1 << 20, .help = "VRAM left free on each GPU by auto."},
    {.name = "temp-limit", .type = IC_OPT_FLOAT, .offset = F(temp_limit_c), .metavar = "C",
     .def = "83", .lo = 0, .hi = 150,
     .help = "Thermal guard: at C degrees hold new prompts and pace decoding until 5 below "
             "(0 = off)."},
    {.name = "idle-unload", .type = IC_OPT_INT, .offset = F(idle_unload_s),
     .metavar = "SECONDS", .def = "0", .lo = 0, .hi = 30 * 24 * 3600,
     .help = "After this long idle, free the model and VRAM (KV kept in host memory) until "
             "the next request (0 = never)."},
    {.name = "batch-size", .type = IC_OPT_INT, .offset = F(batch), .metavar = "N",
     .def = "512", .lo = 32, .hi = 1 << 16, .help = "Most tokens in one decode step."},
    {.name = "max-step-ms", .type = IC_OPT_INT, .offset = F(max_step_ms), .metavar = "MS",
     .def = "50", .lo = 0, .hi = 60000,
     .help = "While sessions decode, a step's prompt tokens are bounded by time: a step takes "
             "about this long at most (and at most 1.5x a step of the decoding sessions alone), "
             "so long prompts never stall streaming ones; 0: by --batch-size only."},
    {.name = "min-prefill-tokens", .type = IC_OPT_INT, .offset = F(min_prefill_tokens),
     .metavar = "N", .def = "1", .lo = 1, .hi = 1 << 20,
     .help = "While sessions decode, a step still carries at least N prompt tokens when prompts "
             "wait, whatever --max-step-ms says: larger N trades inter-token latency for "
             "time to first token and throughput under closed-loop load (docs/scheduler.md)."},
    {.name = "slow-step-prompts", .type = IC_OPT_CHOICE, .offset = F(slow_step_prompts),
     .metavar = "whole|share", .def = "whole", .choices = slow_step_choices,
     .help = "Where a step of the decoding sessions alone already takes about --max-step-ms "
             "or more (a slow CPU, many sessions), the time bound cannot hold: whole lets "
             "waiting prompts in by count, as --max-step-ms 0 (throughput and time to first "
             "token; a stream may pause while a prompt goes in), share gives them a quarter "
             "of a decode step (steadier streams, slower first tokens; docs/scheduler.md)."},
    {.name = "kv-unified", .type = IC_OPT_ONOFF, .offset = F(kv_unified), .metavar = "on|off",
     .def = "off",
     .help = "One KV buffer for all sessions (off: each session attends only to its own "
             "cells)."},
    {.name = "cache-type-k", .type = IC_OPT_CUSTOM, .offset = F(cache_type_k), .metavar = "TYPE",
     .def = "f16", .parse = parse_kv_type,
     .help = "KV cache type of keys: f16, q8_0 or q4_0 (q8_0 holds 1.9x the sessions in the "
             "same memory; the head size must be a multiple of 32)."},
    {.name = "cache-type-v", .type = IC_OPT_CUSTOM, .offset = F(cache_type_v), .metavar = "TYPE",
     .def = "f16", .parse = parse_kv_type,
     .help = "KV cache type of values: f16, q8_0 or q4_0; a quantised V cache needs flash "
             "attention (--flash-attn auto turns it on, off is refused)."},
    {.name = "flash-attn", .type = IC_OPT_CUSTOM, .offset = F(flash_attn), .metavar = "MODE",
     .def = "auto", .parse = parse_flash_attn,
     .help = "Flash attention: auto (llama.cpp decides; on for a quantised V cache), on or "
             "off."},
    {.name = "prefix-cache", .type = IC_OPT_INT, .offset = F(prefix_cache), .metavar = "N",
     .def = "2", .lo = 0, .hi = 64,
     .help = "System prompts whose KV cells are kept for new sessions to share (0 = off; "
             "with a split KV buffer each costs one session's cells)."},
    {.name = "spec", .type = IC_OPT_CHOICE, .offset = F(spec), .metavar = "off|ngram|draft",
     .def = "off", .choices = spec_choices,
     .help = "Speculative decoding: ngram drafts tokens from the session's own prompt and "
             "output (no second model), draft has --draft-model propose them; either is "
             "verified in the step's one decode, as many as a learned cost per batch row says "
             "pay; the output is the same as with off. For GPUs and text that repeats "
             "(docs/scheduler.md)."},
    {.name = "draft-model", .type = IC_OPT_STRING, .offset = F(draft_model), .metavar = "PATH",
     .help = "The draft model of --spec draft: a small GGUF of the same vocabulary (checked "
             "at load), given to every served model; it has a context of the model's shape."},
    {.name = "spec-max", .type = IC_OPT_INT, .offset = F(spec_max), .metavar = "N",
     .def = "8", .lo = 1, .hi = IC_SPEC_MAX_DRAFT,
     .help = "Most draft tokens of one session in one step."},
    {.name = "metrics-token", .type = IC_OPT_STRING, .offset = F(metrics_token),
     .metavar = "TOKEN", .help = "GET /metrics needs `Authorization: Bearer TOKEN`."},
    {.name = "watchdog-timeout", .type = IC_OPT_INT, .offset = F(watchdog_timeout_s),
     .metavar = "S", .def = "120", .lo = 0, .hi = 24 * 3600,
     .help = "Report the scheduler stuck (health 503) after S seconds without progress "
             "while work waits (0 = off)."},
    {.name = "log-level", .type = IC_OPT_CUSTOM, .offset = F(log_level), .metavar = "LEVEL",
     .def = "info", .parse = parse_log_level, .help = "debug, info, warn or error."},
    {.name = "log-format", .type = IC_OPT_CUSTOM, .offset = F(log_format),
     .metavar = "FORMAT", .def = "text", .parse = parse_log_format,
     .help = "text, or json (one JSON object per line)."},
    {.name = "log-prompts", .type = IC_OPT_FLAG, .offset = F(log_prompts),
     .help = "Debug lines carry prompt text (off: never logged)."},

    {.name = "session-idle-timeout", .type = IC_OPT_INT, .offset = F(session_idle_timeout_s),
     .metavar = "S", .def = "0", .lo = 0, .hi = 86400,
     .help = "Close a session nobody used for S seconds (SESSION_CLOSED idle_timeout; 0 = "
             "never), so that one client cannot sit on every slot."},
    {.name = "session-store", .type = IC_OPT_STRING, .offset = F(session_store),
     .metavar = "DIR",
     .help = "Durable sessions: keep each session's conversation in DIR (created 0700) after "
             "every turn, so a client resumes it after a dropped connection or a restart "
             "(RESUME_SESSION; docs/operations.md). Off: sessions end with their connection."},
    {.name = "session-ttl", .type = IC_OPT_INT, .offset = F(session_ttl_s), .metavar = "S",
     .def = "3600", .lo = 1, .hi = 30 * 86400,
     .help = "With --session-store: a session whose connection dropped (or that is only in "
             "the store) waits S seconds for RESUME_SESSION, then is deleted."},
    {.name = "session-ram", .type = IC_OPT_INT, .offset = F(session_ram_mib), .metavar = "MIB",
     .def = "1024", .lo = 0, .hi = 1 << 20,
     .help = "With --session-store: a parked session gives its context cells back; its KV "
             "state waits in host memory, up to MIB in all (beyond: recomputed on resume)."},
    {.name = "max-connections", .type = IC_OPT_INT, .offset = F(max_connections),
     .metavar = "N", .def = "0", .def_help = "from the fd limit", .lo = 0, .hi = 1048576,
     .help = "Open sockets (HTTP and WebSocket) at once; more get 503 or close 1013."},
    {.name = "max-preauth-per-ip", .type = IC_OPT_INT, .offset = F(max_preauth_per_ip),
     .metavar = "N", .def = "16", .lo = 0, .hi = 65536,
     .help = "With --tokens: unauthenticated connections per address; more close with 1013 "
             "(0 = no cap)."},
    {.name = "max-preauth", .type = IC_OPT_INT, .offset = F(max_preauth), .metavar = "N",
     .def = "256", .lo = 0, .hi = 65536,
     .help = "With --tokens: unauthenticated connections in all (0 = no cap)."},
    {.name = "max-body-bytes", .type = IC_OPT_INT, .offset = F(max_body_bytes),
     .metavar = "N", .def = "4194304", .lo = 1024, .hi = 1 << 30,
     .help = "Largest HTTP request body; larger get 413."},
    {.name = "allow-origin", .type = IC_OPT_LIST, .offset = F(allow_origins),
     .metavar = "ORIGIN",
     .help = "A web origin (scheme://host[:port], or *) that may use /ws and the HTTP API "
             "besides the server's own pages (repeatable)."},
    {.name = "allow-host", .type = IC_OPT_LIST, .offset = F(allow_hosts), .metavar = "NAME",
     .help = "A name clients may put in Host besides IP literals, localhost and --host: a "
             "proxy's or LAN name (repeatable). Others get 421, so DNS rebinding fails."},
    {.name = "header-timeout", .type = IC_OPT_INT, .offset = F(header_timeout_s),
     .metavar = "S", .def = "10", .lo = 1, .hi = 300,
     .help = "Seconds for a request's headers to arrive (408 after)."},
    {.name = "http-idle-timeout", .type = IC_OPT_INT, .offset = F(http_idle_timeout_s),
     .metavar = "S", .def = "30", .lo = 1, .hi = 3600,
     .help = "An idle keep-alive HTTP connection is closed after S seconds."},
    {.name = "trusted-proxy", .type = IC_OPT_LIST, .offset = F(trusted_proxies),
     .metavar = "ADDR",
     .help = "Believe X-Forwarded-For on connections from this proxy address or network "
             "(ADDR/BITS; repeatable): the client's address then counts for the AUTH "
             "throttle and the per-address caps."},
    {.name = "auth-global-failures", .type = IC_OPT_INT, .offset = F(auth_global_failures),
     .metavar = "N", .def = "100", .lo = 1, .hi = 1000000,
     .help = "Failed AUTHs from all networks per minute after which networks without a "
             "recent success wait --auth-max-delay."},
    {.name = "auth-max-delay", .type = IC_OPT_FLOAT, .offset = F(auth_max_delay_s),
     .metavar = "S", .def = "5", .lo = 0, .hi = 60,
     .help = "The longest wait before answering an AUTH from a throttled network (0 = no "
             "delays). A correct token is always accepted, only later."},
    {.name = "no-web", .type = IC_OPT_FLAG, .offset = F(no_web),
     .help = "Do not serve the web console at GET /."},
    {.name = "prompt-cache", .type = IC_OPT_INT, .offset = F(prompt_cache), .metavar = "N",
     .def = "-1", .def_help = "half of --max-sessions", .lo = -1, .hi = 4096,
     .help = "OpenAI API: finished requests whose KV is kept so that a later request "
             "starting with the same text decodes only the rest (0 = off). Each holds one "
             "of --max-sessions until a session needs it."},
    {.name = "prompt-cache-isolation", .type = IC_OPT_CHOICE,
     .offset = F(prompt_cache_isolation), .metavar = "shared|client", .def = "shared",
     .choices = isolation_choices,
     .help = "shared: a request may reuse another client's cached prefix when its text is "
             "identical (faster; the timing shows a hit, see docs/openai.md); client: only "
             "its own."},
    {.name = "node-name", .type = IC_OPT_STRING, .offset = F(node_name), .metavar = "NAME",
     .help = "This replica's name behind a load balancer (letters, digits, '.', '_', '-'; at "
             "most 63): HELLO's `node`, the key of /ws?affinity=NAME (deploy/haproxy/)."},
    {.name = "tls-cert", .type = IC_OPT_STRING, .offset = F(tls_cert), .metavar = "FILE",
     .help = "Serve https:// and wss:// (TLS only) with this PEM certificate chain (with "
             "--tls-key); SIGHUP re-reads both, e.g. after a renewal."},
    {.name = "tls-key", .type = IC_OPT_STRING, .offset = F(tls_key), .metavar = "FILE",
     .help = "The PEM private key of --tls-cert (unencrypted; keep it mode 0600)."},
    {.name = "rpc", .type = IC_OPT_STRING, .offset = F(rpc), .metavar = "HOST:PORT[,...]",
     .help = "Put the model's layers on llama.cpp rpc-servers too (their memory counts like a "
             "GPU's; docs/scaling.md). Loopback only unless --rpc-insecure: the RPC protocol "
             "has no authentication or encryption."},
    {.name = "rpc-insecure", .type = IC_OPT_FLAG, .offset = F(rpc_insecure),
     .help = "Allow --rpc servers on other hosts: only over a private network or a "
             "WireGuard/SSH tunnel."},
};

#undef F

#define N_SERVE_OPTIONS ((int)(sizeof serve_options / sizeof *serve_options))

static int apply_config_key(void *ud, const char *key, const char *value, char *why,
                            size_t whylen)
{
    serve_args *a = ud;
    return ic_options_apply_key(serve_options, N_SERVE_OPTIONS, &a->owned, a, key, value, why,
                                whylen);
}

static int defaults(serve_args *a)
{
    ic_opt_owned_free(&a->owned);
    *a = (serve_args){0};
    return ic_options_defaults(serve_options, N_SERVE_OPTIONS, a);
}

static int parse_args(int argc, char **argv, serve_args *a)
{
    return ic_options_parse(serve_options, N_SERVE_OPTIONS, "serve", usage_head, argc, argv, a,
                            NULL);
}

/* Config file first, then the flags again on top. Returns 0 to run, 1
 * after --help, IC_ERR_INVAL after an error line. */
static int load_args(int argc, char **argv, serve_args *a)
{
    *a = (serve_args){0};
    int rc = defaults(a);
    if (rc == 0)
        rc = parse_args(argc, argv, a);
    if (rc != 0 || !a->config)
        return rc;
    bool flag_models = a->models.n > 0;
    const char *path = a->config;
    if (defaults(a) < 0)
        return IC_ERR_INVAL;
    char err[512];
    if (ic_config_load(path, apply_config_key, a, err, sizeof err) < 0) {
        fprintf(stderr, "inferencecenter serve: %s\n", err);
        return IC_ERR_INVAL;
    }
    if (flag_models) /* --model on the command line replaces the file's, as other flags do */
        a->models.n = 0;
    rc = parse_args(argc, argv, a);
    a->config = path;
    return rc;
}

static void free_args(serve_args *a) { ic_opt_owned_free(&a->owned); }

/* True for an address only this machine can reach: 127.0.0.0/8 written as
 * a dotted IPv4 address, ::1 (also ::ffff:127.x.y.z) and "localhost". A
 * name such as 127.evil.example is not loopback: it resolves anywhere. */
static bool is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (strcmp(host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1) {
        if (IN6_IS_ADDR_LOOPBACK(&a6))
            return true;
        return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
    }
    return false;
}

/* The built-in default model, made by scripts/quickstart. */
static const char *default_model(char *buf, size_t cap)
{
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(buf, cap, "%s/inferencecenter/models/default.gguf", xdg);
    else
        snprintf(buf, cap, "%s/.cache/inferencecenter/models/default.gguf", home ? home : ".");
    return buf;
}


/* The signals the signal thread takes: SIGTERM/SIGINT (graceful stop, a
 * second one exits at once), SIGHUP (reload tokens), SIGUSR1 (from main:
 * the thread ends). */
static void server_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGUSR1);
}

static void *signal_thread(void *arg)
{
    serve_loader *ld = arg;
    ic_gateway *gw = ld->gw;
    sigset_t set;
    server_signals(&set);
    int stops = 0;
    for (;;) {
        int sig;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGUSR1)
            return NULL;
        if (sig == SIGHUP) {
            ic_gateway_request_reload(gw);
            serve_start_rescan(ld);
            continue;
        }
        if (++stops > 1) {
            ic_log_warn("second signal: exiting now");
            _exit(1);
        }
        ic_log_info("signal %d: stopping gracefully (send it again to exit at once)", sig);
        ic_notify_stopping();
        ic_gateway_request_stop(gw);
    }
}

static void exit_now(int sig)
{
    (void)sig;
    static const char msg[] = "signal during shutdown: exiting now\n";
    ssize_t n = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)n;
    _exit(1);
}

/* While the server is being torn down nobody handles requests: SIGHUP is
 * ignored and a stop signal exits at once (as a second one does). */
static void teardown_signals(void)
{
    struct sigaction sa = {0};
    sa.sa_handler = exit_now;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGHUP, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* "a,b,c" from a repeatable option. Returns 0 or -1 when it does not fit. */
static int join_list(const ic_opt_list *l, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int i = 0; i < l->n; i++) {
        int k = snprintf(buf + n, cap - n, "%s%s", i ? "," : "", l->v[i]);
        if (k < 0 || (size_t)k >= cap - n || strchr(l->v[i], ','))
            return -1;
        n += (size_t)k;
    }
    return 0;
}

static int run(const serve_args *a)
{
    char err[512] = "";
    ic_gateway_opts go = ic_gateway_opts_default();
    go.tokens_path = a->tokens;
    go.max_sessions_per_client = a->max_sessions_per_client;
    go.metrics_token = a->metrics_token;
    go.watchdog_timeout_s = a->watchdog_timeout_s;
    go.log_prompts = a->log_prompts;
    go.prompt_cache = a->prompt_cache;
    go.session_idle_timeout_s = a->session_idle_timeout_s;
    go.session_store = a->session_store;
    go.session_ttl_s = a->session_ttl_s;
    go.session_ram_bytes = (size_t)a->session_ram_mib << 20;
    go.max_preauth_per_ip = a->max_preauth_per_ip;
    go.max_preauth = a->max_preauth;
    go.max_connections = 0; /* the server caps sockets (--max-connections) */
    go.web = !a->no_web;
    go.trusted_proxies = a->trusted_proxies.v;
    go.n_trusted_proxies = a->trusted_proxies.n;
    go.auth_global_max_failures = a->auth_global_failures;
    go.auth_max_delay_s = (double)a->auth_max_delay_s;
    go.prompt_cache_per_client = a->prompt_cache_isolation == 1;
    go.node_name = a->node_name;
    serve_loader ld = {.args = a};
    serve_residency(&ld);
    go.models_budget = ld.budget;
    char url[300];
    bool tls = a->tls_cert != NULL;
    snprintf(url, sizeof url, "%s://%s:%d/ws", tls ? "wss" : "ws", a->host, a->port);
    go.listen_url = url;
    ic_gateway *gw = NULL;
    if (ic_gateway_create(&go, &gw, err, sizeof err) < 0) {
        ic_log_error("%s", err);
        return 1;
    }
    ic_server_opts so = ic_server_opts_default();
    so.host = a->host;
    so.port = a->port;
    so.max_message_bytes = go.max_message_bytes;
    /* Before AUTH a client needs one small message (the gateway raises the
     * limit when AUTH succeeds). */
    so.preauth_max_message_bytes = a->tokens ? 4096 : 0;
    so.max_connections = a->max_connections;
    so.max_body_bytes = (size_t)a->max_body_bytes;
    so.header_timeout_s = a->header_timeout_s;
    so.idle_timeout_s = a->http_idle_timeout_s;
    char origins[1100], hosts[1100];
    if (join_list(&a->allow_origins, origins, sizeof origins) < 0 ||
        join_list(&a->allow_hosts, hosts, sizeof hosts) < 0) {
        ic_log_error("--allow-origin / --allow-host: at most 1 KiB of names in all");
        ic_gateway_destroy(gw);
        return 2;
    }
    so.allow_origins = origins[0] ? origins : NULL;
    so.allow_hosts = hosts[0] ? hosts : NULL;
    so.tls_cert_path = a->tls_cert;
    so.tls_key_path = a->tls_key;
    ic_server_handlers h;
    ic_gateway_server_handlers(gw, &h);
    ic_server *srv = NULL;
    if (ic_server_create(&so, &h, &srv, err, sizeof err) < 0) {
        ic_log_error("%s", err);
        ic_gateway_destroy(gw);
        return 1;
    }
    ic_gateway_set_server(gw, srv);
    ic_log_info("listening on %s (health: %s://%s:%d/health, metrics: /metrics)%s", url,
                tls ? "https" : "http", a->host, a->port,
                a->tokens ? ", API tokens required" : ", no authentication");
    pthread_t sig_tid, load_tid;
    ld.gw = gw;
    if (pthread_create(&sig_tid, NULL, signal_thread, &ld) != 0) {
        ic_log_error("cannot start the signal thread");
        ic_server_destroy(srv);
        ic_gateway_destroy(gw);
        return 1;
    }
    if (pthread_create(&load_tid, NULL, serve_load_models, &ld) != 0) {
        ic_log_error("cannot start the loader thread");
        pthread_kill(sig_tid, SIGUSR1);
        pthread_join(sig_tid, NULL);
        ic_server_destroy(srv);
        ic_gateway_destroy(gw);
        return 1;
    }
    ic_server_run(srv);
    atomic_store(&ld.tearing_down, true);
    /* From here on the gateway and server go away: end the signal thread
     * first, so that a SIGHUP or SIGTERM now cannot reach freed objects. */
    pthread_kill(sig_tid, SIGUSR1);
    pthread_join(sig_tid, NULL);
    teardown_signals();
    pthread_join(load_tid, NULL);
    if (ld.rescan_started) /* the signal thread, which started it, is gone */
        pthread_join(ld.rescan_tid, NULL);
    if (ic_gateway_engine_dead(gw)) {
        /* The scheduler's thread waits on a backend thread that will never
         * answer: it cannot be stopped or its engine freed. */
        ic_log_error("stopped with a failed backend: exiting without stopping the scheduler");
        _exit(1);
    }
    for (int i = 0; i < ld.n; i++)
        ic_sched_stop(ld.sched[i]);
    ic_gateway_finish(gw); /* the session store's thread wakes the server */
    ic_server_destroy(srv);
    bool failed = ic_gateway_failed(gw);
    for (int i = 0; i < ld.n; i++) {
        ic_sched_destroy(ld.sched[i]);
        ic_chat_destroy(ld.chat[i]);
    }
    ic_gpu_monitor_destroy(ld.thermal);
    ic_gateway_destroy(gw);
    ic_log_info("stopped");
    return failed ? 1 : 0;
}

/* A name HAProxy takes as a server name and a client puts in a URL as is. */
static bool valid_node_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* --rpc: each server registered before the memory plan counts them.
 * Returns 0 or 1 (the exit status) after a log line. */
static int add_rpc_servers(const serve_args *a)
{
    if (!a->rpc)
        return 0;
    char list[1024];
    snprintf(list, sizeof list, "%s", a->rpc);
    char *save = NULL;
    for (char *ep = strtok_r(list, ",", &save); ep; ep = strtok_r(NULL, ",", &save)) {
        char err[512];
        if (ic_rpc_add_server(ep, err, sizeof err) < 0) {
            ic_log_error("%s", err);
            return 1;
        }
    }
    return 0;
}

/* --rpc: HOST:PORT entries, loopback unless --rpc-insecure. Returns 0 or 2. */
static int check_rpc(const serve_args *a)
{
    if (!a->rpc)
        return 0;
    if (strlen(a->rpc) >= 1024) {
        fprintf(stderr, "inferencecenter serve: --rpc: at most 1 KiB of addresses\n");
        return 2;
    }
    char list[1024];
    snprintf(list, sizeof list, "%s", a->rpc);
    int n = 0;
    char *save = NULL;
    for (char *ep = strtok_r(list, ",", &save); ep; ep = strtok_r(NULL, ",", &save), n++) {
        char *colon = strrchr(ep, ':');
        char *end = NULL;
        long port = colon ? strtol(colon + 1, &end, 10) : 0;
        if (!colon || colon == ep || !end || *end || port < 1 || port > 65535) {
            fprintf(stderr, "inferencecenter serve: --rpc: '%s' is not HOST:PORT\n", ep);
            return 2;
        }
        *colon = '\0';
        if (!is_loopback(ep) && !a->rpc_insecure) {
            fprintf(stderr, "inferencecenter serve: --rpc: refusing %s:%ld, not a loopback "
                            "address: the RPC protocol has no authentication or encryption "
                            "(anyone who can reach the port can use it and read or write its "
                            "memory). Keep "
                            "it on a private network or a WireGuard/SSH tunnel and add "
                            "--rpc-insecure (docs/scaling.md)\n", ep, port);
            return 2;
        }
    }
    if (n == 0 || n > 16) {
        fprintf(stderr, "inferencecenter serve: --rpc: 1 to 16 servers\n");
        return 2;
    }
    return 0;
}

/* Checks that need the whole option set. Returns 0 or 2 (the exit status). */
static int check_args(serve_args *a, char *defpath, size_t cap)
{
    if (!a->tokens && !is_loopback(a->host) && !a->insecure_no_auth) {
        fprintf(stderr, "inferencecenter serve: refusing to listen on %s without --tokens "
                        "(anyone who can reach it could use it); add --tokens FILE or "
                        "--insecure-no-auth\n", a->host);
        return 2;
    }
    const char *kv_why = ic_engine_kv_check((ic_kv_type)a->cache_type_k, (ic_kv_type)a->cache_type_v,
                                            a->flash_attn);
    if (kv_why) {
        fprintf(stderr, "inferencecenter serve: %s\n", kv_why);
        return 2;
    }
    if (a->node_name && !valid_node_name(a->node_name)) {
        fprintf(stderr, "inferencecenter serve: --node-name must be 1 to 63 letters, digits, "
                        "'.', '_' or '-' (it goes into URLs and the proxy's server names)\n");
        return 2;
    }
    if ((a->spec == IC_SPEC_DRAFT) != (a->draft_model != NULL)) {
        fprintf(stderr, "inferencecenter serve: --spec draft and --draft-model PATH go "
                        "together\n");
        return 2;
    }
    if (check_rpc(a) != 0)
        return 2;
    if (!a->tls_cert != !a->tls_key) {
        fprintf(stderr, "inferencecenter serve: --tls-cert and --tls-key go together\n");
        return 2;
    }
    if (a->max_connections > 0 && a->max_connections < 8) {
        fprintf(stderr, "inferencecenter serve: --max-connections must be 0 (automatic) or "
                        "at least 8\n");
        return 2;
    }
    /* max_sessions_per_client 0: the gateway's automatic default (the
     * server's total, or half of it when tokens are required). */
    if (a->batch < 2 * a->max_sessions)
        a->batch = 2 * a->max_sessions;
    char err[512];
    for (int i = 0; i < a->models.n; i++)
        if (ic_model_list_add(&a->list, a->models.v[i], err, sizeof err) < 0)
            goto bad_list;
    if (a->models_dir && ic_model_list_scan(&a->list, a->models_dir, err, sizeof err) < 0)
        goto bad_list;
    if (a->list.n == 0) {
        a->model = default_model(defpath, cap);
        if (access(a->model, R_OK) != 0) {
            fprintf(stderr, "inferencecenter serve: no --model given and the built-in default "
                            "model %s is missing; scripts/quickstart makes it\n", a->model);
            return 2;
        }
        if (ic_model_list_add(&a->list, a->model, err, sizeof err) < 0)
            goto bad_list;
    }
    a->model = a->list.m[0].path;
    return 0;
bad_list:
    fprintf(stderr, "inferencecenter serve: %s\n", err);
    return 2;
}

int ic_cmd_serve(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--help-markdown") == 0) {
        ic_options_markdown(serve_options, N_SERVE_OPTIONS, "serve", stdout);
        return 0;
    }
    serve_args a;
    int rc = load_args(argc, argv, &a);
    if (rc == 0) {
        ic_log_set_level((enum ic_log_level)a.log_level);
        ic_log_set_format((enum ic_log_format)a.log_format);
    }
    char defpath[512];
    if (rc == 0)
        rc = check_args(&a, defpath, sizeof defpath);
    else
        rc = rc > 0 ? 0 : 2;
    if (rc != 0 || a.model == NULL) {
        free_args(&a);
        return rc;
    }
    raise_fd_limit();
    /* Signals go to the signal thread only: block them before any thread
     * starts, so every thread inherits the mask. */
    sigset_t set;
    server_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    ic_engine_global_init();
    rc = add_rpc_servers(&a);
    if (rc == 0)
        rc = run(&a);
    free_args(&a);
    return rc;
}
