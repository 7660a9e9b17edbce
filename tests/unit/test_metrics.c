/* test_metrics.c - the metrics module: histogram buckets, counters by reason
 * and code, the state one-hot, label escaping, GPU and host samples, and
 * the rendered text checked by Prometheus's own `promtool check metrics`
 * (required: the test fails when promtool is missing; IC_PROMTOOL names
 * another one than /usr/bin/promtool). Single-threaded, like the module. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "err.h"
#include "metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---------------------------------------------------------------- helpers */

static char *render(const ic_metrics *m, const ic_metrics_gauges *g)
{
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(ic_metrics_render(m, g, &text, &len), 0);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    assert_true(len > 0 && text[len - 1] == '\n');
    return text;
}

/* The value of the sample whose name and labels are exactly `series`
 * (`name` or `name{a="b"}`), as a static string; NULL when absent. */
static const char *value_of(const char *text, const char *series)
{
    static char val[64];
    size_t n = strlen(series);
    for (const char *line = text; *line; ) {
        const char *eol = strchr(line, '\n');
        size_t ll = eol ? (size_t)(eol - line) : strlen(line);
        if (ll > n && strncmp(line, series, n) == 0 && line[n] == ' ') {
            size_t vl = ll - n - 1;
            assert_true(vl < sizeof val);
            memcpy(val, line + n + 1, vl);
            val[vl] = '\0';
            return val;
        }
        line += ll + (eol != NULL);
    }
    return NULL;
}

static void assert_value(const char *text, const char *series, const char *want)
{
    const char *got = value_of(text, series);
    if (!got || strcmp(got, want) != 0)
        fail_msg("%s: got %s, want %s", series, got ? got : "(absent)", want);
}

static void assert_absent(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = strstr(text, name); p; p = strstr(p + 1, name)) {
        bool sol = p == text || p[-1] == '\n';
        if (sol && (p[n] == '{' || p[n] == ' '))
            fail_msg("unexpected sample of %s", name);
    }
}

static void assert_family(const char *text, const char *name, const char *type)
{
    char want[160];
    snprintf(want, sizeof want, "\n# TYPE %s %s\n", name, type);
    char help[160];
    snprintf(help, sizeof help, "# HELP %s ", name);
    if (!strstr(text, want)) /* each TYPE follows its HELP line */
        fail_msg("no '# TYPE %s %s'", name, type);
    if (!strstr(text, help))
        fail_msg("no # HELP for %s", name);
}

/* Runs promtool check metrics on text; fails the test on any complaint. */
static void assert_promtool_clean(const char *text)
{
    const char *tool = getenv("IC_PROMTOOL");
    if (!tool)
        tool = "/usr/bin/promtool";
    if (access(tool, X_OK) != 0)
        fail_msg("%s not found: install Debian's prometheus package (CI does) or set "
                 "IC_PROMTOOL", tool);
    char in[] = "/tmp/ic-metrics-XXXXXX";
    int fd = mkstemp(in);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "'%s' check metrics < '%s' 2>&1", tool, in);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[4096];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    unlink(in);
    if (st != 0 || n != 0)
        fail_msg("promtool check metrics (status %d) says:\n%s", st, out);
}

static ic_hw_sample two_gpus(void)
{
    ic_hw_sample hw = {.n_gpus = 2, .max_temperature_c = 65, .cpu_pct = 12.5,
                       .ram_used_bytes = 3000000000, .ram_total_bytes = 16000000000,
                       .ram_available_bytes = 13000000000};
    hw.gpus[0] = (ic_gpu_reading){.index = 0, .name = "NVIDIA H200", .temperature_c = 65,
                                  .utilization_pct = 42, .memory_used_bytes = 1073741824,
                                  .memory_total_bytes = 150754820096, .power_w = 123.25};
    /* every reading failed, as gpu.c leaves them */
    hw.gpus[1] = (ic_gpu_reading){.index = 1, .name = "Broken", .temperature_c = -1,
                                  .utilization_pct = -1, .power_w = -1};
    return hw;
}

/* ------------------------------------------------------------------ tests */

