/* server.c - libwebsockets plumbing: one port for WebSocket (/ws) and HTTP,
 * connections by ID, bounded send queues, close codes, timers.
 *
 * Thread: the network thread runs ic_server_run and every callback here;
 * other threads only call ic_server_wake (lws_cancel_service). Owns the
 * lws context and every connection's buffers.
 */
#include "server.h"
#include "buf.h"
#include "err.h"
#include "idmap.h"
#include "log.h"

#include <libwebsockets.h>

#include <stdlib.h>
#include <string.h>

/* One queued outgoing message; buf has LWS_PRE bytes of headroom. */
typedef struct out_msg {
    struct out_msg *next;
    size_t len;
    unsigned char buf[];
} out_msg;

/* A WebSocket connection. Network thread. */
typedef struct conn {
    uint64_t id;
    struct lws *wsi;
    ic_server *srv;
    ic_buf rx;                 /* fragments of the message being received */
    bool rx_too_large;         /* drop the rest of this message */
    out_msg *head, *tail;
    size_t queued_bytes;
    bool dead;                 /* being killed: queue nothing more */
    int close_code;            /* close after the queue drains; 0 = not */
    char close_reason[64];
    lws_sorted_usec_list_t timer;
} conn;

/* lws's per-wsi storage: which connection, or an HTTP reply in flight. */
typedef struct pss {
    uint64_t conn_id;
    char *http_body;
    size_t http_len;
} pss;

struct ic_server {
    ic_server_opts opts;
    ic_server_handlers h;
    struct lws_context *ctx;
    ic_idmap conns;            /* id -> conn */
    lws_sorted_usec_list_t timer; /* the server's own timer (conn 0) */
    uint64_t next_id;
    bool quit;
};

ic_server_opts ic_server_opts_default(void)
{
    return (ic_server_opts){
        .host = "127.0.0.1",
        .port = 8765,
        .max_message_bytes = 1 << 20,
        .max_send_queue_bytes = 8 << 20,
    };
}

static void lws_log_to_ic(int level, const char *line)
{
    ic_log(level == LLL_ERR ? IC_LOG_WARN : IC_LOG_DEBUG, "lws: %s", line);
}

static void free_queue(conn *c)
{
    for (out_msg *m = c->head, *n; m; m = n) {
        n = m->next;
        free(m);
    }
    c->head = c->tail = NULL;
    c->queued_bytes = 0;
}

static conn *conn_of(struct lws *wsi)
{
    ic_server *s = lws_context_user(lws_get_context(wsi));
    pss *p = lws_wsi_user(wsi);
    return p && p->conn_id ? ic_idmap_get(&s->conns, p->conn_id) : NULL;
}

static void on_server_timer(lws_sorted_usec_list_t *sul)
{
    ic_server *s = lws_container_of(sul, ic_server, timer);
    if (s->h.on_timer)
        s->h.on_timer(s->h.ud, 0);
}

static void on_timer(lws_sorted_usec_list_t *sul)
{
    conn *c = lws_container_of(sul, conn, timer);
    if (c->srv->h.on_timer)
        c->srv->h.on_timer(c->srv->h.ud, c->id);
}

static int established(ic_server *s, struct lws *wsi, pss *p)
{
    conn *c = calloc(1, sizeof *c);
    if (!c || ic_idmap_put(&s->conns, ++s->next_id, c) < 0) {
        free(c);
        return -1;
    }
    c->id = s->next_id;
    c->wsi = wsi;
    c->srv = s;
    p->conn_id = c->id;
    char addr[64] = "";
    lws_get_peer_simple(wsi, addr, sizeof addr);
    s->h.on_open(s->h.ud, c->id, addr);
    return 0;
}

static void closed(ic_server *s, conn *c)
{
    lws_sul_cancel(&c->timer);
    ic_idmap_del(&s->conns, c->id);
    s->h.on_close(s->h.ud, c->id);
    free_queue(c);
    ic_buf_free(&c->rx);
    free(c);
}

static int receive(ic_server *s, conn *c, struct lws *wsi, const void *in, size_t len)
{
    bool binary = lws_frame_is_binary(wsi);
    if (lws_is_first_fragment(wsi)) {
        ic_buf_clear(&c->rx);
        c->rx_too_large = false;
    }
    if (!c->rx_too_large) {
        if (c->rx.len + len > s->opts.max_message_bytes) {
            c->rx_too_large = true;
            ic_buf_free(&c->rx);
        } else if (ic_buf_append(&c->rx, in, len) < 0) {
            return -1;
        }
    }
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0)
        return 0;
    if (c->rx_too_large)
        s->h.on_too_large(s->h.ud, c->id);
    else
        s->h.on_message(s->h.ud, c->id, c->rx.data ? c->rx.data : "", c->rx.len, binary);
    ic_buf_clear(&c->rx);
    return 0;
}

