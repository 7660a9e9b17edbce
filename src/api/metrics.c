/* metrics.c - Prometheus counters, histograms and the text exposition
 * format 0.0.4 (see metrics.h).
 *
 * Thread: the network thread only, so plain integers suffice. The object
 * owns its counters and per-bucket histogram counts; a render owns its
 * ic_buf until it hands the text to the caller.
 *
 * The text is built by hand, which the house rule against hand-built text
 * allows here because this format is not JSON and has no library in the
 * project: every label value goes through put_label_value, the one place
 * that escapes (and repairs invalid UTF-8, which Prometheus rejects).
 */
#include "metrics.h"
#include "buf.h"
#include "err.h"
#include "utf8.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_REASONS (IC_END_MODEL_UNLOADED + 1)
#define N_CODES (IC_CODE_INTERNAL + 1)
#define MAX_BOUNDS 16

/* ------------------------------------------------------------ histograms */

typedef struct hist_spec {
    const char *name;
    const char *help;
    const double *le; /* upper bounds, ascending, without +Inf */
    int n_le;
} hist_spec;

/* Bounds in seconds, each spanning what its latency plausibly takes on
 * hardware from a laptop CPU to a datacenter GPU. */
static const double queue_le[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                  0.5,   1,      2.5,   5,    10,    30,   60};
static const double ttft_le[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double inter_token_le[] = {0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
                                        0.15,  0.25, 0.5,   1,    2.5};
static const double duration_le[] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};

#define SPEC(name, help, le) {name, help, le, (int)(sizeof le / sizeof *le)}
static const hist_spec hist_specs[IC_HIST_COUNT] = {
    [IC_HIST_QUEUE_TIME] = SPEC("inferencecenter_queue_time_seconds",
                                "Time from INFER to its first prompt token in a batch.", queue_le),
    [IC_HIST_TTFT] = SPEC("inferencecenter_time_to_first_token_seconds",
                          "Time from INFER to its first generated token.", ttft_le),
    [IC_HIST_INTER_TOKEN] = SPEC("inferencecenter_inter_token_latency_seconds",
                                 "Time between consecutive tokens of a generation.",
                                 inter_token_le),
    [IC_HIST_DURATION] = SPEC("inferencecenter_request_duration_seconds",
                              "Time from INFER to its END.", duration_le),
};

typedef struct hist {
    uint64_t bucket[MAX_BOUNDS + 1]; /* per bucket, not cumulative; [n_le] is +Inf */
    double sum_s;
    uint64_t count;
} hist;

struct ic_metrics {
    uint64_t generations[N_REASONS]; /* by enum ic_end_reason */
    uint64_t prompt_tokens;
    uint64_t generated_tokens;
    uint64_t auth_failures;
    uint64_t errors[N_CODES]; /* by enum ic_proto_code */
    uint64_t prompt_cache_hit_tokens;
    struct {
        const char *route;    /* static */
        int status;
        uint64_t n;
    } http[IC_METRICS_MAX_HTTP + 1]; /* [IC_METRICS_MAX_HTTP]: the overflow pair */
    int n_http;
    hist hist[IC_HIST_COUNT];
};

void ic_metrics_prompt_cache_hit(ic_metrics *m, int tokens)
{
    if (tokens > 0)
        m->prompt_cache_hit_tokens += (uint64_t)tokens;
}

void ic_metrics_http_request(ic_metrics *m, const char *route, int status)
{
    for (int i = 0; i < m->n_http; i++) {
        if (m->http[i].status == status && strcmp(m->http[i].route, route) == 0) {
            m->http[i].n++;
            return;
        }
    }
    int i = m->n_http < IC_METRICS_MAX_HTTP ? m->n_http++ : IC_METRICS_MAX_HTTP;
    if (i == IC_METRICS_MAX_HTTP) {
        route = "other";
        status = 0;
    }
    m->http[i].route = route;
    m->http[i].status = status;
    m->http[i].n++;
}

int ic_metrics_create(ic_metrics **out)
{
    ic_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return IC_ERR_NOMEM;
    *out = m;
    return 0;
}

