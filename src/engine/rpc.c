/* rpc.c - llama.cpp's RPC backend (see rpc.h): registering servers and
 * turning ggml-rpc's abort on a lost server into a reported failure.
 *
 * Thread: registration on the caller's (before the model loads); the
 * abort callback on ggml-rpc's threads. Owns the handler (atomics).
 */
#include "rpc.h"
#include "err.h"
#include "log.h"

#include <ggml-backend.h>
#include <ggml.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PROBE_TIMEOUT_MS 3000

static _Atomic(ic_rpc_fatal_fn) g_fatal;
static _Atomic(void *) g_fatal_ud;
static int g_n_servers;

/* ggml_abort's callback: abort() follows when it returns. Only aborts from
 * the RPC backend (its file name is in the message) are ours; any other
 * is printed and aborts as before. */
static void on_ggml_abort(const char *message)
{
    if (!strstr(message, "ggml-rpc")) {
        fprintf(stderr, "%s\n", message);
        return;
    }
    ic_rpc_fatal_fn fn = atomic_load(&g_fatal);
    if (!fn) {
        ic_log_error("llama.cpp's RPC backend failed: %s", message);
        _exit(1);
    }
    fn(atomic_load(&g_fatal_ud), message);
    /* Parked for good: returning would abort. Every signal is blocked on
     * this thread (serve blocks them before any thread starts). */
    for (;;)
        pause();
}

#if defined(__SANITIZE_ADDRESS__)
/* LeakSanitizer: ggml-rpc allocates each server's registry entry, devices,
 * buffer types and events with new and has no call that frees them
 * (ggml_backend_register keeps them until exit, then drops its list); they
 * are llama.cpp's, one set per server, and nothing of ours. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libggml-rpc.so\n"; }
#endif

void ic_rpc_set_fatal_handler(ic_rpc_fatal_fn fn, void *ud)
{
    atomic_store(&g_fatal_ud, ud);
    atomic_store(&g_fatal, fn);
}

int ic_rpc_n_servers(void) { return g_n_servers; }

/* host and port of "host:port" (the last colon, as ggml-rpc splits it). */
static int split_endpoint(const char *endpoint, char *host, size_t cap, char *port, size_t pcap)
{
    const char *colon = strrchr(endpoint, ':');
    if (!colon || colon == endpoint || (size_t)(colon - endpoint) >= cap || !colon[1] ||
        strlen(colon + 1) >= pcap)
        return IC_ERR_INVAL;
    for (const char *p = colon + 1; *p; p++)
        if (*p < '0' || *p > '9')
            return IC_ERR_INVAL;
    memcpy(host, endpoint, (size_t)(colon - endpoint));
    host[colon - endpoint] = '\0';
    snprintf(port, pcap, "%s", colon + 1);
    return 0;
}

/* One TCP connect with a time-out: ggml-rpc's own connect aborts. */
static int probe(const char *host, const char *port, char *why, size_t cap)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        snprintf(why, cap, "%s", gai_strerror(rc));
        return IC_ERR_IO;
    }
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int err = fd < 0 ? errno : 0;
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        err = errno;
        if (err == EINPROGRESS) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int n = poll(&pfd, 1, PROBE_TIMEOUT_MS);
            socklen_t len = sizeof err;
            if (n <= 0)
                err = n == 0 ? ETIMEDOUT : errno;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
        }
    }
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    if (err) {
        snprintf(why, cap, "%s", strerror(err));
        return IC_ERR_IO;
    }
    return 0;
}

int ic_rpc_add_server(const char *endpoint, char *err, size_t errlen)
{
    char host[256], port[16], why[128];
    if (split_endpoint(endpoint, host, sizeof host, port, sizeof port) < 0) {
        snprintf(err, errlen, "RPC server %s: not HOST:PORT", endpoint);
        return IC_ERR_INVAL;
    }
    ggml_backend_reg_t rpc = ggml_backend_reg_by_name("RPC");
    typedef ggml_backend_reg_t (*add_server_fn)(const char *endpoint);
    add_server_fn add = rpc ? (add_server_fn)ggml_backend_reg_get_proc_address(
                                  rpc, "ggml_backend_rpc_add_server")
                            : NULL;
    if (!add) {
        snprintf(err, errlen, "this llama.cpp build has no RPC backend (GGML_RPC=ON)");
        return IC_ERR_INVAL;
    }
    if (probe(host, port, why, sizeof why) < 0) {
        snprintf(err, errlen, "cannot reach RPC server %s: %s", endpoint, why);
        return IC_ERR_IO;
    }
    ggml_set_abort_callback(on_ggml_abort);
    ggml_backend_reg_t reg = add(endpoint);
    if (!reg || ggml_backend_reg_dev_count(reg) == 0) {
        snprintf(err, errlen, "RPC server %s offers no devices", endpoint);
        return IC_ERR_MODEL;
    }
    ggml_backend_register(reg);
    g_n_servers++;
    for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); i++) {
        ggml_backend_dev_t dev = ggml_backend_reg_dev_get(reg, i);
        size_t free_b = 0, total_b = 0;
        ggml_backend_dev_memory(dev, &free_b, &total_b);
        ic_log_info("RPC server %s: device %s, %.2f GiB free of %.2f GiB", endpoint,
                    ggml_backend_dev_name(dev), (double)free_b / (1 << 30),
                    (double)total_b / (1 << 30));
    }
    return 0;
}
