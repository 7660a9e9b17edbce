/* err.c - messages for enum ic_err. Pure; any thread. */
#include "err.h"

const char *ic_strerror(int err)
{
    switch ((enum ic_err)err) {
    case IC_OK: return "success";
    case IC_ERR_NOMEM: return "out of memory";
    case IC_ERR_INVAL: return "invalid argument";
    case IC_ERR_IO: return "input/output error";
    case IC_ERR_MODEL: return "not a loadable GGUF model";
    case IC_ERR_CONTEXT: return "could not create the inference context";
    case IC_ERR_DECODE: return "decode failed";
    case IC_ERR_TOKENIZE: return "tokenization failed";
    case IC_ERR_TEMPLATE: return "chat template failed";
    case IC_ERR_PROMPT_TOO_LONG: return "prompt too long for the session context";
    case IC_ERR_CONTEXT_FULL: return "session context is full";
    case IC_ERR_OVERLOADED: return "server overloaded";
    case IC_ERR_CAPACITY: return "server session capacity reached";
    case IC_ERR_NOT_FOUND: return "session not found";
    case IC_ERR_BUSY: return "session is busy";
    case IC_ERR_NOT_RUNNING: return "no generation running";
    case IC_ERR_AUTH: return "authentication failed";
    case IC_ERR_PARSE: return "malformed input";
    case IC_ERR_SHUTDOWN: return "shutting down";
    case IC_ERR_SYS: return "system call failed";
    case IC_ERR_TIMEOUT: return "timed out";
    case IC_ERR_CHECKSUM: return "checksum mismatch";
    }
    return "unknown error";
}