void ic_metrics_destroy(ic_metrics *m)
{
    free(m);
}

void ic_metrics_observe(ic_metrics *m, enum ic_hist h, double seconds)
{
    if ((unsigned)h >= IC_HIST_COUNT || !isfinite(seconds))
        return;
    if (seconds < 0)
        seconds = 0;
    const hist_spec *s = &hist_specs[h];
    int i = 0;
    while (i < s->n_le && seconds > s->le[i]) /* le: a bucket counts values <= its bound */
        i++;
    hist *hs = &m->hist[h];
    hs->bucket[i]++;
    hs->sum_s += seconds;
    hs->count++;
}

void ic_metrics_generation_ended(ic_metrics *m, enum ic_end_reason reason, int prompt_tokens,
                                 int generated_tokens)
{
    m->generations[(unsigned)reason < N_REASONS ? reason : IC_END_ERROR]++;
    if (prompt_tokens > 0)
        m->prompt_tokens += (uint64_t)prompt_tokens;
    if (generated_tokens > 0)
        m->generated_tokens += (uint64_t)generated_tokens;
}

void ic_metrics_auth_failed(ic_metrics *m)
{
    m->auth_failures++;
}

void ic_metrics_error(ic_metrics *m, enum ic_proto_code code)
{
    m->errors[(unsigned)code < N_CODES ? code : IC_CODE_INTERNAL]++;
}

/* ---------------------------------------------------------------- writer */

/* The text being built; err is sticky, so callers check once at the end. */
typedef struct writer {
    ic_buf b;
    int err;
    int n_labels; /* labels in the sample being written */
} writer;

static void putn(writer *w, const char *s, size_t n)
{
    if (!w->err)
        w->err = ic_buf_append(&w->b, s, n);
}

static void put(writer *w, const char *s)
{
    putn(w, s, strlen(s));
}

static void put_u64(writer *w, uint64_t v)
{
    char s[32];
    putn(w, s, (size_t)snprintf(s, sizeof s, "%" PRIu64, v));
}

static void put_i64(writer *w, int64_t v)
{
    char s[32];
    putn(w, s, (size_t)snprintf(s, sizeof s, "%" PRId64, v));
}

/* A float as Prometheus (Go's ParseFloat) reads it: NaN, +Inf, -Inf spelled
 * so, integral values without exponent, others in the fewest digits that
 * read back as the same double (so le="0.1", not 0.10000000000000001). */
static void put_double(writer *w, double v)
{
    char s[40];
    if (isnan(v)) {
        put(w, "NaN");
    } else if (isinf(v)) {
        put(w, v > 0 ? "+Inf" : "-Inf");
    } else if (v == trunc(v) && fabs(v) < 1e15) {
        putn(w, s, (size_t)snprintf(s, sizeof s, "%.0f", v));
    } else {
        int n = 0;
        for (int p = 1; p <= 17; p++) {
            n = snprintf(s, sizeof s, "%.*g", p, v);
            if (strtod(s, NULL) == v)
                break;
        }
        putn(w, s, (size_t)n);
    }
}

/* A label value, escaped per the text format (backslash, double quote and
 * newline; nothing else needs it) and made valid UTF-8 first. */
static void put_label_value(writer *w, const char *v)
{
    ic_buf fixed = {0};
    size_t n = strlen(v);
    if (!ic_utf8_valid(v, n)) {
        ic_utf8_stream us;
        ic_utf8_reset(&us);
        if (ic_utf8_push(&us, v, n, &fixed) || ic_utf8_flush(&us, &fixed)) {
            w->err = IC_ERR_NOMEM;
            ic_buf_free(&fixed);
            return;
        }
        v = fixed.data ? fixed.data : "";
        n = fixed.len;
    }
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        const char *esc = v[i] == '\\' ? "\\\\" : v[i] == '"' ? "\\\"" : v[i] == '\n' ? "\\n" : NULL;
        if (esc) {
            putn(w, v + start, i - start);
            put(w, esc);
            start = i + 1;
        }
    }
    putn(w, v + start, n - start);
    ic_buf_free(&fixed);
}

