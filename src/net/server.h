/* server.h - WebSocket and HTTP/1.1 on one port: the only module that
 * includes libwebsockets.h.
 *
 * libwebsockets (Debian's 4.1.6) is only the event loop here: it polls our
 * own listening socket and the raw sockets we accept, runs the timers and
 * the cross-thread wake-up. HTTP/1.1 and the WebSocket protocol (RFC 6455)
 * are parsed by this module (net/http.c holds the pure parsing), because
 * lws 4.1.6 spins on pipelined requests with bodies, answers oversized
 * requests with a bare close, accepts unmasked frames and echoes invalid
 * close reasons (see docs/protocol.md, "Security").
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
    int port;                      /* 0: an ephemeral port (ic_server_port) */
    size_t max_message_bytes;      /* WebSocket messages after ic_server_set_max_message */
    size_t preauth_max_message_bytes; /* a new connection's message limit until
                                   ic_server_set_max_message; 0 = max_message_bytes */
    size_t max_send_queue_bytes;   /* a client further behind is disconnected */
    size_t max_body_bytes;         /* HTTP request bodies; larger: 413 */
    size_t max_url_bytes;          /* request target; longer: 414 */
    size_t max_header_bytes;       /* request line + headers; larger: 431 */
    int max_connections;           /* open sockets (HTTP + WebSocket); more get 503;
                                   0 = derived from RLIMIT_NOFILE */
    int header_timeout_s;          /* a request's headers must arrive within this */
    int idle_timeout_s;            /* an idle keep-alive HTTP connection is closed */
    const char *allow_origins;     /* extra WebSocket/HTTP Origins, comma-separated
                                   ("*": any); NULL: same origin only */
    const char *allow_hosts;       /* extra names accepted in Host, comma-separated */
    /* Both set: TLS on the port (https:// and wss://, nothing in plain):
     * a PEM certificate chain and its PEM private key (net/tls.c). */
    const char *tls_cert_path;
    const char *tls_key_path;
} ic_server_opts;

/* One HTTP request as the handler sees it. Every string is NUL-terminated
 * and valid only during the on_http call; absent headers are NULL. */
typedef struct ic_http_request {
    uint64_t id;                   /* for ic_server_http_respond / _chunk / _end */
    const char *method;            /* "GET", "HEAD", "POST", ... (HEAD: answer as GET,
                                   the server sends no body) */
    const char *path;              /* percent-decoded, without the query */
    const char *query;             /* raw, after '?', or "" */
    const char *peer_addr;         /* the TCP peer, e.g. "127.0.0.1" */
    const char *host;
    const char *origin;
    const char *content_type;
    const char *forwarded_for;     /* X-Forwarded-For (repeated headers joined by ", ") */
    const char *authorization;     /* the Authorization header */
    const char *api_key;           /* x-api-key */
    const char *body;              /* the request body (de-chunked), "" when none */
    size_t body_len;
    const char *if_none_match;     /* If-None-Match */
    const char *accept_encoding;   /* Accept-Encoding */
} ic_http_request;

/* A response header beyond Content-Type and Content-Length. */
typedef struct ic_http_header {
    const char *name;              /* "etag"; lower case, no colon */
    const char *value;             /* must live until the response is queued */
} ic_http_header;

#define IC_HTTP_MAX_HEADERS 12

/* The handler's answer. */
typedef struct ic_http_response {
    int status;
    /* The status line's reason phrase (spaces and visible ASCII only);
     * "": the standard one ("OK"). GET /health/weight puts HAProxy's agent
     * words there (the agent reads the first line it gets). */
    char reason[48];
    char *body;                    /* malloc'd; the server frees it */
    size_t len;
    const char *content_type;      /* static string */
    const char *allow;             /* static; an Allow header (405), or NULL */
    int retry_after_s;             /* > 0: a Retry-After header */
    /* true: the status line and headers go now with Transfer-Encoding:
     * chunked (body, if any, as the first chunk); the handler then calls
     * ic_server_http_chunk and ic_server_http_end (e.g. for SSE). */
    bool stream;
    /* true: the handler answers later with ic_server_http_respond. */
    bool defer;
    ic_http_header headers[IC_HTTP_MAX_HEADERS]; /* extra headers, in order */
    int n_headers;
} ic_http_response;

