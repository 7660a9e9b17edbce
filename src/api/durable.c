/* durable.c - durable sessions (--session-store; docs/protocol.md): a
 * session whose connection drops is parked instead of closed, a client
 * takes it back with RESUME_SESSION and its resume token, and after each
 * END its conversation goes to the store (platform/store.h, a thread of
 * its own), so that a restarted server can resume it too. A parked
 * session's KV state goes to host memory (--session-ram), then to the
 * store; at shutdown every KV state it can save goes to the store
 * (ic_gw_durable_stop), and what is not there is recomputed from the
 * conversation by the next turn.
 *
 * A record (gw_durable) lives as long as its session may be resumed: with
 * a live scheduler session (ss set: held by a connection, or parked), or
 * only in the store (ss NULL: after a restart or a shutdown).
 *
 * Thread: network thread (part of the gateway, gateway_impl.h). The
 * conversation text here is the one the scheduler's convo.c holds: the
 * prompts of INFERs that got an END and the text of their TOKENs.
 *
 * The two file formats and the record's memory are durable_file.c
 * (durable_impl.h shares struct gw_durable).
 */
#include "durable_impl.h"
#include "clock.h"
#include "err.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int64_t wall_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sends (send: to the connection it was for, if the session is still
 * there) or drops the END that waits for a write. */
static void release_end(ic_gateway *g, gw_durable *d, bool send)
{
    if (!d->held_tag)
        return;
    ic_idmap_del(&g->dur_waits, d->held_tag);
    char *json = d->held_end;
    d->held_tag = 0;
    d->held_end = NULL;
    if (send && d->ss && d->ss->conn_id == d->held_conn)
        ic_gw_send_json(g, d->held_conn, json);
    else
        free(json);
}

/* Frees the KV state a record holds (host memory, or read back from disk). */
static void kv_release(ic_gateway *g, gw_durable *d)
{
    g->dur_ram_bytes -= d->kv && !d->kv_from_disk ? d->kv_len : 0;
    free(d->kv);
    free(d->hist);
    d->kv = NULL;
    d->hist = NULL;
    d->kv_len = 0;
    d->n_hist = 0;
    d->kv_from_disk = false;
}

/* Forgets a record, its file included. */
static void record_forget(ic_gateway *g, gw_durable *d)
{
    char key[40];
    ic_gw_dur_file_key(d, key, sizeof key);
    release_end(g, d, true);
    ic_gw_dur_drop_kv(g, d);
    if (d->kv_read_tag)
        ic_idmap_del(&g->dur_waits, d->kv_read_tag);
    if (ic_store_delete(g->store, key) < 0)
        ic_log_error("session %s: could not queue its removal from the store", d->sid);
    if (d->ss)
        d->ss->dur = NULL;
    if (d->parked_ms > 0)
        g->n_dur_parked--;
    kv_release(g, d);
    ic_idmap_del(&g->durables, d->num);
    ic_gw_dur_free(d);
}

/* Queues the record's file; the END that follows waits for it. */
static void record_save(ic_gateway *g, gw_durable *d)
{
    char key[40];
    ic_gw_dur_file_key(d, key, sizeof key);
    release_end(g, d, true); /* an earlier END goes first */
    char *text = ic_gw_dur_record_json(d);
    uint64_t tag = ++g->dur_next_tag;
    if (!text || ic_idmap_put(&g->dur_waits, tag, d) < 0) {
        free(text);
        ic_log_error("session %s: its conversation could not be queued for the store (out of "
                     "memory)", d->sid);
        return;
    }
    if (ic_store_put(g->store, key, text, strlen(text), tag) < 0) {
        ic_idmap_del(&g->dur_waits, tag);
        ic_log_error("session %s: its conversation could not be queued for the store (out of "
                     "memory)", d->sid);
        return;
    }
    d->held_tag = tag;
}

/* A finished write, from the store's thread to the network thread. */
typedef struct dur_done {
    uint64_t tag;
    int rc;
    char *data;                /* a read's file, owned; NULL for a write */
    size_t len;
} dur_done;