/* Sends one queued message; returns -1 to have lws close the connection. */
static int writeable(conn *c, struct lws *wsi)
{
    out_msg *m = c->head;
    if (m) {
        c->head = m->next;
        if (!c->head)
            c->tail = NULL;
        c->queued_bytes -= m->len;
        int n = lws_write(wsi, m->buf + LWS_PRE, m->len, LWS_WRITE_TEXT);
        free(m);
        if (n < 0)
            return -1;
    }
    if (c->head) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    if (c->close_code) {
        lws_close_reason(wsi, (enum lws_close_status)c->close_code,
                         (unsigned char *)c->close_reason, strlen(c->close_reason));
        return -1;
    }
    return 0;
}

static int http_request(ic_server *s, struct lws *wsi, pss *p, const char *path)
{
    char auth[512], inm[256], enc[256];
    ic_http_request req = {.path = path};
    if (lws_hdr_copy(wsi, auth, sizeof auth, WSI_TOKEN_HTTP_AUTHORIZATION) > 0)
        req.authorization = auth;
    if (lws_hdr_copy(wsi, inm, sizeof inm, WSI_TOKEN_HTTP_IF_NONE_MATCH) > 0)
        req.if_none_match = inm;
    if (lws_hdr_copy(wsi, enc, sizeof enc, WSI_TOKEN_HTTP_ACCEPT_ENCODING) > 0)
        req.accept_encoding = enc;
    ic_http_response resp = {.status = 500, .content_type = "application/json"};
    s->h.on_http(s->h.ud, &req, &resp);
    if (!resp.body)
        return -1;
    unsigned char head[LWS_PRE + 4096], *start = head + LWS_PRE, *pos = start,
                                        *end = head + sizeof head - 1;
    p->http_body = resp.body;
    p->http_len = resp.len;
    if (lws_add_http_common_headers(wsi, (unsigned int)resp.status, resp.content_type,
                                    (lws_filepos_t)p->http_len, &pos, end))
        return -1;
    if (resp.status == 401 &&
        lws_add_http_header_by_name(wsi, (const unsigned char *)"www-authenticate:",
                                    (const unsigned char *)"Bearer", 6, &pos, end))
        return -1;
    for (int i = 0; i < resp.n_headers && i < IC_HTTP_MAX_HEADERS; i++) {
        char name[64];
        const char *v = resp.headers[i].value;
        int n = snprintf(name, sizeof name, "%s:", resp.headers[i].name);
        if (n <= 0 || (size_t)n >= sizeof name ||
            lws_add_http_header_by_name(wsi, (const unsigned char *)name, (const unsigned char *)v,
                                        (int)strlen(v), &pos, end))
            return -1;
    }
    if (lws_finalize_write_http_header(wsi, start, &pos, end))
        return -1;
    lws_callback_on_writable(wsi);
    return 0;
}

static int http_writeable(struct lws *wsi, pss *p)
{
    if (!p->http_body)
        return 0;
    unsigned char *buf = malloc(LWS_PRE + p->http_len);
    if (!buf)
        return -1;
    memcpy(buf + LWS_PRE, p->http_body, p->http_len);
    int n = lws_write(wsi, buf + LWS_PRE, p->http_len, LWS_WRITE_HTTP_FINAL);
    free(buf);
    free(p->http_body);
    p->http_body = NULL;
    if (n < 0)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* Accepts WebSocket upgrades only on /ws and only when the gateway says so. */
static int filter_upgrade(ic_server *s, struct lws *wsi)
{
    char uri[64];
    if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) <= 0 || strcmp(uri, "/ws") != 0)
        return -1;
    return s->h.accept(s->h.ud) ? 0 : -1;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    struct lws_context *ctx = lws_get_context(wsi);
    ic_server *s = ctx ? lws_context_user(ctx) : NULL;
    pss *p = user;
    conn *c;
    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        if (s)
            s->h.on_wake(s->h.ud);
        return 0;
    case LWS_CALLBACK_HTTP:
        return http_request(s, wsi, p, in ? (const char *)in : "/");
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return http_writeable(wsi, p);
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return filter_upgrade(s, wsi);
    case LWS_CALLBACK_ESTABLISHED:
        return established(s, wsi, p);
    case LWS_CALLBACK_RECEIVE:
        c = conn_of(wsi);
        return c && !c->dead ? receive(s, c, wsi, in, len) : 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        c = conn_of(wsi);
        return c ? writeable(c, wsi) : 0;
    case LWS_CALLBACK_CLOSED:
        if ((c = conn_of(wsi)))
            closed(s, c);
        return 0;
    case LWS_CALLBACK_CLOSED_HTTP:
        if (p && p->http_body) {
            free(p->http_body);
            p->http_body = NULL;
        }
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static const struct lws_protocols protocols[] = {
    {"inferencecenter", callback, sizeof(pss), 16384, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

int ic_server_create(const ic_server_opts *opts, const ic_server_handlers *h, ic_server **out,
                     char *err, size_t errlen)
{
    *out = NULL;
    ic_server *s = calloc(1, sizeof *s);
    if (!s)
        return IC_ERR_NOMEM;
    s->opts = *opts;
    s->h = *h;
    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_to_ic);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = opts->port;
    info.iface = opts->host;
    info.protocols = protocols;
    info.user = s;
    info.gid = -1;
    info.uid = -1;
    if (!strchr(opts->host, ':'))
        info.options |= LWS_SERVER_OPTION_DISABLE_IPV6; /* an IPv4 address or name */
    s->ctx = lws_create_context(&info);
    if (!s->ctx) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use or not available)",
                 opts->host, opts->port);
        free(s);
        return IC_ERR_SYS;
    }
    *out = s;
    return 0;
}

