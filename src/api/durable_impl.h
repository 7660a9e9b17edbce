/* durable_impl.h - the durable sessions' record (struct gw_durable),
 * shared by durable.c (parking, resuming, the store's traffic) and
 * durable_file.c (the files' formats) and by nothing else.
 *
 * Thread: network thread (part of the gateway, gateway_impl.h).
 */
#ifndef IC_DURABLE_IMPL_H
#define IC_DURABLE_IMPL_H

#include "durable.h"
#include "gateway_impl.h"

#define RECORD_FORMAT "inferencecenter-session"
#define RECORD_VERSION 1
#define RECORD_SUFFIX IC_DURABLE_SUFFIX
#define KV_SUFFIX ".kv"
#define KV_MAGIC "ICKV1\n"
/* Parked sessions' KV states waiting for the store's disk are at most
 * this many bytes (or one state, when larger): past it one is dropped and
 * recomputed at its resume, so a slow disk does not grow the heap. */
#define KV_QUEUE_MAX ((size_t)256 << 20)

typedef struct dur_turn {
    char *prompt;
    bool raw;
    char *reply;
} dur_turn;

/* A durable session's record. Network thread. */
typedef struct gw_durable {
    uint64_t num;              /* random; the session id is "s<num>" */
    char sid[24];
    char token_sha256[65];     /* of the resume token, which is never kept */
    char client[IC_CLIENT_NAME_MAX + 1]; /* its client with tokens; "" on an open server */
    char *system;              /* or NULL */
    ic_req_params defaults;    /* CREATE_SESSION's params */
    dur_turn *turns;
    int n_turns, cap_turns;
    /* The running INFER: its prompt and the text of its TOKENs so far. */
    char *pend_prompt;
    bool pend_raw;
    uint64_t pend_request;
    ic_buf pend_reply;
    int n_ctx_used;            /* tokens after the last END */
    int64_t updated_wall_ms;   /* the last END (CLOCK_REALTIME) */
    double parked_ms;          /* CLOCK_MONOTONIC: when its connection went; 0: held */
    /* An END waiting for its turn's write (tag held_tag) to go to held_conn. */
    uint64_t held_tag;
    char *held_end;
    uint64_t held_conn;
    gw_session *ss;            /* the live session, or NULL: only in the store */
    /* Parked sessions give their cells back: evicting while the scheduler
     * closes ss, then (RAM tier) the KV state and its tokens, owned. */
    bool evicting;
    bool evict_after_end;      /* parked while generating: evict at its END */
    uint8_t *kv;
    size_t kv_len;
    ic_token *hist;
    int n_hist;
    /* Disk tier: the KV state in DIR/<sid>.kv (past --session-ram), read
     * back (kv_read_tag) for a resume; kv_from_disk: kv came from there. */
    bool kv_on_disk;
    bool kv_from_disk;
    uint64_t kv_read_tag;
    /* A RESUME_SESSION that came while evicting (or reading the KV state
     * from disk), answered when it is done. */
    uint64_t resume_conn;
    ic_msg_id resume_id;
} gw_durable;

/* The running INFER's prompt and reply so far, forgotten. */
void ic_gw_dur_pend_clear(gw_durable *d);

/* Frees a record and everything it owns. NULL is ok. */
void ic_gw_dur_free(gw_durable *d);

/* The store's keys of its record ("<sid>.json") and KV state ("<sid>.kv"). */
void ic_gw_dur_file_key(const gw_durable *d, char *key, size_t cap);
void ic_gw_dur_kv_key(const gw_durable *d, char *key, size_t cap);

/* Queues the removal of its KV file, if it has one. */
void ic_gw_dur_drop_kv(ic_gateway *g, gw_durable *d);

/* The KV file: magic, fingerprint line (the model file, llama.cpp build,
 * the context's shape), n_hist (uint32), the tokens, the state (all
 * copied). Queued for the store as a droppable file (store.h); false when
 * out of memory. */
bool ic_gw_dur_kv_save(ic_gateway *g, gw_durable *d, const uint8_t *kv, size_t kv_len,
                       const ic_token *hist, int n_hist);

/* A KV file read back: into d->kv and d->hist (kv_from_disk set), or why
 * not (static text). */
const char *ic_gw_dur_kv_parse(ic_gateway *g, gw_durable *d, const char *data, size_t len);

/* The record's file (malloc'd compact JSON), or NULL when out of memory. */
char *ic_gw_dur_record_json(const gw_durable *d);

/* A record from its file; NULL and *why (static text) when it is not one. */
gw_durable *ic_gw_dur_record_parse(const char *key, const char *data, size_t len,
                                   const char **why);

/* Appends a finished turn (copied). Returns 0 or IC_ERR_NOMEM. */
int ic_gw_dur_push_turn(gw_durable *d, const char *prompt, bool raw, const char *reply,
                        size_t reply_len);

#endif