/* The store's done callback (store thread). Out of memory here only
 * delays that END until the session's next write or close. */
static void on_written(void *ud, uint64_t tag, int rc)
{
    ic_gateway *g = ud;
    dur_done *dd = malloc(sizeof *dd);
    if (!dd)
        return;
    *dd = (dur_done){tag, rc, NULL, 0};
    if (ic_queue_push(g->dur_done, dd) < 0)
        free(dd);
    else if (g->srv && !atomic_load(&g->dur_quiet))
        ic_server_wake(g->srv);
}

/* The store's read callback (store thread): as on_written, with the data. */
static void on_read(void *ud, uint64_t tag, char *data, size_t len, int rc)
{
    ic_gateway *g = ud;
    dur_done *dd = malloc(sizeof *dd);
    if (!dd) {
        free(data);
        return;
    }
    *dd = (dur_done){tag, rc, data, len};
    if (ic_queue_push(g->dur_done, dd) < 0) {
        free(data);
        free(dd);
    } else if (g->srv && !atomic_load(&g->dur_quiet)) {
        ic_server_wake(g->srv);
    }
}

static void finish_resume(ic_gateway *g, client_conn *c, gw_durable *d, const ic_msg_id *id);

/* A KV file read for a waiting resume: restore from it, or recompute. */
static void kv_read_done(ic_gateway *g, gw_durable *d, dur_done *dd)
{
    d->kv_read_tag = 0;
    const char *why = dd->data ? ic_gw_dur_kv_parse(g, d, dd->data, dd->len) : "cannot read it";
    if (why) {
        ic_log_warn("session %s: KV state file dropped (%s): recomputing", d->sid, why);
        ic_gw_dur_drop_kv(g, d);
    }
    uint64_t conn = d->resume_conn;
    d->resume_conn = 0;
    client_conn *c = conn ? ic_idmap_get(&g->conns, conn) : NULL;
    if (c && !c->closing)
        finish_resume(g, c, d, &d->resume_id);
}

bool ic_gw_durable_hold_end(ic_gateway *g, gw_session *ss, char *json)
{
    gw_durable *d = ss->dur;
    if (!g->store || !d || !d->held_tag || d->held_end)
        return false;
    d->held_end = json;
    d->held_conn = ss->conn_id;
    return true;
}

void ic_gw_durable_drain(ic_gateway *g)
{
    if (!g->dur_done)
        return;
    for (dur_done *dd; (dd = ic_queue_pop(g->dur_done)); free(dd->data), free(dd)) {
        gw_durable *d = ic_idmap_get(&g->dur_waits, dd->tag);
        if (d && d->kv_read_tag == dd->tag) {
            ic_idmap_del(&g->dur_waits, dd->tag);
            kv_read_done(g, d, dd);
            continue;
        }
        if (!d || d->held_tag != dd->tag)
            continue;
        if (dd->rc < 0)
            ic_log_error("session %s: its last turn is not in the store (see above); it "
                         "resumes only while this server runs", d->sid);
        release_end(g, d, true);
    }
}

/* --- open and close ------------------------------------------------------ */

/* Parked (live or evicted): ttl after the drop; only in the store: ttl
 * after its last END; held by a connection: never. */
static bool expired(const ic_gateway *g, const gw_durable *d, double now_ms, int64_t wall_ms)
{
    double ttl_ms = g->opts.session_ttl_s * 1000.0;
    if (d->parked_ms > 0)
        return now_ms - d->parked_ms >= ttl_ms;
    if (d->ss)
        return false;
    return wall_ms - d->updated_wall_ms >= (int64_t)ttl_ms;
}

struct load_ctx {
    ic_gateway *g;
    int n_loaded, n_skipped, n_expired;
};

