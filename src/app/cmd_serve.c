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
#include "cli.h"
#include "cmd.h"
#include "config.h"
#include "engine.h"
#include "err.h"
#include "gateway.h"
#include "gpu.h"
#include "host.h"
#include "log.h"
#include "notify.h"
#include "plan.h"
#include "sched.h"
#include "server.h"

#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#define GPU_LAYERS_AUTO (-2)

typedef struct serve_args {
    const char *config;
    const char *model;
    const char *host;
    int port;
    const char *tokens;
    bool insecure_no_auth;
    int max_sessions;
    int max_sessions_per_client;
    int ctx_size;
    int threads;
    int gpu_layers;            /* GPU_LAYERS_AUTO or a count */
    int vram_margin_mib;
    float temp_limit_c;        /* 0 = no thermal guard */
    int idle_unload_s;         /* 0 = never */
    int batch;
    bool kv_unified;
    int prefix_cache;
    const char *metrics_token;
    int watchdog_timeout_s;
    bool log_prompts;
    /* Strings from the config file live here until exit. */
    char *owned[32];
    int n_owned;
} serve_args;

/* Shared by main and the loader thread; the loader writes, main reads
 * after joining it. */
typedef struct loader {
    const serve_args *args;
    ic_gateway *gw;
    ic_sched *sched;
    ic_gpu_monitor *thermal;   /* the scheduler thread's monitor */
} loader;

static const char usage[] =
    "usage: inferencecenter serve [--model PATH] [options]\n"
    "\n"
    "Serves the model to WebSocket clients at ws://HOST:PORT/ws (protocol v1,\n"
    "see docs/protocol.md); GET /health and GET /metrics (Prometheus) on the same port.\n"
    "\n"
    "  -m, --model PATH             GGUF model (default: the built-in default model)\n"
    "      --config FILE            read options from FILE: `key = value` lines, keys\n"
    "                               are the long option names; flags win\n"
    "      --host ADDR              address to listen on (default 127.0.0.1)\n"
    "      --port N                 (default 8765)\n"
    "      --tokens FILE            require API tokens from FILE (see `token add`)\n"
    "      --insecure-no-auth       allow a non-loopback address without --tokens\n"
    "      --max-sessions N         sessions held at once, server-wide (default 8; fewer\n"
    "                               when memory cannot hold their KV cache)\n"
    "      --max-sessions-per-client N  default per-client limit (default: --max-sessions)\n"
    "      --ctx-size N             context tokens per session (default 2048)\n"
    "      --threads N              CPU threads (default: all cores)\n"
    "      --gpu-layers auto|N      layers on the GPU (default auto: as many as fit the\n"
    "                               free VRAM with the KV cache and --vram-margin)\n"
    "      --vram-margin MIB        VRAM left free on each GPU by auto (default 512)\n"
    "      --temp-limit C           thermal guard: at C degrees hold new prompts and pace\n"
    "                               decoding until 5 below (default 83, 0 = off)\n"
    "      --idle-unload SECONDS    after this long idle, free the model and VRAM (KV kept\n"
    "                               in host memory) until the next request (default 0 = never)\n"
    "      --batch-size N           most tokens in one decode step (default 512)\n"
    "      --kv-unified on|off      one KV buffer for all sessions (default off: each\n"
    "                               session attends only to its own cells)\n"
    "      --prefix-cache N         system prompts whose KV cells are kept for new\n"
    "                               sessions to share (default 2, 0 = off; with a\n"
    "                               split KV buffer each costs one session's cells)\n"
    "      --metrics-token TOKEN    GET /metrics needs `Authorization: Bearer TOKEN`\n"
    "      --watchdog-timeout S     report the scheduler stuck (health 503) after S seconds\n"
    "                               without progress while work waits (default 120, 0 = off)\n"
    "      --log-level LEVEL        debug, info, warn or error (default info)\n"
    "      --log-format FORMAT      text or json (one JSON object per line; default text)\n"
    "      --log-prompts            debug lines carry prompt text (off: never logged)\n"
    "  -h, --help                   this help\n";

