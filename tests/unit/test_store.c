/* test_store.c - the durable-session store (platform/store.c): atomic
 * writes read back whole, a replaced file never mixes, the directory is
 * created 0700, crash leftovers (*.tmp) go at load, deletes (purges),
 * reads through the store's thread, a burst of writes (batched) reported
 * in order, queued bytes, droppable files past the deadline,
 * writes and reads interrupted (EINTR) or short; and the record's reader
 * (api/durable_file.c, ic_durable_record_info) rejecting a truncated or
 * corrupt record, which is what the server and `inferencecenter
 * sessions` skip.
 *
 * write() and read() are wrapped here (the executable's definitions win
 * over libc's for the store's calls): while a test arms them, they fail
 * with EINTR and move at most a few bytes per call.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "clock.h"
#include "durable.h"
#include "err.h"
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* --- write() and read() with faults ------------------------------------- */

static _Atomic int eintr_left;    /* calls that fail with EINTR first */
static _Atomic int chunk;         /* > 0: at most this many bytes per call */
static _Atomic int n_eintr_seen;
/* > 0: after this many more write() calls, deadline_store's deadline passes */
static _Atomic int deadline_after;
static ic_store *deadline_store;

ssize_t write(int fd, const void *buf, size_t n)
{
    if (atomic_load(&deadline_after) > 0 && atomic_fetch_sub(&deadline_after, 1) == 1)
        ic_store_set_deadline(deadline_store, ic_now_ms() - 1);
    if (atomic_load(&eintr_left) > 0 && atomic_fetch_sub(&eintr_left, 1) > 0) {
        atomic_fetch_add(&n_eintr_seen, 1);
        errno = EINTR;
        return -1;
    }
    int c = atomic_load(&chunk);
    if (c > 0 && n > (size_t)c)
        n = (size_t)c;
    return syscall(SYS_write, fd, buf, n);
}

ssize_t read(int fd, void *buf, size_t n)
{
    if (atomic_load(&eintr_left) > 0 && atomic_fetch_sub(&eintr_left, 1) > 0) {
        atomic_fetch_add(&n_eintr_seen, 1);
        errno = EINTR;
        return -1;
    }
    int c = atomic_load(&chunk);
    if (c > 0 && n > (size_t)c)
        n = (size_t)c;
    return syscall(SYS_read, fd, buf, n);
}

static void faults_off(void)
{
    atomic_store(&deadline_after, 0);
    atomic_store(&eintr_left, 0);
    atomic_store(&chunk, 0);
    atomic_store(&n_eintr_seen, 0);
}

/* --- helpers ------------------------------------------------------------- */

typedef struct tmpdir {
    char root[64];             /* mkdtemp'd */
    char dir[96];              /* root/store: created by the store */
} tmpdir;

static void tmp_make(tmpdir *t)
{
    snprintf(t->root, sizeof t->root, "/tmp/ic-test-store-XXXXXX");
    assert_non_null(mkdtemp(t->root));
    snprintf(t->dir, sizeof t->dir, "%s/store", t->root);
}

static void tmp_remove(tmpdir *t)
{
    DIR *d = opendir(t->dir);
    if (d) {
        for (struct dirent *e; (e = readdir(d));) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char p[400];
            snprintf(p, sizeof p, "%s/%s", t->dir, e->d_name);
            if (unlink(p) < 0)
                rmdir(p);
        }
        closedir(d);
        rmdir(t->dir);
    }
    rmdir(t->root);
}

static char *dup_str(const char *s)
{
    char *p = strdup(s);
    assert_non_null(p);
    return p;
}

/* The file's contents (malloc'd) or NULL. */
static char *slurp(const tmpdir *t, const char *name, size_t *len)
{
    int fd = open(t->dir, O_RDONLY | O_DIRECTORY);
    assert_true(fd >= 0);
    char *data = ic_store_read_file(fd, name, len);
    close(fd);
    return data;
}

static bool exists(const tmpdir *t, const char *name)
{
    char p[400];
    snprintf(p, sizeof p, "%s/%s", t->dir, name);
    struct stat st;
    return stat(p, &st) == 0;
}

