/* download.c - resumable HTTP(S) downloads with libcurl (see download.h).
 *
 * Thread: the caller's; blocking. Owns a curl easy handle for the length of
 * one call and the part file's FILE while it writes.
 *
 * Resume: when the part file holds n bytes the request says Range:
 * bytes=n-. A 206 whose Content-Range starts at n appends (the hash first
 * reads the n bytes already there); a 200 starts the file anew; a 416 means
 * the part is already whole (or not the server's file any more): it is
 * hashed as it is and the caller's checks decide.
 */
#include "download.h"
#include "err.h"

#include <curl/curl.h>
#include <openssl/evp.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

/* One transfer's state, shared with curl's callbacks. */
typedef struct xfer {
    const ic_download_opts *opts;
    ic_download_result *res;
    const char *part_path;
    FILE *f;                 /* opened at the first body byte of a 2xx answer */
    int64_t have_bytes;      /* in the part file before this transfer */
    int64_t offset;          /* where this answer's body starts (206) or 0 */
    int64_t content_length;  /* of this answer's body, -1 unknown */
    long status;             /* of the answer being read */
    EVP_MD_CTX *sha;
    int write_errno;         /* why writing the part file failed */
    bool sha_bad;
    double last_progress_s;
} xfer;

ic_download_opts ic_download_opts_default(void)
{
    return (ic_download_opts){.connect_timeout_s = 30, .stall_timeout_s = 30};
}

static void hex_of(const unsigned char *d, unsigned n, char *out)
{
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* Hashes the first n bytes of f (rewound) into sha. Returns 0 or IC_ERR_IO. */
static int hash_prefix(FILE *f, int64_t n, EVP_MD_CTX *sha)
{
    unsigned char buf[1 << 16];
    rewind(f);
    while (n > 0) {
        size_t want = n < (int64_t)sizeof buf ? (size_t)n : sizeof buf;
        size_t got = fread(buf, 1, want, f);
        if (got == 0)
            return IC_ERR_IO;
        EVP_DigestUpdate(sha, buf, got);
        n -= (int64_t)got;
    }
    return 0;
}

int ic_download_sha256_file(const char *path, char hex[65])
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return IC_ERR_IO;
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    int rc = sha && EVP_DigestInit_ex(sha, EVP_sha256(), NULL) == 1 ? 0 : IC_ERR_NOMEM;
    unsigned char buf[1 << 16];
    size_t got;
    while (rc == 0 && (got = fread(buf, 1, sizeof buf, f)) > 0)
        EVP_DigestUpdate(sha, buf, got);
    if (rc == 0 && ferror(f))
        rc = IC_ERR_IO;
    if (rc == 0) {
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned n = 0;
        EVP_DigestFinal_ex(sha, d, &n);
        hex_of(d, n, hex);
    }
    EVP_MD_CTX_free(sha);
    fclose(f);
    return rc;
}

/* "sha256:HEX", "\"HEX\"", W/"HEX" or HEX: 64 hex digits into out, else "". */
static void parse_sha_value(const char *v, size_t len, char out[65])
{
    out[0] = '\0';
    size_t i = 0;
    while (i < len && (isspace((unsigned char)v[i]) || v[i] == '"' || v[i] == 'W' || v[i] == '/'))
        i++;
    if (len - i > 7 && strncasecmp(v + i, "sha256:", 7) == 0)
        i += 7;
    size_t n = 0;
    while (i + n < len && isxdigit((unsigned char)v[i + n]))
        n++;
    if (n != 64)
        return;
    for (size_t k = 0; k < 64; k++)
        out[k] = (char)tolower((unsigned char)v[i + k]);
    out[64] = '\0';
}

/* Reads the answer's headers: its status starts a new answer (redirects
 * pass through here too), X-Linked-Etag / x-amz-meta / ETag may carry the
 * file's SHA-256, Content-Range says where a 206 starts. */
