/* store.c - the durable-session store's files and its writer thread (see
 * store.h). Jobs travel through an ic_queue; the thread is the only one
 * that touches the directory after ic_store_load.
 */
#include "store.h"
#include "clock.h"
#include "err.h"
#include "log.h"
#include "queue.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_MAX 200

const double ic_store_write_bounds_s[IC_STORE_WRITE_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
};

enum job_type { JOB_PUT, JOB_DELETE, JOB_READ, JOB_STOP };

/* One job; owned by the queue, then by the thread, which frees it. */
typedef struct job {
    enum job_type type;
    char key[KEY_MAX + 1];
    char *data;               /* PUT: owned */
    size_t len;
    uint64_t tag;             /* PUT: for the done callback; 0 none */
    bool droppable;           /* PUT: not written past the deadline */
    double t0_ms;             /* PUT: when its write began */
    int rc;                   /* PUT: its result, for the done callback */
} job;

struct ic_store {
    char *dir;
    int dir_fd;               /* for fsync of renames and *at() calls */
    ic_queue *jobs;           /* job *, unbounded */
    pthread_t thread;
    bool started;
    _Atomic uint64_t writes, write_errors, deletes, dropped;
    _Atomic int64_t deadline_us; /* CLOCK_MONOTONIC; 0: none */
    _Atomic int64_t bytes;
    _Atomic uint64_t buckets[IC_STORE_WRITE_BUCKETS + 1];
    _Atomic uint64_t write_sum_us;
    _Atomic size_t pending;
    _Atomic size_t queued_bytes; /* of the PUTs in pending */
    ic_store_done_fn done;    /* set before the first put */
    void *done_ud;
    ic_store_read_fn read_done; /* set before the first read */
    void *read_ud;
};