static void put_text(ic_store *s, const char *key, const char *text, uint64_t tag)
{
    assert_int_equal(ic_store_put(s, key, dup_str(text), strlen(text), tag), 0);
}

static int count_entries(const tmpdir *t)
{
    DIR *d = opendir(t->dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* What the store's callbacks saw (its thread; read after close). */
typedef struct seen {
    _Atomic int n_done;
    uint64_t tags[16];
    int rcs[16];
    _Atomic int n_read;
    char *read_data[4];
    size_t read_len[4];
    int read_rc[4];
} seen;

static void on_done(void *ud, uint64_t tag, int rc)
{
    seen *w = ud;
    int i = atomic_fetch_add(&w->n_done, 1);
    if (i < 16) {
        w->tags[i] = tag;
        w->rcs[i] = rc;
    }
}

static void on_read(void *ud, uint64_t tag, char *data, size_t len, int rc)
{
    (void)tag;
    seen *w = ud;
    int i = atomic_fetch_add(&w->n_read, 1);
    if (i >= 4) {
        free(data);
        return;
    }
    w->read_data[i] = data;
    w->read_len[i] = len;
    w->read_rc[i] = rc;
}

static ic_store *open_store(const tmpdir *t)
{
    ic_store *s = NULL;
    char err[256] = "";
    assert_int_equal(ic_store_open(t->dir, &s, err, sizeof err), 0);
    assert_non_null(s);
    return s;
}

/* --- tests ---------------------------------------------------------------- */

static void open_creates_a_private_directory(void **state)
{
    (void)state;
    tmpdir t;
    tmp_make(&t);
    mode_t old = umask(022);
    ic_store *s = open_store(&t);
    umask(old);
    struct stat st;
    assert_int_equal(stat(t.dir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_string_equal(ic_store_dir(s), t.dir);
    ic_store_close(s);
    /* An existing directory opens again; one under a missing parent does
     * not, with a reason. */
    s = open_store(&t);
    ic_store_close(s);
    char bad[200], err[256] = "";
    snprintf(bad, sizeof bad, "%s/missing/store", t.root);
    ic_store *none = (ic_store *)1;
    assert_int_equal(ic_store_open(bad, &none, err, sizeof err), IC_ERR_IO);
    assert_null(none);
    assert_non_null(strstr(err, "cannot create it"));
    tmp_remove(&t);
}

static void put_is_read_back_whole_and_replaces(void **state)
{
    (void)state;
    tmpdir t;
    tmp_make(&t);
    seen w = {0};
    ic_store *s = open_store(&t);
    ic_store_set_done(s, on_done, &w);
    put_text(s, "s1.json", "first version, longer than the second", 7);
    put_text(s, "s1.json", "second", 8);
    put_text(s, "s2.json", "other", 0); /* tag 0: no callback */
    ic_store_stats st;
    ic_store_close_stats(s, &st);
    assert_int_equal(atomic_load(&w.n_done), 2);
    assert_int_equal(w.tags[0], 7);
    assert_int_equal(w.tags[1], 8);
    assert_int_equal(w.rcs[0], 0);
    assert_int_equal(w.rcs[1], 0);
    assert_int_equal(st.writes, 3);
    assert_int_equal(st.write_errors, 0);
    assert_int_equal(st.bytes, (int64_t)(strlen("second") + strlen("other")));
    uint64_t in_buckets = 0;
    for (int b = 0; b <= IC_STORE_WRITE_BUCKETS; b++)
        in_buckets += st.write_buckets[b];
    assert_int_equal(in_buckets, 3);
    size_t len = 0;
    char *data = slurp(&t, "s1.json", &len);
    assert_non_null(data);
    assert_int_equal(len, strlen("second"));
    assert_string_equal(data, "second");
    free(data);
    assert_false(exists(&t, "s1.json.tmp")); /* renamed, not left */
    assert_int_equal(count_entries(&t), 2);
    struct stat fst;
    char p[400];
    snprintf(p, sizeof p, "%s/s1.json", t.dir);
    assert_int_equal(stat(p, &fst), 0);
    assert_int_equal(fst.st_mode & 0777, 0600);
    tmp_remove(&t);
}

static void bad_keys_are_refused_and_data_freed(void **state)
{
    (void)state;
    tmpdir t;
    tmp_make(&t);
    ic_store *s = open_store(&t);
    const char *bad[] = {"", ".hidden", "a/b", "../up", "sp ace", "x\n"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_false(ic_store_key_ok(bad[i]));
        /* the data is taken over on every path: ASan's leak check sees it */
        assert_int_equal(ic_store_put(s, bad[i], dup_str("x"), 1, 0), IC_ERR_INVAL);
        assert_int_equal(ic_store_delete(s, bad[i]), IC_ERR_INVAL);
        assert_int_equal(ic_store_read(s, bad[i], 1), IC_ERR_INVAL);
    }
    char longkey[300];
    memset(longkey, 'a', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    assert_false(ic_store_key_ok(longkey));
    assert_true(ic_store_key_ok("s123.json"));
    assert_true(ic_store_key_ok("A-b_c.d"));
    ic_store_close(s);
    assert_int_equal(count_entries(&t), 0);
    tmp_remove(&t);
}

typedef struct loaded {
    int n;
    char keys[8][64];
    char data[8][64];
} loaded;

static void on_file(void *ud, const char *key, const char *data, size_t len)
{
    loaded *l = ud;
    assert_true(l->n < 8);
    assert_int_equal(strlen(data), len); /* NUL-terminated */
    snprintf(l->keys[l->n], sizeof l->keys[0], "%s", key);
    snprintf(l->data[l->n], sizeof l->data[0], "%s", data);
    l->n++;
}

static void write_raw(const tmpdir *t, const char *name, const char *text)
{
    char p[400];
    snprintf(p, sizeof p, "%s/%s", t->dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void load_reads_its_suffix_and_removes_temp_files(void **state)
{
    (void)state;
    tmpdir t;
    tmp_make(&t);
    ic_store *s = open_store(&t);
    ic_store_close(s);
    write_raw(&t, "s1.json", "one");
    write_raw(&t, "s2.json", "");
    write_raw(&t, "s3.json.tmp", "half a write");   /* a crash's leftover */
    write_raw(&t, "s1.kv", "kv state");             /* another suffix */
    write_raw(&t, ".hidden.json", "not a key");
    char sub[200];
    snprintf(sub, sizeof sub, "%s/s4.json", t.dir); /* not a regular file */
    assert_int_equal(mkdir(sub, 0700), 0);
    s = open_store(&t);
    loaded l = {0};
    assert_int_equal(ic_store_load(s, ".json", on_file, &l), 2);
    assert_int_equal(l.n, 2);
    int one = strcmp(l.keys[0], "s1.json") == 0 ? 0 : 1;
    assert_string_equal(l.keys[one], "s1.json");
    assert_string_equal(l.data[one], "one");
    assert_string_equal(l.keys[1 - one], "s2.json");
    assert_string_equal(l.data[1 - one], "");
    assert_false(exists(&t, "s3.json.tmp"));
    assert_true(exists(&t, "s1.kv"));
    assert_true(exists(&t, ".hidden.json"));
    assert_true(ic_store_exists(s, "s1.kv"));
    assert_false(ic_store_exists(s, "s9.kv"));
    assert_false(ic_store_exists(s, "../store"));
    ic_store_stats st;
    ic_store_close_stats(s, &st);
    assert_int_equal(st.bytes, 3); /* what was loaded */
    tmp_remove(&t);
}

static void delete_purges_and_absent_is_no_error(void **state)
{
    (void)state;
    tmpdir t;
    tmp_make(&t);
    ic_store *s = open_store(&t);
    put_text(s, "s1.json", "12345", 0);
    put_text(s, "s2.json", "abc", 0);
    assert_int_equal(ic_store_delete(s, "s1.json"), 0);
    assert_int_equal(ic_store_delete(s, "s7.json"), 0); /* never there */
    ic_store_stats st;
    ic_store_close_stats(s, &st);
    assert_int_equal(st.deletes, 1);
    assert_int_equal(st.write_errors, 0);
    assert_int_equal(st.bytes, 3);
    assert_false(exists(&t, "s1.json"));
    assert_true(exists(&t, "s2.json"));
    tmp_remove(&t);
}

static void reads_come_back_through_the_callback(void **state)
{
    (void)state;
    tmpdir t;
    tmp_make(&t);
    seen w = {0};
    ic_store *s = open_store(&t);
    ic_store_set_read_done(s, on_read, &w);
    put_text(s, "s1.kv", "state bytes", 0);
    assert_int_equal(ic_store_read(s, "s1.kv", 5), 0);   /* after the put: in order */
    assert_int_equal(ic_store_read(s, "s2.kv", 6), 0);   /* absent */
    ic_store_close(s);
    assert_int_equal(atomic_load(&w.n_read), 2);
    assert_int_equal(w.read_rc[0], 0);
    assert_int_equal(w.read_len[0], strlen("state bytes"));
    assert_memory_equal(w.read_data[0], "state bytes", w.read_len[0]);
    assert_true(w.read_rc[1] < 0);
    assert_null(w.read_data[1]);
    free(w.read_data[0]);
    tmp_remove(&t);
}

static void droppable_files_past_the_deadline_are_not_written(void **state)
{
    (void)state;
    tmpdir t;
    tmp_make(&t);
    ic_store *s = open_store(&t);
    assert_int_equal(ic_store_put_droppable(s, "s1.kv", dup_str("old state"), 9), 0);
    ic_store_set_deadline(s, 0); /* none */
    ic_store_stats st;
    ic_store_close_stats(s, &st);
    assert_int_equal(st.writes, 1);
    assert_true(exists(&t, "s1.kv"));

    s = open_store(&t);
    ic_store_set_deadline(s, ic_now_ms() - 1); /* already passed */
    assert_int_equal(ic_store_put_droppable(s, "s1.kv", dup_str("new state"), 9), 0);
    assert_int_equal(ic_store_put_droppable(s, "s2.kv", dup_str("other"), 5), 0);
    put_text(s, "s1.json", "a record is never dropped", 0);
    ic_store_close_stats(s, &st);
    assert_int_equal(st.dropped, 2);
    assert_int_equal(st.writes, 1);
    assert_false(exists(&t, "s1.kv")); /* the stale version went too */
    assert_false(exists(&t, "s2.kv"));
    assert_true(exists(&t, "s1.json"));
    tmp_remove(&t);
}

/* The deadline passes while a droppable file is being written (a big KV
 * state at shutdown): its write stops there, no temp file is left, the
 * older version goes, and it counts as dropped, not failed. */
static void a_droppable_write_stops_at_the_deadline(void **state)
{
    (void)state;
    tmpdir t;
    tmp_make(&t);
    ic_store *s = open_store(&t);
    assert_int_equal(ic_store_put_droppable(s, "s1.kv", dup_str("old state"), 9), 0);
    ic_store_close(s);
    assert_true(exists(&t, "s1.kv"));
    s = open_store(&t);
    deadline_store = s;
    size_t n = 3 * ((size_t)8 << 20) + 5; /* more than two of the store's chunks */
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, 'k', n);
    atomic_store(&deadline_after, 2); /* during the second chunk */
    assert_int_equal(ic_store_put_droppable(s, "s1.kv", big, n), 0);
    put_text(s, "s1.json", "records are written", 0);
    ic_store_stats st;
    ic_store_close_stats(s, &st);
    faults_off();
    assert_int_equal(st.dropped, 1);
    assert_int_equal(st.write_errors, 0);
    assert_int_equal(st.writes, 1);
    assert_false(exists(&t, "s1.kv"));
    assert_false(exists(&t, "s1.kv.tmp"));
    assert_true(exists(&t, "s1.json"));
    tmp_remove(&t);
}

static void interrupted_and_short_writes_and_reads_complete(void **state)
{
    (void)state;
    tmpdir t;
    tmp_make(&t);
    char big[5000];
    for (size_t i = 0; i < sizeof big - 1; i++)
        big[i] = (char)('a' + i % 26);
    big[sizeof big - 1] = '\0';
    seen w = {0};
    ic_store *s = open_store(&t);
    ic_store_set_done(s, on_done, &w);
    atomic_store(&chunk, 7);
    atomic_store(&eintr_left, 3);
    put_text(s, "s1.json", big, 1);
    ic_store_close(s);
    assert_int_equal(atomic_load(&n_eintr_seen), 3);
    assert_int_equal(w.rcs[0], 0);
    faults_off();
    size_t len = 0;
    char *data = slurp(&t, "s1.json", &len);
    assert_non_null(data);
    assert_int_equal(len, strlen(big));
    assert_string_equal(data, big);
    free(data);
    /* Reading it back with the same faults. */
    atomic_store(&chunk, 5);
    atomic_store(&eintr_left, 2);
    data = slurp(&t, "s1.json", &len);
    int eintr = atomic_load(&n_eintr_seen);
    faults_off();
    assert_int_equal(eintr, 2);
    assert_non_null(data);
    assert_int_equal(len, strlen(big));
    assert_string_equal(data, big);
    free(data);
    tmp_remove(&t);
}

typedef struct ordered {
    _Atomic uint64_t next;     /* the tag expected next */
    _Atomic int out_of_order, failed;
} ordered;

static void on_done_ordered(void *ud, uint64_t tag, int rc)
{
    ordered *o = ud;
    if (tag != atomic_load(&o->next))
        atomic_fetch_add(&o->out_of_order, 1);
    atomic_store(&o->next, tag + 1);
    if (rc != 0)
        atomic_fetch_add(&o->failed, 1);
}

/* A burst (batched: one directory fsync per batch) is written whole and
 * reported in order. */
static void a_burst_of_writes_is_reported_in_order(void **state)
{
    (void)state;
    tmpdir t;
    tmp_make(&t);
    ordered o = {.next = 1};
    ic_store *s = open_store(&t);
    ic_store_set_done(s, on_done_ordered, &o);
    for (int i = 1; i <= 150; i++) {
        char key[32], text[32];
        snprintf(key, sizeof key, "s%d.json", i % 40); /* replaced ones too */
        snprintf(text, sizeof text, "version %d", i);
        put_text(s, key, text, (uint64_t)i);
    }
    ic_store_stats st;
    ic_store_close_stats(s, &st);
    assert_int_equal(atomic_load(&o.next), 151);
    assert_int_equal(atomic_load(&o.out_of_order), 0);
    assert_int_equal(atomic_load(&o.failed), 0);
    assert_int_equal(st.writes, 150);
    assert_int_equal(count_entries(&t), 40);
    size_t len = 0;
    char *data = slurp(&t, "s10.json", &len); /* written by 10, 50, 90 and 130 */
    assert_non_null(data);
    assert_string_equal(data, "version 130");
    free(data);
    tmp_remove(&t);
}

/* The first write's done callback holds the store's thread until released. */
typedef struct gate {
    _Atomic int entered;
    _Atomic int release;
} gate;

static void on_done_gated(void *ud, uint64_t tag, int rc)
{
    (void)tag;
    (void)rc;
    gate *g = ud;
    atomic_store(&g->entered, 1);
    while (!atomic_load(&g->release))
        usleep(1000);
}

static void queued_bytes_count_the_writes_not_yet_done(void **state)
{
    (void)state;
    tmpdir t;
    tmp_make(&t);
    gate g = {0};
    ic_store *s = open_store(&t);
    ic_store_set_done(s, on_done_gated, &g);
    assert_int_equal(ic_store_queued_bytes(s), 0);
    put_text(s, "s1.json", "0123456789", 1); /* its callback holds the thread */
    while (!atomic_load(&g.entered))
        usleep(1000);
    assert_int_equal(ic_store_put_droppable(s, "s1.kv", dup_str("abcd"), 4), 0);
    put_text(s, "s2.json", "xy", 0);
    assert_int_equal(ic_store_delete(s, "s3.json"), 0);
    assert_int_equal(ic_store_queued_bytes(s), 10 + 4 + 2);
    assert_int_equal(ic_store_pending(s), 4);
    atomic_store(&g.release, 1);
    ic_store_close(s);
    tmp_remove(&t);
}

static void random_and_sha256(void **state)
{
    (void)state;
    unsigned char a[32], b[32];
    assert_int_equal(ic_store_random(a, sizeof a), 0);
    assert_int_equal(ic_store_random(b, sizeof b), 0);
    assert_memory_not_equal(a, b, sizeof a);
    char hex[65];
    ic_store_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

/* --- the record's reader ------------------------------------------------ */

static const char good_record[] =
    "{\"format\":\"inferencecenter-session\",\"version\":1,\"session_id\":\"s42\","
    "\"token_sha256\":\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\","
    "\"client\":\"alice\",\"system\":\"Be brief.\",\"defaults\":{\"set\":0,\"max_tokens\":8,"
    "\"temperature\":0.0,\"top_k\":40,\"top_p\":0.95,\"min_p\":0.05,\"repeat_penalty\":1.0,"
    "\"repeat_last_n\":64,\"seed\":0,\"ignore_eos\":false,\"allow_special\":false,"
    "\"priority\":1,\"stop\":[]},\"n_ctx_used\":17,\"updated_ms\":1700000000000,"
    "\"turns\":[{\"prompt\":\"Hi\",\"raw\":false,\"reply\":\"Hello.\"},"
    "{\"prompt\":\" more\",\"raw\":false,\"reply\":\" Sure\"}]}";

static void a_record_is_read(void **state)
{
    (void)state;
    ic_durable_info in;
    const char *why = NULL;
    assert_int_equal(ic_durable_record_info("s42.json", good_record, strlen(good_record), &in,
                                            &why), 0);
    assert_string_equal(in.session_id, "s42");
    assert_string_equal(in.client, "alice");
    assert_int_equal(in.n_turns, 2);
    assert_int_equal(in.n_ctx_used, 17);
    assert_int_equal(in.updated_ms, 1700000000000LL);
    assert_int_equal(in.bytes, strlen("Be brief.HiHello. more Sure"));
}

static void truncated_or_corrupt_records_are_rejected(void **state)
{
    (void)state;
    ic_durable_info in;
    const char *why = NULL;
    size_t n = strlen(good_record);
    /* Every truncation (a crash cannot leave one, but a disk can). */
    for (size_t cut = 0; cut < n; cut++) {
        why = NULL;
        assert_int_equal(ic_durable_record_info("s42.json", good_record, cut, &in, &why),
                         IC_ERR_PARSE);
        assert_non_null(why);
    }
    /* Bytes flipped one at a time: rejected, or (where the JSON stays
     * valid: inside a string) read as some record: never a crash. */
    char *copy = dup_str(good_record);
    int rejected = 0;
    for (size_t i = 0; i < n; i++) {
        char was = copy[i];
        copy[i] = (char)(was ^ 0x5a);
        rejected += ic_durable_record_info("s42.json", copy, n, &in, &why) == IC_ERR_PARSE;
        copy[i] = was;
    }
    assert_true(rejected > (int)n / 4);
    free(copy);
    /* Named for another session; another format; a bad token hash. */
    assert_int_equal(ic_durable_record_info("s43.json", good_record, n, &in, &why),
                     IC_ERR_PARSE);
    assert_non_null(strstr(why, "does not match its name"));
    const char *other = "{\"format\":\"something-else\",\"version\":1}";
    assert_int_equal(ic_durable_record_info("s42.json", other, strlen(other), &in, &why),
                     IC_ERR_PARSE);
    char *hash = dup_str(good_record);
    char *h = strstr(hash, "ba7816");
    h[0] = 'Z';
    assert_int_equal(ic_durable_record_info("s42.json", hash, n, &in, &why), IC_ERR_PARSE);
    free(hash);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(open_creates_a_private_directory),
        cmocka_unit_test(put_is_read_back_whole_and_replaces),
        cmocka_unit_test(bad_keys_are_refused_and_data_freed),
        cmocka_unit_test(load_reads_its_suffix_and_removes_temp_files),
        cmocka_unit_test(delete_purges_and_absent_is_no_error),
        cmocka_unit_test(reads_come_back_through_the_callback),
        cmocka_unit_test(droppable_files_past_the_deadline_are_not_written),
        cmocka_unit_test(a_droppable_write_stops_at_the_deadline),
        cmocka_unit_test(interrupted_and_short_writes_and_reads_complete),
        cmocka_unit_test(a_burst_of_writes_is_reported_in_order),
        cmocka_unit_test(queued_bytes_count_the_writes_not_yet_done),
        cmocka_unit_test(random_and_sha256),
        cmocka_unit_test(a_record_is_read),
        cmocka_unit_test(truncated_or_corrupt_records_are_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