static void every_family_has_help_and_type(void **state)
{
    (void)state;
    ic_metrics *m;
    assert_int_equal(ic_metrics_create(&m), 0);
    char *t = render(m, &(ic_metrics_gauges){0});
    static const char *const counters[] = {
        "inferencecenter_generations_total", "inferencecenter_prompt_tokens_total",
        "inferencecenter_generated_tokens_total", "inferencecenter_auth_failures_total",
        "inferencecenter_errors_total", "inferencecenter_scheduler_steps_total"};
    static const char *const gauges[] = {
        "inferencecenter_sessions", "inferencecenter_sessions_max",
        "inferencecenter_generations_running", "inferencecenter_queue_depth",
        "inferencecenter_kv_cells_used",
        "inferencecenter_gpu_layers", "inferencecenter_state",
        "inferencecenter_websocket_connections", "inferencecenter_scheduler_stalled",
        "inferencecenter_build_info", "inferencecenter_gpu_temperature_celsius",
        "inferencecenter_gpu_memory_used_bytes", "inferencecenter_gpu_memory_total_bytes",
        "inferencecenter_gpu_utilization_ratio", "inferencecenter_gpu_power_watts",
        "inferencecenter_cpu_usage_ratio", "inferencecenter_ram_used_bytes",
        "inferencecenter_ram_total_bytes"};
    static const char *const hists[] = {
        "inferencecenter_queue_time_seconds", "inferencecenter_time_to_first_token_seconds",
        "inferencecenter_inter_token_latency_seconds",
        "inferencecenter_request_duration_seconds"};
    for (size_t i = 0; i < sizeof counters / sizeof *counters; i++)
        assert_family(t, counters[i], "counter");
    for (size_t i = 0; i < sizeof gauges / sizeof *gauges; i++)
        assert_family(t, gauges[i], "gauge");
    for (size_t i = 0; i < sizeof hists / sizeof *hists; i++)
        assert_family(t, hists[i], "histogram");
    /* a gauge, but promtool allows _total only on counters and untyped */
    assert_family(t, "inferencecenter_kv_cells_capacity", "gauge");
    /* every reason and code, at 0 */
    static const char *const reasons[] = {"eos",          "length",   "stop_string", "abort",
                                          "context_full", "shutdown", "error"};
    char series[128];
    for (size_t i = 0; i < 7; i++) {
        snprintf(series, sizeof series, "inferencecenter_generations_total{reason=\"%s\"}",
                 reasons[i]);
        assert_value(t, series, "0");
    }
    for (int c = IC_CODE_BAD_JSON; c <= IC_CODE_INTERNAL; c++) {
        snprintf(series, sizeof series, "inferencecenter_errors_total{code=\"%s\"}",
                 ic_proto_code_name((enum ic_proto_code)c));
        assert_value(t, series, "0");
    }
    assert_value(t, "inferencecenter_build_info{version=\"\",llama_commit=\"\"}", "1");
    assert_promtool_clean(t);
    free(t);
    ic_metrics_destroy(m);
    ic_metrics_destroy(NULL);
}

static void histogram_buckets_are_exact(void **state)
{
    (void)state;
    ic_metrics *m;
    assert_int_equal(ic_metrics_create(&m), 0);
    /* binary-exact values, so that _sum is exact: */
    const double v[] = {0.0078125, 0.01 /* on a bound: le counts it */, 0.25, 0.5, 0.75, 1,
                        100 /* above all bounds */, -1 /* a clock step: counts as 0 */};
    for (size_t i = 0; i < sizeof v / sizeof *v; i++)
        ic_metrics_observe(m, IC_HIST_TTFT, v[i]);
    ic_metrics_observe(m, IC_HIST_TTFT, NAN);      /* dropped */
    ic_metrics_observe(m, IC_HIST_TTFT, INFINITY); /* dropped */
    ic_metrics_observe(m, IC_HIST_COUNT, 1);       /* out of range: ignored */
    ic_metrics_observe(m, IC_HIST_INTER_TOKEN, 0.03);
    char *t = render(m, NULL);
    const char *b = "inferencecenter_time_to_first_token_seconds_bucket";
    static const struct { const char *le, *count; } want[] = {
        {"0.01", "3"}, {"0.025", "3"}, {"0.05", "3"}, {"0.1", "3"}, {"0.25", "4"},
        {"0.5", "5"},  {"1", "7"},     {"2.5", "7"},  {"5", "7"},   {"10", "7"},
        {"30", "7"},   {"60", "7"},    {"+Inf", "8"}};
    char series[160];
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        snprintf(series, sizeof series, "%s{le=\"%s\"}", b, want[i].le);
        assert_value(t, series, want[i].count);
    }
    assert_value(t, "inferencecenter_time_to_first_token_seconds_count", "8");
    /* 0.0078125 + 0.01 + 0.25 + 0.5 + 0.75 + 1 + 100 + 0, summed in that order */
    double s = 0;
    for (size_t i = 0; i < sizeof v / sizeof *v; i++)
        s += v[i] < 0 ? 0 : v[i];
    assert_true(strtod(value_of(t, "inferencecenter_time_to_first_token_seconds_sum"), NULL) == s);
    assert_value(t, "inferencecenter_inter_token_latency_seconds_bucket{le=\"0.025\"}", "0");
    assert_value(t, "inferencecenter_inter_token_latency_seconds_bucket{le=\"0.05\"}", "1");
    assert_value(t, "inferencecenter_inter_token_latency_seconds_sum", "0.03");
    assert_value(t, "inferencecenter_queue_time_seconds_bucket{le=\"0.0025\"}", "0");
    assert_value(t, "inferencecenter_queue_time_seconds_bucket{le=\"+Inf\"}", "0");
    assert_value(t, "inferencecenter_queue_time_seconds_sum", "0");
    assert_value(t, "inferencecenter_request_duration_seconds_bucket{le=\"600\"}", "0");
    assert_value(t, "inferencecenter_request_duration_seconds_count", "0");
    free(t);
    ic_metrics_destroy(m);
}

