/* sched_power.c - the scheduler's care of the hardware: the thermal guard
 * (no prefill, paced decode while the GPU is at its limit), idle sleep
 * (sessions' KV state to host memory, the model freed, reloaded on the next
 * INFER) and the heartbeat that feeds the watchdogs; also how long the loop
 * may wait, which is what keeps an idle server from waking.
 *
 * Thread: the scheduler thread only (see sched_impl.h).
 */
#include "engine.h"
#include "err.h"
#include "log.h"
#include "prefix.h"
#include "sched_impl.h"
#include "spec_draft.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static void publish_state(ic_sched *s, bool waking)
{
    enum ic_sched_state st = waking        ? IC_SCHED_WAKING
                             : s->sleeping ? IC_SCHED_SLEEPING
                             : s->throttled ? IC_SCHED_THROTTLED
                                            : IC_SCHED_READY;
    atomic_store(&s->st_state, (int)st);
}

/* Reads the hottest GPU at most once a second (only while work runs) and
 * switches the guard with 5 degrees (temp_resume_delta_c) of hysteresis. */
void ic_sched__thermal_check(ic_sched *s)
{
    if (s->opts.temp_limit_c <= 0 || !s->opts.read_temp_c)
        return;
    double t = ic_now_ms();
    if (s->temp_checked_ms > 0 && t - s->temp_checked_ms < 1000.0)
        return;
    s->temp_checked_ms = t;
    double c = s->opts.read_temp_c(s->opts.temp_ud);
    atomic_store(&s->st_temp_milli, (int64_t)(c * 1000.0));
    double limit = s->opts.temp_limit_c, resume = limit - s->opts.temp_resume_delta_c;
    if (!s->throttled && c >= limit) {
        s->throttled = true;
        ic_log_warn("thermal guard: GPU at %.0f C (limit %.0f C): prompts held and decoding "
                    "paced until %.0f C", c, limit, resume);
    } else if (s->throttled && c >= 0 && c <= resume) {
        s->throttled = false;
        ic_log_info("thermal guard: GPU at %.0f C: back to full speed", c);
    }
    publish_state(s, false);
}

/* Idle for idle_unload_s: every session's KV state goes to host memory,
 * the model and context are freed (VRAM back to the system). A session
 * whose state cannot be kept recomputes it from its conversation. */
void ic_sched__sleep(ic_sched *s, const char *why)
{
    ic_prefix_drop_ready(s->prefixes, s->engine);
    size_t bytes = 0;
    int n = 0;
    for (int i = 0; i < s->opts.max_sessions; i++) {
        session *ss = &s->sessions[i];
        if (!ss->id || ss->n_hist == 0)
            continue;
        ss->n_shared = 0; /* restored cells are the session's own */
        if (ic_engine_seq_state_save(s->engine, ss->seq, &ss->saved_kv, &ss->saved_kv_len) < 0) {
            ss->n_hist = 0;
            continue;
        }
        bytes += ss->saved_kv_len;
        n++;
    }
    ic_engine_destroy(s->engine);
    s->engine = NULL;
    ic_spec_drafter_sleep(s->drafter);
    s->sleeping = true;
    atomic_fetch_add(&s->st_sleeps, 1);
    publish_state(s, false);
    char idle[64];
    snprintf(idle, sizeof idle, "idle for %d s", s->opts.idle_unload_s);
    ic_log_info("%s: model %s unloaded; %d sessions' KV state (%.1f MiB) kept in host memory",
                why ? why : idle, s->model_path, n, (double)bytes / (1 << 20));
}

/* The reload's progress keeps the heartbeat going: a big model can take
 * longer to load than systemd's watchdog waits. Scheduler thread. */
void ic_sched__reload_tick(void *ud) { ic_sched__beat(ud); }

/* Reloads the model and puts every session's KV state back. Returns 0 or
 * the engine's error (then it stays asleep). */
int ic_sched__wake(ic_sched *s)
{
    publish_state(s, true);
    double t0 = ic_now_ms();
    const char *why = "";
    int rc = ic_engine_create(&s->engine_opts, &s->engine, &why);
    if (rc < 0) {
        ic_log_error("waking up: cannot reload the model: %s", why);
        publish_state(s, false);
        return rc;
    }
    int n = 0;
    for (int i = 0; i < s->opts.max_sessions; i++) {
        session *ss = &s->sessions[i];
        if (!ss->saved_kv)
            continue;
        if (ic_engine_seq_state_restore(s->engine, ss->seq, ss->saved_kv, ss->saved_kv_len) < 0) {
            ic_log_warn("session %llu: KV state not restored; recomputing it",
                        (unsigned long long)ss->id);
            ic_engine_seq_rm(s->engine, ss->seq, -1, -1);
            ss->n_hist = 0;
        } else {
            n++;
        }
        free(ss->saved_kv);
        ss->saved_kv = NULL;
        ss->saved_kv_len = 0;
    }
    s->sleeping = false;
    atomic_store(&s->st_last_wake_us, (int64_t)((ic_now_ms() - t0) * 1000.0));
    atomic_fetch_add(&s->st_wakes, 1); /* after the time: a reader of wakes sees it */
    publish_state(s, false);
    ic_log_info("woke up in %.0f ms: model %s reloaded, %d sessions restored",
                ic_now_ms() - t0, s->model_path, n);
    return 0;
}

/* The heartbeat: progress for the internal watchdog, and the heartbeat
 * callback (systemd's watchdog) at most every heartbeat_interval_ms. */
void ic_sched__beat(ic_sched *s)
{
    double t = ic_now_ms();
    atomic_store(&s->st_progress_us, (int64_t)(t * 1000.0));
    if (s->opts.heartbeat && t - s->last_beat_ms >= s->opts.heartbeat_interval_ms) {
        s->last_beat_ms = t;
        s->opts.heartbeat(s->opts.heartbeat_ud);
    }
}

/* How long the loop may wait for a request before its next turn; -1 =
 * until one comes. Idle, it wakes only for the idle sleep and the
 * heartbeat; throttled, the wait after a step is the pacing. */
int ic_sched__loop_wait_ms(ic_sched *s, bool worked)
{
    if (s->n_active) {
        if (s->throttled) {
            double pace = s->last_decode_ms < 1 ? 1 : s->last_decode_ms > 1000 ? 1000
                                                                               : s->last_decode_ms;
            return worked ? (int)pace : 1000;
        }
        return worked ? 0 : 100;
    }
    int w = -1;
    if (s->opts.idle_unload_s > 0 && !s->sleeping) {
        double left = s->last_work_ms + s->opts.idle_unload_s * 1000.0 - ic_now_ms();
        w = left < 1 ? 1 : (int)left + 1;
    }
    int hb = s->opts.heartbeat ? s->opts.heartbeat_interval_ms : 0;
    if (hb > 0 && (w < 0 || w > hb))
        w = hb;
    return w;
}
