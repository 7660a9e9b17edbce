/* models.c - the served models (see models.h). Network thread. */
#include "models.h"

#include "log.h"

#include <string.h>

/* Model i's sessions are numbered from i << 40 + 1: a trillion sessions
 * per model before one could reach the next model's range. */
#define SESSION_SHIFT 40

uint64_t ic_models_session_base(int index) { return (uint64_t)index << SESSION_SHIFT; }

int ic_models_index_of(uint64_t session_id) { return (int)(session_id >> SESSION_SHIFT); }

ic_sched *ic_models_sched_of(const ic_models *ms, uint64_t session_id)
{
    int i = ic_models_index_of(session_id);
    return i < ms->n ? ms->m[i].sched : NULL;
}

int ic_models_find(const ic_models *ms, const char *name)
{
    if (!name || !*name)
        return ms->n > 0 ? 0 : -1;
    for (int i = 0; i < ms->n; i++)
        if (strcmp(ms->m[i].name, name) == 0)
            return i;
    return -1;
}

int ic_models_stats(const ic_models *ms, ic_sched_stats *out)
{
    memset(out, 0, sizeof *out);
    out->gpu_temp_c = -1;
    int n = 0;
    double busy_oldest_ms = 0, newest_ms = 0;
    for (int i = 0; i < ms->n; i++) {
        if (!ms->m[i].sched)
            continue;
        ic_sched_stats st;
        ic_sched_get_stats(ms->m[i].sched, &st);
        if (n == 0) {
            *out = st;
        } else {
            out->sessions += st.sessions;
            out->generating += st.generating;
            out->queued += st.queued;
            out->kv_cells_used += st.kv_cells_used;
            out->kv_cells_total += st.kv_cells_total;
            out->tokens_per_second += st.tokens_per_second;
            out->steps += st.steps;
            out->max_sessions += st.max_sessions;
            out->sleeps += st.sleeps;
            if (st.gpu_temp_c > out->gpu_temp_c)
                out->gpu_temp_c = st.gpu_temp_c;
            if (st.state == IC_SCHED_WAKING || st.state == IC_SCHED_THROTTLED)
                out->state = st.state;
            else if (st.state == IC_SCHED_READY && out->state == IC_SCHED_SLEEPING)
                out->state = IC_SCHED_READY; /* the server sleeps only when all do */
        }
        /* the watchdog must see a stuck model even while another one turns */
        bool busy = st.generating + st.queued > 0;
        if (busy && (busy_oldest_ms == 0 || st.last_progress_ms < busy_oldest_ms))
            busy_oldest_ms = st.last_progress_ms;
        if (st.last_progress_ms > newest_ms)
            newest_ms = st.last_progress_ms;
        n++;
    }
    out->last_progress_ms = busy_oldest_ms > 0 ? busy_oldest_ms : newest_ms;
    return n;
}

/* Awake: not sleeping, and not asked to (the request may still wait). */
static bool awake(const ic_model_entry *e, ic_sched_stats *st)
{
    ic_sched_get_stats(e->sched, st);
    return e->resident && st->state != IC_SCHED_SLEEPING;
}

int ic_models_make_room(ic_models *ms, int model, int max_loaded, double now_ms)
{
    if (model < 0 || model >= ms->n || !ms->m[model].sched)
        return 0;
    ic_model_entry *want = &ms->m[model];
    ic_sched_stats st;
    bool was_awake = awake(want, &st);
    want->resident = true;
    want->last_used_ms = now_ms;
    if (was_awake || max_loaded <= 0)
        return 0;
    int n_awake = 0;
    for (int i = 0; i < ms->n; i++)
        n_awake += i != model && ms->m[i].sched && awake(&ms->m[i], &st);
    int slept = 0;
    while (n_awake >= max_loaded) {
        int lru = -1;
        for (int i = 0; i < ms->n; i++) {
            ic_model_entry *e = &ms->m[i];
            if (i == model || !e->sched || !awake(e, &st) || st.generating + st.queued > 0)
                continue;
            if (lru < 0 || e->last_used_ms < ms->m[lru].last_used_ms)
                lru = i;
        }
        if (lru < 0) {
            ic_log_warn("model %s loads while %d models are busy (--max-loaded-models %d)",
                        want->name, n_awake, max_loaded);
            break;
        }
        if (ic_sched_sleep(ms->m[lru].sched) < 0)
            break;
        ic_log_info("model %s sleeps to make room for %s", ms->m[lru].name, want->name);
        ms->m[lru].resident = false;
        ms->m[lru].metrics.swaps++;
        n_awake--;
        slept++;
    }
    return slept;
}

void ic_models_update_metrics(ic_models *ms)
{
    for (int i = 0; i < ms->n; i++) {
        ic_model_entry *e = &ms->m[i];
        ic_sched_stats st;
        e->metrics.name = e->name;
        e->metrics.loaded = e->sched && awake(e, &st);
        if (!e->sched)
            continue;
        if (st.wakes != e->wakes_seen) { /* only the last one's time is known */
            e->wakes_seen = st.wakes;
            ic_metrics_model_load(&e->metrics, st.last_wake_ms / 1e3);
        }
    }
}

bool ic_models_loaded(const ic_models *ms, int i)
{
    ic_sched_stats st;
    return i >= 0 && i < ms->n && ms->m[i].sched && awake(&ms->m[i], &st);
}

void ic_models_request_stop(const ic_models *ms)
{
    for (int i = 0; i < ms->n; i++)
        if (ms->m[i].sched)
            ic_sched_request_stop(ms->m[i].sched);
}

bool ic_models_stopped(const ic_models *ms)
{
    for (int i = 0; i < ms->n; i++)
        if (ms->m[i].sched && !ic_sched_stopped(ms->m[i].sched))
            return false;
    return true;
}