/* Over every histogram: buckets ascend in le, counts never fall, the last is
 * +Inf and equals _count. */
static void histograms_are_cumulative(void **state)
{
    (void)state;
    ic_metrics *m;
    assert_int_equal(ic_metrics_create(&m), 0);
    unsigned x = 12345;
    for (int i = 0; i < 5000; i++) {
        x = x * 1103515245u + 12345u;
        double sec = (double)(x >> 8) / (double)(1u << 24) * 700.0 * ((x & 3) ? 0.01 : 1);
        ic_metrics_observe(m, (enum ic_hist)(i % IC_HIST_COUNT), sec);
    }
    char *t = render(m, NULL);
    static const char *const names[] = {
        "inferencecenter_queue_time_seconds", "inferencecenter_time_to_first_token_seconds",
        "inferencecenter_inter_token_latency_seconds",
        "inferencecenter_request_duration_seconds"};
    for (size_t h = 0; h < 4; h++) {
        char prefix[128];
        int pn = snprintf(prefix, sizeof prefix, "%s_bucket{le=\"", names[h]);
        double last_le = -1;
        long long last = -1;
        int n_buckets = 0;
        bool saw_inf = false;
        for (const char *p = strstr(t, prefix); p; p = strstr(p + 1, prefix)) {
            assert_false(saw_inf);
            const char *le = p + pn;
            double lev = strncmp(le, "+Inf\"", 5) == 0 ? INFINITY : strtod(le, NULL);
            saw_inf = isinf(lev);
            assert_true(lev > last_le);
            long long c = strtoll(strchr(le, ' ') + 1, NULL, 10);
            assert_true(c >= last);
            last_le = lev;
            last = c;
            n_buckets++;
        }
        assert_true(saw_inf && n_buckets >= 8);
        char cs[128];
        snprintf(cs, sizeof cs, "%s_count", names[h]);
        assert_int_equal(strtoll(value_of(t, cs), NULL, 10), last);
        assert_int_equal(last, 1250);
    }
    assert_promtool_clean(t);
    free(t);
    ic_metrics_destroy(m);
}

static void counters_by_reason_and_code(void **state)
{
    (void)state;
    ic_metrics *m;
    assert_int_equal(ic_metrics_create(&m), 0);
    ic_metrics_generation_ended(m, IC_END_EOS, 10, 5);
    ic_metrics_generation_ended(m, IC_END_EOS, 10, 5);
    ic_metrics_generation_ended(m, IC_END_LENGTH, 3, 7);
    ic_metrics_generation_ended(m, IC_END_ABORT, -1, -1); /* negative counts add nothing */
    ic_metrics_generation_ended(m, (enum ic_end_reason)99, 0, 0); /* counts as error */
    ic_metrics_error(m, IC_CODE_BAD_JSON);
    ic_metrics_error(m, IC_CODE_INTERNAL);
    ic_metrics_error(m, (enum ic_proto_code)99); /* counts as internal */
    for (int i = 0; i < 3; i++)
        ic_metrics_auth_failed(m);
    char *t = render(m, &(ic_metrics_gauges){.steps = 123456789012ull});
    assert_value(t, "inferencecenter_generations_total{reason=\"eos\"}", "2");
    assert_value(t, "inferencecenter_generations_total{reason=\"length\"}", "1");
    assert_value(t, "inferencecenter_generations_total{reason=\"abort\"}", "1");
    assert_value(t, "inferencecenter_generations_total{reason=\"error\"}", "1");
    assert_value(t, "inferencecenter_generations_total{reason=\"stop_string\"}", "0");
    assert_value(t, "inferencecenter_prompt_tokens_total", "23");
    assert_value(t, "inferencecenter_generated_tokens_total", "17");
    assert_value(t, "inferencecenter_auth_failures_total", "3");
    assert_value(t, "inferencecenter_errors_total{code=\"bad_json\"}", "1");
    assert_value(t, "inferencecenter_errors_total{code=\"internal\"}", "2");
    assert_value(t, "inferencecenter_errors_total{code=\"busy\"}", "0");
    assert_value(t, "inferencecenter_scheduler_steps_total", "123456789012");
    free(t);
    ic_metrics_destroy(m);
}