static void free_conn(uint64_t id, void *val, void *ud)
{
    (void)id;
    (void)ud;
    conn *c = val;
    free_queue(c);
    ic_buf_free(&c->rx);
    free(c);
}

void ic_server_destroy(ic_server *s)
{
    if (!s)
        return;
    /* lws_context_destroy closes every connection, calling on_close. */
    lws_sul_cancel(&s->timer);
    lws_context_destroy(s->ctx);
    ic_idmap_each(&s->conns, free_conn, NULL);
    ic_idmap_free(&s->conns);
    free(s);
}

int ic_server_run(ic_server *s)
{
    while (!s->quit) {
        if (lws_service(s->ctx, 0) < 0)
            return IC_ERR_SYS;
    }
    return 0;
}

void ic_server_quit(ic_server *s)
{
    s->quit = true;
    lws_cancel_service(s->ctx);
}

/* Disconnects a client that does not read what it is sent. */
static void kill_conn(conn *c)
{
    c->dead = true;
    free_queue(c);
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

int ic_server_send(ic_server *s, uint64_t id, char *text, size_t len)
{
    conn *c = ic_idmap_get(&s->conns, id);
    if (!c || c->dead || c->close_code) {
        free(text);
        return IC_ERR_NOT_FOUND;
    }
    out_msg *m = malloc(sizeof *m + LWS_PRE + len);
    if (!m) {
        free(text);
        return IC_ERR_NOMEM;
    }
    memcpy(m->buf + LWS_PRE, text, len);
    free(text);
    m->len = len;
    m->next = NULL;
    if (c->tail)
        c->tail->next = m;
    else
        c->head = m;
    c->tail = m;
    c->queued_bytes += len;
    if (c->queued_bytes > s->opts.max_send_queue_bytes) {
        ic_log_warn("connection %llu: client is %zu bytes behind; disconnecting",
                    (unsigned long long)id, c->queued_bytes);
        kill_conn(c);
        return IC_ERR_OVERLOADED;
    }
    lws_callback_on_writable(c->wsi);
    return 0;
}

void ic_server_close(ic_server *s, uint64_t id, int code, const char *reason)
{
    conn *c = ic_idmap_get(&s->conns, id);
    if (!c || c->dead || c->close_code)
        return;
    c->close_code = code;
    snprintf(c->close_reason, sizeof c->close_reason, "%s", reason ? reason : "");
    lws_callback_on_writable(c->wsi);
}

void ic_server_set_timer(ic_server *s, uint64_t id, int ms)
{
    conn *c = id ? ic_idmap_get(&s->conns, id) : NULL;
    if (id && !c)
        return;
    lws_sorted_usec_list_t *sul = c ? &c->timer : &s->timer;
    if (ms <= 0)
        lws_sul_cancel(sul);
    else
        lws_sul_schedule(s->ctx, 0, sul, c ? on_timer : on_server_timer,
                         (lws_usec_t)ms * LWS_US_PER_MS);
}

int ic_server_n_connections(const ic_server *s) { return (int)s->conns.len; }

void ic_server_wake(ic_server *s) { lws_cancel_service(s->ctx); }
