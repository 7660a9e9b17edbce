/* test_stop.c - stop strings: matched text is never emitted, possible
 * matches are held back until decided. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "err.h"
#include "stop.h"

#include <string.h>

static void no_stop_strings_pass_through(void **state)
{
    (void)state;
    ic_stop s;
    assert_int_equal(ic_stop_init(&s, NULL, 0), 0);
    ic_buf out = {0};
    assert_int_equal(ic_stop_push(&s, "hello", 5, &out), 0);
    assert_string_equal(out.data, "hello");
    ic_buf_free(&out);
    ic_stop_free(&s);
}

static void match_across_pushes_is_cut(void **state)
{
    (void)state;
    const char *stops[] = {"lo W"};
    ic_stop s;
    assert_int_equal(ic_stop_init(&s, stops, 1), 0);
    ic_buf out = {0};
    assert_int_equal(ic_stop_push(&s, "Hel", 3, &out), 0);
    assert_string_equal(out.data, "He"); /* "l" might start "lo W" */
    assert_int_equal(ic_stop_push(&s, "lo", 2, &out), 0);
    assert_string_equal(out.data, "Hel"); /* "lo" might start "lo W" */
    assert_int_equal(ic_stop_push(&s, " World", 6, &out), 1);
    assert_string_equal(out.data, "Hel");
    /* After a match nothing more is emitted. */
    assert_int_equal(ic_stop_push(&s, "more", 4, &out), 1);
    assert_int_equal(ic_stop_flush(&s, &out), 0);
    assert_string_equal(out.data, "Hel");
    ic_buf_free(&out);
    ic_stop_free(&s);
}

static void false_start_is_released(void **state)
{
    (void)state;
    const char *stops[] = {"abc"};
    ic_stop s;
    assert_int_equal(ic_stop_init(&s, stops, 1), 0);
    ic_buf out = {0};
    assert_int_equal(ic_stop_push(&s, "xab", 3, &out), 0);
    assert_string_equal(out.data, "x");
    assert_int_equal(ic_stop_push(&s, "d", 1, &out), 0);
    assert_string_equal(out.data, "xabd");
    assert_int_equal(ic_stop_push(&s, "a", 1, &out), 0);
    assert_int_equal(ic_stop_flush(&s, &out), 0); /* the end: held text is released */
    assert_string_equal(out.data, "xabda");
    ic_buf_free(&out);
    ic_stop_free(&s);
}

static void earliest_of_several_wins(void **state)
{
    (void)state;
    const char *stops[] = {"END", "\n\n", ""};
    ic_stop s;
    assert_int_equal(ic_stop_init(&s, stops, 3), 0);
    assert_int_equal(s.n, 2); /* the empty string is ignored */
    ic_buf out = {0};
    assert_int_equal(ic_stop_push(&s, "one\n\ntwo END", 12, &out), 1);
    assert_string_equal(out.data, "one");
    ic_buf_free(&out);
    ic_stop_free(&s);
}

static void limits_are_enforced(void **state)
{
    (void)state;
    char big[IC_STOP_MAX_BYTES + 2];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    const char *one[] = {big};
    ic_stop s;
    assert_int_equal(ic_stop_init(&s, one, 1), IC_ERR_INVAL);
    const char *many[IC_STOP_MAX + 1];
    for (int i = 0; i <= IC_STOP_MAX; i++)
        many[i] = "a";
    assert_int_equal(ic_stop_init(&s, many, IC_STOP_MAX + 1), IC_ERR_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(no_stop_strings_pass_through),
        cmocka_unit_test(match_across_pushes_is_cut),
        cmocka_unit_test(false_start_is_released),
        cmocka_unit_test(earliest_of_several_wins),
        cmocka_unit_test(limits_are_enforced),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
