/* test_utf8.c - incremental UTF-8 repair: split characters are held back,
 * impossible sequences become U+FFFD, output is always valid. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "utf8.h"

#include <stdlib.h>
#include <string.h>

#define FFFD "\xEF\xBF\xBD"

/* Pushes input in chunks of the given sizes, then flushes. */
static char *run_chunks(const char *in, size_t n, const size_t *chunks, int n_chunks)
{
    ic_utf8_stream s;
    ic_utf8_reset(&s);
    ic_buf out = {0};
    size_t off = 0;
    for (int i = 0; i < n_chunks && off < n; i++) {
        size_t k = chunks[i] < n - off ? chunks[i] : n - off;
        assert_int_equal(ic_utf8_push(&s, in + off, k, &out), 0);
        off += k;
    }
    if (off < n)
        assert_int_equal(ic_utf8_push(&s, in + off, n - off, &out), 0);
    assert_int_equal(ic_utf8_flush(&s, &out), 0);
    return ic_buf_take(&out);
}

static void split_two_byte_char_is_held_back(void **state)
{
    (void)state;
    ic_utf8_stream s;
    ic_utf8_reset(&s);
    ic_buf out = {0};
    assert_int_equal(ic_utf8_push(&s, "caf\xC3", 4, &out), 0);
    assert_string_equal(out.data, "caf");
    assert_int_equal(ic_utf8_push(&s, "\xA9!", 2, &out), 0);
    assert_string_equal(out.data, "caf\xC3\xA9!");
    ic_buf_free(&out);
}

static void four_byte_char_split_in_single_bytes(void **state)
{
    (void)state;
    const char *emoji = "\xF0\x9F\x98\x80"; /* U+1F600 */
    ic_utf8_stream s;
    ic_utf8_reset(&s);
    ic_buf out = {0};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ic_utf8_push(&s, emoji + i, 1, &out), 0);
        assert_int_equal(out.len, 0);
    }
    assert_int_equal(ic_utf8_push(&s, emoji + 3, 1, &out), 0);
    assert_string_equal(out.data, emoji);
    ic_buf_free(&out);
}

static void impossible_bytes_become_replacement(void **state)
{
    (void)state;
    static const struct { const char *in; const char *want; } cases[] = {
        {"a\x80" "b", "a" FFFD "b"},            /* stray continuation */
        {"\xFF", FFFD},                         /* never a lead byte */
        {"\xC0\xAF", FFFD FFFD},                /* overlong lead */
        {"\xE0\x80\x80", FFFD FFFD FFFD},       /* overlong 3-byte */
        {"\xED\xA0\x80", FFFD FFFD FFFD},       /* surrogate */
        {"\xF4\x90\x80\x80", FFFD FFFD FFFD FFFD}, /* > U+10FFFF */
        {"\xE2\x82" "x", FFFD "x"},             /* truncated, then ASCII */
        {"\xE2\x82", FFFD},                     /* truncated at the end */
        {"\xC3\xC3\xA9", FFFD "\xC3\xA9"},      /* a lead interrupts a lead */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t one = 1;
        char *got = run_chunks(cases[i].in, strlen(cases[i].in), &one, 1);
        assert_string_equal(got, cases[i].want);
        assert_true(ic_utf8_valid(got, strlen(got)));
        free(got);
    }
}

static void random_bytes_always_give_valid_output(void **state)
{
    (void)state;
    srand(7);
    for (int iter = 0; iter < 2000; iter++) {
        unsigned char in[64];
        size_t n = (size_t)(rand() % 64);
        for (size_t i = 0; i < n; i++)
            in[i] = (unsigned char)(rand() % 4 ? 0x80 + rand() % 0x80 : rand() % 256);
        size_t chunks[8];
        for (int i = 0; i < 8; i++)
            chunks[i] = (size_t)(1 + rand() % 5);
        char *got = run_chunks((const char *)in, n, chunks, 8);
        assert_true(ic_utf8_valid(got, strlen(got)));
        /* Valid input comes out unchanged whatever the split. */
        if (ic_utf8_valid((const char *)in, n) && memchr(in, 0, n) == NULL) {
            assert_int_equal(strlen(got), n);
            assert_memory_equal(got, in, n);
        }
        free(got);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(split_two_byte_char_is_held_back),
        cmocka_unit_test(four_byte_char_split_in_single_bytes),
        cmocka_unit_test(impossible_bytes_become_replacement),
        cmocka_unit_test(random_bytes_always_give_valid_output),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
