/* test_spec.c - the n-gram drafter and its backoff (spec.c): drafts copy
 * what followed the longest, most recent earlier occurrence of the
 * history's suffix; a session whose drafts keep failing pauses for longer
 * and longer; a hit resets the pause. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "spec.h"

#include <string.h>

#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

static void no_earlier_occurrence_no_draft(void **state)
{
    (void)state;
    ic_token t[] = {1, 2, 3, 4, 5, 6, 7};
    ic_token out[8];
    assert_int_equal(ic_spec_ngram_draft(t, N(t), 8, out), 0);
    assert_int_equal(ic_spec_ngram_draft(t, 0, 8, out), 0);
    assert_int_equal(ic_spec_ngram_draft(t, 1, 8, out), 0);
    /* A single repeated token is below the smallest n-gram (2). */
    ic_token u[] = {9, 1, 2, 9};
    assert_int_equal(ic_spec_ngram_draft(u, N(u), 8, out), 0);
}

static void copies_what_followed(void **state)
{
    (void)state;
    /* "10 11 12 13 14 | 20 | 10 11": the suffix 10 11 occurred at 0. */
    ic_token t[] = {10, 11, 12, 13, 14, 20, 10, 11};
    ic_token out[8];
    int n = ic_spec_ngram_draft(t, N(t), 3, out);
    assert_int_equal(n, 3);
    assert_int_equal(out[0], 12);
    assert_int_equal(out[1], 13);
    assert_int_equal(out[2], 14);
    /* Bounded by max_draft, and by the history's end. */
    assert_int_equal(ic_spec_ngram_draft(t, N(t), 1, out), 1);
    assert_int_equal(ic_spec_ngram_draft(t, N(t), 0, out), 0);
    n = ic_spec_ngram_draft(t, N(t), 64, out);
    assert_int_equal(n, 6); /* 12 13 14 20 10 11, then the history ends */
    assert_int_equal(out[3], 20);
    assert_int_equal(out[5], 11);
}

static void longest_suffix_wins_then_most_recent(void **state)
{
    (void)state;
    /* Suffix "5 6 7": the 2-gram "6 7" occurs at 1 (followed by 8), the
     * 3-gram "5 6 7" at 5 (followed by 9): the longer match decides. */
    ic_token t[] = {0, 6, 7, 8, 1, 5, 6, 7, 9, 2, 5, 6, 7};
    ic_token out[4];
    assert_int_equal(ic_spec_ngram_draft(t, N(t), 1, out), 1);
    assert_int_equal(out[0], 9);
    /* Two occurrences of the same 2-gram: the most recent one. */
    ic_token u[] = {3, 4, 100, 0, 3, 4, 200, 0, 3, 4};
    assert_int_equal(ic_spec_ngram_draft(u, N(u), 1, out), 1);
    assert_int_equal(out[0], 200);
}

static void periodic_text_drafts_its_period(void **state)
{
    (void)state;
    ic_token t[] = {1, 2, 3, 1, 2, 3, 1, 2};
    ic_token out[8];
    int n = ic_spec_ngram_draft(t, N(t), 8, out);
    /* The 4-token suffix "2 3 1 2" occurred at 1; what followed it runs
     * to the history's end: one period, 3 1 2. */
    assert_int_equal(n, 3);
    assert_int_equal(out[0], 3);
    assert_int_equal(out[1], 1);
    assert_int_equal(out[2], 2);
}

static void backoff_pauses_on_misses_and_recovers(void **state)
{
    (void)state;
    ic_spec_backoff b;
    ic_spec_backoff_init(&b, 8);
    assert_int_equal(ic_spec_backoff_budget(&b), 8);
    /* A miss halves the length and pauses 1, then 3, then 7 steps... */
    int pauses[] = {1, 3, 7, 15, 31, 63, 63};
    for (int m = 0; m < N(pauses); m++) {
        ic_spec_backoff_result(&b, 4, 0);
        for (int i = 0; i < pauses[m]; i++)
            assert_int_equal(ic_spec_backoff_budget(&b), 0);
        assert_true(ic_spec_backoff_budget(&b) >= 1);
    }
    assert_int_equal(b.len_tokens, 1);
    /* Over 1000 steps of text that never repeats, a session drafts in at
     * most a few dozen of them (about one in 64 at the end). */
    int drafting = 0;
    for (int i = 0; i < 1000; i++) {
        int k = ic_spec_backoff_budget(&b);
        if (k > 0) {
            drafting++;
            ic_spec_backoff_result(&b, k, 0);
        }
    }
    assert_true(drafting <= 1000 / 64 + 1);
    /* A hit ends the pause and lengths grow back while drafts are taken whole. */
    while (ic_spec_backoff_budget(&b) == 0)
        ;
    ic_spec_backoff_result(&b, 1, 1);
    assert_int_equal(b.misses, 0);
    assert_int_equal(ic_spec_backoff_budget(&b), 2);
    ic_spec_backoff_result(&b, 2, 2);
    assert_int_equal(ic_spec_backoff_budget(&b), 4);
    ic_spec_backoff_result(&b, 4, 4);
    ic_spec_backoff_result(&b, 8, 8);
    assert_int_equal(ic_spec_backoff_budget(&b), 8); /* capped at max */
    /* Accepted in part: one past what was accepted. */
    ic_spec_backoff_result(&b, 8, 2);
    assert_int_equal(ic_spec_backoff_budget(&b), 3);
    /* No draft (nothing matched) changes nothing. */
    ic_spec_backoff_result(&b, 0, 0);
    assert_int_equal(ic_spec_backoff_budget(&b), 3);
}