static const struct option long_opts[] = {
    {"model", required_argument, 0, 'm'},     {"config", required_argument, 0, 'F'},
    {"host", required_argument, 0, 'H'},      {"port", required_argument, 0, 'p'},
    {"tokens", required_argument, 0, 'T'},    {"insecure-no-auth", no_argument, 0, 'I'},
    {"max-sessions", required_argument, 0, 'S'},
    {"max-sessions-per-client", required_argument, 0, 'C'},
    {"ctx-size", required_argument, 0, 'c'},  {"threads", required_argument, 0, 't'},
    {"gpu-layers", required_argument, 0, 'g'}, {"vram-margin", required_argument, 0, 'V'},
    {"temp-limit", required_argument, 0, 'X'}, {"idle-unload", required_argument, 0, 'Z'},
    {"batch-size", required_argument, 0, 'b'}, {"kv-unified", required_argument, 0, 'U'},
    {"prefix-cache", required_argument, 0, 'P'},
    {"metrics-token", required_argument, 0, 'M'},
    {"watchdog-timeout", required_argument, 0, 'W'},
    {"log-level", required_argument, 0, 'L'}, {"log-format", required_argument, 0, 'J'},
    {"log-prompts", no_argument, 0, 'R'},     {"help", no_argument, 0, 'h'},
    {0, 0, 0, 0},
};

static serve_args default_args(void)
{
    return (serve_args){
        .host = "127.0.0.1", .port = 8765, .max_sessions = 8, .ctx_size = 2048,
        .gpu_layers = GPU_LAYERS_AUTO, .vram_margin_mib = 512, .temp_limit_c = 83.0f,
        .batch = 512, .prefix_cache = 2, .watchdog_timeout_s = 120,
    };
}

/* Applies one option. arg is NULL for a flag without a value (true). */
static int parse_option(int c, const char *arg, serve_args *a)
{
    switch (c) {
    case 'm': a->model = arg; return 0;
    case 'F': a->config = arg; return 0;
    case 'H': a->host = arg; return 0;
    case 'p': return ic_cli_parse_int(arg, 1, 65535, &a->port);
    case 'T': a->tokens = arg; return 0;
    case 'I': a->insecure_no_auth = true; return 0;
    case 'S': return ic_cli_parse_int(arg, 1, 256, &a->max_sessions);
    case 'C': return ic_cli_parse_int(arg, 1, 4096, &a->max_sessions_per_client);
    case 'c': return ic_cli_parse_int(arg, 64, 1 << 20, &a->ctx_size);
    case 't': return ic_cli_parse_int(arg, 1, 1024, &a->threads);
    case 'g':
        if (strcmp(arg, "auto") == 0) {
            a->gpu_layers = GPU_LAYERS_AUTO;
            return 0;
        }
        return ic_cli_parse_int(arg, 0, 100000, &a->gpu_layers);
    case 'V': return ic_cli_parse_int(arg, 0, 1 << 20, &a->vram_margin_mib);
    case 'X': return ic_cli_parse_float(arg, 0.0f, 150.0f, &a->temp_limit_c);
    case 'Z': return ic_cli_parse_int(arg, 0, 30 * 24 * 3600, &a->idle_unload_s);
    case 'b': return ic_cli_parse_int(arg, 32, 1 << 16, &a->batch);
    case 'U':
        if (strcmp(arg, "on") && strcmp(arg, "off"))
            return IC_ERR_INVAL;
        a->kv_unified = strcmp(arg, "on") == 0;
        return 0;
    case 'P': return ic_cli_parse_int(arg, 0, 64, &a->prefix_cache);
    case 'M':
        if (!*arg)
            return IC_ERR_INVAL;
        a->metrics_token = arg;
        return 0;
    case 'W': return ic_cli_parse_int(arg, 0, 24 * 3600, &a->watchdog_timeout_s);
    case 'L': {
        enum ic_log_level lv;
        if (ic_log_level_parse(arg, &lv) < 0)
            return IC_ERR_INVAL;
        ic_log_set_level(lv);
        return 0;
    }
    case 'J': {
        enum ic_log_format f;
        if (ic_log_format_parse(arg, &f) < 0)
            return IC_ERR_INVAL;
        ic_log_set_format(f);
        return 0;
    }
    case 'R': a->log_prompts = true; return 0;
    }
    return IC_ERR_INVAL;
}

