/* log.c - leveled log lines to stderr, one write(2) per line, as text or
 * JSON lines (built with jansson, so every message is escaped right).
 * Any thread.
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

static void emit_text(enum ic_log_level level, const ic_log_ctx *ctx, const char *msg)
{
    char line[2048], ts[64];
    size_t len = 0;
    timestamp(ts, sizeof ts);
    append(line, sizeof line, &len, "%s %-5s %s", ts, level_names[level], msg);
    while (len > 0 && line[len - 1] == '\n')
        len--;
    if (ctx && ctx->client)
        append(line, sizeof line, &len, " client=%s", ctx->client);
    if (ctx && ctx->session)
        append(line, sizeof line, &len, " session=%s", ctx->session);
    if (ctx && ctx->request)
        append(line, sizeof line, &len, " request=%s", ctx->request);
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
