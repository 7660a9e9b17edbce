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

static bool within(const ic_models_budget *b, int n_awake, int64_t vram, int64_t ram)
{
    return (b->max_loaded <= 0 || n_awake <= b->max_loaded) &&
           (b->vram_bytes <= 0 || vram <= b->vram_bytes) &&
           (b->ram_bytes <= 0 || ram <= b->ram_bytes);
}

int ic_models_choose_sleepers(const ic_models_room_item *m, int n, int want,
                              const ic_models_budget *b, int *out, bool *fits)
{
    bool chosen[IC_MODELS_MAX] = {false};
    int n_awake = 1, k = 0;
    int64_t vram = m[want].vram_bytes, ram = m[want].ram_bytes;
    n = n < IC_MODELS_MAX ? n : IC_MODELS_MAX;
    for (int i = 0; i < n; i++) {
        if (i == want || !m[i].awake)
            continue;
        n_awake++;
        vram += m[i].vram_bytes;
        ram += m[i].ram_bytes;
    }
    while (!within(b, n_awake, vram, ram)) {
        int lru = -1;
        for (int i = 0; i < n; i++) {
            if (i == want || !m[i].awake || m[i].busy || chosen[i])
                continue;
            if (lru < 0 || m[i].last_used_ms < m[lru].last_used_ms)
                lru = i;
        }
        if (lru < 0) {
            *fits = false;
            return k;
        }
        chosen[lru] = true;
        out[k++] = lru;
        n_awake--;
        vram -= m[lru].vram_bytes;
        ram -= m[lru].ram_bytes;
    }
    *fits = true;
    return k;
}

int ic_models_make_room(ic_models *ms, int model, const ic_models_budget *b, double now_ms)
{
    if (model < 0 || model >= ms->n || !ms->m[model].sched)
        return 0;
    ic_model_entry *want = &ms->m[model];
    ic_sched_stats st;
    bool was_awake = awake(want, &st);
    want->resident = true;
    want->last_used_ms = now_ms;
    if (was_awake)
        return 0;
    ic_models_room_item it[IC_MODELS_MAX];
    for (int i = 0; i < ms->n; i++) {
        ic_model_entry *e = &ms->m[i];
        it[i] = (ic_models_room_item){.last_used_ms = e->last_used_ms,
                                      .vram_bytes = e->vram_bytes, .ram_bytes = e->ram_bytes};
        if (i != model && e->sched && awake(e, &st)) {
            it[i].awake = true;
            it[i].busy = st.generating + st.queued > 0;
        }
    }
    int out[IC_MODELS_MAX];
    bool fits;
    int k = ic_models_choose_sleepers(it, ms->n, model, b, out, &fits), slept = 0;
    for (int i = 0; i < k; i++) {
        ic_model_entry *e = &ms->m[out[i]];
        if (ic_sched_sleep(e->sched) < 0)
            continue;
        ic_log_info("model %s sleeps to make room for %s", e->name, want->name);
        e->resident = false;
        e->metrics.swaps++;
        slept++;
    }
    if (!fits)
        ic_log_warn("model %s loads over the residency budget: the other awake models are busy "
                    "(--max-loaded-models, --models-ram)", want->name);
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