static void load_one(void *ud, const char *key, const char *data, size_t len)
{
    struct load_ctx *lc = ud;
    const char *why = NULL;
    gw_durable *d = ic_gw_dur_record_parse(key, data, len, &why);
    if (!d) {
        ic_log_warn("session store %s: %s skipped: %s", ic_store_dir(lc->g->store), key, why);
        lc->n_skipped++;
        return;
    }
    if (ic_idmap_get(&lc->g->durables, d->num) || ic_idmap_put(&lc->g->durables, d->num, d) < 0) {
        ic_log_warn("session store %s: %s skipped: a duplicate, or out of memory",
                    ic_store_dir(lc->g->store), key);
        ic_gw_dur_free(d);
        lc->n_skipped++;
        return;
    }
    char kk[40];
    ic_gw_dur_kv_key(d, kk, sizeof kk);
    d->kv_on_disk = ic_store_exists(lc->g->store, kk); /* checked against the model on resume */
    if (expired(lc->g, d, ic_now_ms(), wall_now_ms())) {
        record_forget(lc->g, d);
        lc->n_expired++;
        return;
    }
    lc->n_loaded++;
}

int ic_gw_durable_open(ic_gateway *g, char *err, size_t errlen)
{
    int rc = ic_queue_create(0, &g->dur_done);
    if (rc == 0)
        rc = ic_store_open(g->opts.session_store, &g->store, err, errlen);
    if (rc < 0)
        return rc;
    ic_store_set_done(g->store, on_written, g);
    ic_store_set_read_done(g->store, on_read, g);
    struct load_ctx lc = {.g = g};
    double t0 = ic_now_ms();
    rc = ic_store_load(g->store, RECORD_SUFFIX, load_one, &lc);
    if (rc < 0) {
        snprintf(err, errlen, "--session-store %s: cannot list it", g->opts.session_store);
        return rc;
    }
    ic_log_info("session store %s: %d sessions resumable, %d skipped, %d expired (%.0f ms)",
                g->opts.session_store, lc.n_loaded, lc.n_skipped, lc.n_expired,
                ic_now_ms() - t0);
    return 0;
}

/* The shutdown's KV saves: the sessions held by a connection and idle are
 * evicted (their SESSION_CLOSED still says shutdown), which sends their KV
 * state to the store (evicted, while stopping); a generating one ends
 * with END shutdown and is recomputed. Parked sessions' KV states in host
 * memory go to the store now. Bounded: KV files still queued once
 * shutdown_timeout_s has passed are dropped (store.h), and the store's
 * close, at destroy, waits only for the rest. */
void ic_gw_durable_stop(ic_gateway *g)
{
    if (!g->store)
        return;
    g->dur_stop_ms = ic_now_ms();
    ic_store_set_deadline(g->store, g->dur_stop_ms + g->opts.shutdown_timeout_s * 1000.0);
    ic_store_stats st;
    ic_store_get_stats(g->store, &st);
    g->dur_stop_dropped0 = st.dropped;
    g->dur_stop_errors0 = st.write_errors;
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (ic_idmap_next(&g->durables, &it, NULL, &val)) {
        gw_durable *d = val;
        gw_session *ss = d->ss;
        if (d->kv && !d->kv_from_disk && !ss) {
            if (!ic_gw_dur_kv_save(g, d, d->kv, d->kv_len, d->hist, d->n_hist))
                continue; /* out of memory: recomputed */
            g->dur_stop_saved++;
            g->dur_stop_bytes += d->kv_len;
            kv_release(g, d);
            continue;
        }
        if (!ss || ss->closing || ss->running || !ss->conn_id || !g->sched || g->engine_dead ||
            d->n_turns == 0 || ic_sched_close_session(g->sched, ss->id, IC_CLOSE_EVICTED) < 0)
            continue;
        ss->closing = true;
        ss->close_reason = "shutdown";
        ss->close_id = (ic_msg_id){0};
        d->evicting = true;
    }
}

/* The line that says what the shutdown saved (at close, after the store's
 * last write). */
