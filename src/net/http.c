/* http.c - pure HTTP/1.1 request parsing (see http.h): strict where a
 * lenient parser invites request smuggling (duplicate Content-Length,
 * both Content-Length and Transfer-Encoding, space before a colon,
 * obsolete line folding), bounded everywhere.
 *
 * Any thread; owns nothing.
 */
#include "http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static bool is_tchar(int ch)
{
    return isalnum(ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

int ic_http_check_request_line(const char *line, size_t n, size_t max_url, const char **why)
{
    const char *sp1 = memchr(line, ' ', n);
    if (!sp1 || sp1 == line) {
        *why = "malformed request line";
        return 400;
    }
    for (const char *p = line; p < sp1; p++) {
        if (!is_tchar((unsigned char)*p)) {
            *why = "malformed method";
            return 400;
        }
    }
    const char *target = sp1 + 1, *end = line + n;
    const char *sp2 = memchr(target, ' ', (size_t)(end - target));
    if ((size_t)((sp2 ? sp2 : end) - target) > max_url) {
        *why = "request target too long";
        return 414;
    }
    if (!sp2) {
        *why = "HTTP/0.9 requests are not supported";
        return 400;
    }
    size_t vlen = (size_t)(end - sp2 - 1);
    const char *v = sp2 + 1;
    if (vlen != 8 || memcmp(v, "HTTP/", 5) != 0 || !isdigit((unsigned char)v[5]) || v[6] != '.' ||
        !isdigit((unsigned char)v[7])) {
        *why = "malformed HTTP version";
        return 400;
    }
    if (v[5] != '1') {
        *why = "only HTTP/1.0 and HTTP/1.1 are supported";
        return 505;
    }
    if ((size_t)(sp1 - line) == 7 && memcmp(line, "CONNECT", 7) == 0) {
        *why = "CONNECT is not supported";
        return 405;
    }
    if (*target != '/') {
        *why = "the request target must be a path";
        return 400;
    }
    for (const char *p = target; p < sp2; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch <= 0x20 || ch >= 0x7f) {
            *why = "invalid character in the request target";
            return 400;
        }
        if (ch == '%') {
            int hi = p + 1 < sp2 ? hexval(p[1]) : -1, lo = p + 2 < sp2 ? hexval(p[2]) : -1;
            if (hi < 0 || lo < 0) {
                *why = "malformed percent-escape in the request target";
                return 400;
            }
            if (hi == 0 && lo == 0) {
                *why = "%00 in the request target";
                return 400;
            }
        }
    }
    return 0;
}

/* Decodes %XX in place (already validated). */
static void percent_decode(char *s)
{
    char *o = s;
    for (char *p = s; *p; p++) {
        if (*p == '%' && p[1] && p[2]) {
            *o++ = (char)(hexval(p[1]) * 16 + hexval(p[2]));
            p += 2;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
}

/* Does the comma-separated list contain token (case-insensitively)? */
static bool list_has(const char *list, const char *token)
{
    size_t tn = strlen(token);
    for (const char *p = list; p && *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if ((size_t)(t - p) == tn && tn && strncasecmp(p, token, tn) == 0)
            return true;
        p = e;
    }
    return false;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return s;
}

/* Sets *slot once; a second copy of a header that must be unique is an error. */
static int set_once(char **slot, char *v, const char *name, const char **why)
{
    if (*slot) {
        static char msg[64];
        snprintf(msg, sizeof msg, "duplicate %s header", name);
        *why = msg;
        return 400;
    }
    *slot = v;
    return 0;
}

int ic_http_parse_head(char *buf, size_t len, size_t max_url, ic_http_head *h, const char **why)
{
    memset(h, 0, sizeof *h);
    h->content_length = -1;
    *why = "";
    /* Lines end in CRLF; a NUL or a bare CR/LF anywhere is malformed. */
    if (memchr(buf, '\0', len)) {
        *why = "NUL in the request head";
        return 400;
    }
    char *line = buf, *end = buf + len;
    char *eol = strstr(line, "\r\n");
    if (!eol || eol >= end)
        return 400;
    int st = ic_http_check_request_line(line, (size_t)(eol - line), max_url, why);
    if (st)
        return st;
    *eol = '\0';
    char *sp1 = strchr(line, ' '), *sp2 = strrchr(line, ' ');
    *sp1 = *sp2 = '\0';
    h->method = line;
    h->minor = sp2[8] - '0';
    char *target = sp1 + 1, *q = strchr(target, '?');
    if (q)
        *q++ = '\0';
    h->path = target;
    h->query = q ? q : sp2 + 9; /* "" */
    percent_decode(h->path);
    char *te = NULL, *cl = NULL;
    size_t xff_len = 0;
    for (line = eol + 2; line < end;) {
        eol = strstr(line, "\r\n");
        if (!eol || eol >= end) {
            *why = "malformed header block";
            return 400;
        }
        if (eol == line)
            break; /* the empty line */
        *eol = '\0';
        if (strchr(line, '\r') || strchr(line, '\n')) {
            *why = "bare CR or LF in a header";
            return 400;
        }
        if (*line == ' ' || *line == '\t') {
            *why = "obsolete header line folding";
            return 400;
        }
        char *colon = strchr(line, ':');
        if (!colon || colon == line) {
            *why = "malformed header line";
            return 400;
        }
        for (char *p = line; p < colon; p++) {
            if (!is_tchar((unsigned char)*p)) {
                *why = "malformed header name";
                return 400;
            }
        }
        *colon = '\0';
        char *name = line, *v = trim(colon + 1);
        for (char *p = v; *p; p++) {
            if ((unsigned char)*p < 0x20 && *p != '\t') {
                *why = "control character in a header value";
                return 400;
            }
        }
        st = 0;
        if (!strcasecmp(name, "host"))
            st = set_once(&h->host, v, "Host", why);
        else if (!strcasecmp(name, "origin"))
            st = set_once(&h->origin, v, "Origin", why);
        else if (!strcasecmp(name, "content-type"))
            st = set_once(&h->content_type, v, "Content-Type", why);
        else if (!strcasecmp(name, "authorization"))
            st = set_once(&h->authorization, v, "Authorization", why);
        else if (!strcasecmp(name, "x-api-key"))
            st = set_once(&h->api_key, v, "x-api-key", why);
        else if (!strcasecmp(name, "if-none-match") && !h->if_none_match)
            h->if_none_match = v; /* caching hints: a repeat is harmless, keep the first */
        else if (!strcasecmp(name, "accept-encoding") && !h->accept_encoding)
            h->accept_encoding = v;
        else if (!strcasecmp(name, "upgrade"))
            st = set_once(&h->upgrade, v, "Upgrade", why);
        else if (!strcasecmp(name, "connection"))
            st = set_once(&h->connection, v, "Connection", why);
        else if (!strcasecmp(name, "sec-websocket-key"))
            st = set_once(&h->ws_key, v, "Sec-WebSocket-Key", why);
        else if (!strcasecmp(name, "sec-websocket-version"))
            st = set_once(&h->ws_version, v, "Sec-WebSocket-Version", why);
        else if (!strcasecmp(name, "sec-websocket-protocol"))
            st = set_once(&h->ws_protocol, v, "Sec-WebSocket-Protocol", why);
        else if (!strcasecmp(name, "expect"))
            st = set_once(&h->expect, v, "Expect", why);
        else if (!strcasecmp(name, "transfer-encoding"))
            st = set_once(&te, v, "Transfer-Encoding", why);
        else if (!strcasecmp(name, "content-length"))
            st = set_once(&cl, v, "Content-Length", why);
        else if (!strcasecmp(name, "x-forwarded-for")) {
            int n = snprintf(h->xff + xff_len, sizeof h->xff - xff_len, "%s%s",
                             xff_len ? ", " : "", v);
            if (n < 0 || (size_t)n >= sizeof h->xff - xff_len) {
                *why = "X-Forwarded-For too long";
                return 400;
            }
            xff_len += (size_t)n;
            h->forwarded_for = h->xff;
        }
        if (st)
            return st;
        line = eol + 2;
    }
    if (cl) {
        if (!*cl || strlen(cl) > 18 || strspn(cl, "0123456789") != strlen(cl)) {
            *why = "malformed Content-Length";
            return 400;
        }
        h->content_length = 0;
        for (const char *p = cl; *p; p++)
            h->content_length = h->content_length * 10 + (*p - '0');
    }
    if (te) {
        if (cl) {
            *why = "both Content-Length and Transfer-Encoding";
            return 400;
        }
        if (strcasecmp(te, "chunked") != 0) {
            *why = "only Transfer-Encoding: chunked is supported";
            return 501;
        }
        if (h->minor == 0) {
            *why = "Transfer-Encoding in an HTTP/1.0 request";
            return 400;
        }
        h->chunked = true;
    }
    if (h->minor >= 1 && !h->host) {
        *why = "missing Host header";
        return 400;
    }
    if (h->expect) {
        if (strcasecmp(h->expect, "100-continue") != 0) {
            *why = "unsupported Expect";
            return 417;
        }
        h->expect_continue = h->minor >= 1;
    }
    h->keep_alive = h->minor >= 1 ? !list_has(h->connection, "close")
                                  : list_has(h->connection, "keep-alive");
    h->upgrade_ws = h->upgrade && list_has(h->upgrade, "websocket") &&
                    list_has(h->connection, "upgrade");
    return 0;
}

int ic_http_chunked_feed(ic_http_chunked *c, const char *in, size_t n, ic_buf *out, size_t max,
                         size_t *used)
{
    size_t i = 0;
    while (i < n && c->state != 4) {
        char ch = in[i];
        switch (c->state) {
        case 0: /* hex size [; extensions] CRLF */
            i++;
            if (++c->line > 256)
                return 400;
            if (ch == '\n') {
                if (!c->digits)
                    return 400;
                c->line = 0;
                c->digits = 0;
                c->ext = false;
                c->state = c->left ? 1 : 3;
            } else if (c->ext) {
                /* chunk extensions are ignored up to the LF */
            } else if (ch == ';' || ch == ' ' || ch == '\t' || ch == '\r') {
                c->ext = true;
            } else if (hexval(ch) >= 0) {
                if (++c->digits > 16)
                    return 400;
                c->left = c->left * 16 + (uint64_t)hexval(ch);
                if (c->left > max || out->len + c->left > max)
                    return 413;
            } else {
                return 400;
            }
            break;
        case 1: {
            size_t take = n - i < c->left ? n - i : (size_t)c->left;
            if (out->len + take > max)
                return 413;
            if (ic_buf_append(out, in + i, take) < 0)
                return 413;
            i += take;
            c->left -= take;
            if (!c->left)
                c->state = 2;
            break;
        }
        case 2: /* CRLF after the data */
            i++;
            if (ch == '\n') {
                c->state = 0;
                c->line = 0;
            } else if (ch != '\r') {
                return 400;
            }
            break;
        case 3: /* trailers, ignored, up to an empty line */
            i++;
            if (ch == '\n') {
                c->state = c->line == 0 ? 4 : 3;
                c->line = 0;
            } else if (ch != '\r') {
                if (++c->line > 8192)
                    return 400;
            }
            break;
        }
    }
    *used = i;
    return c->state == 4 ? 1 : 0;
}

/* Splits "name[:port]" / "[v6][:port]" into name (lowercase, no brackets)
 * and port (-1 when absent). Returns false when malformed. */
static bool split_hostport(const char *hp, char *name, size_t cap, int *port)
{
    const char *e, *colon;
    *port = -1;
    if (*hp == '[') {
        e = strchr(hp, ']');
        if (!e)
            return false;
        colon = e[1] == ':' ? e + 1 : NULL;
        if (e[1] && !colon)
            return false;
        hp++;
    } else {
        colon = strchr(hp, ':');
        if (colon && strchr(colon + 1, ':'))
            return false;
        e = colon ? colon : hp + strlen(hp);
    }
    size_t n = (size_t)(e - hp);
    if (!n || n >= cap)
        return false;
    for (size_t i = 0; i < n; i++)
        name[i] = (char)tolower((unsigned char)hp[i]);
    name[n] = '\0';
    if (n && name[n - 1] == '.')
        name[n - 1] = '\0'; /* "localhost." */
    if (colon) {
        const char *p = colon + 1;
        if (!*p || strlen(p) > 5 || strspn(p, "0123456789") != strlen(p))
            return false;
        *port = atoi(p);
    }
    return true;
}

static bool is_ip_literal(const char *name)
{
    unsigned char a[16];
    return inet_pton(AF_INET, name, a) == 1 || inet_pton(AF_INET6, name, a) == 1;
}

bool ic_http_host_ok(const char *host, const char *bind_host, const char *allow)
{
    char name[256], bind[256];
    int port;
    if (!host || !split_hostport(host, name, sizeof name, &port))
        return false;
    if (is_ip_literal(name) || strcmp(name, "localhost") == 0)
        return true;
    if (bind_host && split_hostport(bind_host, bind, sizeof bind, &port) &&
        strcmp(name, bind) == 0)
        return true;
    return list_has(allow, name);
}

bool ic_http_origin_ok(const char *origin, const char *host, const char *allow)
{
    if (!origin)
        return true;
    if (list_has(allow, "*") || list_has(allow, origin))
        return true;
    int default_port;
    const char *hp;
    if (strncasecmp(origin, "http://", 7) == 0) {
        hp = origin + 7;
        default_port = 80;
    } else if (strncasecmp(origin, "https://", 8) == 0) {
        hp = origin + 8;
        default_port = 443;
    } else {
        return false; /* "null", file:, extensions */
    }
    char oname[256], hname[256];
    int oport, hport;
    if (strchr(hp, '/') || !host || !split_hostport(hp, oname, sizeof oname, &oport) ||
        !split_hostport(host, hname, sizeof hname, &hport))
        return false;
    if (oport < 0)
        oport = default_port;
    if (hport < 0)
        hport = 80;
    return strcmp(oname, hname) == 0 && oport == hport;
}

const char *ic_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}