static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = size * n;
    long code;
    if (len > 5 && strncmp(buf, "HTTP/", 5) == 0 && sscanf(buf, "HTTP/%*s %ld", &code) == 1) {
        x->status = code;
        x->offset = 0;
        x->content_length = -1;
        return len;
    }
    const char *colon = memchr(buf, ':', len);
    if (!colon)
        return len;
    size_t klen = (size_t)(colon - buf), vlen = len - klen - 1;
    const char *v = colon + 1;
    char sha[65];
    if (klen == 13 && strncasecmp(buf, "x-linked-etag", 13) == 0) {
        parse_sha_value(v, vlen, sha);
        if (sha[0])
            memcpy(x->res->published_sha256, sha, 65);
    } else if (klen == 4 && strncasecmp(buf, "etag", 4) == 0 && !x->res->published_sha256[0] &&
               x->status >= 200 && x->status < 300) {
        parse_sha_value(v, vlen, sha); /* an LFS object's ETag is its SHA-256 */
        if (sha[0])
            memcpy(x->res->published_sha256, sha, 65);
    } else if (klen == 13 && strncasecmp(buf, "content-range", 13) == 0) {
        long long start, end, total;
        if (sscanf(v, " bytes %lld-%lld/%lld", &start, &end, &total) == 3)
            x->offset = start;
    } else if (klen == 14 && strncasecmp(buf, "content-length", 14) == 0) {
        long long cl;
        if (sscanf(v, " %lld", &cl) == 1)
            x->content_length = cl;
    }
    return len;
}

/* Opens the part file for this answer's body: append after a matching
 * 206, otherwise start anew. Returns 0 or an ic_err. */
static int open_part(xfer *x)
{
    bool append = x->status == 206 && x->offset == x->have_bytes && x->have_bytes > 0;
    if (x->status == 206 && !append) {
        snprintf(x->res->error, sizeof x->res->error,
                 "server sent bytes from %" PRId64 ", the part file has %" PRId64, x->offset,
                 x->have_bytes);
        return IC_ERR_SYS;
    }
    x->f = fopen(x->part_path, append ? "r+b" : "wb");
    if (!x->f) {
        x->write_errno = errno;
        return IC_ERR_IO;
    }
    if (append) {
        if (hash_prefix(x->f, x->have_bytes, x->sha) < 0 || fseeko(x->f, 0, SEEK_END) != 0) {
            x->write_errno = errno ? errno : EIO;
            return IC_ERR_IO;
        }
        x->res->resumed = true;
    } else {
        x->have_bytes = 0;
    }
    return 0;
}

static size_t on_body(char *buf, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = size * n;
    if (x->status != 200 && x->status != 206)
        return len; /* an error page: read and drop it */
    if (!x->f && open_part(x) < 0)
        return 0; /* makes curl stop with CURLE_WRITE_ERROR */
    if (fwrite(buf, 1, len, x->f) != len) {
        x->write_errno = errno ? errno : EIO;
        return 0;
    }
    EVP_DigestUpdate(x->sha, buf, len);
    x->res->bytes_transferred += (int64_t)len;
    return len;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)ultotal;
    (void)ulnow;
    xfer *x = ud;
    double t = mono_s();
    if (!x->opts->progress || t - x->last_progress_s < 0.1 ||
        (x->status != 200 && x->status != 206))
        return 0;
    x->last_progress_s = t;
    int64_t base = x->status == 206 ? x->have_bytes : 0;
    x->opts->progress(x->opts->progress_ud, base + (int64_t)dlnow,
                      dltotal > 0 ? base + (int64_t)dltotal : -1, (int64_t)dlnow, false);
    return 0;
}

static int64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
}

