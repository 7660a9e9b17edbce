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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(no_earlier_occurrence_no_draft),
        cmocka_unit_test(copies_what_followed),
        cmocka_unit_test(longest_suffix_wins_then_most_recent),
        cmocka_unit_test(periodic_text_drafts_its_period),
        cmocka_unit_test(backoff_pauses_on_misses_and_recovers),
        cmocka_unit_test(backoff_off_and_capped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