static void state_is_one_hot(void **state)
{
    (void)state;
    static const char *const states[] = {"loading", "ready", "throttled", "sleeping", "stuck",
                                         "failed"};
    ic_metrics *m;
    assert_int_equal(ic_metrics_create(&m), 0);
    char series[96];
    for (int cur = -1; cur < 6; cur++) {
        /* -1: a state the module does not know, so none is 1 */
        char *t = render(m, &(ic_metrics_gauges){.state = cur < 0 ? "bogus" : states[cur]});
        for (int i = 0; i < 6; i++) {
            snprintf(series, sizeof series, "inferencecenter_state{state=\"%s\"}", states[i]);
            assert_value(t, series, i == cur ? "1" : "0");
        }
        free(t);
    }
    ic_metrics_destroy(m);
}

static void gauges_without_hw(void **state)
{
    (void)state;
    ic_metrics *m;
    assert_int_equal(ic_metrics_create(&m), 0);
    ic_metrics_gauges g = {.state = "ready", .sessions = 3, .sessions_max = 64, .generating = 2,
                           .queued = 5, .kv_cells_used = 1000, .kv_cells_total = 8589934592,
                           .gpu_layers = 33, .connections = 4, .stalled = true, .steps = 7,
                           .hw = NULL, .version = "0.1.0", .llama_commit = "80fb11ac"};
    char *t = render(m, &g);
    assert_value(t, "inferencecenter_sessions", "3");
    assert_value(t, "inferencecenter_sessions_max", "64");
    assert_value(t, "inferencecenter_generations_running", "2");
    assert_value(t, "inferencecenter_queue_depth", "5");
    assert_value(t, "inferencecenter_kv_cells_used", "1000");
    assert_value(t, "inferencecenter_kv_cells_capacity", "8589934592");
    assert_value(t, "inferencecenter_gpu_layers", "33");
    assert_value(t, "inferencecenter_websocket_connections", "4");
    assert_value(t, "inferencecenter_scheduler_stalled", "1");
    assert_value(t, "inferencecenter_state{state=\"ready\"}", "1");
    assert_value(t, "inferencecenter_build_info{version=\"0.1.0\",llama_commit=\"80fb11ac\"}",
                 "1");
    assert_absent(t, "inferencecenter_gpu_temperature_celsius");
    assert_absent(t, "inferencecenter_gpu_memory_used_bytes");
    assert_absent(t, "inferencecenter_cpu_usage_ratio");
    assert_absent(t, "inferencecenter_ram_used_bytes");
    assert_absent(t, "inferencecenter_ram_total_bytes");
    assert_promtool_clean(t);
    free(t);
    g.stalled = false;
    t = render(m, &g);
    assert_value(t, "inferencecenter_scheduler_stalled", "0");
    free(t);
    ic_metrics_destroy(m);
}

