/* auth.c - API tokens: the tokens file, constant-time checks and creating
 * tokens (the failed-attempt throttle is throttle.c).
 *
 * The only module that includes OpenSSL (libcrypto: SHA-256 through EVP,
 * CRYPTO_memcmp, OPENSSL_cleanse). An ic_auth is built by ic_auth_load and
 * read-only afterwards; the network thread owns it and swaps in a new one on
 * SIGHUP. ic_auth_add_token runs
 * in the `token add` command. No globals. Tokens and hashes are never logged
 * or printed, and no error message quotes a field of the tokens file.
 *
 * Tokens made here: "ic_" followed by 64 lowercase hex digits (32 bytes from
 * getrandom(2)), 67 characters. The file keeps "sha256:" and the lowercase
 * hex SHA-256 of the whole token string, "ic_" included, so
 * `printf %s "$TOKEN" | sha256sum` gives the same digits. A check accepts any
 * non-empty token string whose hash is in the file; "ic_" is only the shape
 * of the tokens this module makes.
 *
 * Tokens file rules beyond auth.h:
 *   - fields are separated by spaces and tabs; a line is at most 1024 bytes
 *     before its '\n'; CRLF line endings are accepted (one '\r' right before
 *     the '\n' is dropped); the last line may lack its '\n';
 *   - NAME is 1 to 64 characters of A-Z a-z 0-9 . _ -;
 *   - the hash is "sha256:" (lowercase) and exactly 64 hex digits; upper-
 *     or lowercase digits are both accepted, as they decode to the same bytes;
 *   - options max_sessions=1..4096, priority=high|normal|low and
 *     admin=true|false, each at most once; a client without priority= gets
 *     normal, without admin= is no admin;
 *   - one name may appear on several lines (two tokens while rotating keys);
 *     one hash may not, and neither may the hash of the empty token;
 *   - a file with no clients is an error: with auth on, it would lock
 *     everyone out, which is never what the operator meant.
 * Anything else stops loading with "PATH:LINE: reason".
 */
#include "auth.h"
#include "err.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define HASH_BYTES 32         /* SHA-256 */
#define TOKEN_RANDOM_BYTES 32 /* 256 bits from the kernel */
#define TOKEN_PREFIX "ic_"
#define TOKEN_CHARS (3 + 2 * TOKEN_RANDOM_BYTES) /* 67, without the NUL */
#define HASH_PREFIX "sha256:"
#define LINE_MAX_BYTES 1024 /* one tokens-file line, without its '\n' */
#define MAX_FIELDS 4        /* NAME, hash, two options */
#define MAX_SESSIONS_MAX 4096

static const char name_rule[] =
    "client name must be 1 to 64 characters of A-Z a-z 0-9 . _ -";

typedef struct auth_entry {
    unsigned char hash[HASH_BYTES]; /* SHA-256 of the token string */
    ic_client_cfg cfg;
    int line; /* where it came from, for the duplicate-hash message */
} auth_entry;

/* Read-only after ic_auth_load. */
struct ic_auth {
    auth_entry *entries; /* [n], file order */
    int n, cap;
};

/* ---- small helpers ---------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int sha256(const void *data, size_t len, unsigned char out[HASH_BYTES])
{
    unsigned int n = 0;
    if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 || n != HASH_BYTES)
        return IC_ERR_NOMEM; /* EVP fails only when it cannot allocate */
    return 0;
}

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > IC_CLIENT_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* ---- loading ---------------------------------------------------------- */

enum line_status { LINE_OK, LINE_EOF, LINE_TOO_LONG, LINE_NUL };

/* Reads one line without its '\n' into buf (LINE_MAX_BYTES + 1 bytes). */
static enum line_status read_line(FILE *f, char *buf)
{
    size_t n = 0;
    bool nul = false;
    int c;
    while ((c = getc(f)) != EOF && c != '\n') {
        if (n == LINE_MAX_BYTES)
            return LINE_TOO_LONG;
        nul |= c == '\0';
        buf[n++] = (char)c;
    }
    buf[n] = '\0';
    if (c == EOF && n == 0)
        return LINE_EOF;
    if (n > 0 && buf[n - 1] == '\r')
        buf[--n] = '\0';
    return nul ? LINE_NUL : LINE_OK;
}

