/* err.h - the project's one error enum and its messages.
 *
 * Every function that can fail returns int: 0 (or a count) on success and a
 * negative enum ic_err on failure. A foreign code (llama.cpp, libwebsockets,
 * errno) is translated into one of these where it enters the project.
 * Thread-safe: ic_strerror returns static strings.
 */
#ifndef IC_ERR_H
#define IC_ERR_H

enum ic_err {
    IC_OK = 0,
    IC_ERR_NOMEM = -1,           /* allocation failed */
    IC_ERR_INVAL = -2,           /* bad argument or option */
    IC_ERR_IO = -3,              /* file could not be read or written */
    IC_ERR_MODEL = -4,           /* file is not a loadable model */
    IC_ERR_CONTEXT = -5,         /* llama context could not be created */
    IC_ERR_DECODE = -6,          /* llama_decode failed */
    IC_ERR_TOKENIZE = -7,        /* text could not be tokenized */
    IC_ERR_TEMPLATE = -8,        /* chat template could not be applied */
    IC_ERR_PROMPT_TOO_LONG = -9, /* prompt does not fit the session context */
    IC_ERR_CONTEXT_FULL = -10,   /* session context has no room left */
    IC_ERR_OVERLOADED = -11,     /* work queue is full */
    IC_ERR_CAPACITY = -12,       /* server-wide session limit reached */
    IC_ERR_NOT_FOUND = -13,      /* no such session */
    IC_ERR_BUSY = -14,           /* session already generating */
    IC_ERR_NOT_RUNNING = -15,    /* nothing to abort */
    IC_ERR_AUTH = -16,           /* authentication failed */
    IC_ERR_PARSE = -17,          /* malformed input (JSON, config, tokens file) */
    IC_ERR_SHUTDOWN = -18,       /* component is stopping */
    IC_ERR_SYS = -19,            /* system call failed (see log for errno) */
    IC_ERR_TIMEOUT = -20,        /* a peer stopped answering in time */
    IC_ERR_CHECKSUM = -21,       /* downloaded bytes do not match their checksum */
};

/* Returns a static, human-readable message for an ic_err (or "unknown error"). */
const char *ic_strerror(int err);

#endif
