/* models.c - the served models (see models.h). Network thread. */
#include "models.h"

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
        if (st.generating + st.queued > 0 && (busy_oldest_ms == 0 || st.last_progress_ms < busy_oldest_ms))
            busy_oldest_ms = st.last_progress_ms;
        if (st.last_progress_ms > newest_ms)
            newest_ms = st.last_progress_ms;
        n++;
    }
    out->last_progress_ms = busy_oldest_ms > 0 ? busy_oldest_ms : newest_ms;
    return n;
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