/* Returns 0 to run, 1 after --help, IC_ERR_INVAL after an error line. */
static int parse_args(int argc, char **argv, serve_args *a)
{
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:h", long_opts, NULL)) != -1) {
        if (c == 'h') {
            fputs(usage, stdout);
            return 1;
        }
        if (c == '?' || parse_option(c, optarg, a) < 0) {
            if (c != '?')
                fprintf(stderr, "inferencecenter serve: invalid value '%s' for --%s\n", optarg,
                        ic_cli_option_name(long_opts, c));
            fputs("try: inferencecenter serve --help\n", stderr);
            return IC_ERR_INVAL;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "inferencecenter serve: unexpected argument '%s'\n", argv[optind]);
        return IC_ERR_INVAL;
    }
    return 0;
}

static int parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                  "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0) {
            *out = strcasecmp(v, yes[i]) == 0;
            return 0;
        }
    }
    return IC_ERR_INVAL;
}

/* One key of the config file: the same table and parser as the flags. */
static int apply_config_key(void *ud, const char *key, const char *value, char *why,
                            size_t whylen)
{
    serve_args *a = ud;
    const struct option *o = long_opts;
    while (o->name && strcmp(o->name, key) != 0)
        o++;
    if (!o->name || o->val == 'h' || o->val == 'F') {
        snprintf(why, whylen, "unknown key '%s'%s", key,
                 o->name ? " (not allowed in a config file)" : "");
        return IC_ERR_PARSE;
    }
    int rc;
    if (o->has_arg == no_argument) {
        bool on = false;
        rc = parse_bool(value, &on);
        if (rc == 0 && o->val == 'I')
            a->insecure_no_auth = on;
        else if (rc == 0)
            a->log_prompts = on;
    } else if (a->n_owned == (int)(sizeof a->owned / sizeof *a->owned)) {
        snprintf(why, whylen, "too many keys");
        return IC_ERR_PARSE;
    } else {
        char *copy = strdup(value);
        if (!copy)
            return IC_ERR_NOMEM;
        a->owned[a->n_owned++] = copy;
        rc = parse_option(o->val, copy, a);
    }
    if (rc < 0)
        snprintf(why, whylen, "invalid value '%s' for '%s'", value, key);
    return rc < 0 ? IC_ERR_PARSE : 0;
}

/* Config file first, then the flags again on top. Returns like parse_args. */
static int load_args(int argc, char **argv, serve_args *a)
{
    *a = default_args();
    int rc = parse_args(argc, argv, a);
    if (rc != 0 || !a->config)
        return rc;
    const char *path = a->config;
    *a = default_args();
    char err[512];
    if (ic_config_load(path, apply_config_key, a, err, sizeof err) < 0) {
        fprintf(stderr, "inferencecenter serve: %s\n", err);
        return IC_ERR_INVAL;
    }
    rc = parse_args(argc, argv, a);
    a->config = path;
    return rc;
}

static void free_args(serve_args *a)
{
    for (int i = 0; i < a->n_owned; i++)
        free(a->owned[i]);
    a->n_owned = 0;
}

static bool is_loopback(const char *host)
{
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "localhost") == 0 ||
           strcmp(host, "::1") == 0;
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

/* The memory plan: GPU layers for auto, and the sessions whose KV cache
 * fits (so->max_sessions may go down). A model the planner cannot read is
 * left to the engine, whose error says what is wrong with it. */
