/* test_sched.c - the scheduler against the real engine on a tiny model:
 * batching changes nothing, multi-turn reuse, fairness, abort, close,
 * context limits, stop strings, shared prefixes, many sessions, the
 * thermal guard (behind a fake temperature), idle sleep, the heartbeat. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "buf.h"
#include "err.h"
#include "sched.h"
#include "testutil.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_REQ 64

/* What the test saw of each request (ids 1..MAX_REQ-1). */
typedef struct result {
    ic_buf text;
    int n_tokens;
    int first_token_seq;      /* event sequence number of TOKEN 0 */
    bool ended, failed;
    ic_event end;             /* copy of END or ERROR (text not kept) */
} result;

typedef struct world {
    ic_sched *s;
    result r[MAX_REQ];
    int closed[4096];         /* SESSION_CLOSED seen, by session id % 4096 */
    int seq;                  /* events seen */
} world;

static world *W;

static ic_sched *make_sched_chunked(int max_sessions, uint32_t n_ctx, bool unified, int chunk)
{
    ic_sched_opts so = ic_sched_opts_default();
    so.max_chunk_tokens = chunk;
    so.max_sessions = max_sessions;
    so.n_ctx_per_session = n_ctx;
    so.kv_unified = unified;
    ic_engine_opts eo = ic_engine_opts_default();
    eo.model_path = test_model_path();
    eo.n_threads = 2;
    ic_sched_engine_opts(&so, &eo);
    ic_engine *e = NULL;
    assert_int_equal(ic_engine_create(&eo, &e, NULL), 0);
    ic_sched *s = NULL;
    assert_int_equal(ic_sched_create(e, &so, &s), 0);
    return s;
}

static ic_sched *make_sched(int max_sessions, uint32_t n_ctx, bool unified)
{
    return make_sched_chunked(max_sessions, n_ctx, unified, 256);
}

static int setup(void **state)
{
    (void)state;
    W = calloc(1, sizeof *W);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ic_sched_destroy(W->s);
    for (int i = 0; i < MAX_REQ; i++)
        ic_buf_free(&W->r[i].text);
    free(W);
    return 0;
}

/* Handles one event; returns false on time-out (a test failure). */
static bool pump(int timeout_ms)
{
    ic_event *ev = ic_sched_poll_event(W->s, timeout_ms);
    if (!ev)
        return false;
    W->seq++;
    result *r = &W->r[ev->request_id % MAX_REQ];
    switch (ev->type) {
    case IC_EVENT_TOKEN:
        assert_false(r->ended);                 /* no TOKEN after END */
        assert_int_equal(ev->index, r->n_tokens); /* indexes count from 0 */
        if (r->n_tokens++ == 0)
            r->first_token_seq = W->seq;
        ic_buf_append(&r->text, ev->text, ev->text_len);
        break;
    case IC_EVENT_END:
        assert_false(r->ended);                 /* exactly one END */
        r->ended = true;
        r->end = *ev;
        r->end.text = NULL;
        assert_int_equal(ev->stats.generated_tokens, r->n_tokens);
        break;
    case IC_EVENT_ERROR:
        r->failed = true;
        r->end = *ev;
        r->end.text = NULL;
        break;
    case IC_EVENT_SESSION_CLOSED:
        W->closed[ev->session_id % 4096]++;
        break;
    }
    ic_event_free(ev);
    return true;
}

static void wait_done(uint64_t rid)
{
    while (!W->r[rid].ended && !W->r[rid].failed)
        assert_true(pump(60000));
}

static void wait_tokens(uint64_t rid, int n)
{
    while (W->r[rid].n_tokens < n && !W->r[rid].ended && !W->r[rid].failed)
        assert_true(pump(60000));
}

static void wait_closed(uint64_t sid)
{
    while (!W->closed[sid % 4096])
        assert_true(pump(60000));
}

static ic_gen_params greedy(int max_tokens)
{
    ic_gen_params p = {0};
    p.sample = ic_sample_params_default();
    p.sample.temperature = 0;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    p.priority = IC_PRIORITY_NORMAL;
    return p;
}

static uint64_t open_session(const char *system)
{
    uint64_t sid = 0;
    assert_int_equal(ic_sched_open_session(W->s, system, &sid), 0);
    return sid;
}

