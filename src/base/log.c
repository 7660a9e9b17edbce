/* log.c - leveled log lines to stderr, one write(2) per line, as text or
 * JSON lines (built with jansson, so every message is escaped right).
 * Any thread.
 *
 * Text lines are escaped too, since messages quote client strings: one
 * event is always one line, and a client cannot forge a second line or
 * send terminal escapes. Escapes: \n \r \t \\ (a backslash), and \xNN for
 * every other byte below 0x20, 0x7F, the bytes of C1 controls (U+0080 to
 * U+009F) and bytes that are not valid UTF-8. Valid UTF-8 text passes
 * unchanged. A line cut at its size limit is never cut inside an escape or
 * a character.
 */
#include "log.h"
#include "err.h"

#include <jansson.h>

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/uio.h>
#include <unistd.h>

static _Atomic int min_level = IC_LOG_INFO;
static _Atomic int line_format = IC_LOG_TEXT;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void ic_log_set_level(enum ic_log_level level) { atomic_store(&min_level, (int)level); }

enum ic_log_level ic_log_level(void) { return (enum ic_log_level)atomic_load(&min_level); }

int ic_log_level_parse(const char *s, enum ic_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum ic_log_level)i;
            return 0;
        }
    }
    return IC_ERR_INVAL;
}

void ic_log_set_format(enum ic_log_format format) { atomic_store(&line_format, (int)format); }

int ic_log_format_parse(const char *s, enum ic_log_format *out)
{
    if (strcmp(s, "text") == 0)
        *out = IC_LOG_TEXT;
    else if (strcmp(s, "json") == 0)
        *out = IC_LOG_JSON;
    else
        return IC_ERR_INVAL;
    return 0;
}

static void write_line(char *line, size_t len)
{
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

/* RFC 3339 UTC time with milliseconds. */
static void timestamp(char *out, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L);
}

/* Appends to line[0..cap-1) at *len, truncating; keeps room for '\n'. */
static void append(char *line, size_t cap, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void append(char *line, size_t cap, size_t *len, const char *fmt, ...)
{
    if (*len + 2 >= cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line + *len, cap - 1 - *len, fmt, ap);
    va_end(ap);
    if (n > 0)
        *len = *len + (size_t)n >= cap - 1 ? cap - 2 : *len + (size_t)n;
}

/* The length of the valid UTF-8 character at s[0..n) that is not a C1
 * control, or 0. */
static size_t utf8_char_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (len == 0 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F) || /* overlong, surrogate */
        (c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F) || /* overlong, > U+10FFFF */
        (c == 0xC2 && s[1] < 0xA0))                                 /* C1 control */
        return 0;
    return len;
}

/* Appends s[0..n) escaped (see the top of the file) to line at *len,
 * whole escapes and characters only; keeps room for '\n'. */
static void append_escaped(char *line, size_t cap, size_t *len, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        char esc[4];
        const char *out = esc;
        size_t k = 2, used = 1;
        unsigned c = u[i];
        if (c == '\n' || c == '\r' || c == '\t' || c == '\\') {
            esc[0] = '\\';
            esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : '\\';
        } else if (c >= 0x20 && c < 0x7F) {
            out = (const char *)u + i;
            k = 1;
        } else if (c >= 0x80 && (used = utf8_char_len(u + i, n - i)) > 0) {
            out = (const char *)u + i;
            k = used;
        } else {
            used = 1;
            esc[0] = '\\';
            esc[1] = 'x';
            esc[2] = hex[c >> 4];
            esc[3] = hex[c & 15];
            k = 4;
        }
        if (*len + k + 2 > cap)
            return;
        memcpy(line + *len, out, k);
        *len += k;
        i += used;
    }
}

static void emit_text(enum ic_log_level level, const ic_log_ctx *ctx, const char *msg)
{
    char line[2048], ts[64];
    size_t len = 0;
    timestamp(ts, sizeof ts);
    append(line, sizeof line, &len, "%s %-5s ", ts, level_names[level]);
    size_t mlen = strlen(msg);
    while (mlen > 0 && msg[mlen - 1] == '\n')
        mlen--;
    append_escaped(line, sizeof line, &len, msg, mlen);
    static const char *const keys[] = {" client=", " session=", " request="};
    const char *vals[] = {ctx ? ctx->client : NULL, ctx ? ctx->session : NULL,
                          ctx ? ctx->request : NULL};
    for (int i = 0; i < 3; i++) {
        if (!vals[i])
            continue;
        append(line, sizeof line, &len, "%s", keys[i]);
        append_escaped(line, sizeof line, &len, vals[i], strlen(vals[i]));
    }
    if (ctx && ctx->conn)
        append(line, sizeof line, &len, " conn=%llu", (unsigned long long)ctx->conn);
    write_line(line, len);
}

static void emit_json(enum ic_log_level level, const ic_log_ctx *ctx, const char *msg)
{
    char ts[64];
    timestamp(ts, sizeof ts);
    size_t mlen = strlen(msg);
    while (mlen > 0 && msg[mlen - 1] == '\n')
        mlen--;
    json_t *o = json_object();
    json_t *m = json_stringn(msg, mlen);
    if (!m) /* not UTF-8 (a foreign library's bytes): keep the line, say so */
        m = json_string("(log message was not valid UTF-8)");
    json_object_set_new(o, "time", json_string(ts));
    json_object_set_new(o, "level", json_string(level_names[level]));
    json_object_set_new(o, "msg", m);
    if (ctx && ctx->client)
        json_object_set_new(o, "client", json_string(ctx->client));
    if (ctx && ctx->session)
        json_object_set_new(o, "session", json_string(ctx->session));
    if (ctx && ctx->request)
        json_object_set_new(o, "request", json_string(ctx->request));
    if (ctx && ctx->conn)
        json_object_set_new(o, "conn", json_integer((json_int_t)ctx->conn));
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!text)
        return;
    /* One writev: the line and its newline reach stderr together. */
    struct iovec iov[2] = {{text, strlen(text)}, {"\n", 1}};
    ssize_t w = writev(STDERR_FILENO, iov, 2);
    (void)w;
    free(text);
}

static void vlog(enum ic_log_level level, const ic_log_ctx *ctx, const char *fmt, va_list ap)
{
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (atomic_load(&line_format) == IC_LOG_JSON)
        emit_json(level, ctx, msg);
    else
        emit_text(level, ctx, msg);
}

void ic_log(enum ic_log_level level, const char *fmt, ...)
{
    if ((int)level < atomic_load(&min_level))
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, NULL, fmt, ap);
    va_end(ap);
}

void ic_log_for(enum ic_log_level level, const ic_log_ctx *ctx, const char *fmt, ...)
{
    if ((int)level < atomic_load(&min_level))
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, ctx, fmt, ap);
    va_end(ap);
}