static void plan_memory(const serve_args *a, ic_sched_opts *so, ic_engine_opts *eo)
{
    eo->n_gpu_layers = a->gpu_layers == GPU_LAYERS_AUTO ? 0 : a->gpu_layers;
    ic_model_shape shape;
    char err[256];
    if (ic_plan_read_shape(a->model, &shape, err, sizeof err) < 0)
        return;
    ic_plan_input in = ic_plan_input_default();
    ic_engine_device devs[IC_PLAN_MAX_DEVICES];
    in.n_devices = ic_engine_supports_gpu() ? ic_engine_gpu_devices(devs, IC_PLAN_MAX_DEVICES) : 0;
    for (int i = 0; i < in.n_devices; i++) {
        in.device_free_bytes[i] = devs[i].free_bytes;
        in.device_names[i] = devs[i].name;
    }
    int64_t ram_total;
    ic_host_memory(&ram_total, &in.host_available_bytes);
    in.margin_bytes = (int64_t)a->vram_margin_mib << 20;
    in.n_sessions = so->max_sessions;
    in.n_extra_seqs = so->prefix_slots;
    in.n_ctx_per_session = so->n_ctx_per_session;
    in.n_batch_tokens = (uint32_t)a->batch;
    in.kv_unified = so->kv_unified;
    ic_plan p;
    ic_plan_compute(&shape, &in, &p);
    ic_plan_shape_free(&shape);
    if (a->gpu_layers == GPU_LAYERS_AUTO) {
        eo->n_gpu_layers = p.n_gpu_layers;
        ic_log_info("%s", p.summary);
    }
    if (p.max_sessions < so->max_sessions) {
        ic_log_warn("memory holds the KV cache of %d sessions, not --max-sessions %d "
                    "(%.1f MiB each): serving %d", p.max_sessions, so->max_sessions,
                    (double)p.kv_bytes_per_session / (1 << 20), p.max_sessions);
        so->max_sessions = p.max_sessions;
    }
    if (!p.host_fits)
        ic_log_warn("host memory looks too small for the model's CPU part (%.0f MiB needed)",
                    (double)p.ram_bytes / (1 << 20));
}

static double hottest_gpu(void *ud)
{
    ic_hw_sample hw;
    ic_gpu_monitor_sample(ud, &hw);
    return hw.max_temperature_c;
}

static void watchdog_beat(void *ud)
{
    (void)ud;
    ic_notify_watchdog();
}

/* Loads the model, retrying with fewer GPU layers when an automatic split
 * still runs out of memory. */
static int load_engine(const serve_args *a, ic_engine_opts *eo, ic_engine **e)
{
    for (;;) {
        const char *why = NULL;
        int rc = ic_engine_create(eo, e, &why);
        if (rc == 0)
            return 0;
        bool retry = a->gpu_layers == GPU_LAYERS_AUTO && eo->n_gpu_layers > 0 &&
                     (rc == IC_ERR_MODEL || rc == IC_ERR_CONTEXT || rc == IC_ERR_NOMEM);
        if (!retry) {
            ic_log_error("cannot load model %s: %s", a->model, why);
            return rc;
        }
        int fewer = ic_plan_fewer_layers(eo->n_gpu_layers);
        ic_log_warn("loading with %d GPU layers failed (%s); retrying with %d",
                    eo->n_gpu_layers, why, fewer);
        eo->n_gpu_layers = fewer;
    }
}