static void log_stop(ic_gateway *g, const ic_store_stats *st)
{
    if (g->dur_stop_ms <= 0 || g->dur_stop_saved == 0)
        return;
    int dropped = (int)(st->dropped - g->dur_stop_dropped0);
    int failed = (int)(st->write_errors - g->dur_stop_errors0);
    int saved = g->dur_stop_saved - dropped - failed;
    ic_log_info("shutdown: KV state of %d sessions saved to the session store (%.1f MiB) in "
                "%.0f ms; %d dropped past the %.0f s shutdown time-out, %d failed",
                saved < 0 ? 0 : saved, (double)g->dur_stop_bytes / (1 << 20),
                ic_now_ms() - g->dur_stop_ms, dropped, g->opts.shutdown_timeout_s, failed);
}

void ic_gw_durable_finish(ic_gateway *g)
{
    if (!g->store)
        return;
    atomic_store(&g->dur_quiet, true); /* the server's loop is over */
    ic_store_stats st;
    ic_store_close_stats(g->store, &st); /* writes what is queued, joins the thread */
    log_stop(g, &st);
    g->store = NULL;
}

void ic_gw_durable_close(ic_gateway *g)
{
    ic_gw_durable_finish(g);
    for (dur_done *dd; g->dur_done && (dd = ic_queue_pop(g->dur_done)); free(dd))
        free(dd->data);
    ic_queue_destroy(g->dur_done, free);
    g->dur_done = NULL;
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (ic_idmap_next(&g->durables, &it, NULL, &val)) {
        gw_durable *d = val;
        free(d->held_end);
        ic_gw_dur_free(d);
    }
    ic_idmap_free(&g->durables);
    ic_idmap_free(&g->dur_waits);
}

int ic_gw_durable_attach(ic_gateway *g, gw_session *ss, const char *system, char token[65])
{
    unsigned char secret[32];
    gw_durable *d = calloc(1, sizeof *d);
    if (!d)
        return IC_ERR_NOMEM;
    /* A random id that no record holds: they outlive the process. */
    for (int tries = 0; !d->num && tries < 8; tries++) {
        uint64_t n;
        if (ic_store_random(&n, sizeof n) < 0) {
            free(d);
            return IC_ERR_SYS;
        }
        n &= INT64_MAX;
        if (n > 0 && !ic_idmap_get(&g->durables, n))
            d->num = n;
    }
    if (!d->num || ic_store_random(secret, sizeof secret) < 0 ||
        (system && *system && !(d->system = strdup(system))) ||
        ic_req_params_copy(&d->defaults, &ss->defaults) < 0 ||
        ic_idmap_put(&g->durables, d->num, d) < 0) {
        ic_gw_dur_free(d);
        return IC_ERR_NOMEM;
    }
    for (int i = 0; i < 32; i++)
        snprintf(token + 2 * i, 3, "%02x", secret[i]);
    ic_store_sha256_hex(token, 64, d->token_sha256);
    snprintf(d->sid, sizeof d->sid, "s%llu", (unsigned long long)d->num);
    if (ss->client[0] != '#')
        snprintf(d->client, sizeof d->client, "%s", ss->client);
    d->updated_wall_ms = wall_now_ms();
    d->ss = ss;
    ss->dur = d;
    snprintf(ss->sid, sizeof ss->sid, "%s", d->sid);
    return 0;
}

gw_session *ic_gw_durable_find(ic_gateway *g, const client_conn *c, const char *sid)
{
    uint64_t num;
    if (ic_proto_session_num(sid, &num) < 0)
        return NULL;
    gw_durable *d = ic_idmap_get(&g->durables, num);
    gw_session *ss = d ? d->ss : NULL;
    return ss && ss->conn_id == c->id && !ss->closing ? ss : NULL;
}

/* --- the conversation ------------------------------------------------------ */

void ic_gw_durable_on_infer(gw_session *ss, const char *prompt, bool raw)
{
    gw_durable *d = ss->dur;
    if (!d)
        return;
    ic_gw_dur_pend_clear(d);
    d->pend_prompt = strdup(prompt);
    d->pend_raw = raw;
    d->pend_request = ss->request_id;
}

