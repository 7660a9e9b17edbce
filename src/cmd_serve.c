/* cmd_serve.c - `inferencecenter serve`: the server.
 *
 * Wiring only. Threads: the main thread runs the network loop (server +
 * gateway); a loader thread loads the model and starts the scheduler
 * (which then runs its own thread); a signal thread turns SIGTERM/SIGINT
 * into a graceful stop (a second one exits at once) and SIGHUP into a
 * tokens reload.
 */
#include "cli.h"
#include "cmd.h"
#include "engine.h"
#include "err.h"
#include "gateway.h"
#include "log.h"
#include "sched.h"
#include "server.h"

#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

typedef struct serve_args {
    const char *model;
    const char *host;
    int port;
    const char *tokens;
    bool insecure_no_auth;
    int max_sessions;
    int max_sessions_per_client;
    int ctx_size;
    int threads;
    int gpu_layers;            /* -2 = auto */
    int batch;
    bool kv_unified;
    int prefix_cache;
    const char *log_level;
} serve_args;

/* Shared by main and the loader thread; the loader writes, main reads
 * after joining it. */
typedef struct loader {
    const serve_args *args;
    ic_gateway *gw;
    ic_sched *sched;
} loader;

static const char usage[] =
    "usage: inferencecenter serve [--model PATH] [options]\n"
    "\n"
    "Serves the model to WebSocket clients at ws://HOST:PORT/ws (protocol v1,\n"
    "see docs/protocol.md); GET /health on the same port.\n"
    "\n"
    "  -m, --model PATH             GGUF model (default: the built-in default model)\n"
    "      --host ADDR              address to listen on (default 127.0.0.1)\n"
    "      --port N                 (default 8765)\n"
    "      --tokens FILE            require API tokens from FILE (see `token add`)\n"
    "      --insecure-no-auth       allow a non-loopback address without --tokens\n"
    "      --max-sessions N         sessions held at once, server-wide (default 8)\n"
    "      --max-sessions-per-client N  default per-client limit (default: --max-sessions)\n"
    "      --ctx-size N             context tokens per session (default 2048)\n"
    "      --threads N              CPU threads (default: all cores)\n"
    "      --gpu-layers auto|N      layers on the GPU (default auto)\n"
    "      --batch-size N           most tokens in one decode step (default 512)\n"
    "      --kv-unified on|off      one KV buffer for all sessions (default off: each\n"
    "                               session attends only to its own cells)\n"
    "      --prefix-cache N         system prompts whose KV cells are kept for new\n"
    "                               sessions to share (default 2, 0 = off; with a\n"
    "                               split KV buffer each costs one session's cells)\n"
    "      --log-level LEVEL        debug, info, warn or error (default info)\n"
    "  -h, --help                   this help\n";

static int parse_option(int c, const char *arg, serve_args *a)
{
    switch (c) {
    case 'm': a->model = arg; return 0;
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
            a->gpu_layers = -2;
            return 0;
        }
        return ic_cli_parse_int(arg, -1, 100000, &a->gpu_layers);
    case 'b': return ic_cli_parse_int(arg, 32, 1 << 16, &a->batch);
    case 'U':
        if (strcmp(arg, "on") && strcmp(arg, "off"))
            return IC_ERR_INVAL;
        a->kv_unified = strcmp(arg, "on") == 0;
        return 0;
    case 'P': return ic_cli_parse_int(arg, 0, 64, &a->prefix_cache);
    case 'L': {
        enum ic_log_level lv;
        if (ic_log_level_parse(arg, &lv) < 0)
            return IC_ERR_INVAL;
        a->log_level = arg;
        ic_log_set_level(lv);
        return 0;
    }
    }
    return IC_ERR_INVAL;
}

