/* log.h - leveled log lines to stderr.
 *
 * Any thread may log; each line is written with one write(2) so lines from
 * different threads never interleave. Never pass tokens or prompt text.
 */
#ifndef IC_LOG_H
#define IC_LOG_H

enum ic_log_level {
    IC_LOG_DEBUG = 0,
    IC_LOG_INFO = 1,
    IC_LOG_WARN = 2,
    IC_LOG_ERROR = 3,
};

/* Sets the lowest level written (default IC_LOG_INFO). Call before threads start. */
void ic_log_set_level(enum ic_log_level level);

/* Returns the current minimum level. */
enum ic_log_level ic_log_level(void);

/* Parses "debug|info|warn|error"; returns 0 or IC_ERR_INVAL. */
int ic_log_level_parse(const char *s, enum ic_log_level *out);

/* Writes one line "TIME LEVEL message" to stderr. */
void ic_log(enum ic_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define ic_log_debug(...) ic_log(IC_LOG_DEBUG, __VA_ARGS__)
#define ic_log_info(...) ic_log(IC_LOG_INFO, __VA_ARGS__)
#define ic_log_warn(...) ic_log(IC_LOG_WARN, __VA_ARGS__)
#define ic_log_error(...) ic_log(IC_LOG_ERROR, __VA_ARGS__)

#endif
