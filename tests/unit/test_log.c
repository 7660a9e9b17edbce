/* test_log.c - log lines: text lines escape control characters, backslashes
 * and bytes that are not UTF-8, so one event is one line whatever a client
 * sent; valid UTF-8 passes; cut lines end on a whole escape; JSON lines stay
 * one line too. stderr is redirected to a temporary file per test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "log.h"
#include "utf8.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Everything written to stderr while fn runs (static buffer). */
static char captured[8192];

static const char *capture_begin(int *saved, FILE **f)
{
    fflush(stderr);
    *f = tmpfile();
    assert_non_null(*f);
    *saved = dup(STDERR_FILENO);
    assert_true(*saved >= 0);
    assert_true(dup2(fileno(*f), STDERR_FILENO) >= 0);
    return captured;
}

static const char *capture_end(int saved, FILE *f)
{
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    rewind(f);
    size_t n = fread(captured, 1, sizeof captured - 1, f);
    captured[n] = '\0';
    fclose(f);
    return captured;
}

/* The part of a text line after "TIME LEVEL ". */
static const char *after_level(const char *line)
{
    const char *p = strchr(line, ' ');
    assert_non_null(p);
    while (*p == ' ')
        p++;
    p = strchr(p, ' '); /* after the level, padded to 5 */
    assert_non_null(p);
    while (*p == ' ')
        p++;
    return p;
}

static int count_char(const char *s, char c)
{
    int n = 0;
    for (; *s; s++)
        n += *s == c;
    return n;
}

static void text_lines_escape_control_characters(void **state)
{
    (void)state;
    int saved;
    FILE *f;
    ic_log_set_format(IC_LOG_TEXT);
    capture_begin(&saved, &f);
    ic_log_warn("client said '%s'", "a\nFAKE 2026 error forged\r\tb\x1b[31mc\\d\x7f\x01");
    const char *out = capture_end(saved, f);
    assert_int_equal(count_char(out, '\n'), 1);
    assert_string_equal(after_level(out),
                        "client said 'a\\nFAKE 2026 error forged\\r\\tb\\x1b[31mc\\\\d\\x7f\\x01'\n");
}

static void text_lines_keep_utf8_and_escape_the_rest(void **state)
{
    (void)state;
    int saved;
    FILE *f;
    capture_begin(&saved, &f);
    /* é, ✓, an emoji; then a lone 0xff, a C1 CSI (U+009B), an overlong '/',
     * a surrogate, and a sequence cut short at the end. */
    ic_log_info("%s|%s", "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80",
                "\xff \xc2\x9b \xc0\xaf \xed\xa0\x80 \xe2\x9c");
    const char *out = capture_end(saved, f);
    assert_string_equal(after_level(out),
                        "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80|\\xff \\xc2\\x9b \\xc0\\xaf "
                        "\\xed\\xa0\\x80 \\xe2\\x9c\n");
}

static void context_fields_are_escaped_and_trailing_newlines_dropped(void **state)
{
    (void)state;
    int saved;
    FILE *f;
    capture_begin(&saved, &f);
    ic_log_ctx ctx = {.client = "eve\nx", .session = "s1", .request = "r\t2", .conn = 7};
    ic_log_for(IC_LOG_INFO, &ctx, "done\n\n");
    const char *out = capture_end(saved, f);
    assert_string_equal(after_level(out),
                        "done client=eve\\nx session=s1 request=r\\t2 conn=7\n");
}

static void long_lines_are_cut_on_a_whole_escape(void **state)
{
    (void)state;
    char msg[1500];
    memset(msg, '\n', sizeof msg - 1);
    msg[sizeof msg - 1] = '\0';
    msg[0] = 'x'; /* so the trailing newlines are not all dropped */
    msg[sizeof msg - 2] = 'y';
    for (int shift = 0; shift < 2; shift++) {
        int saved;
        FILE *f;
        capture_begin(&saved, &f);
        ic_log_info("%.*s%s", shift, "zz", msg);
        const char *out = capture_end(saved, f);
        size_t n = strlen(out);
        assert_true(n <= 2048);
        assert_int_equal(count_char(out, '\n'), 1);
        assert_int_equal(out[n - 1], '\n');
        /* The body is "x" then pairs "\n": an even number of characters after
         * the 'x' means no escape was cut in half. */
        const char *body = strchr(after_level(out), 'x');
        assert_non_null(body);
        size_t tail = strlen(body + 1) - 1; /* without the line's '\n' */
        assert_int_equal(tail % 2, 0);
        assert_true(tail > 1000);
    }
}

static void json_lines_stay_one_line(void **state)
{
    (void)state;
    int saved;
    FILE *f;
    ic_log_set_format(IC_LOG_JSON);
    capture_begin(&saved, &f);
    ic_log_ctx ctx = {.client = "a\nb"};
    ic_log_for(IC_LOG_WARN, &ctx, "x\ny\x1b");
    const char *out = capture_end(saved, f);
    ic_log_set_format(IC_LOG_TEXT);
    assert_int_equal(count_char(out, '\n'), 1);
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "x\ny\x1b");
    assert_string_equal(json_string_value(json_object_get(j, "client")), "a\nb");
    json_decref(j);
}

/* Random bytes: always one line of valid UTF-8 without control bytes. */
static void random_bytes_make_one_clean_line(void **state)
{
    (void)state;
    unsigned x = 12345;
    for (int iter = 0; iter < 2000; iter++) {
        char msg[200];
        size_t n = (size_t)(iter % 199);
        for (size_t i = 0; i < n; i++) {
            x = x * 1103515245u + 12345u;
            unsigned char b = (unsigned char)(x >> 16);
            msg[i] = (char)(b == 0 ? 1 : b);
        }
        msg[n] = '\0';
        int saved;
        FILE *f;
        capture_begin(&saved, &f);
        ic_log_info("%s", msg);
        const char *out = capture_end(saved, f);
        size_t len = strlen(out);
        assert_true(len > 0 && out[len - 1] == '\n');
        assert_true(ic_utf8_valid(out, len));
        for (size_t i = 0; i + 1 < len; i++) {
            unsigned char c = (unsigned char)out[i];
            assert_true(c >= 0x20 && c != 0x7F);
            assert_false(c == 0xC2 && (unsigned char)out[i + 1] < 0xA0 &&
                         (unsigned char)out[i + 1] >= 0x80);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(text_lines_escape_control_characters),
        cmocka_unit_test(text_lines_keep_utf8_and_escape_the_rest),
        cmocka_unit_test(context_fields_are_escaped_and_trailing_newlines_dropped),
        cmocka_unit_test(long_lines_are_cut_on_a_whole_escape),
        cmocka_unit_test(json_lines_stay_one_line),
        cmocka_unit_test(random_bytes_make_one_clean_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