static void gpu_and_host_samples(void **state)
{
    (void)state;
    ic_metrics *m;
    assert_int_equal(ic_metrics_create(&m), 0);
    ic_hw_sample hw = two_gpus();
    char *t = render(m, &(ic_metrics_gauges){.state = "ready", .hw = &hw});
    const char *l0 = "{gpu=\"0\",name=\"NVIDIA H200\"}";
    char s[160];
    snprintf(s, sizeof s, "inferencecenter_gpu_temperature_celsius%s", l0);
    assert_value(t, s, "65");
    snprintf(s, sizeof s, "inferencecenter_gpu_memory_used_bytes%s", l0);
    assert_value(t, s, "1073741824");
    snprintf(s, sizeof s, "inferencecenter_gpu_memory_total_bytes%s", l0);
    assert_value(t, s, "150754820096");
    snprintf(s, sizeof s, "inferencecenter_gpu_utilization_ratio%s", l0);
    assert_value(t, s, "0.42");
    snprintf(s, sizeof s, "inferencecenter_gpu_power_watts%s", l0);
    assert_value(t, s, "123.25");
    assert_null(strstr(t, "gpu=\"1\"")); /* its readings failed: no samples at all */
    assert_value(t, "inferencecenter_cpu_usage_ratio", "0.125");
    assert_value(t, "inferencecenter_ram_used_bytes", "3000000000");
    assert_value(t, "inferencecenter_ram_total_bytes", "16000000000");
    assert_promtool_clean(t);
    free(t);
    /* one failed reading drops only that sample */
    hw.gpus[0].power_w = -1;
    t = render(m, &(ic_metrics_gauges){.hw = &hw});
    snprintf(s, sizeof s, "inferencecenter_gpu_power_watts%s", l0);
    assert_null(value_of(t, s));
    snprintf(s, sizeof s, "inferencecenter_gpu_temperature_celsius%s", l0);
    assert_value(t, s, "65");
    free(t);
    ic_metrics_destroy(m);
}

static void label_values_are_escaped(void **state)
{
    (void)state;
    ic_metrics *m;
    assert_int_equal(ic_metrics_create(&m), 0);
    ic_hw_sample hw = two_gpus();
    snprintf(hw.gpus[0].name, sizeof hw.gpus[0].name, "Evil \"GPU\" \\ two\nlines \xff end");
    memset(hw.gpus[1].name, 'x', sizeof hw.gpus[1].name); /* no NUL at all */
    hw.gpus[1].temperature_c = 30;
    ic_metrics_gauges g = {.hw = &hw, .version = "1.0\"\\\n", .llama_commit = "abc"};
    char *t = render(m, &g);
    assert_value(t, "inferencecenter_gpu_temperature_celsius{gpu=\"0\",name=\"Evil \\\"GPU\\\" "
                    "\\\\ two\\nlines \xef\xbf\xbd end\"}",
                 "65");
    char s[256];
    int n = snprintf(s, sizeof s, "inferencecenter_gpu_temperature_celsius{gpu=\"1\",name=\"");
    memset(s + n, 'x', 96);
    snprintf(s + n + 96, sizeof s - (size_t)n - 96, "\"}");
    assert_value(t, s, "30");
    assert_value(t, "inferencecenter_build_info{version=\"1.0\\\"\\\\\\n\",llama_commit=\"abc\"}",
                 "1");
    assert_promtool_clean(t);
    free(t);
    ic_metrics_destroy(m);
}

/* Everything at once, with odd values, through promtool. */
static void full_render_passes_promtool(void **state)
{
    (void)state;
    ic_metrics *m;
    assert_int_equal(ic_metrics_create(&m), 0);
    ic_metrics_generation_ended(m, IC_END_STOP_STRING, 100, 200);
    ic_metrics_error(m, IC_CODE_OVERLOADED);
    ic_metrics_auth_failed(m);
    for (int h = 0; h < IC_HIST_COUNT; h++) {
        ic_metrics_observe(m, (enum ic_hist)h, 0.1 + 0.2);
        ic_metrics_observe(m, (enum ic_hist)h, 1e-9);
        ic_metrics_observe(m, (enum ic_hist)h, 12345.678);
    }
    ic_hw_sample hw = two_gpus();
    ic_metrics_gauges g = {.state = "throttled", .sessions = -1, .kv_cells_total = INT64_MAX,
                           .steps = UINT64_MAX, .hw = &hw, .version = "0.1.0",
                           .llama_commit = "80fb11ac73e66d89eae2c6a91d8a77428fa733ed"};
    char *t = render(m, &g);
    assert_value(t, "inferencecenter_kv_cells_capacity", "9223372036854775807");
    assert_value(t, "inferencecenter_scheduler_steps_total", "18446744073709551615");
    assert_value(t, "inferencecenter_queue_time_seconds_bucket{le=\"0.001\"}", "1");
    assert_promtool_clean(t);
    free(t);
    ic_metrics_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_family_has_help_and_type),
        cmocka_unit_test(histogram_buckets_are_exact),
        cmocka_unit_test(histograms_are_cumulative),
        cmocka_unit_test(counters_by_reason_and_code),
        cmocka_unit_test(state_is_one_hot),
        cmocka_unit_test(gauges_without_hw),
        cmocka_unit_test(gpu_and_host_samples),
        cmocka_unit_test(label_values_are_escaped),
        cmocka_unit_test(full_render_passes_promtool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