static void evicted(ic_gateway *g, gw_durable *d, ic_event *ev);
static void evict(ic_gateway *g, gw_durable *d);

void ic_gw_durable_on_event(ic_gateway *g, gw_session *ss, ic_event *ev)
{
    gw_durable *d = ss->dur;
    if (!d)
        return;
    if (ev->type == IC_EVENT_SESSION_CLOSED) {
        /* Its END goes before SESSION_CLOSED, written or not. Shut down
         * (or the restore failed): resumable from the store after the
         * restart. Closed by the client, or expired: gone. */
        release_end(g, d, true);
        if (ev->close_reason == IC_CLOSE_EVICTED) {
            evicted(g, d, ev);
            return;
        }
        if (ev->close_reason == IC_CLOSE_SHUTDOWN) {
            if (d->parked_ms > 0)
                g->n_dur_parked--;
            d->parked_ms = 0;
            d->ss = NULL;
            ss->dur = NULL;
            ic_gw_dur_pend_clear(d);
        } else {
            record_forget(g, d);
        }
        return;
    }
    if (ev->request_id != d->pend_request || !d->pend_prompt)
        return;
    if (ev->type == IC_EVENT_TOKEN) {
        if (ic_buf_append(&d->pend_reply, ev->text ? ev->text : "", ev->text_len) < 0) {
            ic_log_error("session %s: a reply is too large to keep (out of memory)", d->sid);
            ic_gw_dur_pend_clear(d);
        }
        return;
    }
    if (ev->type == IC_EVENT_END) {
        int rc = ic_gw_dur_push_turn(d, d->pend_prompt, d->pend_raw,
                           d->pend_reply.data ? d->pend_reply.data : "", d->pend_reply.len);
        ic_gw_dur_pend_clear(d);
        if (rc < 0) {
            ic_log_error("session %s: a turn could not be kept (out of memory)", d->sid);
            return;
        }
        d->n_ctx_used = ev->stats.context_tokens + ev->stats.generated_tokens;
        d->updated_wall_ms = wall_now_ms();
        record_save(g, d);
        if (d->evict_after_end && ss->conn_id == 0)
            evict(g, d);
        d->evict_after_end = false;
        return;
    }
    ic_gw_dur_pend_clear(d); /* ERROR: the turn was refused */
}

/* --- parking and resuming -------------------------------------------------- */

bool ic_gw_durable_parked(const gw_session *ss) { return ss->dur && ss->dur->parked_ms > 0; }

bool ic_gw_durable_park(ic_gateway *g, gw_session *ss)
{
    gw_durable *d = ss->dur;
    if (!d || ss->closing || !g->sched || g->stopping)
        return false;
    ss->conn_id = 0;
    if (ss->running && !ss->abort_sent && ic_sched_abort(g->sched, ss->id) == 0)
        ss->abort_sent = true;
    /* On an open server each connection is its own client: a parked
     * session counts for nobody until a connection resumes it. */
    if (ss->client[0] == '#')
        ic_gw_session_recount(g, ss, "", 0);
    d->parked_ms = ic_now_ms();
    g->n_dur_parked++;
    ic_log_for(IC_LOG_INFO, &(ic_log_ctx){.session = ss->sid}, "session parked: its "
               "connection went; resumable for %d s", g->opts.session_ttl_s);
    ic_gw_arm_tick(g, true);
    if (ss->running)
        d->evict_after_end = true;
    else
        evict(g, d);
    return true;
}

/* A parked session gives its cells back: the scheduler closes it with its
 * KV state in the SESSION_CLOSED (evicted). */
static void evict(ic_gateway *g, gw_durable *d)
{
    gw_session *ss = d->ss;
    if (!ss || ss->closing || ic_sched_close_session(g->sched, ss->id, IC_CLOSE_EVICTED) < 0)
        return;
    ss->closing = true;
    ss->close_reason = "evicted";
    d->evicting = true;
}

/* The evicted SESSION_CLOSED: the record is only here now, with its KV
 * state while --session-ram has room for it. */
