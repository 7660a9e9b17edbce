/* sched_bench.c - steady-state decode throughput of the scheduler with N
 * concurrent sessions, for comparison with llama-batched-bench's S_TG on
 * the same model, threads and context (bench/sched-vs-batched runs both).
 *
 * For each N: N sessions each get a raw prompt of about --prompt-tokens
 * tokens and generate --gen tokens greedily with EOS banned. Steady state
 * is the window from the moment every session has its first token to the
 * moment the first session ends; aggregate tokens/s is the TOKEN events
 * in that window over its length. Main thread drives; the scheduler runs
 * its own thread, as in the server.
 */
#include "buf.h"
#include "engine.h"
#include "err.h"
#include "log.h"
#include "sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

typedef struct bench_args {
    const char *model;
    int n_list[16];
    int n_n;
    int prompt_words;
    int gen;
    int threads;
    int ctx;
    bool unified;
    int system_words;        /* > 0: the shared-system-prompt TTFT run */
    int logprobs;            /* >= 0: every token with logprobs and this many top ones */
} bench_args;

static ic_sched *make_sched(const bench_args *a, int n, int prefix_slots);

/* Runs one N; returns steady-state aggregate tokens/s (or < 0). */
static double run_n(const bench_args *a, int n)
{
    ic_sched *s = make_sched(a, n, 0);
    if (!s)
        return -1;
    ic_buf prompt = {0};
    for (int i = 0; i < a->prompt_words; i++)
        ic_buf_append(&prompt, i % 2 ? " the cat" : " a dog", i % 2 ? 8 : 6);
    ic_gen_params gp = {.sample = ic_sample_params_default(), .max_tokens = a->gen,
                        .ignore_eos = true, .priority = IC_PRIORITY_NORMAL};
    gp.sample.temperature = 0;
    gp.logprobs = a->logprobs >= 0;
    gp.top_logprobs = a->logprobs > 0 ? a->logprobs : 0;
    for (int i = 0; i < n; i++) {
        uint64_t sid;
        ic_sched_open_session(s, NULL, &sid);
        ic_sched_infer(s, sid, (uint64_t)i + 1, prompt.data, true, &gp);
    }
    int started = 0, ended = 0;
    long window_tokens = 0;
    double t_start = 0, t_end = 0;
    while (ended < n) {
        ic_event *ev = ic_sched_poll_event(s, 60000);
        if (!ev)
            break;
        double t = now_ms();
        if (ev->type == IC_EVENT_TOKEN) {
            if (started == n && t_end == 0)
                window_tokens++;
            if (ev->index == 0 && ++started == n)
                t_start = t;
        } else if (ev->type == IC_EVENT_END) {
            if (ended++ == 0)
                t_end = t;
        }
        ic_event_free(ev);
    }
    ic_sched_destroy(s);
    ic_buf_free(&prompt);
    return t_end > t_start ? window_tokens / ((t_end - t_start) / 1e3) : -1;
}

static ic_sched *make_sched(const bench_args *a, int n, int prefix_slots)
{
    ic_sched_opts so = ic_sched_opts_default();
    so.max_sessions = n;
    so.n_ctx_per_session = (uint32_t)a->ctx;
    so.kv_unified = a->unified;
    so.prefix_slots = prefix_slots;
    ic_engine_opts eo = ic_engine_opts_default();
    ic_sched_engine_opts(&so, &eo);
    eo.model_path = a->model;
    eo.n_threads = a->threads;
    ic_engine *e = NULL;
    const char *why = NULL;
    ic_sched *s = NULL;
    if (ic_engine_create(&eo, &e, &why) < 0 || ic_sched_create(e, &so, &s) < 0) {
        fprintf(stderr, "sched_bench: %s: %s\n", a->model, why ? why : "scheduler failed");
        return NULL;
    }
    return s;
}

