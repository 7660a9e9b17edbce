/* log.h - leveled log lines to stderr: plain text, or JSON lines for log
 * collectors (--log-format json).
 *
 * Any thread may log; each line is written with one write(2) so lines from
 * different threads never interleave. Never pass API tokens or prompt text
 * (only the serve command's --log-prompts, off by default, logs prompts).
 */
#ifndef IC_LOG_H
#define IC_LOG_H

#include <stdint.h>

enum ic_log_level {
    IC_LOG_DEBUG = 0,
    IC_LOG_INFO = 1,
    IC_LOG_WARN = 2,
    IC_LOG_ERROR = 3,
};

enum ic_log_format {
    IC_LOG_TEXT = 0,  /* "TIME LEVEL message key=value..." */
    IC_LOG_JSON = 1,  /* {"time":..,"level":..,"msg":..,"client":..,...} per line */
};

/* Who a line is about; every field may be NULL (or 0) and is then left out. */
typedef struct ic_log_ctx {
    const char *client;      /* client name from the tokens file */
    const char *session;     /* "s<N>" */
    const char *request;     /* "r<N>" */
    uint64_t conn;           /* connection id */
} ic_log_ctx;

/* Sets the lowest level written (default IC_LOG_INFO). Call before threads start. */
void ic_log_set_level(enum ic_log_level level);

/* Returns the current minimum level. */
enum ic_log_level ic_log_level(void);

/* Parses "debug|info|warn|error"; returns 0 or IC_ERR_INVAL. */
int ic_log_level_parse(const char *s, enum ic_log_level *out);

/* Sets the line format (default text). Call before threads start. */
void ic_log_set_format(enum ic_log_format format);

/* Parses "text|json"; returns 0 or IC_ERR_INVAL. */
int ic_log_format_parse(const char *s, enum ic_log_format *out);

/* Writes one line "TIME LEVEL message" (or its JSON form) to stderr. */
void ic_log(enum ic_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Like ic_log, for a line about a request: carries ctx's fields. */
void ic_log_for(enum ic_log_level level, const ic_log_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define ic_log_debug(...) ic_log(IC_LOG_DEBUG, __VA_ARGS__)
#define ic_log_info(...) ic_log(IC_LOG_INFO, __VA_ARGS__)
#define ic_log_warn(...) ic_log(IC_LOG_WARN, __VA_ARGS__)
#define ic_log_error(...) ic_log(IC_LOG_ERROR, __VA_ARGS__)

#endif