/* Called on the network thread; ud is the handlers' ud. */
typedef struct ic_server_handlers {
    void *ud;
    /* May a WebSocket connection open now? (false while loading/stopping: 503) */
    bool (*accept)(void *ud);
    /* A WebSocket connection opened (forwarded_for: the upgrade's
     * X-Forwarded-For, or NULL); ic_server_close here refuses it with a
     * close code. */
    void (*on_open)(void *ud, uint64_t conn, const char *peer_addr, const char *forwarded_for);
    /* One whole message; binary is true for binary frames. Text is valid UTF-8. */
    void (*on_message)(void *ud, uint64_t conn, const char *data, size_t len, bool binary);
    /* A message grew past the connection's limit: the server closes it with
     * 1009 after what this queues. */
    void (*on_too_large)(void *ud, uint64_t conn);
    void (*on_close)(void *ud, uint64_t conn);
    /* ic_server_wake was called (from any thread). */
    void (*on_wake)(void *ud);
    /* A timer set with ic_server_set_timer fired. */
    void (*on_timer)(void *ud, uint64_t conn);
    /* An HTTP request: fills resp (body NULL with status 0: out of memory,
     * the request gets 500). */
    void (*on_http)(void *ud, const ic_http_request *req, ic_http_response *resp);
    /* Optional: the client of a deferred or streamed HTTP request went
     * away before ic_server_http_end; the id is dead. */
    void (*on_http_gone)(void *ud, uint64_t id);
    /* Optional: renders an error the server answers itself (400, 403, 413,
     * 414, 421, 431, 503, ...); when NULL the body is text/plain. */
    void (*http_error)(void *ud, int status, const char *message, ic_http_response *resp);
} ic_server_handlers;

/* 127.0.0.1:8765, 1 MiB messages, 8 MiB send queues, 4 MiB bodies, 4 KiB
 * URLs, 16 KiB headers, connections from RLIMIT_NOFILE, 10 s / 30 s. */
ic_server_opts ic_server_opts_default(void);

/* The connection cap max_connections = 0 stands for: the soft RLIMIT_NOFILE
 * minus a reserve for the rest of the process (max(32, limit / 16)). */
int ic_server_default_max_connections(void);

/* Binds the port. Returns 0, or IC_ERR_SYS with a reason in err. */
int ic_server_create(const ic_server_opts *opts, const ic_server_handlers *h, ic_server **out,
                     char *err, size_t errlen);

/* NULL is ok. Network thread (after ic_server_run returned). */
void ic_server_destroy(ic_server *s);

/* True when the server speaks TLS (opts.tls_cert_path). */
bool ic_server_tls(const ic_server *s);

/* Re-reads the certificate and key files (a renewal, SIGHUP): new
 * handshakes use them, connections already up keep theirs. Returns 0 with
 * the certificate's subject and expiry in info, or IC_ERR_IO / IC_ERR_INVAL
 * with a reason in err and the old pair still in use; IC_ERR_INVAL too
 * without TLS. Network thread. */
int ic_server_reload_tls(ic_server *s, char *info, size_t infolen, char *err, size_t errlen);

/* The bound port (useful with opts.port 0). */
int ic_server_port(const ic_server *s);

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

/* Sets conn's WebSocket message limit (e.g. raised after AUTH from
 * opts.preauth_max_message_bytes). Network thread. */
void ic_server_set_max_message(ic_server *s, uint64_t conn, size_t bytes);

/* Calls on_timer for conn after ms (0 cancels); conn 0 is the server's own
 * timer. Network thread. */
void ic_server_set_timer(ic_server *s, uint64_t conn, int ms);

/* Open WebSocket connections. Network thread. */
int ic_server_n_connections(const ic_server *s);

/* Open sockets of every kind (HTTP, WebSocket, being refused). Network thread. */
int ic_server_n_sockets(const ic_server *s);

/* Answers a request whose handler set resp->defer; takes resp->body.
 * IC_ERR_NOT_FOUND when the client is gone. Network thread. */
int ic_server_http_respond(ic_server *s, uint64_t id, ic_http_response *resp);

/* One chunk of a streamed response; takes ownership of data on every path
 * (IC_ERR_OVERLOADED as for ic_server_send). Network thread. */
int ic_server_http_chunk(ic_server *s, uint64_t id, char *data, size_t len);

/* Ends a streamed response; the connection serves its next request. */
void ic_server_http_end(ic_server *s, uint64_t id);

/* Wakes the network thread to call on_wake. Any thread. */
void ic_server_wake(ic_server *s);

#endif