/* # HELP and # TYPE of one family; help texts are constants without the
 * backslashes and newlines that HELP would need escaped. */
static void family(writer *w, const char *name, const char *type, const char *help)
{
    put(w, "# HELP ");
    put(w, name);
    put(w, " ");
    put(w, help);
    put(w, "\n# TYPE ");
    put(w, name);
    put(w, " ");
    put(w, type);
    put(w, "\n");
}

/* A sample is sample_begin, any number of label calls, one sample_<type>. */
static void sample_begin(writer *w, const char *name, const char *suffix)
{
    put(w, name);
    put(w, suffix);
    w->n_labels = 0;
}

static void label(writer *w, const char *key, const char *value)
{
    put(w, w->n_labels++ ? "," : "{");
    put(w, key);
    put(w, "=\"");
    put_label_value(w, value ? value : "");
    put(w, "\"");
}

static void value_sep(writer *w)
{
    put(w, w->n_labels ? "} " : " ");
}

static void sample_u64(writer *w, uint64_t v)
{
    value_sep(w);
    put_u64(w, v);
    put(w, "\n");
}

static void sample_i64(writer *w, int64_t v)
{
    value_sep(w);
    put_i64(w, v);
    put(w, "\n");
}

static void sample_double(writer *w, double v)
{
    value_sep(w);
    put_double(w, v);
    put(w, "\n");
}

/* A family of one unlabelled sample. */
static void single_u64(writer *w, const char *name, const char *type, const char *help,
                       uint64_t v)
{
    family(w, name, type, help);
    sample_begin(w, name, "");
    sample_u64(w, v);
}

static void single_i64(writer *w, const char *name, const char *help, int64_t v)
{
    family(w, name, "gauge", help);
    sample_begin(w, name, "");
    sample_i64(w, v);
}

/* -------------------------------------------------------------- families */

static void render_counters(writer *w, const ic_metrics *m, const ic_metrics_gauges *g)
{
    const char *gen = "inferencecenter_generations_total";
    family(w, gen, "counter", "Generations ended, by END reason.");
    for (int r = 0; r < N_REASONS; r++) {
        sample_begin(w, gen, "");
        label(w, "reason", ic_end_reason_name((enum ic_end_reason)r));
        sample_u64(w, m->generations[r]);
    }
    single_u64(w, "inferencecenter_prompt_tokens_total", "counter",
               "Prompt tokens decoded by ended generations.", m->prompt_tokens);
    single_u64(w, "inferencecenter_generated_tokens_total", "counter",
               "Tokens generated by ended generations.", m->generated_tokens);
    single_u64(w, "inferencecenter_auth_failures_total", "counter", "Failed AUTH attempts.",
               m->auth_failures);
    const char *err = "inferencecenter_errors_total";
    family(w, err, "counter", "ERROR messages sent to clients, by code.");
    for (int c = 0; c < N_CODES; c++) {
        sample_begin(w, err, "");
        label(w, "code", ic_proto_code_name((enum ic_proto_code)c));
        sample_u64(w, m->errors[c]);
    }
    single_u64(w, "inferencecenter_scheduler_steps_total", "counter",
               "Scheduler steps since start.", g->steps);
    single_u64(w, "inferencecenter_spec_drafted_tokens_total", "counter",
               "Speculative draft tokens verified (serve --spec).", g->spec_drafted);
    single_u64(w, "inferencecenter_spec_accepted_tokens_total", "counter",
               "Speculative draft tokens accepted: tokens gained without a step of their own.",
               g->spec_accepted);
    single_u64(w, "inferencecenter_prompt_cache_hit_tokens_total", "counter",
               "Prompt tokens taken from the OpenAI API's prompt cache instead of decoded.",
               m->prompt_cache_hit_tokens);
    const char *http = "inferencecenter_http_requests_total";
    family(w, http, "counter", "HTTP requests answered, by route and status.");
    for (int i = 0; i <= IC_METRICS_MAX_HTTP; i++) {
        if (i == m->n_http && i < IC_METRICS_MAX_HTTP)
            i = IC_METRICS_MAX_HTTP;
        if (!m->http[i].n)
            continue;
        char status[16];
        snprintf(status, sizeof status, "%d", m->http[i].status);
        sample_begin(w, http, "");
        label(w, "route", m->http[i].route);
        label(w, "status", status);
        sample_u64(w, m->http[i].n);
    }
}