/* The ic_err and message for a finished transfer. */
static int outcome(xfer *x, CURLcode cc, const char *url)
{
    ic_download_result *r = x->res;
    if (r->error[0])
        return IC_ERR_SYS;
    if (cc == CURLE_WRITE_ERROR || x->write_errno) {
        int e = x->write_errno ? x->write_errno : EIO;
        snprintf(r->error, sizeof r->error, "cannot write %s: %s%s", x->part_path, strerror(e),
                 e == ENOSPC ? " (disk full; free space and run the same command to resume)"
                             : "");
        return IC_ERR_IO;
    }
    if (cc == CURLE_OPERATION_TIMEDOUT) {
        snprintf(r->error, sizeof r->error,
                 "%s stopped sending for %d s; run the same command again to resume", url,
                 x->opts->stall_timeout_s);
        return IC_ERR_TIMEOUT;
    }
    if (cc != CURLE_OK) {
        snprintf(r->error, sizeof r->error, "%s: %s", url, curl_easy_strerror(cc));
        return cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST ? IC_ERR_SYS
                                                                               : IC_ERR_SYS;
    }
    long st = r->http_status;
    if (st == 404) {
        snprintf(r->error, sizeof r->error, "not found (HTTP 404): %s", url);
        return IC_ERR_NOT_FOUND;
    }
    if (st == 401 || st == 403) {
        snprintf(r->error, sizeof r->error,
                 "access denied (HTTP %ld): %s%s", st, url,
                 x->opts->bearer_token ? "; is HF_TOKEN valid for this repository?"
                                       : "; a gated or private file needs HF_TOKEN set to a "
                                         "Hugging Face access token");
        return IC_ERR_AUTH;
    }
    if (st != 200 && st != 206 && st != 416) {
        snprintf(r->error, sizeof r->error, "HTTP %ld from %s", st, url);
        return IC_ERR_SYS;
    }
    return 0;
}

static void finish_hash(xfer *x)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_DigestFinal_ex(x->sha, d, &n);
    hex_of(d, n, x->res->sha256);
}

static void setup(CURL *c, const char *url, xfer *x, char *range)
{
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_USERAGENT, "inferencecenter/" IC_VERSION);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)x->opts->connect_timeout_s);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)x->opts->stall_timeout_s);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, x);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (x->opts->bearer_token) {
        /* Bearer auth through curl, not a raw header: curl sends it to the
         * first host only, never to the CDN a redirect leads to. */
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BEARER);
        curl_easy_setopt(c, CURLOPT_XOAUTH2_BEARER, x->opts->bearer_token);
    }
    if (x->have_bytes > 0) {
        snprintf(range, 32, "%" PRId64 "-", x->have_bytes);
        curl_easy_setopt(c, CURLOPT_RANGE, range);
    }
}

int ic_download_file(const char *url, const char *part_path, const ic_download_opts *opts,
                     ic_download_result *result)
{
    memset(result, 0, sizeof *result);
    ic_download_opts dflt = ic_download_opts_default();
    if (!opts)
        opts = &dflt;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return IC_ERR_SYS;
    xfer x = {.opts = opts, .res = result, .part_path = part_path,
              .have_bytes = file_size(part_path), .content_length = -1};
    x.sha = EVP_MD_CTX_new();
    CURL *c = curl_easy_init();
    int rc = IC_ERR_NOMEM;
    if (c && x.sha && EVP_DigestInit_ex(x.sha, EVP_sha256(), NULL) == 1) {
        char range[32];
        setup(c, url, &x, range);
        CURLcode cc = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &result->http_status);
        if (x.f && fclose(x.f) != 0 && !x.write_errno)
            x.write_errno = errno;
        x.f = NULL;
        rc = outcome(&x, cc, url);
        if (rc == 0 && result->http_status == 416) {
            /* Nothing left to send: the part is the whole file, or stale. */
            rc = ic_download_sha256_file(part_path, result->sha256);
            if (rc < 0)
                snprintf(result->error, sizeof result->error, "cannot read %s", part_path);
        } else if (rc == 0) {
            finish_hash(&x);
        }
        result->bytes_total = file_size(part_path);
        if (opts->progress && rc == 0)
            opts->progress(opts->progress_ud, result->bytes_total, result->bytes_total,
                           result->bytes_transferred, true);
    }
    if (x.f)
        fclose(x.f);
    curl_easy_cleanup(c);
    EVP_MD_CTX_free(x.sha);
    curl_global_cleanup();
    return rc;
}