static void evicted(ic_gateway *g, gw_durable *d, ic_event *ev)
{
    ic_gw_session_recount(g, d->ss, "", 0); /* a resume may count it again now */
    d->ss->dur = NULL;
    d->ss = NULL;
    d->evicting = false;
    ic_gw_dur_pend_clear(d);
    if (ev->kv && !g->stopping && g->dur_ram_bytes + ev->kv_len <= g->opts.session_ram_bytes) {
        d->kv = ev->kv;
        d->kv_len = ev->kv_len;
        d->hist = ev->hist;
        d->n_hist = ev->n_hist;
        ev->kv = NULL;
        ev->hist = NULL;
        g->dur_ram_bytes += d->kv_len;
    } else if (ev->kv && !g->stopping && ic_store_queued_bytes(g->store) > 0 &&
               ic_store_queued_bytes(g->store) + ev->kv_len > KV_QUEUE_MAX) {
        ic_log_for(IC_LOG_DEBUG, &(ic_log_ctx){.session = d->sid}, "parked session: the "
                   "store's write queue is full; its KV state is dropped, to be recomputed");
    } else if (ev->kv && !ic_gw_dur_kv_save(g, d, ev->kv, ev->kv_len, ev->hist, ev->n_hist)) {
        ic_log_warn("session %s: its KV state could not be queued for the store; it will be "
                    "recomputed", d->sid);
    } else if (ev->kv && g->stopping) {
        g->dur_stop_saved++;
        g->dur_stop_bytes += ev->kv_len;
    }
    ic_log_for(IC_LOG_DEBUG, &(ic_log_ctx){.session = d->sid}, "parked session evicted: %s",
               d->kv ? "KV state in host memory" : d->kv_on_disk ? "KV state to disk"
                                                 : "to be recomputed");
    uint64_t conn = d->resume_conn;
    d->resume_conn = 0;
    client_conn *c = conn ? ic_idmap_get(&g->conns, conn) : NULL;
    if (c && !c->closing)
        finish_resume(g, c, d, &d->resume_id);
}