static void infer(uint64_t sid, uint64_t rid, const char *prompt, ic_gen_params p)
{
    assert_int_equal(ic_sched_infer(W->s, sid, rid, prompt, true, &p), 0);
}

static const char *prompts[4] = {
    "Once upon a time", "The little dog", "One day, a girl named Sue", "Tom and his mom",
};

static void batching_changes_nothing(void **state)
{
    (void)state;
    W->s = make_sched(4, 256, false);
    /* Alone, one after another. */
    for (int i = 0; i < 4; i++) {
        uint64_t sid = open_session(NULL);
        infer(sid, 1 + i, prompts[i], greedy(24));
        wait_done(1 + i);
        assert_int_equal(W->r[1 + i].end.reason, IC_END_LENGTH);
        assert_int_equal(ic_sched_close_session(W->s, sid, IC_CLOSE_CLIENT), 0);
        wait_closed(sid);
    }
    /* Together, each starting at a different step. */
    uint64_t sids[4];
    for (int i = 0; i < 4; i++) {
        sids[i] = open_session(NULL);
        infer(sids[i], 11 + i, prompts[i], greedy(24));
        wait_tokens(11 + i, 3);
    }
    for (int i = 0; i < 4; i++) {
        wait_done(11 + i);
        assert_string_equal(W->r[11 + i].text.data, W->r[1 + i].text.data);
        assert_int_equal(W->r[11 + i].n_tokens, 24);
    }
}

static void multi_turn_reuses_cache(void **state)
{
    (void)state;
    W->s = make_sched(2, 512, false);
    uint64_t a = open_session(NULL);
    infer(a, 1, "Once upon a time", greedy(16));
    wait_done(1);
    infer(a, 2, " Then", greedy(16));
    wait_done(2);
    /* Only the new text (and the last reply token, never decoded) is
     * processed in the second turn. */
    int turn2 = W->r[2].end.stats.prompt_tokens;
    assert_true(turn2 >= 1 && turn2 <= 4);
    /* A fresh session given the whole conversation says the same. */
    ic_buf whole = {0};
    ic_buf_append(&whole, "Once upon a time", 16);
    ic_buf_append(&whole, W->r[1].text.data, W->r[1].text.len);
    ic_buf_append(&whole, " Then", 5);
    uint64_t b = open_session(NULL);
    infer(b, 3, whole.data, greedy(16));
    wait_done(3);
    assert_true(W->r[3].end.stats.prompt_tokens > turn2 + 16);
    assert_string_equal(W->r[3].text.data, W->r[2].text.data);
    ic_buf_free(&whole);
}

static char *long_prompt(int words)
{
    ic_buf b = {0};
    for (int i = 0; i < words; i++)
        ic_buf_append(&b, " the cat ran", 12);
    return ic_buf_take(&b);
}

static void short_prompt_not_starved_by_long_prefill(void **state)
{
    (void)state;
    W->s = make_sched(2, 2048, false);
    char *big = long_prompt(400); /* over 1,000 tokens */
    uint64_t a = open_session(NULL), b = open_session(NULL);
    infer(a, 1, big, greedy(4));
    infer(b, 2, "Once upon a time", greedy(4));
    wait_done(1);
    wait_done(2);
    assert_true(W->r[1].end.stats.prompt_tokens > 1000);
    /* The short prompt's first token came before the long one's. */
    assert_true(W->r[2].first_token_seq < W->r[1].first_token_seq);
    free(big);
}