static void *load_model(void *arg)
{
    loader *ld = arg;
    const serve_args *a = ld->args;
    ic_sched_opts so = ic_sched_opts_default();
    so.max_sessions = a->max_sessions;
    so.n_ctx_per_session = (uint32_t)a->ctx_size;
    so.kv_unified = a->kv_unified;
    so.prefix_slots = a->prefix_cache;
    so.wake = ic_gateway_wake;
    so.wake_ud = ld->gw;
    so.idle_unload_s = a->idle_unload_s;
    ic_gpu_monitor_opts mo = ic_gpu_monitor_opts_default();
    mo.log_info = false; /* the gateway's monitor says what it found */
    mo.read_host = false; /* the guard reads temperatures only */
    if (ic_gpu_monitor_create(&mo, &ld->thermal) == 0 && a->temp_limit_c > 0 &&
        ic_gpu_monitor_has_nvml(ld->thermal)) {
        so.temp_limit_c = a->temp_limit_c;
        so.read_temp_c = hottest_gpu;
        so.temp_ud = ld->thermal;
    }
    so.heartbeat_interval_ms = ic_notify_watchdog_interval_ms();
    so.heartbeat = so.heartbeat_interval_ms > 0 ? watchdog_beat : NULL;
    ic_engine_opts eo = ic_engine_opts_default();
    eo.model_path = a->model;
    eo.n_threads = a->threads;
    eo.n_batch_tokens = (uint32_t)a->batch;
    eo.progress = true;
    plan_memory(a, &so, &eo);
    ic_sched_engine_opts(&so, &eo);
    ic_log_info("loading model %s", a->model);
    ic_engine *e = NULL;
    if (load_engine(a, &eo, &e) < 0) {
        ic_gateway_load_failed(ld->gw);
        return NULL;
    }
    int rc = ic_sched_create(e, &so, &ld->sched);
    if (rc < 0) {
        ic_log_error("cannot start the scheduler: %s", ic_strerror(rc));
        ic_gateway_load_failed(ld->gw);
        return NULL;
    }
    ic_gateway_attach(ld->gw, ld->sched);
    char status[160];
    snprintf(status, sizeof status, "serving %s, %d sessions", a->model, so.max_sessions);
    ic_notify_ready(status);
    return NULL;
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
    ic_gateway *gw = arg;
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

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
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
    char url[300];
    snprintf(url, sizeof url, "ws://%s:%d/ws", a->host, a->port);
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
    ic_server_handlers h;
    ic_gateway_server_handlers(gw, &h);
    ic_server *srv = NULL;
    if (ic_server_create(&so, &h, &srv, err, sizeof err) < 0) {
        ic_log_error("%s", err);
        ic_gateway_destroy(gw);
        return 1;
    }
    ic_gateway_set_server(gw, srv);
    ic_log_info("listening on %s (health: http://%s:%d/health, metrics: /metrics)%s", url,
                a->host, a->port, a->tokens ? ", API tokens required" : ", no authentication");
    pthread_t sig_tid, load_tid;
    loader ld = {.args = a, .gw = gw};
    pthread_create(&sig_tid, NULL, signal_thread, gw);
    pthread_create(&load_tid, NULL, load_model, &ld);
    ic_server_run(srv);
    pthread_join(load_tid, NULL);
    ic_sched_stop(ld.sched);
    ic_server_destroy(srv);
    bool failed = ic_gateway_failed(gw);
    ic_sched_destroy(ld.sched);
    ic_gpu_monitor_destroy(ld.thermal);
    ic_gateway_destroy(gw);
    pthread_kill(sig_tid, SIGUSR1);
    pthread_join(sig_tid, NULL);
    ic_log_info("stopped");
    return failed ? 1 : 0;
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
    if (a->max_sessions_per_client == 0)
        a->max_sessions_per_client = a->max_sessions;
    if (a->batch < 2 * a->max_sessions)
        a->batch = 2 * a->max_sessions;
    if (!a->model) {
        a->model = default_model(defpath, cap);
        if (access(a->model, R_OK) != 0) {
            fprintf(stderr, "inferencecenter serve: no --model given and the built-in default "
                            "model %s is missing; scripts/quickstart makes it\n", a->model);
            return 2;
        }
    }
    return 0;
}

int ic_cmd_serve(int argc, char **argv)
{
    serve_args a;
    int rc = load_args(argc, argv, &a);
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
    rc = run(&a);
    free_args(&a);
    return rc;
}