static void render_state(writer *w, const char *state)
{
    static const char *const states[] = {"loading", "ready", "throttled", "sleeping", "stuck",
                                         "failed"};
    const char *name = "inferencecenter_state";
    family(w, name, "gauge", "The server's state: 1 for the current one, 0 for the others.");
    for (size_t i = 0; i < sizeof states / sizeof *states; i++) {
        sample_begin(w, name, "");
        label(w, "state", states[i]);
        sample_u64(w, state && strcmp(state, states[i]) == 0);
    }
}

static void render_gauges(writer *w, const ic_metrics_gauges *g)
{
    single_i64(w, "inferencecenter_sessions", "Open sessions.", g->sessions);
    single_i64(w, "inferencecenter_sessions_max", "Server-wide session limit.", g->sessions_max);
    single_i64(w, "inferencecenter_generations_running", "Generations running now.",
               g->generating);
    single_i64(w, "inferencecenter_queue_depth", "Generations waiting for the scheduler.",
               g->queued);
    single_i64(w, "inferencecenter_kv_cells_used", "KV cache cells in use.", g->kv_cells_used);
    single_i64(w, "inferencecenter_kv_cells_capacity", "KV cache cells in all.",
               g->kv_cells_total);
    single_i64(w, "inferencecenter_gpu_layers", "Model layers offloaded to the GPU.",
               g->gpu_layers);
    render_state(w, g->state);
    single_i64(w, "inferencecenter_websocket_connections", "Open WebSocket connections.",
               g->connections);
    single_i64(w, "inferencecenter_scheduler_stalled",
               "1 while the watchdog sees the scheduler stalled.", g->stalled);
    const char *bi = "inferencecenter_build_info";
    family(w, bi, "gauge", "Build version and pinned llama.cpp commit; always 1.");
    sample_begin(w, bi, "");
    label(w, "version", g->version);
    label(w, "llama_commit", g->llama_commit);
    sample_u64(w, 1);
}

enum gpu_field { GPU_TEMP, GPU_MEM_USED, GPU_MEM_TOTAL, GPU_UTIL, GPU_POWER, GPU_FIELDS };

static const struct {
    const char *name, *help;
} gpu_families[GPU_FIELDS] = {
    [GPU_TEMP] = {"inferencecenter_gpu_temperature_celsius", "GPU temperature."},
    [GPU_MEM_USED] = {"inferencecenter_gpu_memory_used_bytes", "GPU memory in use."},
    [GPU_MEM_TOTAL] = {"inferencecenter_gpu_memory_total_bytes", "GPU memory in all."},
    [GPU_UTIL] = {"inferencecenter_gpu_utilization_ratio", "GPU busy fraction (0..1)."},
    [GPU_POWER] = {"inferencecenter_gpu_power_watts", "GPU power draw."},
};

/* One GPU's sample of field f, or nothing where its reading failed: the
 * monitor reads -1 then, and leaves memory at 0 (no GPU has none). */
static void gpu_sample(writer *w, const ic_gpu_reading *gpu, int f)
{
    double d = 0;
    switch (f) {
    case GPU_TEMP: d = gpu->temperature_c; break;
    case GPU_UTIL: d = gpu->utilization_pct; break;
    case GPU_POWER: d = gpu->power_w; break;
    default: break;
    }
    bool is_mem = f == GPU_MEM_USED || f == GPU_MEM_TOTAL;
    if (is_mem ? gpu->memory_total_bytes <= 0 || gpu->memory_used_bytes < 0 : !(d >= 0))
        return;
    char index[16], name[sizeof gpu->name + 1]; /* a full name may lack its NUL */
    snprintf(index, sizeof index, "%d", gpu->index);
    memcpy(name, gpu->name, sizeof gpu->name);
    name[sizeof gpu->name] = '\0';
    sample_begin(w, gpu_families[f].name, "");
    label(w, "gpu", index);
    label(w, "name", name);
    if (is_mem)
        sample_i64(w, f == GPU_MEM_USED ? gpu->memory_used_bytes : gpu->memory_total_bytes);
    else
        sample_double(w, f == GPU_UTIL ? d / 100.0 : d);
}