/* Equal strings, in a time that does not depend on where they differ. */
static bool same_secret(const char *a, const char *b)
{
    size_t n = strlen(a);
    if (n != strlen(b))
        return false;
    unsigned char diff = 0;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

/* The record the pair names for c, or NULL: unknown, expired, a wrong
 * token and another client's look alike to the client. */
static gw_durable *check_pair(ic_gateway *g, const client_conn *c, const ic_msg *m)
{
    uint64_t num;
    if (!g->store || ic_proto_session_num(m->session_id, &num) < 0)
        return NULL;
    gw_durable *d = ic_idmap_get(&g->durables, num);
    char hash[65];
    ic_store_sha256_hex(m->resume_token, strlen(m->resume_token), hash);
    if (!d || !same_secret(hash, d->token_sha256))
        return NULL;
    if (g->auth && strcmp(d->client, c->client.name) != 0)
        return NULL;
    if ((d->ss && d->ss->closing && !d->evicting) || expired(g, d, ic_now_ms(), wall_now_ms()))
        return NULL;
    return d;
}

/* Takes a live session over for c, from its parked state or from another
 * connection. Returns 0 or IC_ERR_CAPACITY (c's client is at its limit). */
static int take_live(ic_gateway *g, client_conn *c, gw_durable *d)
{
    gw_session *ss = d->ss;
    if (ss->conn_id == c->id)
        return 0;
    if (strcmp(ss->client, c->count_key) != 0 &&
        ic_gw_session_recount(g, ss, c->count_key, c->max_sessions) < 0)
        return IC_ERR_CAPACITY;
    /* Held elsewhere (a connection the server has not seen drop yet): it
     * is told. A generation of the old connection (aborted when it was
     * parked) ends unseen. */
    if (ss->conn_id)
        ic_gw_send_json(g, ss->conn_id,
                        ic_proto_session_closed(ss->sid, "resumed_elsewhere", NULL));
    if (ss->running) {
        ss->muted = true;
        if (!ss->abort_sent && ic_sched_abort(g->sched, ss->id) == 0)
            ss->abort_sent = true;
    }
    if (d->parked_ms > 0)
        g->n_dur_parked--;
    d->parked_ms = 0;
    ss->conn_id = c->id;
    ss->last_used_ms = ic_now_ms();
    g->dur_restores[IC_RESTORE_CELLS]++;
    return 0;
}

/* Opens a scheduler session holding the stored conversation for c. */
static int restore(ic_gateway *g, client_conn *c, gw_durable *d, bool *at_limit)
{
    ic_turn *turns = d->n_turns ? calloc((size_t)d->n_turns, sizeof *turns) : NULL;
    if (d->n_turns && !turns)
        return IC_ERR_NOMEM;
    for (int i = 0; i < d->n_turns; i++)
        turns[i] = (ic_turn){d->turns[i].prompt, d->turns[i].raw, d->turns[i].reply};
    gw_session *ss;
    ic_event kv = {.kv = d->kv, .kv_len = d->kv_len, .hist = d->hist, .n_hist = d->n_hist};
    int rc = ic_gw_session_open_turns(g, 0, c->count_key, c->max_sessions, d->system, turns,
                                      d->n_turns, d->kv ? &kv : NULL, &ss, at_limit);
    free(turns);
    if (rc < 0)
        return rc;
    g->dur_restores[!d->kv ? IC_RESTORE_RECOMPUTE
                    : d->kv_from_disk ? IC_RESTORE_DISK : IC_RESTORE_RAM]++;
    ic_gw_dur_drop_kv(g, d); /* the live session's cells are newer */
    kv_release(g, d);
    if (d->parked_ms > 0)
        g->n_dur_parked--;
    d->parked_ms = 0;
    if (ic_req_params_copy(&ss->defaults, &d->defaults) < 0) {
        ic_sched_close_session(g->sched, ss->id, IC_CLOSE_SHUTDOWN);
        ss->closing = true;
        return IC_ERR_NOMEM;
    }
    ss->conn_id = c->id;
    ss->dur = d;
    d->ss = ss;
    snprintf(ss->sid, sizeof ss->sid, "%s", d->sid);
    return 0;
}

void ic_gw_durable_resume(ic_gateway *g, client_conn *c, const ic_msg *m)
{
    gw_durable *d = check_pair(g, c, m);
    if (!d) {
        ic_gw_send_error(g, c->id, IC_CODE_SESSION_NOT_FOUND, "no such session",
                         m->session_id, &m->id);
        return;
    }
    if (!d->evicting && !d->ss && !d->kv && d->kv_on_disk && !d->kv_read_tag) {
        uint64_t tag = ++g->dur_next_tag;
        char key[40];
        ic_gw_dur_kv_key(d, key, sizeof key);
        if (ic_idmap_put(&g->dur_waits, tag, d) == 0 && ic_store_read(g->store, key, tag) == 0)
            d->kv_read_tag = tag;
        else
            ic_idmap_del(&g->dur_waits, tag); /* recomputed */
    }
    if (d->evicting || d->kv_read_tag) {
        /* Answered once the scheduler has handed its state over, or its
         * file is read; an earlier waiter lost the race. */
        if (d->resume_conn && d->resume_conn != c->id)
            ic_gw_send_error(g, d->resume_conn, IC_CODE_SESSION_NOT_FOUND, "no such session",
                             d->sid, &d->resume_id);
        d->resume_conn = c->id;
        d->resume_id = m->id;
        return;
    }
    finish_resume(g, c, d, &m->id);
}

static void finish_resume(ic_gateway *g, client_conn *c, gw_durable *d, const ic_msg_id *id)
{
    bool at_limit = false;
    int rc = d->ss ? take_live(g, c, d) : restore(g, c, d, &at_limit);
    if (rc < 0) {
        at_limit |= rc == IC_ERR_CAPACITY && d->ss;
        enum ic_proto_code code = at_limit ? IC_CODE_SESSION_LIMIT : ic_proto_code_from_err(rc);
        char msg[128];
        if (at_limit)
            snprintf(msg, sizeof msg, "client %s already holds its limit of %d sessions",
                     g->auth ? c->client.name : "(this connection)", c->max_sessions);
        else
            snprintf(msg, sizeof msg, "%s", code == IC_CODE_CAPACITY
                                                ? "the server holds its maximum number of sessions"
                                                : ic_strerror(rc));
        ic_gw_send_error(g, c->id, code, msg, d->sid, id);
        return;
    }
    g->dur_resumes++;
    gw_session *ss = d->ss;
    /* The conversation's tokens after its last END, wherever its KV cache
     * comes from: the scheduler's count is one less until the next turn
     * decodes the last generated token, and a restored session's is known
     * only once the scheduler has opened it (a race). Before any END: the
     * live session's (its system prompt). */
    enum ic_session_state state;
    int n_ctx = d->n_ctx_used;
    if (d->n_turns == 0 && ic_sched_session_info(g->sched, ss->id, &state, &n_ctx) < 0)
        n_ctx = 0;
    ic_log_for(IC_LOG_INFO, &(ic_log_ctx){.session = ss->sid, .conn = c->id},
               "session resumed (%d turns, %d tokens)", d->n_turns, n_ctx);
    if (g->opts.session_idle_timeout_s > 0)
        ic_gw_arm_tick(g, true);
    ic_gw_send_json(g, c->id, ic_proto_session_resumed(ss->sid, n_ctx, id));
}

/* --- the sweep -------------------------------------------------------------- */

void ic_gw_durable_sweep(ic_gateway *g, double now_ms)
{
    if (!g->store)
        return;
    int64_t wall = wall_now_ms();
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (ic_idmap_next(&g->durables, &it, NULL, &val)) {
        gw_durable *d = val;
        if (d->evicting || d->kv_read_tag || !expired(g, d, now_ms, wall))
            continue;
        if (!d->ss) {
            ic_log_info("session %s: %s for %d s without a resume: removed", d->sid,
                        d->parked_ms > 0 ? "parked" : "stored", g->opts.session_ttl_s);
            record_forget(g, d); /* a delete during the walk is allowed */
            continue;
        }
        gw_session *ss = d->ss;
        if (ss->closing || ic_sched_close_session(g->sched, ss->id, IC_CLOSE_CLIENT) < 0)
            continue;
        ss->closing = true;
        ss->close_reason = "expired";
        ss->close_id = (ic_msg_id){0};
        ic_log_for(IC_LOG_INFO, &(ic_log_ctx){.session = ss->sid},
                   "session parked for %d s without a resume: closing", g->opts.session_ttl_s);
    }
}

bool ic_gw_durable_sweep_needed(const ic_gateway *g) { return g->n_dur_parked > 0; }

void ic_gw_durable_metrics(ic_gateway *g, ic_metrics_durable *out, uint64_t *buckets)
{
    memset(out, 0, sizeof *out);
    if (!g->store)
        return;
    ic_store_stats st;
    ic_store_get_stats(g->store, &st);
    int live = 0;
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    void *val;
    while (ic_idmap_next(&g->durables, &it, NULL, &val)) {
        const gw_durable *d = val;
        live += d->ss != NULL || d->parked_ms > 0;
    }
    out->parked = g->n_dur_parked;
    out->stored = (int)ic_idmap_len(&g->durables) - live;
    out->resumes = g->dur_resumes;
    memcpy(out->restores, g->dur_restores, sizeof out->restores);
    out->store_bytes = st.bytes;
    out->ram_bytes = (int64_t)g->dur_ram_bytes;
    out->store_queue = (int64_t)ic_store_pending(g->store);
    out->write_errors = st.write_errors;
    memcpy(buckets, st.write_buckets, sizeof st.write_buckets);
    out->write_le = ic_store_write_bounds_s;
    out->n_le = IC_STORE_WRITE_BUCKETS;
    out->write_buckets = buckets;
    out->write_sum_s = st.write_sum_s;
}