static void abort_during_generation_and_prefill(void **state)
{
    (void)state;
    /* Small chunks: a long prompt's prefill takes many steps. */
    W->s = make_sched_chunked(2, 2048, false, 8);
    uint64_t a = open_session(NULL);
    infer(a, 1, "Once upon a time", greedy(1000));
    wait_tokens(1, 3);
    assert_int_equal(ic_sched_abort(W->s, a), 0);
    wait_done(1);
    assert_int_equal(W->r[1].end.reason, IC_END_ABORT);
    assert_true(W->r[1].n_tokens < 100);
    /* Generated tokens stay in the history: the next turn decodes little. */
    infer(a, 2, " and", greedy(2));
    wait_done(2);
    assert_true(W->r[2].end.stats.prompt_tokens <= 4);
    /* Abort while a long prompt is still in prefill: with a, generating,
     * in the same steps, b's prompt goes in chunks of 8 tokens. */
    infer(a, 4, " and then", greedy(1500));
    wait_tokens(4, 1);
    char *big = long_prompt(250);
    uint64_t b = open_session(NULL);
    infer(b, 3, big, greedy(8));
    enum ic_session_state st = IC_SESSION_IDLE;
    int used = 0;
    while (st != IC_SESSION_PREFILL && !W->r[3].ended && !W->r[3].failed) {
        ic_sched_session_info(W->s, b, &st, &used);
        pump(1);
    }
    assert_int_equal(ic_sched_abort(W->s, b), 0);
    wait_done(3);
    assert_false(W->r[3].failed);
    assert_int_equal(W->r[3].end.reason, IC_END_ABORT);
    assert_int_equal(W->r[3].n_tokens, 0);
    /* Stopped part-way: some, not all, of the prompt was decoded. */
    assert_true(W->r[3].end.stats.prompt_tokens > 0);
    assert_true(W->r[3].end.stats.prompt_tokens < 1000);
    assert_int_equal(ic_sched_abort(W->s, a), 0);
    wait_done(4);
    assert_int_equal(W->r[4].end.reason, IC_END_ABORT);
    free(big);
}

static void close_frees_capacity_and_kv(void **state)
{
    (void)state;
    W->s = make_sched(2, 256, false);
    uint64_t a = open_session(NULL), b = open_session(NULL), c;
    assert_int_equal(ic_sched_open_session(W->s, NULL, &c), IC_ERR_CAPACITY);
    infer(a, 1, "Once upon a time", greedy(8));
    infer(b, 2, "The little dog", greedy(8));
    wait_done(1);
    wait_done(2);
    ic_sched_stats st;
    ic_sched_get_stats(W->s, &st);
    assert_true(st.kv_cells_used > 0);
    int64_t used_before = st.kv_cells_used;
    /* Closing during a generation ends it with abort first. */
    infer(a, 3, " and", greedy(200));
    wait_tokens(3, 1);
    assert_int_equal(ic_sched_close_session(W->s, a, IC_CLOSE_CLIENT), 0);
    wait_closed(a);
    assert_true(W->r[3].ended);
    assert_int_equal(W->r[3].end.reason, IC_END_ABORT);
    ic_sched_get_stats(W->s, &st);
    assert_true(st.kv_cells_used < used_before);
    assert_int_equal(ic_sched_open_session(W->s, NULL, &c), 0);
    infer(c, 4, "Once upon a time", greedy(8));
    wait_done(4);
    assert_string_equal(W->r[4].text.data, W->r[1].text.data);
}

static void context_limits(void **state)
{
    (void)state;
    W->s = make_sched(1, 48, false);
    uint64_t a = open_session(NULL);
    infer(a, 1, "Once upon a time", greedy(500));
    wait_done(1);
    assert_int_equal(W->r[1].end.reason, IC_END_CONTEXT_FULL);
    const ic_gen_stats *st = &W->r[1].end.stats;
    assert_true(st->prompt_tokens + st->generated_tokens <= 49);
    assert_true(st->generated_tokens > 30);
    /* The conversation no longer fits: refused with both numbers. */
    infer(a, 2, " more", greedy(4));
    wait_done(2);
    assert_true(W->r[2].failed);
    assert_int_equal(W->r[2].end.err, IC_ERR_PROMPT_TOO_LONG);
    assert_non_null(strstr(W->r[2].end.message, "48"));
    char *big = long_prompt(40);
    uint64_t rid = 3;
    ic_gen_params p = greedy(4);
    assert_int_equal(ic_sched_close_session(W->s, a, IC_CLOSE_CLIENT), 0);
    wait_closed(a);
    a = open_session(NULL);
    assert_int_equal(ic_sched_infer(W->s, a, rid, big, true, &p), 0);
    wait_done(rid);
    assert_true(W->r[rid].failed);
    assert_int_equal(W->r[rid].end.err, IC_ERR_PROMPT_TOO_LONG);
    /* The session still works afterwards. */
    infer(a, 4, "Once upon a time", greedy(4));
    wait_done(4);
    assert_true(W->r[4].ended);
    free(big);
}

