/* test_server.c - the network server against real loopback sockets: the
 * pre-auth message limit and ic_server_set_max_message, refusing at open
 * with a close code, the request fields handlers see, deferred and
 * streamed (chunked) responses, on_http_gone, and the memory an unfinished
 * fragmented message can hold (RSS).
 *
 * The server runs on its own thread (the "network thread"); the test
 * thread is the client and reads what the handlers recorded under a lock.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* --- the server side ---------------------------------------------------- */

typedef struct rec {
    pthread_mutex_t mu;
    ic_server *srv;
    atomic_bool stop;
    int refuse_after;          /* on_open closes with 4029 beyond this many */
    int n_open, n_too_large, n_messages, n_gone;
    size_t last_len;
    char method[16], path[64], query[64], body[64], host[64], ctype[64], xff[64], authz[64],
        key[64], peer[64];
    uint64_t stream_id, defer_id;
    int stream_step;
} rec;

static void h_lock(rec *r) { pthread_mutex_lock(&r->mu); }
static void h_unlock(rec *r) { pthread_mutex_unlock(&r->mu); }

static bool h_accept(void *ud) { (void)ud; return true; }

static void h_open(void *ud, uint64_t conn, const char *peer, const char *xff)
{
    (void)xff;
    rec *r = ud;
    h_lock(r);
    r->n_open++;
    snprintf(r->peer, sizeof r->peer, "%s", peer);
    bool refuse = r->refuse_after && ic_server_n_connections(r->srv) > r->refuse_after;
    h_unlock(r);
    if (refuse)
        ic_server_close(r->srv, conn, 4029, "too many connections from your address");
}

static void h_message(void *ud, uint64_t conn, const char *data, size_t len, bool binary)
{
    rec *r = ud;
    (void)binary;
    h_lock(r);
    r->n_messages++;
    r->last_len = len;
    h_unlock(r);
    if (len == 4 && memcmp(data, "auth", 4) == 0)
        ic_server_set_max_message(r->srv, conn, 1 << 20);
    char *echo = malloc(32);
    int n = snprintf(echo, 32, "got %zu", len);
    ic_server_send(r->srv, conn, echo, (size_t)n);
}

static void h_too_large(void *ud, uint64_t conn)
{
    rec *r = ud;
    (void)conn;
    h_lock(r);
    r->n_too_large++;
    h_unlock(r);
}

static void h_close(void *ud, uint64_t conn) { (void)ud; (void)conn; }

static void h_wake(void *ud)
{
    rec *r = ud;
    if (atomic_load(&r->stop))
        ic_server_quit(r->srv);
}

static char *dupstr(const char *s) { return strdup(s); }

static void h_timer(void *ud, uint64_t conn)
{
    rec *r = ud;
    (void)conn;
    if (r->defer_id) {
        ic_http_response resp = {.status = 202, .body = dupstr("late"), .len = 4,
                                 .content_type = "text/plain"};
        assert_int_equal(ic_server_http_respond(r->srv, r->defer_id, &resp), 0);
        r->defer_id = 0;
    }
    if (r->stream_id) {
        if (r->stream_step < 3) {
            char *d = malloc(32);
            int n = snprintf(d, 32, "data: %d\n\n", r->stream_step++);
            ic_server_http_chunk(r->srv, r->stream_id, d, (size_t)n);
            ic_server_set_timer(r->srv, 0, 5);
        } else {
            ic_server_http_end(r->srv, r->stream_id);
            r->stream_id = 0;
        }
    }
}

static void copy(char *dst, const char *src) { snprintf(dst, 64, "%s", src ? src : "(null)"); }

static void h_http(void *ud, const ic_http_request *q, ic_http_response *resp)
{
    rec *r = ud;
    h_lock(r);
    copy(r->method, q->method);
    copy(r->path, q->path);
    copy(r->query, q->query);
    snprintf(r->body, sizeof r->body, "%.*s", (int)q->body_len, q->body);
    copy(r->host, q->host);
    copy(r->ctype, q->content_type);
    copy(r->xff, q->forwarded_for);
    copy(r->authz, q->authorization);
    copy(r->key, q->api_key);
    h_unlock(r);
    resp->content_type = "text/plain";
    if (strcmp(q->path, "/stream") == 0 || strcmp(q->path, "/hold") == 0) {
        resp->status = 200;
        resp->stream = true;
        resp->content_type = "text/event-stream";
        if (strcmp(q->path, "/stream") == 0) {
            r->stream_id = q->id;
            r->stream_step = 0;
            ic_server_set_timer(r->srv, 0, 5);
        }
        return;
    }
    if (strcmp(q->path, "/defer") == 0) {
        resp->defer = true;
        r->defer_id = q->id;
        ic_server_set_timer(r->srv, 0, 20);
        return;
    }
    resp->status = 200;
    resp->body = dupstr("ok");
    resp->len = 2;
}

