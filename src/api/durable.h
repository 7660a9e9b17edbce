/* durable.h - durable sessions' records as files (the part of durable.c
 * that is not the gateway's): what `inferencecenter sessions` reads. The
 * file format is in docs/operations.md. Pure; any thread.
 */
#ifndef IC_DURABLE_H
#define IC_DURABLE_H

#include <stddef.h>
#include <stdint.h>

/* The files' name suffix: "<session_id>.json". */
#define IC_DURABLE_SUFFIX ".json"

typedef struct ic_durable_info {
    char session_id[24];
    char client[65];          /* "" on a server without tokens */
    int n_turns;
    int n_ctx_used;           /* tokens after its last END */
    int64_t updated_ms;       /* its last END, Unix ms */
    size_t bytes;             /* conversation text: system prompt, prompts, replies */
} ic_durable_info;

/* Checks the file named key with contents data as the server does at
 * start. Returns 0 and fills *out, or IC_ERR_PARSE with *why (static
 * text) when the server would skip it. */
int ic_durable_record_info(const char *key, const char *data, size_t len, ic_durable_info *out,
                           const char **why);

#endif