static void render_hw(writer *w, const ic_hw_sample *hw)
{
    int n = hw ? hw->n_gpus : 0;
    if (n > IC_GPU_MAX)
        n = IC_GPU_MAX;
    for (int f = 0; f < GPU_FIELDS; f++) {
        family(w, gpu_families[f].name, "gauge", gpu_families[f].help);
        for (int i = 0; i < n; i++)
            gpu_sample(w, &hw->gpus[i], f);
    }
    const char *cpu = "inferencecenter_cpu_usage_ratio";
    family(w, cpu, "gauge", "Host CPU busy fraction over all CPUs (0..1).");
    if (hw && hw->cpu_pct >= 0) {
        sample_begin(w, cpu, "");
        sample_double(w, hw->cpu_pct / 100.0);
    }
    const char *used = "inferencecenter_ram_used_bytes", *total = "inferencecenter_ram_total_bytes";
    bool ram = hw && hw->ram_total_bytes > 0 && hw->ram_used_bytes >= 0;
    family(w, used, "gauge", "Host RAM in use (MemTotal - MemAvailable).");
    if (ram) {
        sample_begin(w, used, "");
        sample_i64(w, hw->ram_used_bytes);
    }
    family(w, total, "gauge", "Host RAM in all.");
    if (ram) {
        sample_begin(w, total, "");
        sample_i64(w, hw->ram_total_bytes);
    }
}

static void render_hist(writer *w, const hist_spec *s, const hist *h)
{
    family(w, s->name, "histogram", s->help);
    uint64_t cum = 0;
    for (int i = 0; i <= s->n_le; i++) {
        cum += h->bucket[i];
        sample_begin(w, s->name, "_bucket");
        put(w, "{le=\"");
        if (i < s->n_le)
            put_double(w, s->le[i]);
        else
            put(w, "+Inf");
        put(w, "\"");
        w->n_labels = 1;
        sample_u64(w, cum);
    }
    sample_begin(w, s->name, "_sum");
    sample_double(w, h->sum_s);
    sample_begin(w, s->name, "_count");
    sample_u64(w, h->count);
}

static void render_durable(writer *w, const ic_metrics_durable *d)
{
    static const ic_metrics_durable none = {0};
    static const char *const from[IC_RESTORE_COUNT] = {"cells", "ram", "disk", "recompute"};
    if (!d)
        d = &none;
    single_i64(w, "inferencecenter_sessions_parked",
               "Durable sessions whose connection dropped, waiting for a resume.", d->parked);
    single_i64(w, "inferencecenter_sessions_stored",
               "Durable sessions only in the store (since a restart), waiting for a resume.",
               d->stored);
    single_u64(w, "inferencecenter_session_resumes_total", "counter",
               "RESUME_SESSION answered with SESSION_RESUMED.", d->resumes);
    const char *rs = "inferencecenter_session_restores_total";
    family(w, rs, "counter", "Resumed sessions by where their KV cache came from.");
    for (int i = 0; i < IC_RESTORE_COUNT; i++) {
        sample_begin(w, rs, "");
        label(w, "from", from[i]);
        sample_u64(w, d->restores[i]);
    }
    single_i64(w, "inferencecenter_session_store_bytes", "Bytes of the session store's files.",
               d->store_bytes);
    single_i64(w, "inferencecenter_session_ram_bytes",
               "Bytes of parked sessions' KV states held in host memory (--session-ram).",
               d->ram_bytes);
    single_i64(w, "inferencecenter_session_store_queue",
               "Session store jobs (writes, reads, removals) queued and not yet done.",
               d->store_queue);
    single_u64(w, "inferencecenter_session_store_write_errors_total", "counter",
               "Session store writes and removals that failed.", d->write_errors);
    const char *ws = "inferencecenter_session_store_write_seconds";
    family(w, ws, "histogram", "Session store writes, temp file to directory fsync.");
    uint64_t cum = 0;
    for (int i = 0; i <= d->n_le; i++) {
        cum += d->write_buckets ? d->write_buckets[i] : 0;
        sample_begin(w, ws, "_bucket");
        put(w, "{le=\"");
        if (i < d->n_le)
            put_double(w, d->write_le[i]);
        else
            put(w, "+Inf");
        put(w, "\"");
        w->n_labels = 1;
        sample_u64(w, cum);
    }
    sample_begin(w, ws, "_sum");
    sample_double(w, d->write_sum_s);
    sample_begin(w, ws, "_count");
    sample_u64(w, cum);
}