/* Splits line in place at spaces and tabs. Returns the number of fields,
 * or max + 1 if there are more than max. */
static int split_fields(char *line, char **fields, int max)
{
    int n = 0;
    char *p = line;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0')
            return n;
        if (n == max)
            return max + 1;
        fields[n++] = p;
        while (*p && *p != ' ' && *p != '\t')
            p++;
        if (*p)
            *p++ = '\0';
    }
}

static int parse_hash(const char *f, unsigned char out[HASH_BYTES])
{
    size_t plen = strlen(HASH_PREFIX);
    if (strncmp(f, HASH_PREFIX, plen) != 0 || strlen(f + plen) != 2 * HASH_BYTES)
        return IC_ERR_PARSE;
    f += plen;
    for (int i = 0; i < HASH_BYTES; i++) {
        int hi = hex_value(f[2 * i]), lo = hex_value(f[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return IC_ERR_PARSE;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

/* Digits only (no sign, no spaces), lo..hi. */
static int parse_count(const char *s, int lo, int hi, int *out)
{
    long v = 0;
    if (*s == '\0')
        return IC_ERR_PARSE;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return IC_ERR_PARSE;
        v = v * 10 + (*s - '0');
        if (v > hi)
            return IC_ERR_PARSE;
    }
    if (v < lo)
        return IC_ERR_PARSE;
    *out = (int)v;
    return 0;
}

/* One "key=value" field (field number fieldno, 1-based). seen: bit 0
 * max_sessions, bit 1 priority. */
static int parse_option(const char *f, int fieldno, unsigned *seen, ic_client_cfg *cfg,
                        char *why, size_t whylen)
{
    if (strncmp(f, "max_sessions=", 13) == 0) {
        if (*seen & 1u) {
            set_err(why, whylen, "max_sessions given twice");
            return IC_ERR_PARSE;
        }
        *seen |= 1u;
        if (parse_count(f + 13, 1, MAX_SESSIONS_MAX, &cfg->max_sessions) < 0) {
            set_err(why, whylen, "max_sessions must be a whole number from 1 to %d",
                    MAX_SESSIONS_MAX);
            return IC_ERR_PARSE;
        }
        return 0;
    }
    if (strncmp(f, "priority=", 9) == 0) {
        if (*seen & 2u) {
            set_err(why, whylen, "priority given twice");
            return IC_ERR_PARSE;
        }
        *seen |= 2u;
        if (ic_priority_parse(f + 9, &cfg->priority) < 0) {
            set_err(why, whylen, "priority must be high, normal or low");
            return IC_ERR_PARSE;
        }
        return 0;
    }
    if (strncmp(f, "admin=", 6) == 0) {
        if (*seen & 4u) {
            set_err(why, whylen, "admin given twice");
            return IC_ERR_PARSE;
        }
        *seen |= 4u;
        if (strcmp(f + 6, "true") != 0 && strcmp(f + 6, "false") != 0) {
            set_err(why, whylen, "admin must be true or false");
            return IC_ERR_PARSE;
        }
        cfg->admin = f[6] == 't';
        return 0;
    }
    /* The field itself is not quoted: it might be a pasted token. */
    set_err(why, whylen,
            "field %d is not an option (expected max_sessions=N, priority=high|normal|low or "
            "admin=true|false)",
            fieldno);
    return IC_ERR_PARSE;
}

/* Parses one line. Returns 0 with *e filled, 1 for a blank or comment line,
 * or IC_ERR_PARSE with the reason in why. */
static int parse_line(char *line, auth_entry *e, char *why, size_t whylen)
{
    static const unsigned char empty_token_hash[HASH_BYTES] = {
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4,
        0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b,
        0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
    };
    char *fields[MAX_FIELDS];
    int n = split_fields(line, fields, MAX_FIELDS);
    if (n == 0 || fields[0][0] == '#')
        return 1;
    if (n > MAX_FIELDS) {
        set_err(why, whylen, "too many fields (NAME sha256:<hex> and at most two options)");
        return IC_ERR_PARSE;
    }
    memset(e, 0, sizeof *e);
    e->cfg.priority = IC_PRIORITY_NORMAL;
    if (!valid_name(fields[0])) {
        set_err(why, whylen, "%s", name_rule);
        return IC_ERR_PARSE;
    }
    memcpy(e->cfg.name, fields[0], strlen(fields[0]) + 1);
    if (n < 2) {
        set_err(why, whylen, "missing sha256:<64 hex digits> after the client name");
        return IC_ERR_PARSE;
    }
    if (parse_hash(fields[1], e->hash) < 0) {
        set_err(why, whylen, "second field must be sha256:<64 hex digits>");
        return IC_ERR_PARSE;
    }
    if (memcmp(e->hash, empty_token_hash, HASH_BYTES) == 0) {
        set_err(why, whylen, "hash is that of the empty token");
        return IC_ERR_PARSE;
    }
    unsigned seen = 0;
    for (int i = 2; i < n; i++) {
        int rc = parse_option(fields[i], i + 1, &seen, &e->cfg, why, whylen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Appends e unless its hash is already there. */
static int add_entry(ic_auth *a, const auth_entry *e, char *why, size_t whylen)
{
    for (int i = 0; i < a->n; i++) {
        if (memcmp(a->entries[i].hash, e->hash, HASH_BYTES) == 0) {
            set_err(why, whylen, "same hash as line %d", a->entries[i].line);
            return IC_ERR_PARSE;
        }
    }
    if (a->n == a->cap) {
        int cap = a->cap ? a->cap * 2 : 16;
        auth_entry *p = realloc(a->entries, (size_t)cap * sizeof *p);
        if (!p) {
            set_err(why, whylen, "out of memory");
            return IC_ERR_NOMEM;
        }
        a->entries = p;
        a->cap = cap;
    }
    a->entries[a->n++] = *e;
    return 0;
}

/* Reads every line of f into a. Returns 0 or an ic_err with err set. */
static int load_lines(FILE *f, const char *path, ic_auth *a, char *err, size_t errlen)
{
    char line[LINE_MAX_BYTES + 1];
    char why[128];
    for (int lineno = 1;; lineno++) {
        enum line_status st = read_line(f, line);
        if (st == LINE_EOF)
            break;
        int rc = IC_ERR_PARSE;
        auth_entry e;
        if (st == LINE_TOO_LONG)
            set_err(why, sizeof why, "line longer than %d bytes", LINE_MAX_BYTES);
        else if (st == LINE_NUL)
            set_err(why, sizeof why, "NUL byte in line");
        else
            rc = parse_line(line, &e, why, sizeof why);
        if (rc == 0) {
            e.line = lineno;
            rc = add_entry(a, &e, why, sizeof why);
        }
        if (rc < 0) {
            set_err(err, errlen, "%s:%d: %s", path, lineno, why);
            return rc;
        }
    }
    if (ferror(f)) {
        set_err(err, errlen, "%s: read error", path);
        return IC_ERR_IO;
    }
    if (a->n == 0) {
        set_err(err, errlen, "%s: no clients in tokens file", path);
        return IC_ERR_PARSE;
    }
    return 0;
}

int ic_auth_load(const char *path, ic_auth **out, char *err, size_t errlen)
{
    *out = NULL;
    set_err(err, errlen, "%s", "");
    FILE *f = fopen(path, "re");
    if (!f) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return IC_ERR_IO;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
        fclose(f);
        return IC_ERR_IO;
    }
    ic_auth *a = calloc(1, sizeof *a);
    int rc = a ? load_lines(f, path, a, err, errlen) : IC_ERR_NOMEM;
    if (!a)
        set_err(err, errlen, "%s: out of memory", path);
    fclose(f);
    if (rc < 0) {
        ic_auth_destroy(a);
        return rc;
    }
    *out = a;
    return 0;
}

void ic_auth_destroy(ic_auth *a)
{
    if (!a)
        return;
    free(a->entries);
    free(a);
}

int ic_auth_count(const ic_auth *a)
{
    return a ? a->n : 0;
}

/* ---- checking --------------------------------------------------------- */

int ic_auth_check(const ic_auth *a, const char *token, ic_client_cfg *out)
{
    /* Whether a token was presented at all is not a secret. */
    if (!a || !token || token[0] == '\0')
        return IC_ERR_AUTH;
    unsigned char h[HASH_BYTES];
    if (sha256(token, strlen(token), h) < 0)
        return IC_ERR_AUTH;
    /* Every entry is compared, with no early exit; the index of the match
     * is picked with masks rather than branches. Hashes are unique, so at
     * most one entry matches. */
    uint32_t found = 0, idx = 0;
    for (int i = 0; i < a->n; i++) {
        uint32_t d = (uint32_t)CRYPTO_memcmp(h, a->entries[i].hash, HASH_BYTES);
        uint32_t match = 1u ^ ((d | (0u - d)) >> 31); /* 1 iff d == 0 */
        uint32_t mask = 0u - match;
        idx = (idx & ~mask) | ((uint32_t)i & mask);
        found |= match;
    }
    OPENSSL_cleanse(h, sizeof h);
    if (!found)
        return IC_ERR_AUTH;
    if (out)
        *out = a->entries[idx].cfg;
    return 0;
}

/* ---- creating tokens -------------------------------------------------- */

bool ic_auth_secret_equal(const char *presented, const char *expected)
{
    unsigned char a[HASH_BYTES], b[HASH_BYTES];
    if (!presented || !expected || sha256(presented, strlen(presented), a) < 0 ||
        sha256(expected, strlen(expected), b) < 0)
        return false;
    return CRYPTO_memcmp(a, b, HASH_BYTES) == 0;
}

static int random_bytes(unsigned char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(buf + got, n - got, 0);
        if (r < 0 && errno != EINTR)
            return -1;
        if (r > 0)
            got += (size_t)r;
    }
    return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w == 0)
            errno = EIO;
        if ((w < 0 && errno != EINTR) || w == 0)
            return -1;
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        }
    }
    return 0;
}

/* Best effort: makes a newly created file's directory entry durable. */
static void sync_parent_dir(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return;
    const char *d = dir;
    char *slash = strrchr(dir, '/');
    if (!slash)
        d = ".";
    else if (slash == dir)
        d = "/";
    else
        *slash = '\0';
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

/* Opens path for appending, creating it with mode 0600. O_RDWR, not
 * O_WRONLY, so that the last byte can be read to see whether a newline is
 * missing. O_NONBLOCK keeps a FIFO from blocking the open; it is refused
 * below. Returns the fd or -1 with err set. */
static int open_for_append(const char *path, bool *created, char *err, size_t errlen)
{
    const int flags = O_RDWR | O_APPEND | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
    *created = true;
    int fd = open(path, flags | O_CREAT | O_EXCL, 0600);
    if (fd < 0 && errno == EEXIST) {
        *created = false;
        fd = open(path, flags);
    }
    if (fd < 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    if (st.st_mode & 077)
        fprintf(stderr, "warning: %s is open to group or others (mode %03o); "
                        "chmod 600 it\n",
                path, (unsigned)(st.st_mode & 0777));
    return fd;
}

/* Appends text (one line with its '\n') to path, first adding a '\n' if the
 * file does not end with one, then fsyncs. text[-1] must be writable: the
 * extra newline goes there so that everything is one write. */
static int append_line(const char *path, char *text, char *err, size_t errlen)
{
    bool created;
    int fd = open_for_append(path, &created, err, errlen);
    if (fd < 0)
        return IC_ERR_IO;
    /* Serialises concurrent `token add`s; where flock is not supported,
     * O_APPEND alone still keeps each line whole. */
    (void)flock(fd, LOCK_EX);
    struct stat st;
    char last = '\n';
    int rc = fstat(fd, &st);
    if (rc == 0 && st.st_size > 0 && pread(fd, &last, 1, st.st_size - 1) != 1)
        rc = -1;
    if (last != '\n') {
        text--;
        text[0] = '\n';
    }
    if (rc == 0)
        rc = write_all(fd, text, strlen(text));
    if (rc == 0)
        rc = fsync(fd);
    if (rc != 0)
        set_err(err, errlen, "%s: %s", path, strerror(errno));
    if (close(fd) != 0 && rc == 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        rc = -1;
    }
    if (rc == 0 && created)
        sync_parent_dir(path);
    return rc == 0 ? 0 : IC_ERR_IO;
}

static int validate_new_client(const char *name, int max_sessions, enum ic_priority priority,
                               size_t cap, char *err, size_t errlen)
{
    if (!name || !valid_name(name)) {
        set_err(err, errlen, "%s", name_rule);
        return IC_ERR_INVAL;
    }
    if (max_sessions < 0 || max_sessions > MAX_SESSIONS_MAX) {
        set_err(err, errlen, "max sessions must be from 1 to %d (0 = the server default)",
                MAX_SESSIONS_MAX);
        return IC_ERR_INVAL;
    }
    if (!ic_priority_name(priority)) {
        set_err(err, errlen, "priority must be high, normal or low");
        return IC_ERR_INVAL;
    }
    if (cap < TOKEN_CHARS + 1) {
        set_err(err, errlen, "token buffer too small (%d bytes needed)", TOKEN_CHARS + 1);
        return IC_ERR_INVAL;
    }
    return 0;
}

int ic_auth_add_token(const char *path, const char *name, int max_sessions,
                      enum ic_priority priority, char *token_out, size_t cap, char *err,
                      size_t errlen)
{
    return ic_auth_add_token_admin(path, name, max_sessions, priority, false, token_out, cap,
                                   err, errlen);
}

int ic_auth_add_token_admin(const char *path, const char *name, int max_sessions,
                            enum ic_priority priority, bool admin, char *token_out, size_t cap,
                            char *err, size_t errlen)
{
    set_err(err, errlen, "%s", "");
    if (!path || !path[0] || !token_out) {
        set_err(err, errlen, "no tokens file or no token buffer");
        return IC_ERR_INVAL;
    }
    int rc = validate_new_client(name, max_sessions, priority, cap, err, errlen);
    if (rc < 0)
        return rc;
    unsigned char rnd[TOKEN_RANDOM_BYTES], h[HASH_BYTES];
    char token[TOKEN_CHARS + 1], hash_hex[2 * HASH_BYTES + 1];
    char line[LINE_MAX_BYTES + 2]; /* line[0]: room for a leading '\n' */
    if (random_bytes(rnd, sizeof rnd) < 0) {
        set_err(err, errlen, "getrandom: %s", strerror(errno));
        return IC_ERR_IO;
    }
    memcpy(token, TOKEN_PREFIX, 3);
    hex_encode(rnd, sizeof rnd, token + 3);
    rc = sha256(token, TOKEN_CHARS, h);
    if (rc < 0) {
        set_err(err, errlen, "cannot compute SHA-256");
        rc = IC_ERR_IO;
    } else {
        hex_encode(h, sizeof h, hash_hex);
        char ms[32] = "";
        if (max_sessions > 0)
            snprintf(ms, sizeof ms, " max_sessions=%d", max_sessions);
        snprintf(line + 1, sizeof line - 1, "%s %s%s%s priority=%s%s\n", name, HASH_PREFIX,
                 hash_hex, ms, ic_priority_name(priority), admin ? " admin=true" : "");
        rc = append_line(path, line + 1, err, errlen);
    }
    if (rc == 0)
        memcpy(token_out, token, TOKEN_CHARS + 1);
    OPENSSL_cleanse(rnd, sizeof rnd);
    OPENSSL_cleanse(token, sizeof token);
    OPENSSL_cleanse(h, sizeof h);
    return rc;
}
