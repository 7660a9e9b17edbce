/* server.h - WebSocket and HTTP on one port: the only module that includes
 * libwebsockets.h.
 *
 * The server owns connections and their bounded send queues, and knows
 * them only by integer ID. What the messages mean is the gateway's
 * business: the server calls its handlers on the network thread (the one
 * in ic_server_run) and knows nothing about sessions or models.
 */
#ifndef IC_SERVER_H
#define IC_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ic_server ic_server;

typedef struct ic_server_opts {
    const char *host;              /* address to listen on */
    int port;
    size_t max_message_bytes;      /* larger client messages are refused */
    size_t max_send_queue_bytes;   /* a client further behind is disconnected */
} ic_server_opts;

/* An HTTP GET as the handler sees it. */
typedef struct ic_http_request {
    const char *path;
    const char *authorization;     /* the Authorization header, or NULL */
    const char *if_none_match;     /* the If-None-Match header, or NULL */
    const char *accept_encoding;   /* the Accept-Encoding header, or NULL */
} ic_http_request;

/* A response header beyond Content-Type and Content-Length. */
typedef struct ic_http_header {
    const char *name;              /* "etag"; lower case, no colon */
    const char *value;             /* must live until on_http returns */
} ic_http_header;

#define IC_HTTP_MAX_HEADERS 12

/* The handler's answer. */
typedef struct ic_http_response {
    int status;
    char *body;                    /* malloc'd; the server frees it */
    size_t len;
    const char *content_type;      /* static string */
    ic_http_header headers[IC_HTTP_MAX_HEADERS]; /* extra headers, in order */
    int n_headers;
} ic_http_response;

/* Called on the network thread; ud is the handlers' ud. */
typedef struct ic_server_handlers {
    void *ud;
    /* May a WebSocket connection open now? (false while loading/stopping) */
    bool (*accept)(void *ud);
    void (*on_open)(void *ud, uint64_t conn, const char *peer_addr);
    /* One whole message; binary is true for binary frames. */
    void (*on_message)(void *ud, uint64_t conn, const char *data, size_t len, bool binary);
    /* A message grew past max_message_bytes (its data is dropped). */
    void (*on_too_large)(void *ud, uint64_t conn);
    void (*on_close)(void *ud, uint64_t conn);
    /* ic_server_wake was called (from any thread). */
    void (*on_wake)(void *ud);
    /* A timer set with ic_server_set_timer fired. */
    void (*on_timer)(void *ud, uint64_t conn);
    /* An HTTP GET: fills resp (body NULL: out of memory, the request fails). */
    void (*on_http)(void *ud, const ic_http_request *req, ic_http_response *resp);
} ic_server_handlers;

/* 127.0.0.1:8765, 1 MiB messages, 8 MiB send queues. */
ic_server_opts ic_server_opts_default(void);

/* Binds the port. Returns 0, or IC_ERR_SYS with a reason in err. */
int ic_server_create(const ic_server_opts *opts, const ic_server_handlers *h, ic_server **out,
                     char *err, size_t errlen);

/* NULL is ok. Network thread (after ic_server_run returned). */
void ic_server_destroy(ic_server *s);

/* Serves until ic_server_quit. Network thread. */
int ic_server_run(ic_server *s);

/* Makes ic_server_run return after the current callback. Network thread. */
void ic_server_quit(ic_server *s);

/* Queues a text message; takes ownership of text (malloc'd) on every path.
 * Returns 0, IC_ERR_NOT_FOUND (no such connection), or IC_ERR_OVERLOADED:
 * the client fell too far behind and is being disconnected. Network thread. */
int ic_server_send(ic_server *s, uint64_t conn, char *text, size_t len);

/* Closes the connection with a WebSocket close code once what is queued
 * has been sent. Network thread. */
void ic_server_close(ic_server *s, uint64_t conn, int code, const char *reason);

/* Calls on_timer for conn after ms (0 cancels); conn 0 is the server's own
 * timer. Network thread. */
void ic_server_set_timer(ic_server *s, uint64_t conn, int ms);

/* Open WebSocket connections. Network thread. */
int ic_server_n_connections(const ic_server *s);

/* Wakes the network thread to call on_wake. Any thread. */
void ic_server_wake(ic_server *s);

#endif