static const double load_le[IC_METRICS_LOAD_BOUNDS] = {0.05, 0.1, 0.25, 0.5, 1,
                                                        2.5,  5,   10,   30,  60};

void ic_metrics_model_load(ic_metrics_model *mm, double seconds)
{
    int i = 0;
    while (i < IC_METRICS_LOAD_BOUNDS && seconds > load_le[i])
        i++;
    mm->load_bucket[i]++;
    mm->load_sum_s += seconds;
    mm->load_count++;
}

static void render_models(writer *w, const ic_metrics_gauges *g)
{
    const char *ld = "inferencecenter_model_loaded", *sw = "inferencecenter_model_swaps_total",
               *lt = "inferencecenter_model_load_seconds";
    family(w, ld, "gauge", "1 while the model is loaded (awake), by model.");
    for (int i = 0; i < g->n_models; i++) {
        sample_begin(w, ld, "");
        label(w, "model", g->models[i].name);
        sample_u64(w, g->models[i].loaded);
    }
    family(w, sw, "counter", "Times the model was put to sleep to make room for another.");
    for (int i = 0; i < g->n_models; i++) {
        sample_begin(w, sw, "");
        label(w, "model", g->models[i].name);
        sample_u64(w, g->models[i].swaps);
    }
    family(w, lt, "histogram", "Time to load a model again after a sleep or unload, KV "
                               "restore included.");
    for (int i = 0; i < g->n_models; i++) {
        const ic_metrics_model *mm = &g->models[i];
        uint64_t cum = 0;
        for (int b = 0; b <= IC_METRICS_LOAD_BOUNDS; b++) {
            cum += mm->load_bucket[b];
            sample_begin(w, lt, "_bucket");
            label(w, "model", mm->name);
            put(w, ",le=\"");
            if (b < IC_METRICS_LOAD_BOUNDS)
                put_double(w, load_le[b]);
            else
                put(w, "+Inf");
            put(w, "\"");
            sample_u64(w, cum);
        }
        sample_begin(w, lt, "_sum");
        label(w, "model", mm->name);
        sample_double(w, mm->load_sum_s);
        sample_begin(w, lt, "_count");
        label(w, "model", mm->name);
        sample_u64(w, mm->load_count);
    }
}

int ic_metrics_render(const ic_metrics *m, const ic_metrics_gauges *g, char **out, size_t *len)
{
    static const ic_metrics_gauges none = {0};
    writer w = {0};
    if (!g)
        g = &none;
    render_counters(&w, m, g);
    render_gauges(&w, g);
    render_hw(&w, g->hw);
    render_models(&w, g);
    for (int h = 0; h < IC_HIST_COUNT; h++)
        render_hist(&w, &hist_specs[h], &m->hist[h]);
    render_durable(&w, g->durable);
    size_t n = w.b.len;
    char *text = w.err ? NULL : ic_buf_take(&w.b);
    ic_buf_free(&w.b);
    if (!text)
        return IC_ERR_NOMEM;
    *out = text;
    if (len)
        *len = n;
    return 0;
}