static void stop_string_is_never_sent(void **state)
{
    (void)state;
    W->s = make_sched(2, 256, false);
    uint64_t a = open_session(NULL);
    infer(a, 1, "Once upon a time", greedy(48));
    wait_done(1);
    const char *full = W->r[1].text.data;
    /* Stop at a word from the middle of the known output. */
    const char *sp = strchr(full + strlen(full) / 2, ' ');
    assert_non_null(sp);
    char stop[8] = {0};
    memcpy(stop, sp, 4 < strlen(sp) ? 4 : strlen(sp));
    size_t cut = (size_t)(strstr(full, stop) - full);
    ic_gen_params p = greedy(48);
    p.n_stop = 2;
    p.stop[0] = "zzzz-never";
    p.stop[1] = stop;
    uint64_t b = open_session(NULL);
    assert_int_equal(ic_sched_infer(W->s, b, 2, "Once upon a time", true, &p), 0);
    wait_done(2);
    assert_int_equal(W->r[2].end.reason, IC_END_STOP_STRING);
    /* Exactly the text before the first occurrence, nothing of the match. */
    assert_int_equal(W->r[2].text.len, cut);
    assert_memory_equal(W->r[2].text.data, full, cut);
    assert_null(strstr(W->r[2].text.data, stop));
}

/* Both KV layouts share prefixes: a unified cache by sharing cells, a
 * split one by copying the prefix's stream. */
static void shared_system_prompt_is_computed_once_in(bool unified)
{
    W->s = make_sched(3, 1024, unified);
    char *system = long_prompt(60);
    uint64_t a = open_session(system), b = open_session(system);
    infer(a, 1, " Once upon a time", greedy(8));
    wait_done(1);
    infer(b, 2, " Once upon a time", greedy(8));
    wait_done(2);
    /* b decoded only what follows the shared system prompt... */
    assert_true(W->r[2].end.stats.prompt_tokens < W->r[1].end.stats.prompt_tokens / 4);
    /* ...and says exactly what a, which computed everything, said. */
    assert_string_equal(W->r[2].text.data, W->r[1].text.data);
    free(system);
}

static void shared_system_prompt_is_computed_once(void **state)
{
    (void)state;
    shared_system_prompt_is_computed_once_in(false);
}

static void shared_system_prompt_is_computed_once_unified(void **state)
{
    (void)state;
    shared_system_prompt_is_computed_once_in(true);
}

static void concurrent_sessions_wait_for_shared_prefix_in(bool unified)
{
    W->s = make_sched_chunked(3, 1024, unified, 32);
    char *system = long_prompt(60);
    uint64_t a = open_session(system), b = open_session(system), c = open_session(system);
    /* All three start together: one computes the system prompt, the
     * others wait for it and then decode only their own turn. */
    infer(a, 1, " Once upon a time", greedy(8));
    infer(b, 2, " Once upon a time", greedy(8));
    infer(c, 3, " The little dog", greedy(8));
    wait_done(1);
    wait_done(2);
    wait_done(3);
    int full = W->r[1].end.stats.prompt_tokens > W->r[2].end.stats.prompt_tokens
                   ? W->r[1].end.stats.prompt_tokens : W->r[2].end.stats.prompt_tokens;
    int shared_turns = (W->r[1].end.stats.prompt_tokens < full / 4) +
                       (W->r[2].end.stats.prompt_tokens < full / 4) +
                       (W->r[3].end.stats.prompt_tokens < full / 4);
    assert_int_equal(shared_turns, 2);
    assert_string_equal(W->r[1].text.data, W->r[2].text.data);
    free(system);
}

static void concurrent_sessions_wait_for_shared_prefix(void **state)
{
    (void)state;
    concurrent_sessions_wait_for_shared_prefix_in(false);
}

static void concurrent_sessions_wait_for_shared_prefix_unified(void **state)
{
    (void)state;
    concurrent_sessions_wait_for_shared_prefix_in(true);
}

