/* store.h - the durable-session store: one directory of small files,
 * written atomically by a thread of its own so that neither the network
 * thread nor the scheduler ever waits for a disk.
 *
 * A file is named by its key (letters, digits, '.', '_', '-'; no leading
 * dot). ic_store_put replaces it as a whole: written to KEY.tmp, fsync'd,
 * renamed over KEY, then the directory fsync'd, so after a crash a key
 * holds its previous contents or its new ones, never a mix. Jobs run in
 * the order they were queued; those waiting together share the
 * directory's fsync, and a write is reported done only after it.
 *
 * Threads: ic_store_open, ic_store_load and ic_store_close on one thread
 * (main, at start-up and shut-down); ic_store_put, _delete and _get_stats
 * from any thread; the store's own thread does the writing. The store
 * owns its thread, its queue and the atomics of its statistics.
 */
#ifndef IC_STORE_H
#define IC_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ic_store ic_store;

/* Upper bounds in seconds of the write-latency histogram's buckets (the
 * last bucket, beyond them, is +Inf). */
#define IC_STORE_WRITE_BUCKETS 8
extern const double ic_store_write_bounds_s[IC_STORE_WRITE_BUCKETS];

typedef struct ic_store_stats {
    uint64_t writes;          /* files written */
    uint64_t write_errors;    /* writes or deletes that failed (logged) */
    uint64_t deletes;
    uint64_t dropped;         /* droppable files not written: past the deadline */
    int64_t bytes;            /* bytes of the files in the store now */
    uint64_t write_buckets[IC_STORE_WRITE_BUCKETS + 1]; /* not cumulative */
    double write_sum_s;       /* all writes' time, temp file to directory fsync */
} ic_store_stats;

/* Opens (creating it, mode 0700) the directory and starts the thread.
 * Returns 0, or IC_ERR_IO / IC_ERR_SYS / IC_ERR_NOMEM with a one-line
 * reason in err. */
int ic_store_open(const char *dir, ic_store **out, char *err, size_t errlen);

/* Runs every queued job (droppable ones past the deadline are dropped),
 * stops the thread and frees the store. NULL is ok. */
void ic_store_close(ic_store *s);

/* As ic_store_close; *last (when not NULL) gets the statistics at the end. */
void ic_store_close_stats(ic_store *s, ic_store_stats *last);

/* The directory (borrowed from the store). */
const char *ic_store_dir(const ic_store *s);

/* Calls fn for every file whose key ends with suffix, with its contents
 * (borrowed for the call; NUL-terminated). Temp files left by a crash are
 * removed. Returns the number of files read, or IC_ERR_IO. Call before
 * anything is queued. */
int ic_store_load(ic_store *s, const char *suffix,
                  void (*fn)(void *ud, const char *key, const char *data, size_t len), void *ud);

/* Called on the store's thread after each write queued with a nonzero
 * tag: rc 0 when the file is durable, else an ic_err. Must be cheap and
 * thread-safe (push to a queue, wake a loop). Set before the first put. */
typedef void (*ic_store_done_fn)(void *ud, uint64_t tag, int rc);
void ic_store_set_done(ic_store *s, ic_store_done_fn fn, void *ud);

/* Queues a write of key with data (malloc'd; taken over on every path);
 * tag: for the done callback (0: none). Returns 0, IC_ERR_INVAL (a bad
 * key) or IC_ERR_NOMEM. Any thread. */
int ic_store_put(ic_store *s, const char *key, char *data, size_t len, uint64_t tag);

/* As ic_store_put (tag 0), for a file whose loss costs only time (a KV
 * state, which can be recomputed): once the deadline has passed it is not
 * written (or its write stops at the next 8 MiB), and key is removed
 * instead (an older version would be stale). Any thread. */
int ic_store_put_droppable(ic_store *s, const char *key, char *data, size_t len);

/* From CLOCK_MONOTONIC ms deadline_ms on (ic_now_ms), droppable files
 * still queued are dropped: a bound on how long ic_store_close waits, at
 * shut-down. <= 0: none (the default). Any thread. */
void ic_store_set_deadline(ic_store *s, double deadline_ms);

/* Called on the store's thread with a file read for ic_store_read: data
 * (malloc'd, taken over by the callback; NULL with rc < 0 when it could
 * not be read) of len bytes. */
typedef void (*ic_store_read_fn)(void *ud, uint64_t tag, char *data, size_t len, int rc);
void ic_store_set_read_done(ic_store *s, ic_store_read_fn fn, void *ud);

/* Queues a read of key, answered through the read callback with tag.
 * Returns 0, IC_ERR_INVAL or IC_ERR_NOMEM. Any thread. */
int ic_store_read(ic_store *s, const char *key, uint64_t tag);

/* Queues the removal of key (absent: nothing happens). Any thread. */
int ic_store_delete(ic_store *s, const char *key);

/* Jobs queued and not yet done. Any thread. */
size_t ic_store_pending(ic_store *s);

/* Bytes of the writes queued and not yet done (their data is in memory
 * until then). Any thread. */
size_t ic_store_queued_bytes(ic_store *s);

void ic_store_get_stats(const ic_store *s, ic_store_stats *out);

/* n bytes from the kernel's CSPRNG (getrandom). Returns 0 or IC_ERR_SYS. */
int ic_store_random(void *buf, size_t n);

/* The regular file name in directory dir_fd, whole, as a malloc'd
 * NUL-terminated string and its length in *len; NULL when it cannot be
 * opened or read, or is not a regular file. Any thread. */
char *ic_store_read_file(int dir_fd, const char *name, size_t *len);

/* SHA-256 of data as 64 lower-case hex digits. */
void ic_store_sha256_hex(const void *data, size_t n, char hex[65]);

/* True when the file key exists (the thread that loads). */
bool ic_store_exists(ic_store *s, const char *key);

/* True when key is a valid key. */
bool ic_store_key_ok(const char *key);

#endif
