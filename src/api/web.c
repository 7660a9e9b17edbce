/* web.c - serves the web console built into the binary (see web.h): picks
 * the asset, the encoding (gzip when the client takes it) and answers a
 * matching If-None-Match with 304.
 *
 * Thread: the network thread calls it; it only reads constant data. Owns
 * nothing past the response body it hands the server.
 */
#include "web.h"
#include "web_asset.h"

#include <stdlib.h>
#include <strings.h>
#include <string.h>

/* No inline script or style anywhere in the console, so 'self' is enough;
 * connect-src 'self' covers the page's own ws:// origin (CSP level 3). */
const char ic_web_csp[] =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

static const ic_web_asset *find_asset(const char *path)
{
    for (int i = 0; i < ic_web_n_assets; i++)
        if (strcmp(ic_web_assets[i].path, path) == 0)
            return &ic_web_assets[i];
    return NULL;
}

static bool is_space(char c) { return c == ' ' || c == '\t'; }

/* Does a comma-separated header list hold item (case-insensitive, for
 * Accept-Encoding) with a q-value other than 0? */
static bool accepts_gzip(const char *list)
{
    for (const char *p = list; p && *p;) {
        while (is_space(*p) || *p == ',')
            p++;
        const char *tok = p;
        while (*p && *p != ',' && *p != ';' && !is_space(*p))
            p++;
        size_t n = (size_t)(p - tok);
        bool gzip = n == 4 && strncasecmp(tok, "gzip", 4) == 0;
        bool refused = false;
        while (*p && *p != ',') {
            if (*p == ';') {
                const char *q = p + 1;
                while (is_space(*q))
                    q++;
                if ((q[0] == 'q' || q[0] == 'Q') && q[1] == '=')
                    refused = strtod(q + 2, NULL) <= 0.0;
            }
            p++;
        }
        if (gzip)
            return !refused;
    }
    return false;
}

/* Does If-None-Match (a list of entity tags, or "*") name etag? Weak
 * comparison, as RFC 9110 asks for If-None-Match. */
static bool etag_matches(const char *list, const char *etag)
{
    size_t elen = strlen(etag);
    for (const char *p = list; p && *p;) {
        while (is_space(*p) || *p == ',')
            p++;
        if (*p == '*')
            return true;
        if (p[0] == 'W' && p[1] == '/')
            p += 2;
        const char *tag = p;
        if (*p == '"') {
            const char *close = strchr(p + 1, '"');
            p = close ? close + 1 : p + strlen(p);
        } else {
            while (*p && *p != ',' && !is_space(*p))
                p++;
        }
        if ((size_t)(p - tag) == elen && memcmp(tag, etag, elen) == 0)
            return true;
        while (*p && *p != ',')
            p++;
    }
    return false;
}

static void add_header(ic_http_response *resp, const char *name, const char *value)
{
    if (resp->n_headers < IC_HTTP_MAX_HEADERS)
        resp->headers[resp->n_headers++] = (ic_http_header){name, value};
}

bool ic_web_serve(const ic_http_request *req, ic_http_response *resp)
{
    const ic_web_asset *a = find_asset(req->path);
    if (!a)
        return false;
    bool gz = req->accept_encoding && accepts_gzip(req->accept_encoding);
    const char *etag = gz ? a->etag_gz : a->etag;
    bool fresh = req->if_none_match && etag_matches(req->if_none_match, etag);
    const unsigned char *data = gz ? a->gz : a->data;
    size_t len = fresh ? 0 : gz ? a->gz_len : a->len;

    resp->status = fresh ? 304 : 200;
    resp->content_type = a->content_type;
    resp->body = malloc(len + 1);
    resp->len = resp->body ? len : 0;
    if (resp->body)
        memcpy(resp->body, data, len);
    resp->n_headers = 0;
    add_header(resp, "content-security-policy", ic_web_csp);
    add_header(resp, "x-content-type-options", "nosniff");
    add_header(resp, "referrer-policy", "no-referrer");
    /* no-cache: keep it, but ask each time; the ETag makes that a 304. */
    add_header(resp, "cache-control", "no-cache");
    add_header(resp, "etag", etag);
    add_header(resp, "vary", "Accept-Encoding");
    if (gz && !fresh)
        add_header(resp, "content-encoding", "gzip");
    return true;
}