bool ic_store_key_ok(const char *key)
{
    size_t n = strlen(key);
    if (n == 0 || n > KEY_MAX || key[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = key[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

int ic_store_random(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return IC_ERR_SYS;
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

void ic_store_sha256_hex(const void *data, size_t n, char hex[65])
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    hex[0] = '\0';
    if (EVP_Digest(data, n, d, &len, EVP_sha256(), NULL) != 1)
        return;
    for (unsigned i = 0; i < len && i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

/* --- the thread ------------------------------------------------------ */

/* A batch ends at 64 jobs or once 1 MiB is written: a big file (a KV
 * state) does not hold back the ENDs of the small records before it. */
#define BATCH_MAX 64
#define BATCH_BYTES ((size_t)1 << 20)
#define WRITE_CHUNK ((size_t)8 << 20)

static void job_free(void *p)
{
    job *j = p;
    if (j)
        free(j->data);
    free(j);
}

static off_t size_of(ic_store *s, const char *key)
{
    struct stat st;
    return fstatat(s->dir_fd, key, &st, 0) == 0 ? st.st_size : 0;
}

static bool past_deadline(ic_store *s)
{
    int64_t d = atomic_load(&s->deadline_us);
    return d > 0 && ic_now_ms() * 1e3 >= (double)d;
}

/* In chunks of WRITE_CHUNK. A droppable file's chunks go to the disk as
 * they are written (sync_file_range; the fsync after them has little left
 * to do), and its write stops (ETIMEDOUT) between two once the deadline
 * has passed: one big KV state cannot hold the shutdown much past it. */
static int write_all(ic_store *s, int fd, const char *p, size_t n, bool droppable)
{
    off_t done = 0, synced = 0;
    while (n > 0) {
        if (droppable && done - synced >= (off_t)WRITE_CHUNK) {
            sync_file_range(fd, synced, done - synced, SYNC_FILE_RANGE_WAIT_BEFORE |
                            SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
            synced = done; /* a failure shows in the fsync that follows */
        }
        if (droppable && past_deadline(s)) {
            errno = ETIMEDOUT;
            return -1;
        }
        ssize_t w = write(fd, p, n < WRITE_CHUNK ? n : WRITE_CHUNK);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
        done += w;
    }
    return 0;
}

/* Temp file, fsync, rename; the directory's fsync comes after the batch
 * (store_main). */
static int put_file(ic_store *s, const job *j)
{
    char tmp[KEY_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", j->key);
    int fd = openat(s->dir_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    int rc = write_all(s, fd, j->data, j->len, j->droppable);
    if (rc == 0)
        rc = fsync(fd);
    int e = errno; /* of the first failure (size_of may set it) */
    if (close(fd) < 0 && rc == 0) {
        rc = -1;
        e = errno;
    }
    off_t old = size_of(s, j->key);
    if (rc == 0 && (rc = renameat(s->dir_fd, tmp, s->dir_fd, j->key)) < 0)
        e = errno;
    if (rc < 0) {
        unlinkat(s->dir_fd, tmp, 0);
        errno = e;
        return -1;
    }
    atomic_fetch_add(&s->bytes, (int64_t)j->len - (int64_t)old);
    return 0;
}

static void observe_write(ic_store *s, double seconds)
{
    int b = 0;
    while (b < IC_STORE_WRITE_BUCKETS && seconds > ic_store_write_bounds_s[b])
        b++;
    atomic_fetch_add(&s->buckets[b], 1);
    atomic_fetch_add(&s->write_sum_us, (uint64_t)(seconds * 1e6));
    atomic_fetch_add(&s->writes, 1);
}

/* Returns true when the directory changed (its fsync is due). */
static bool remove_key(ic_store *s, const char *key)
{
    off_t old = size_of(s, key);
    if (unlinkat(s->dir_fd, key, 0) < 0) {
        if (errno != ENOENT) {
            atomic_fetch_add(&s->write_errors, 1);
            ic_log_error("session store %s: could not remove %s: %s", s->dir, key,
                         strerror(errno));
        }
        return false;
    }
    atomic_fetch_sub(&s->bytes, (int64_t)old);
    atomic_fetch_add(&s->deletes, 1);
    return true;
}

/* A job's first half, up to the directory's fsync; a read is answered at
 * once. Returns true when the directory changed. */
static bool run_job(ic_store *s, job *j)
{
    bool dropped = j->type == JOB_PUT && j->droppable && past_deadline(s);
    if (j->type == JOB_PUT && !dropped) {
        j->t0_ms = ic_now_ms();
        j->rc = 0;
        if (put_file(s, j) < 0) {
            /* ETIMEDOUT: the deadline came during a droppable file's write */
            dropped = j->droppable && errno == ETIMEDOUT;
            if (!dropped) {
                j->rc = IC_ERR_IO;
                atomic_fetch_add(&s->write_errors, 1);
                ic_log_error("session store %s: could not write %s: %s", s->dir, j->key,
                             strerror(errno));
            }
        }
        free(j->data); /* written: its memory goes now, its count at the end */
        j->data = NULL;
        if (!dropped)
            return j->rc == 0;
    }
    if (dropped) {
        atomic_fetch_add(&s->dropped, 1);
        j->rc = IC_ERR_TIMEOUT; /* nothing to report: a droppable file has no tag */
        return remove_key(s, j->key); /* an older version would be stale */
    }
    if (j->type == JOB_READ) {
        size_t len = 0;
        char *data = ic_store_read_file(s->dir_fd, j->key, &len);
        if (s->read_done)
            s->read_done(s->read_ud, j->tag, data, len, data ? 0 : IC_ERR_IO);
        else
            free(data);
        return false;
    }
    return remove_key(s, j->key);
}

/* A job's second half, after the directory's fsync (sync_rc). */
static void finish_job(ic_store *s, job *j, int sync_rc)
{
    if (j->type == JOB_PUT && j->rc != IC_ERR_TIMEOUT) { /* not dropped */
        if (j->rc == 0 && sync_rc < 0) {
            j->rc = IC_ERR_IO;
            atomic_fetch_add(&s->write_errors, 1);
        }
        if (j->rc == 0)
            observe_write(s, (ic_now_ms() - j->t0_ms) / 1e3);
        if (j->tag && s->done)
            s->done(s->done_ud, j->tag, j->rc);
    }
    if (j->type == JOB_PUT)
        atomic_fetch_sub(&s->queued_bytes, j->len);
    job_free(j);
    atomic_fetch_sub(&s->pending, 1);
}

/* The thread: jobs in the order queued, in batches of what is waiting (at
 * most BATCH_MAX), whose renames and removals share one fsync of the
 * directory: a burst of writes (the ENDs of many sessions, the KV files
 * of a shutdown) costs one fsync per file, not two. A write is reported
 * done only after that fsync. */
static void *store_main(void *arg)
{
    ic_store *s = arg;
    job *batch[BATCH_MAX];
    for (;;) {
        job *j = ic_queue_pop_wait(s->jobs, -1);
        int n = 0;
        size_t bytes = 0;
        bool dirty = false, stop = false;
        while (j) {
            if (j->type == JOB_STOP) {
                stop = true;
                job_free(j);
                break;
            }
            dirty |= run_job(s, j);
            bytes += j->type == JOB_PUT ? j->len : 0;
            batch[n++] = j;
            j = n < BATCH_MAX && bytes < BATCH_BYTES ? ic_queue_pop(s->jobs) : NULL;
        }
        int sync_rc = dirty ? fsync(s->dir_fd) : 0;
        if (sync_rc < 0)
            ic_log_error("session store %s: fsync of the directory failed: %s", s->dir,
                         strerror(errno));
        for (int i = 0; i < n; i++)
            finish_job(s, batch[i], sync_rc);
        if (stop) {
            atomic_fetch_sub(&s->pending, 1);
            return NULL;
        }
    }
}

/* --- any thread ------------------------------------------------------ */

static int queue_job(ic_store *s, enum job_type type, const char *key, char *data, size_t len,
                     uint64_t tag, bool droppable)
{
    if (key && !ic_store_key_ok(key)) {
        free(data);
        return IC_ERR_INVAL;
    }
    job *j = calloc(1, sizeof *j);
    if (!j) {
        free(data);
        return IC_ERR_NOMEM;
    }
    j->type = type;
    if (key)
        snprintf(j->key, sizeof j->key, "%s", key);
    j->data = data;
    j->len = len;
    j->tag = tag;
    j->droppable = droppable;
    atomic_fetch_add(&s->pending, 1);
    if (type == JOB_PUT)
        atomic_fetch_add(&s->queued_bytes, len);
    int rc = ic_queue_push(s->jobs, j);
    if (rc < 0) {
        atomic_fetch_sub(&s->pending, 1);
        if (type == JOB_PUT)
            atomic_fetch_sub(&s->queued_bytes, len);
        job_free(j);
        return rc;
    }
    return 0;
}

void ic_store_set_done(ic_store *s, ic_store_done_fn fn, void *ud)
{
    s->done = fn;
    s->done_ud = ud;
}

int ic_store_put(ic_store *s, const char *key, char *data, size_t len, uint64_t tag)
{
    return queue_job(s, JOB_PUT, key, data, len, tag, false);
}

int ic_store_put_droppable(ic_store *s, const char *key, char *data, size_t len)
{
    return queue_job(s, JOB_PUT, key, data, len, 0, true);
}

void ic_store_set_deadline(ic_store *s, double deadline_ms)
{
    atomic_store(&s->deadline_us, deadline_ms > 0 ? (int64_t)(deadline_ms * 1e3) : 0);
}

void ic_store_set_read_done(ic_store *s, ic_store_read_fn fn, void *ud)
{
    s->read_done = fn;
    s->read_ud = ud;
}

int ic_store_read(ic_store *s, const char *key, uint64_t tag)
{
    return queue_job(s, JOB_READ, key, NULL, 0, tag, false);
}

int ic_store_delete(ic_store *s, const char *key)
{
    return queue_job(s, JOB_DELETE, key, NULL, 0, 0, false);
}

size_t ic_store_pending(ic_store *s) { return atomic_load(&s->pending); }

size_t ic_store_queued_bytes(ic_store *s) { return atomic_load(&s->queued_bytes); }

void ic_store_get_stats(const ic_store *s, ic_store_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!s)
        return;
    out->writes = atomic_load(&s->writes);
    out->write_errors = atomic_load(&s->write_errors);
    out->deletes = atomic_load(&s->deletes);
    out->dropped = atomic_load(&s->dropped);
    out->bytes = atomic_load(&s->bytes);
    for (int b = 0; b <= IC_STORE_WRITE_BUCKETS; b++)
        out->write_buckets[b] = atomic_load(&s->buckets[b]);
    out->write_sum_s = (double)atomic_load(&s->write_sum_us) / 1e6;
}

const char *ic_store_dir(const ic_store *s) { return s->dir; }

bool ic_store_exists(ic_store *s, const char *key)
{
    struct stat st;
    return ic_store_key_ok(key) && fstatat(s->dir_fd, key, &st, 0) == 0;
}

/* --- open, load, close ------------------------------------------------ */

int ic_store_open(const char *dir, ic_store **out, char *err, size_t errlen)
{
    *out = NULL;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "--session-store %s: cannot create it: %s", dir, strerror(errno));
        return IC_ERR_IO;
    }
    ic_store *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir)) || ic_queue_create(0, &s->jobs) < 0) {
        snprintf(err, errlen, "out of memory");
        ic_store_close(s);
        return IC_ERR_NOMEM;
    }
    s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat st;
    if (s->dir_fd < 0 || fstat(s->dir_fd, &st) < 0) {
        snprintf(err, errlen, "--session-store %s: %s", dir, strerror(errno));
        ic_store_close(s);
        return IC_ERR_IO;
    }
    if (st.st_mode & 077)
        ic_log_warn("--session-store %s: the directory is readable by others (mode %03o); "
                    "it holds conversations: chmod 700 it", dir, (unsigned)(st.st_mode & 0777));
    if (pthread_create(&s->thread, NULL, store_main, s) != 0) {
        snprintf(err, errlen, "--session-store: cannot start its thread");
        ic_store_close(s);
        return IC_ERR_SYS;
    }
    s->started = true;
    *out = s;
    return 0;
}

void ic_store_close(ic_store *s) { ic_store_close_stats(s, NULL); }

void ic_store_close_stats(ic_store *s, ic_store_stats *last)
{
    if (last)
        memset(last, 0, sizeof *last);
    if (!s)
        return;
    if (s->started && queue_job(s, JOB_STOP, NULL, NULL, 0, 0, false) == 0)
        pthread_join(s->thread, NULL);
    /* A failed STOP push (no memory) leaves a thread that never ends: the
     * process is exiting anyway, and freeing its state under it would be worse. */
    else if (s->started)
        return;
    if (last)
        ic_store_get_stats(s, last);
    if (s->jobs)
        ic_queue_destroy(s->jobs, job_free);
    if (s->dir_fd > 0)
        close(s->dir_fd);
    free(s->dir);
    free(s);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

char *ic_store_read_file(int dir_fd, const char *name, size_t *len)
{
    int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (!buf)
        return NULL;
    buf[got] = '\0';
    *len = got;
    return buf;
}

int ic_store_load(ic_store *s, const char *suffix,
                  void (*fn)(void *ud, const char *key, const char *data, size_t len), void *ud)
{
    int dfd = dup(s->dir_fd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        if (dfd >= 0)
            close(dfd);
        return IC_ERR_IO;
    }
    rewinddir(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        const char *name = e->d_name;
        if (!ic_store_key_ok(name))
            continue;
        if (ends_with(name, ".tmp")) {
            unlinkat(s->dir_fd, name, 0); /* a write a crash interrupted */
            continue;
        }
        if (!ends_with(name, suffix))
            continue;
        size_t len = 0;
        char *data = ic_store_read_file(s->dir_fd, name, &len);
        if (!data) {
            ic_log_warn("session store %s: %s skipped: cannot read it", s->dir, name);
            continue;
        }
        atomic_fetch_add(&s->bytes, (int64_t)len);
        fn(ud, name, data, len);
        free(data);
        n++;
    }
    closedir(d);
    return n;
}