static void h_gone(void *ud, uint64_t id)
{
    rec *r = ud;
    (void)id;
    h_lock(r);
    r->n_gone++;
    h_unlock(r);
}

typedef struct fixture {
    rec r;
    ic_server *srv;
    pthread_t tid;
    int port;
} fixture;

static void *run_thread(void *arg)
{
    ic_server_run(arg);
    return NULL;
}

static fixture *start(ic_server_opts o, int refuse_after)
{
    fixture *f = calloc(1, sizeof *f);
    pthread_mutex_init(&f->r.mu, NULL);
    f->r.refuse_after = refuse_after;
    o.host = "127.0.0.1";
    o.port = 0;
    ic_server_handlers h = {
        .ud = &f->r, .accept = h_accept, .on_open = h_open, .on_message = h_message,
        .on_too_large = h_too_large, .on_close = h_close, .on_wake = h_wake,
        .on_timer = h_timer, .on_http = h_http, .on_http_gone = h_gone,
    };
    char err[256];
    assert_int_equal(ic_server_create(&o, &h, &f->srv, err, sizeof err), 0);
    f->r.srv = f->srv;
    f->port = ic_server_port(f->srv);
    assert_true(f->port > 0);
    pthread_create(&f->tid, NULL, run_thread, f->srv);
    return f;
}

static void stop(fixture *f)
{
    atomic_store(&f->r.stop, true);
    ic_server_wake(f->srv);
    pthread_join(f->tid, NULL);
    ic_server_destroy(f->srv);
    pthread_mutex_destroy(&f->r.mu);
    free(f);
}

/* --- the client side ---------------------------------------------------- */

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void put(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        c += w;
        n -= (size_t)w;
    }
}