/* Waits for the END of n generations; returns the TTFTs (ms) by request id. */
static void collect_ttft(ic_sched *s, int n, double *ttft_by_rid)
{
    for (int ended = 0; ended < n;) {
        ic_event *ev = ic_sched_poll_event(s, 120000);
        if (!ev)
            return;
        if (ev->type == IC_EVENT_END) {
            ttft_by_rid[ev->request_id] = ev->stats.ttft_ms;
            ended++;
        } else if (ev->type == IC_EVENT_ERROR) {
            fprintf(stderr, "sched_bench: %s\n", ev->message);
            ended++;
        }
        ic_event_free(ev);
    }
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* N sessions with one system prompt: the first alone, then N-1 together.
 * Prints the first's TTFT and the others' median, with the prefix shared
 * and (prefix_slots 0) recomputed per session as llama.cpp's server does. */
static void run_shared_system(const bench_args *a, int n)
{
    ic_buf system = {0};
    for (int i = 0; i < a->system_words; i++)
        ic_buf_append(&system, i % 2 ? " the cat" : " a dog", i % 2 ? 8 : 6);
    ic_gen_params gp = {.sample = ic_sample_params_default(), .max_tokens = 8,
                        .ignore_eos = true, .priority = IC_PRIORITY_NORMAL};
    gp.sample.temperature = 0;
    for (int shared = 1; shared >= 0; shared--) {
        ic_sched *s = make_sched(a, n, shared ? 4 : 0);
        if (!s)
            return;
        double ttft[64] = {0};
        uint64_t sid[64];
        for (int i = 0; i < n; i++)
            ic_sched_open_session(s, system.data, &sid[i]);
        ic_sched_infer(s, sid[0], 1, " Hello there", false, &gp);
        collect_ttft(s, 1, ttft);
        for (int i = 1; i < n; i++)
            ic_sched_infer(s, sid[i], (uint64_t)i + 1, " Hello there", false, &gp);
        collect_ttft(s, n - 1, ttft);
        qsort(ttft + 2, (size_t)(n - 1), sizeof *ttft, cmp_double);
        printf("%d\t%s\t%.1f\t%.1f\n", n, shared ? "shared" : "recomputed", ttft[1],
               ttft[2 + (n - 1) / 2]);
        fflush(stdout);
        ic_sched_destroy(s);
    }
    ic_buf_free(&system);
}

int main(int argc, char **argv)
{
    bench_args a = {.prompt_words = 64, .gen = 128, .threads = 2, .ctx = 1024, .unified = false,
                    .logprobs = -1};
    a.n_list[0] = 1, a.n_list[1] = 2, a.n_list[2] = 4, a.n_list[3] = 8;
    a.n_n = 4;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(argv[i], "--model")) a.model = v, i++;
        else if (!strcmp(argv[i], "--gen")) a.gen = atoi(v), i++;
        else if (!strcmp(argv[i], "--prompt-words")) a.prompt_words = atoi(v), i++;
        else if (!strcmp(argv[i], "--threads")) a.threads = atoi(v), i++;
        else if (!strcmp(argv[i], "--ctx")) a.ctx = atoi(v), i++;
        else if (!strcmp(argv[i], "--kv-unified")) a.unified = !strcmp(v, "on"), i++;
        else if (!strcmp(argv[i], "--system-words")) a.system_words = atoi(v), i++;
        else if (!strcmp(argv[i], "--logprobs")) a.logprobs = atoi(v), i++;
        else if (!strcmp(argv[i], "--n")) {
            a.n_n = 0;
            for (char *p = (char *)v; *p && a.n_n < 16; p = strchr(p, ',') ? strchr(p, ',') + 1 : "")
                a.n_list[a.n_n++] = atoi(p);
            i++;
        } else {
            fprintf(stderr, "usage: sched_bench --model M [--n 1,2,4,8] [--gen 128] "
                            "[--prompt-words 64] [--threads 2] [--ctx 1024] [--kv-unified on|off]"
                            " [--system-words W] [--logprobs TOP]\n");
            return 2;
        }
    }
    if (!a.model)
        return fprintf(stderr, "sched_bench: --model is required\n"), 2;
    ic_log_set_level(IC_LOG_WARN);
    ic_engine_global_init();
    if (a.system_words > 0) {
        printf("N\tprefix\tttft_first_ms\tttft_others_p50_ms\n");
        for (int i = 0; i < a.n_n; i++)
            if (a.n_list[i] >= 2 && a.n_list[i] <= 64)
                run_shared_system(&a, a.n_list[i]);
        return 0;
    }
    printf("N\tagg_tok_s\n");
    for (int i = 0; i < a.n_n; i++) {
        double tps = run_n(&a, a.n_list[i]);
        printf("%d\t%.2f\n", a.n_list[i], tps);
        fflush(stdout);
    }
    return 0;
}
