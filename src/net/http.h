/* http.h - pure HTTP/1.1 request parsing for the server: request line,
 * header block, chunked bodies, Host and Origin checks. No I/O, no
 * libwebsockets; unit-tested in tests/unit/test_http.c.
 *
 * Any thread (no state besides what the caller passes in).
 */
#ifndef IC_HTTP_H
#define IC_HTTP_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A parsed request head; every pointer points into the caller's buffer
 * (or into xff), NULL when the header is absent. */
typedef struct ic_http_head {
    char *method, *path, *query;
    int minor;                     /* HTTP/1.<minor> */
    char *host, *origin, *content_type, *authorization, *api_key;
    char *upgrade, *connection, *ws_key, *ws_version, *ws_protocol, *expect;
    char *forwarded_for;
    char *if_none_match, *accept_encoding; /* the first of each */
    int64_t content_length;        /* -1: none */
    bool chunked;                  /* Transfer-Encoding: chunked */
    bool keep_alive;               /* by version and Connection */
    bool upgrade_ws;               /* Upgrade: websocket with Connection: upgrade */
    bool expect_continue;          /* Expect: 100-continue */
    char xff[512];                 /* repeated X-Forwarded-For joined */
} ic_http_head;

/* Checks a complete request line (without CRLF). Returns 0 or the status
 * to answer (400, 405 for CONNECT, 414, 505) with a reason in *why. */
int ic_http_check_request_line(const char *line, size_t n, size_t max_url, const char **why);

/* Parses buf[0..len), the request line and headers up to and including
 * the empty line, in place. Returns 0 or the status to answer (400, 414,
 * 417, 501, 505) with a reason in *why. */
int ic_http_parse_head(char *buf, size_t len, size_t max_url, ic_http_head *h, const char **why);

/* An incremental chunked-body decoder. */
typedef struct ic_http_chunked {
    int state;                     /* 0 size line, 1 data, 2 CRLF after data, 3 trailers, 4 done */
    uint64_t left;                 /* data bytes left in this chunk */
    size_t line;                   /* bytes of the current size/trailer line */
    int digits;                    /* hex digits of the size so far */
    bool ext;                      /* in a chunk extension (skipped) */
} ic_http_chunked;

/* Feeds in[0..n) and appends the data to out (at most max bytes in all).
 * Sets *used to the bytes consumed. Returns 1 when the body is complete,
 * 0 when more input is needed, 400 (malformed) or 413 (larger than max). */
int ic_http_chunked_feed(ic_http_chunked *c, const char *in, size_t n, ic_buf *out, size_t max,
                         size_t *used);

/* Is host (a Host header value, "name[:port]") one of ours: an IP
 * literal, localhost, bind_host, or a name in allow (comma-separated)?
 * Names are compared case-insensitively. Other names are how DNS
 * rebinding reaches a loopback server. */
bool ic_http_host_ok(const char *host, const char *bind_host, const char *allow);

/* May a request with this Origin proceed? NULL (not a browser), an origin
 * in allow (comma-separated, "*" = any), or an http(s) origin whose
 * host:port is the request's Host. */
bool ic_http_origin_ok(const char *origin, const char *host, const char *allow);

/* The reason phrase of a status ("Not Found"). */
const char *ic_http_reason(int status);

#endif
