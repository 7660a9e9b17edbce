/* test_prefill.c - the time model that bounds a step's prompt tokens
 * (prefill.c's ic_prefill_budget), from measured step costs alone: the
 * bound while it can hold, the floors, the decode-only probe, and what
 * happens where a decode-only step already takes --max-step-ms or more
 * (slow_step_whole: by count; otherwise a quarter of a decode step). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "prefill.h"

/* The scheduler's defaults: --max-step-ms 50, --min-prefill-tokens 1,
 * max_chunk_tokens 256, --slow-step-prompts whole. */
static ic_prefill_model defaults(double decode_ms, double prompt_ms)
{
    return (ic_prefill_model){.max_step_ms = 50, .min_prefill_tokens = 1,
                              .max_chunk_tokens = 256, .slow_step_whole = true,
                              .decode_ms = decode_ms, .prompt_ms = prompt_ms};
}

static void count_only_without_a_time_bound(void **state)
{
    (void)state;
    ic_prefill_model m = defaults(300, 25);
    m.max_step_ms = 0;
    assert_int_equal(ic_prefill_budget(&m, 8, 504), 504);
    assert_int_equal(ic_prefill_budget(&m, 0, 512), 512);
}

static void probe_and_first_chunk(void **state)
{
    (void)state;
    /* Decoding sessions not measured alone yet, or due again: a
     * decode-only step, whatever waits. */
    ic_prefill_model m = defaults(0, 0);
    assert_int_equal(ic_prefill_budget(&m, 2, 510), 0);
    m = defaults(10, 1);
    m.probe_due = true;
    assert_int_equal(ic_prefill_budget(&m, 2, 510), 0);
    /* Prompt cost unknown: a small first chunk to measure it. */
    m = defaults(10, 0);
    assert_int_equal(ic_prefill_budget(&m, 2, 510), 16);
    assert_int_equal(ic_prefill_budget(&m, 2, 7), 7);
}

static void bound_holds_on_a_fast_step(void **state)
{
    (void)state;
    /* A 10 ms decode step may grow to 1.5x (15 ms): 5 ms of prompt at
     * 1 ms a token. The whole/share choice does not apply: the bound holds. */
    ic_prefill_model m = defaults(10, 1);
    assert_int_equal(ic_prefill_budget(&m, 2, 510), 5);
    m.slow_step_whole = false;
    assert_int_equal(ic_prefill_budget(&m, 2, 510), 5);
    /* A tiny step may still grow to a quarter of max_step_ms (12.5 ms). */
    m = defaults(1, 0.5);
    assert_int_equal(ic_prefill_budget(&m, 1, 510), 23);
    /* The floor of --min-prefill-tokens. */
    m = defaults(10, 1);
    m.min_prefill_tokens = 32;
    assert_int_equal(ic_prefill_budget(&m, 2, 510), 32);
    assert_int_equal(ic_prefill_budget(&m, 2, 20), 20);
}

static void slow_step_prompts_whole_or_share(void **state)
{
    (void)state;
    /* Eight sessions decode in 300 ms, above --max-step-ms: the bound
     * cannot hold. whole: by count (the batch's free rows). */
    ic_prefill_model m = defaults(300, 25);
    assert_int_equal(ic_prefill_budget(&m, 8, 504), 504);
    /* share: a quarter of the decode step, 75 ms at 25 ms a token. */
    m.slow_step_whole = false;
    assert_int_equal(ic_prefill_budget(&m, 8, 504), 3);
    /* A prompt token is costed at most a decoding session's share of the
     * step (300 / 8 = 37.5 ms), so a noisy estimate cannot starve it. */
    m.prompt_ms = 100;
    assert_int_equal(ic_prefill_budget(&m, 8, 504), 2);
    /* Just under the line the bound still holds (room 20 ms >= 0.25 x 40),
     * for either choice. */
    m = defaults(40, 1);
    assert_int_equal(ic_prefill_budget(&m, 1, 510), 10);
    m.slow_step_whole = false;
    assert_int_equal(ic_prefill_budget(&m, 1, 510), 10);
}

static void alone_a_step_holds_a_chunk(void **state)
{
    (void)state;
    /* Nobody decodes: 4 x max_step_ms of prompt (200 ms: 8 tokens at
     * 25 ms), but never fewer than max_chunk_tokens. */
    ic_prefill_model m = defaults(300, 25);
    assert_int_equal(ic_prefill_budget(&m, 0, 512), 256);
    m.prompt_ms = 0.1; /* 2,000 tokens' worth: the batch bounds it */
    assert_int_equal(ic_prefill_budget(&m, 0, 512), 512);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(count_only_without_a_time_bound),
        cmocka_unit_test(probe_and_first_chunk),
        cmocka_unit_test(bound_holds_on_a_fast_step),
        cmocka_unit_test(slow_step_prompts_whole_or_share),
        cmocka_unit_test(alone_a_step_holds_a_chunk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