static void priority_first_but_no_starvation(void **state)
{
    (void)state;
    W->s = make_sched_chunked(2, 2048, false, 64);
    char *big = long_prompt(300);
    uint64_t lo = open_session(NULL), hi = open_session(NULL);
    ic_gen_params pl = greedy(4), ph = greedy(4);
    pl.priority = IC_PRIORITY_LOW;
    ph.priority = IC_PRIORITY_HIGH;
    assert_int_equal(ic_sched_infer(W->s, lo, 1, big, true, &pl), 0);
    assert_int_equal(ic_sched_infer(W->s, hi, 2, big, true, &ph), 0);
    wait_done(1);
    wait_done(2);
    /* Same work, but the high-priority prompt finished prefill first... */
    assert_true(W->r[2].first_token_seq < W->r[1].first_token_seq);
    /* ...while the low one progressed meanwhile: its prefill started
     * before the high one's was done (an order of events on one clock). */
    assert_true(W->r[1].end.stats.queue_ms < W->r[2].end.stats.ttft_ms);
    free(big);
}

static void thousand_sessions(void **state)
{
    (void)state;
    W->s = make_sched(4, 64, false);
    for (int i = 0; i < 1000; i++) {
        uint64_t sid = open_session(i % 3 ? NULL : "You are a storyteller.");
        uint64_t rid = 1 + (uint64_t)(i % (MAX_REQ - 1));
        memset(&W->r[rid].end, 0, sizeof W->r[rid].end);
        W->r[rid].ended = W->r[rid].failed = false;
        W->r[rid].n_tokens = 0;
        ic_buf_clear(&W->r[rid].text);
        infer(sid, rid, prompts[i % 4], greedy(2));
        wait_done(rid);
        assert_true(W->r[rid].ended);
        assert_int_equal(ic_sched_close_session(W->s, sid, IC_CLOSE_CLIENT), 0);
        wait_closed(sid);
    }
    ic_sched_stats st;
    ic_sched_get_stats(W->s, &st);
    assert_int_equal(st.sessions, 0);
}

/* --- thermal guard, idle sleep, heartbeat --------------------------- */

static _Atomic int fake_temp_c = 40;
static _Atomic int beats;

static double read_fake_temp(void *ud)
{
    (void)ud;
    return (double)atomic_load(&fake_temp_c);
}

static void count_beat(void *ud)
{
    (void)ud;
    atomic_fetch_add(&beats, 1);
}

static ic_sched *make_sched_with(const ic_sched_opts *so)
{
    ic_engine_opts eo = ic_engine_opts_default();
    eo.model_path = test_model_path();
    eo.n_threads = 2;
    ic_sched_engine_opts(so, &eo);
    ic_engine *e = NULL;
    assert_int_equal(ic_engine_create(&eo, &e, NULL), 0);
    ic_sched *s = NULL;
    assert_int_equal(ic_sched_create(e, so, &s), 0);
    return s;
}

static enum ic_sched_state sched_state(void)
{
    ic_sched_stats st;
    ic_sched_get_stats(W->s, &st);
    return st.state;
}

/* Handles events for ms milliseconds of wall-clock time. */
static void pump_for(int ms)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        pump(10);
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < ms);
}

/* Handles events until the scheduler reports want (at most 10 s of
 * wall-clock time: pump returns early whenever an event comes). */
static void wait_state(enum ic_sched_state want)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        if (sched_state() == want)
            return;
        pump(10);
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while (t.tv_sec - t0.tv_sec < 10);
    assert_int_equal(sched_state(), want);
}

/* Two turns in two sessions (one on a shared system prompt), optionally
 * letting the scheduler sleep before the second turn; texts into out. */
static void two_turns(int idle_unload_s, bool unified, char out[4][512])
{
    ic_sched_opts so = ic_sched_opts_default();
    so.max_sessions = 2;
    so.n_ctx_per_session = 256;
    so.kv_unified = unified;
    so.idle_unload_s = idle_unload_s;
    ic_sched_destroy(W->s);
    memset(W->r, 0, sizeof W->r);
    W->s = make_sched_with(&so);
    uint64_t a = open_session(NULL), b = open_session("Once upon a");
    infer(a, 1, "Once upon a time", greedy(12));
    infer(b, 2, " time", greedy(12));
    wait_done(1);
    wait_done(2);
    if (idle_unload_s)
        wait_state(IC_SCHED_SLEEPING);
    infer(a, 3, " The", greedy(12));
    infer(b, 4, " One day", greedy(12));
    wait_done(3);
    wait_done(4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(W->r[1 + i].end.reason, IC_END_LENGTH);
        snprintf(out[i], 512, "%s", W->r[1 + i].text.data);
        ic_buf_free(&W->r[1 + i].text);
    }
    if (idle_unload_s) {
        ic_sched_stats st;
        ic_sched_get_stats(W->s, &st);
        assert_true(st.sleeps >= 1);
    }
}