static int parse_args(int argc, char **argv, serve_args *a)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"host", required_argument, 0, 'H'},
        {"port", required_argument, 0, 'p'},      {"tokens", required_argument, 0, 'T'},
        {"insecure-no-auth", no_argument, 0, 'I'}, {"max-sessions", required_argument, 0, 'S'},
        {"max-sessions-per-client", required_argument, 0, 'C'},
        {"ctx-size", required_argument, 0, 'c'},  {"threads", required_argument, 0, 't'},
        {"gpu-layers", required_argument, 0, 'g'}, {"batch-size", required_argument, 0, 'b'},
        {"kv-unified", required_argument, 0, 'U'}, {"log-level", required_argument, 0, 'L'},
        {"prefix-cache", required_argument, 0, 'P'},
        {"help", no_argument, 0, 'h'},            {0, 0, 0, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:h", opts, NULL)) != -1) {
        if (c == 'h') {
            fputs(usage, stdout);
            return 1;
        }
        if (c == '?' || parse_option(c, optarg, a) < 0) {
            if (c != '?')
                fprintf(stderr, "inferencecenter serve: invalid value '%s' for --%s\n", optarg,
                        ic_cli_option_name(opts, c));
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
    ic_engine_opts eo = ic_engine_opts_default();
    ic_sched_engine_opts(&so, &eo);
    eo.model_path = a->model;
    eo.n_threads = a->threads;
    eo.n_batch_tokens = (uint32_t)a->batch;
    /* auto: everything on the GPU when this llama.cpp build has one; the
     * VRAM-aware split comes with the hardware monitor. */
    eo.n_gpu_layers = a->gpu_layers == -2 ? (ic_engine_supports_gpu() ? -1 : 0) : a->gpu_layers;
    eo.progress = true;
    ic_log_info("loading model %s", a->model);
    ic_engine *e = NULL;
    const char *why = NULL;
    int rc = ic_engine_create(&eo, &e, &why);
    if (rc < 0) {
        ic_log_error("cannot load model %s: %s", a->model, why);
        ic_gateway_load_failed(ld->gw);
        return NULL;
    }
    rc = ic_sched_create(e, &so, &ld->sched);
    if (rc < 0) {
        ic_log_error("cannot start the scheduler: %s", ic_strerror(rc));
        ic_gateway_load_failed(ld->gw);
        return NULL;
    }
    ic_gateway_attach(ld->gw, ld->sched);
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
    ic_log_info("listening on %s (health: http://%s:%d/health)%s", url, a->host, a->port,
                a->tokens ? ", API tokens required" : ", no authentication");
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
    ic_gateway_destroy(gw);
    pthread_kill(sig_tid, SIGUSR1);
    pthread_join(sig_tid, NULL);
    ic_log_info("stopped");
    return failed ? 1 : 0;
}

int ic_cmd_serve(int argc, char **argv)
{
    serve_args a = {
        .host = "127.0.0.1", .port = 8765, .max_sessions = 8, .max_sessions_per_client = 0,
        .ctx_size = 2048, .gpu_layers = -2, .batch = 512, .kv_unified = false, .prefix_cache = 2,
    };
    int rc = parse_args(argc, argv, &a);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    if (!a.tokens && !is_loopback(a.host) && !a.insecure_no_auth) {
        fprintf(stderr, "inferencecenter serve: refusing to listen on %s without --tokens "
                        "(anyone who can reach it could use it); add --tokens FILE or "
                        "--insecure-no-auth\n", a.host);
        return 2;
    }
    if (a.max_sessions_per_client == 0)
        a.max_sessions_per_client = a.max_sessions;
    if (a.batch < 2 * a.max_sessions)
        a.batch = 2 * a.max_sessions;
    char defpath[512];
    if (!a.model) {
        a.model = default_model(defpath, sizeof defpath);
        if (access(a.model, R_OK) != 0) {
            fprintf(stderr, "inferencecenter serve: no --model given and the built-in default "
                            "model %s is missing; scripts/quickstart makes it\n", a.model);
            return 2;
        }
    }
    raise_fd_limit();
    /* Signals go to the signal thread only: block them before any thread
     * starts, so every thread inherits the mask. */
    sigset_t set;
    server_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    ic_engine_global_init();
    return run(&a);
}
