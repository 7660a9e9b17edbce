/* sched_names.c - the names of the scheduler's enums, as the protocol, the
 * tokens file and the command line spell them. Pure and free of llama.cpp,
 * so that protocol.c and auth.c (and the fuzz target) can use them alone.
 */
#include "err.h"
#include "sched.h"

#include <string.h>

const char *ic_end_reason_name(enum ic_end_reason r)
{
    static const char *const names[] = {"eos",          "length",   "stop_string", "abort",
                                        "context_full", "shutdown", "error",
                                        "model_unloaded"};
    return (unsigned)r < sizeof names / sizeof *names ? names[r] : "error";
}

const char *ic_close_reason_name(enum ic_close_reason r)
{
    static const char *const names[] = {"client", "disconnect", "shutdown", "evicted"};
    return (unsigned)r < sizeof names / sizeof *names ? names[r] : "client";
}

const char *ic_session_state_name(enum ic_session_state s)
{
    static const char *const names[] = {"idle", "queued", "prefill", "generating"};
    return (unsigned)s < sizeof names / sizeof *names ? names[s] : "idle";
}

const char *ic_sched_state_name(enum ic_sched_state s)
{
    static const char *const names[] = {"ready", "throttled", "sleeping", "waking"};
    return (unsigned)s < sizeof names / sizeof *names ? names[s] : "ready";
}