static void backoff_off_and_capped(void **state)
{
    (void)state;
    ic_spec_backoff b;
    ic_spec_backoff_init(&b, 0);
    assert_int_equal(ic_spec_backoff_budget(&b), 0);
    ic_spec_backoff_init(&b, 1000);
    assert_int_equal(ic_spec_backoff_budget(&b), IC_SPEC_MAX_DRAFT);
    assert_string_equal(ic_spec_mode_name(IC_SPEC_OFF), "off");
    assert_string_equal(ic_spec_mode_name(IC_SPEC_NGRAM), "ngram");
}

static void cost_model_fits_and_picks(void **state)
{
    (void)state;
    ic_spec_cost c = {0};
    double c0, c1;
    assert_false(ic_spec_cost_fit(&c, &c0, &c1));
    for (int i = 0; i < 50; i++)
        ic_spec_cost_add(&c, 1, 0.5);
    assert_false(ic_spec_cost_fit(&c, &c0, &c1)); /* one row count: no slope */
    /* A CPU-like step: 0.3 ms + 0.2 ms a row. */
    for (int i = 0; i < 200; i++) {
        int rows = 1 + i % 6;
        ic_spec_cost_add(&c, rows, 0.3 + 0.2 * rows);
    }
    assert_true(ic_spec_cost_fit(&c, &c0, &c1));
    assert_true(c0 > 0.29 && c0 < 0.31);
    assert_true(c1 > 0.19 && c1 < 0.21);
    /* Rows that cost next to nothing (a GPU): draft all that is proposed. */
    assert_int_equal(ic_spec_pick(1.0, 0.001, 1, 1, 0.5, 8), 8);
    /* A row as dear as a step: a coin-flip draft does not pay ... */
    assert_int_equal(ic_spec_pick(0.5, 0.5, 1, 1, 0.5, 8), 0);
    /* ... a draft that is nearly always taken does, and not too long. */
    int k = ic_spec_pick(0.5, 0.5, 1, 1, 0.98, 8);
    assert_true(k >= 1);
    /* CPU-like 0.3 + 0.2/row, one session: a = 0.5 pays for a short draft only. */
    k = ic_spec_pick(0.3, 0.2, 1, 1, 0.5, 8);
    assert_true(k >= 1 && k <= 2);
    /* Eight sessions share the step: a draft token pays while its chance
     * (0.6^k) beats the step's tokens per ms (8 / 0.38) times a row's cost
     * (0.01 ms), so up to 3; with 0.9 more. */
    k = ic_spec_pick(0.3, 0.01, 8, 8, 0.6, 8);
    assert_true(k >= 2 && k <= 3);
    assert_true(ic_spec_pick(0.3, 0.01, 8, 8, 0.9, 8) >= 6);
    /* The acceptance estimate follows what happened. */
    ic_spec_backoff b;
    ic_spec_backoff_init(&b, 8);
    assert_true(ic_spec_backoff_accept(&b) == 0.5);
    for (int i = 0; i < 20; i++)
        ic_spec_backoff_result(&b, 4, 4);
    assert_true(ic_spec_backoff_accept(&b) > 0.95);
    for (int i = 0; i < 40; i++)
        ic_spec_backoff_result(&b, 2, 0);
    assert_true(ic_spec_backoff_accept(&b) < 0.2);
    /* A decline pauses and then asks for a one-token probe. */
    ic_spec_backoff_init(&b, 8);
    ic_spec_backoff_decline(&b);
    assert_true(b.probe);
    assert_int_equal(ic_spec_backoff_budget(&b), 0);
    assert_int_equal(ic_spec_backoff_budget(&b), 1);
    /* A probe that is accepted does not shorten the next refusal's pause. */
    b.probe = false;
    ic_spec_backoff_result(&b, 1, 1);
    ic_spec_backoff_decline(&b);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ic_spec_backoff_budget(&b), 0);
    assert_int_equal(ic_spec_backoff_budget(&b), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(no_earlier_occurrence_no_draft),
        cmocka_unit_test(copies_what_followed),
        cmocka_unit_test(longest_suffix_wins_then_most_recent),
        cmocka_unit_test(periodic_text_drafts_its_period),
        cmocka_unit_test(backoff_pauses_on_misses_and_recovers),
        cmocka_unit_test(backoff_off_and_capped),
        cmocka_unit_test(cost_model_fits_and_picks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