/* Reads until s appears (or the peer closes); returns what was read. */
static char *read_until(int fd, const char *s, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        buf[n] = '\0';
        if (s && strstr(buf, s))
            break;
        ssize_t r = recv(fd, buf + n, cap - n, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
        if (n == cap)
            break;
    }
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

static int ws_dial(int port)
{
    int fd = dial(port);
    char req[256];
    int n = snprintf(req, sizeof req,
                     "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n", port);
    put(fd, req, (size_t)n);
    /* read the 101 byte by byte so that no frame is swallowed */
    char head[512];
    size_t k = 0;
    while (k < sizeof head - 1 && recv(fd, head + k, 1, 0) == 1) {
        head[++k] = '\0';
        if (k >= 4 && memcmp(head + k - 4, "\r\n\r\n", 4) == 0)
            break;
    }
    head[k] = '\0';
    assert_non_null(strstr(head, "HTTP/1.1 101"));
    assert_non_null(strstr(head, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    return fd;
}

/* A masked client frame (mask 0x11223344). */
static void ws_put(int fd, int op, bool fin, const char *p, size_t n)
{
    unsigned char h[14];
    size_t hl = 2;
    h[0] = (unsigned char)((fin ? 0x80 : 0) | op);
    if (n < 126) {
        h[1] = (unsigned char)(0x80 | n);
    } else if (n < 65536) {
        h[1] = 0x80 | 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    static const unsigned char m[4] = {0x11, 0x22, 0x33, 0x44};
    memcpy(h + hl, m, 4);
    hl += 4;
    unsigned char *buf = malloc(hl + n);
    memcpy(buf, h, hl);
    for (size_t i = 0; i < n; i++)
        buf[hl + i] = (unsigned char)(p[i] ^ m[i & 3]);
    put(fd, buf, hl + n);
    free(buf);
}

/* The next server frame: its opcode, payload in out (NUL-terminated). */
static int ws_get(int fd, char *out, size_t cap)
{
    unsigned char h[2];
    if (recv(fd, h, 2, MSG_WAITALL) != 2)
        return -1;
    size_t n = h[1] & 0x7f;
    if (n == 126) {
        unsigned char e[2];
        assert_int_equal(recv(fd, e, 2, MSG_WAITALL), 2);
        n = (size_t)e[0] << 8 | e[1];
    }
    assert_true(n < cap);
    if (n)
        assert_int_equal(recv(fd, out, n, MSG_WAITALL), (ssize_t)n);
    out[n] = '\0';
    return h[0] & 0x0f;
}

static int close_code(const char *payload) { return (unsigned char)payload[0] << 8 |
                                                    (unsigned char)payload[1]; }

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = atol(line + 6);
    if (f)
        fclose(f);
    return kb;
}

/* --- tests -------------------------------------------------------------- */

static void preauth_limit_until_raised(void **state)
{
    (void)state;
    ic_server_opts o = ic_server_opts_default();
    o.preauth_max_message_bytes = 4096;
    fixture *f = start(o, 0);
    char *big = malloc(5000), buf[256];
    memset(big, 'x', 5000);

    int a = ws_dial(f->port);                    /* never raised: 5000 bytes are too many */
    ws_put(a, 0x1, true, big, 5000);
    assert_int_equal(ws_get(a, buf, sizeof buf), 0x8);
    assert_int_equal(close_code(buf), 1009);
    close(a);

    int b = ws_dial(f->port);
    ws_put(b, 0x1, true, "auth", 4);             /* the handler raises the limit */
    assert_int_equal(ws_get(b, buf, sizeof buf), 0x1);
    assert_string_equal(buf, "got 4");
    ws_put(b, 0x1, true, big, 5000);
    assert_int_equal(ws_get(b, buf, sizeof buf), 0x1);
    assert_string_equal(buf, "got 5000");
    close(b);
    free(big);
    h_lock(&f->r);
    assert_int_equal(f->r.n_too_large, 1);
    assert_string_equal(f->r.peer, "127.0.0.1");
    h_unlock(&f->r);
    stop(f);
}

/* Unfinished fragmented messages: with the 1 MiB limit each connection
 * can hold ~1 MiB; with a 4 KiB pre-auth limit they are closed at once. */
static long unfinished_rss(size_t preauth, int n_conns, int *n_closed)
{
    ic_server_opts o = ic_server_opts_default();
    o.preauth_max_message_bytes = preauth;
    fixture *f = start(o, 0);
    size_t frag = (1 << 20) - 1024;
    char *junk = malloc(frag);
    memset(junk, 'j', frag);
    int *fds = calloc((size_t)n_conns, sizeof *fds);
    long rss0 = rss_kb();
    *n_closed = 0;
    for (int i = 0; i < n_conns; i++) {
        fds[i] = ws_dial(f->port);
        ws_put(fds[i], 0x1, false, "{", 1);
        ws_put(fds[i], 0x0, false, junk, frag); /* no FIN: the message never ends */
    }
    struct timespec ts = {0, 300 * 1000 * 1000};
    nanosleep(&ts, NULL);
    long grown = rss_kb() - rss0;
    char buf[256];
    struct timeval tv = {0, 200 * 1000};
    for (int i = 0; i < n_conns; i++) {
        setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (ws_get(fds[i], buf, sizeof buf) == 0x8 && close_code(buf) == 1009)
            (*n_closed)++;
        close(fds[i]);
    }
    free(fds);
    free(junk);
    stop(f);
    return grown;
}

static void unfinished_fragments_are_bounded(void **state)
{
    (void)state;
    int closed_open = 0, closed_pre = 0;
    long open_kb = unfinished_rss(0, 40, &closed_open);
    long pre_kb = unfinished_rss(4096, 40, &closed_pre);
    printf("RSS held by 40 unfinished ~1 MiB messages: %ld kB at the 1 MiB limit, "
           "%ld kB at a 4 KiB pre-auth limit\n", open_kb, pre_kb);
    assert_int_equal(closed_open, 0);
    assert_int_equal(closed_pre, 40);
    assert_true(open_kb > 30 * 1024);            /* the measurement sees the buffers */
    assert_true(pre_kb < 4 * 1024);
}

static void refuse_at_open_with_a_close_code(void **state)
{
    (void)state;
    fixture *f = start(ic_server_opts_default(), 2);
    int a = ws_dial(f->port), b = ws_dial(f->port), c = ws_dial(f->port);
    char buf[256];
    assert_int_equal(ws_get(c, buf, sizeof buf), 0x8);
    assert_int_equal(close_code(buf), 4029);
    assert_string_equal(buf + 2, "too many connections from your address");
    ws_put(a, 0x1, true, "hi", 2);               /* the others are unaffected */
    assert_int_equal(ws_get(a, buf, sizeof buf), 0x1);
    close(a);
    close(b);
    close(c);
    stop(f);
}

static void request_fields(void **state)
{
    (void)state;
    fixture *f = start(ic_server_opts_default(), 0);
    int fd = dial(f->port);
    const char *q = "POST /v1/chat%2Dx?stream=1 HTTP/1.1\r\nHost: localhost\r\n"
                    "Content-Type: application/json\r\nX-Forwarded-For: 10.0.0.1\r\n"
                    "X-Forwarded-For: 10.0.0.2\r\nAuthorization: Bearer abc\r\n"
                    "x-api-key: k1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n";
    put(fd, q, strlen(q));
    char *got = read_until(fd, "\r\n\r\nok", NULL);
    assert_non_null(strstr(got, "HTTP/1.1 200 OK"));
    free(got);
    h_lock(&f->r);
    assert_string_equal(f->r.method, "POST");
    assert_string_equal(f->r.path, "/v1/chat-x");
    assert_string_equal(f->r.query, "stream=1");
    assert_string_equal(f->r.body, "{\"a\":1}");
    assert_string_equal(f->r.host, "localhost");
    assert_string_equal(f->r.ctype, "application/json");
    assert_string_equal(f->r.xff, "10.0.0.1, 10.0.0.2");
    assert_string_equal(f->r.authz, "Bearer abc");
    assert_string_equal(f->r.key, "k1");
    h_unlock(&f->r);
    close(fd);
    stop(f);
}

static void body_limit_is_413(void **state)
{
    (void)state;
    ic_server_opts o = ic_server_opts_default();
    o.max_body_bytes = 100;
    fixture *f = start(o, 0);
    int fd = dial(f->port);
    const char *q = "POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 101\r\n\r\n";
    put(fd, q, strlen(q));
    char *got = read_until(fd, NULL, NULL);
    assert_non_null(strstr(got, "HTTP/1.1 413 "));
    free(got);
    close(fd);
    fd = dial(f->port);
    q = "POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n";
    put(fd, q, strlen(q));
    char body[100];
    memset(body, 'b', sizeof body);
    put(fd, body, sizeof body);
    got = read_until(fd, "\r\n\r\nok", NULL);
    assert_non_null(strstr(got, "HTTP/1.1 200 "));
    free(got);
    close(fd);
    stop(f);
}

static void deferred_and_streamed_responses(void **state)
{
    (void)state;
    fixture *f = start(ic_server_opts_default(), 0);
    int fd = dial(f->port);
    const char *q = "GET /defer HTTP/1.1\r\nHost: localhost\r\n\r\n"
                    "GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n"
                    "GET /stream HTTP/1.0\r\n\r\n";
    put(fd, q, strlen(q));
    char *got = read_until(fd, NULL, NULL);     /* until the HTTP/1.0 stream closes */
    char *d = strstr(got, "\r\n\r\nlate");
    assert_non_null(strstr(got, "HTTP/1.1 202 "));
    assert_non_null(d);
    char *s1 = strstr(d, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         "Transfer-Encoding: chunked\r\n");
    assert_non_null(s1);
    assert_non_null(strstr(s1, "\r\n\r\n9\r\ndata: 0\n\n\r\n9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n"
                               "\r\n0\r\n\r\nHTTP/1.1 200 OK"));
    /* HTTP/1.0 has no chunks: raw data, then the close */
    char *s2 = strstr(s1 + 10, "HTTP/1.1 200 OK");
    assert_non_null(s2);
    assert_null(strstr(s2, "Transfer-Encoding"));
    assert_non_null(strstr(s2, "Connection: close\r\n"));
    assert_non_null(strstr(s2, "\r\n\r\ndata: 0\n\ndata: 1\n\ndata: 2\n\n"));
    free(got);
    close(fd);
    stop(f);
}

static void client_gone_mid_stream(void **state)
{
    (void)state;
    fixture *f = start(ic_server_opts_default(), 0);
    int fd = dial(f->port);
    const char *q = "GET /hold HTTP/1.1\r\nHost: localhost\r\n\r\n";
    put(fd, q, strlen(q));
    free(read_until(fd, "\r\n\r\n", NULL));
    close(fd);
    int gone = 0;
    for (int i = 0; i < 200 && !gone; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        h_lock(&f->r);
        gone = f->r.n_gone;
        h_unlock(&f->r);
    }
    assert_int_equal(gone, 1);
    stop(f);
}

static void default_cap_is_below_the_fd_limit(void **state)
{
    (void)state;
    int cap = ic_server_default_max_connections();
    long lim = sysconf(_SC_OPEN_MAX);
    assert_true(cap > 0);
    assert_true(cap <= lim - 32);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(preauth_limit_until_raised),
        cmocka_unit_test(unfinished_fragments_are_bounded),
        cmocka_unit_test(refuse_at_open_with_a_close_code),
        cmocka_unit_test(request_fields),
        cmocka_unit_test(body_limit_is_413),
        cmocka_unit_test(deferred_and_streamed_responses),
        cmocka_unit_test(client_gone_mid_stream),
        cmocka_unit_test(default_cap_is_below_the_fd_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