static void idle_sleep_restores_every_session(void **state)
{
    (void)state;
    for (int unified = 0; unified < 2; unified++) {
        char awake[4][512], slept[4][512];
        two_turns(0, unified, awake);
        two_turns(1, unified, slept);
        for (int i = 0; i < 4; i++)
            assert_string_equal(slept[i], awake[i]);
    }
}

static void thermal_guard_holds_prefill_and_paces(void **state)
{
    (void)state;
    ic_sched_opts so = ic_sched_opts_default();
    so.max_sessions = 2;
    so.n_ctx_per_session = 8192;
    so.prefix_slots = 0;
    so.temp_limit_c = 83;
    so.read_temp_c = read_fake_temp;
    atomic_store(&fake_temp_c, 60);
    W->s = make_sched_with(&so);
    uint64_t a = open_session(NULL), b = open_session(NULL);
    ic_gen_params endless = greedy(100000);
    infer(a, 1, "Once upon a time", endless);
    wait_tokens(1, 2);
    assert_int_equal(sched_state(), IC_SCHED_READY);
    atomic_store(&fake_temp_c, 90);
    wait_state(IC_SCHED_THROTTLED);
    infer(b, 2, "The little dog", greedy(4));
    int a_before = W->r[1].n_tokens;
    pump_for(1500); /* a decodes, b's prompt waits */
    assert_int_equal(W->r[2].n_tokens, 0);
    assert_true(W->r[1].n_tokens > a_before);
    atomic_store(&fake_temp_c, 80); /* below the limit, not 5 below */
    pump_for(1500);
    assert_int_equal(sched_state(), IC_SCHED_THROTTLED);
    assert_int_equal(W->r[2].n_tokens, 0);
    atomic_store(&fake_temp_c, 77);
    wait_done(2);
    assert_int_equal(W->r[2].end.reason, IC_END_LENGTH);
    assert_int_equal(sched_state(), IC_SCHED_READY);
    assert_int_equal(ic_sched_abort(W->s, a), 0);
    wait_done(1);
    assert_int_equal(W->r[1].end.reason, IC_END_ABORT);
}

static void heartbeat_goes_on_while_idle(void **state)
{
    (void)state;
    ic_sched_opts so = ic_sched_opts_default();
    so.max_sessions = 1;
    so.n_ctx_per_session = 256;
    so.heartbeat = count_beat;
    so.heartbeat_interval_ms = 100;
    atomic_store(&beats, 0);
    W->s = make_sched_with(&so);
    pump_for(1000); /* an idle scheduler */
    int n = atomic_load(&beats);
    assert_true(n >= 3 && n <= 15);
}

int main(void)
{
    ic_engine_global_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(batching_changes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(multi_turn_reuses_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(short_prompt_not_starved_by_long_prefill, setup, teardown),
        cmocka_unit_test_setup_teardown(abort_during_generation_and_prefill, setup, teardown),
        cmocka_unit_test_setup_teardown(close_frees_capacity_and_kv, setup, teardown),
        cmocka_unit_test_setup_teardown(context_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(stop_string_is_never_sent, setup, teardown),
        cmocka_unit_test_setup_teardown(shared_system_prompt_is_computed_once, setup, teardown),
        cmocka_unit_test_setup_teardown(shared_system_prompt_is_computed_once_unified, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(concurrent_sessions_wait_for_shared_prefix, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(concurrent_sessions_wait_for_shared_prefix_unified,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(priority_first_but_no_starvation, setup, teardown),
        cmocka_unit_test_setup_teardown(thousand_sessions, setup, teardown),
        cmocka_unit_test_setup_teardown(idle_sleep_restores_every_session, setup, teardown),
        cmocka_unit_test_setup_teardown(thermal_guard_holds_prefill_and_paces, setup, teardown),
        cmocka_unit_test_setup_teardown(heartbeat_goes_on_while_idle, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
