/* test_options.c - the option table: defaults from the rows, the command
 * line, config keys, bounds, repeatable options, help and Markdown. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "err.h"
#include "options.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct vals {
    const char *name;
    int count;
    float ratio;
    bool verbose;
    bool mode;
    int color;
    ic_opt_list origins;
    int custom;
    const char *secret;
} vals;

static const char *const colors[] = {"red", "green", "blue", NULL};

static int parse_twice(const char *arg, void *field)
{
    int v = atoi(arg);
    if (v <= 0)
        return IC_ERR_INVAL;
    *(int *)field = 2 * v;
    return 0;
}

#define F(x) offsetof(vals, x)
static const ic_option tab[] = {
    {.name = "name", .short_name = 'n', .type = IC_OPT_STRING, .offset = F(name),
     .metavar = "S", .def = "anon", .help = "A name."},
    {.name = "count", .type = IC_OPT_INT, .offset = F(count), .metavar = "N", .def = "3",
     .lo = 1, .hi = 10, .help = "How many."},
    {.name = "ratio", .type = IC_OPT_FLOAT, .offset = F(ratio), .metavar = "R", .def = "0.5",
     .lo = 0, .hi = 1, .help = "A share | with a pipe."},
    {.name = "verbose", .type = IC_OPT_FLAG, .offset = F(verbose), .help = "Talk."},
    {.name = "mode", .type = IC_OPT_ONOFF, .offset = F(mode), .metavar = "on|off",
     .def = "on", .help = "Mode."},
    {.name = "color", .type = IC_OPT_CHOICE, .offset = F(color), .metavar = "C",
     .def = "green", .choices = colors, .help = "Colour."},
    {.name = "allow", .type = IC_OPT_LIST, .offset = F(origins), .metavar = "ORIGIN",
     .help = "Repeatable."},
    {.name = "custom", .type = IC_OPT_CUSTOM, .offset = F(custom), .metavar = "N",
     .def = "1", .parse = parse_twice, .help = "Doubled."},
    {.name = "secret", .type = IC_OPT_STRING, .offset = F(secret), .metavar = "S",
     .flags = IC_OPT_NO_CONFIG, .help = "Command line only."},
};
#undef F
#define N ((int)(sizeof tab / sizeof *tab))

static int parse(vals *v, int argc, char **argv)
{
    memset(v, 0, sizeof *v);
    assert_int_equal(ic_options_defaults(tab, N, v), 0);
    FILE *saved = stderr;
    stderr = fopen("/dev/null", "w");
    int rc = ic_options_parse(tab, N, "test", "usage\n", argc, argv, v, NULL);
    fclose(stderr);
    stderr = saved;
    return rc;
}

static void defaults_come_from_the_rows(void **state)
{
    (void)state;
    vals v;
    char *argv[] = {"test", NULL};
    assert_int_equal(parse(&v, 1, argv), 0);
    assert_string_equal(v.name, "anon");
    assert_int_equal(v.count, 3);
    assert_true(v.ratio == 0.5f);
    assert_false(v.verbose);
    assert_true(v.mode);
    assert_int_equal(v.color, 1);
    assert_int_equal(v.origins.n, 0);
    assert_int_equal(v.custom, 2);
}

static void every_type_parses(void **state)
{
    (void)state;
    vals v;
    char *argv[] = {"test", "-n", "bob", "--count", "10", "--ratio=1", "--verbose", "--mode",
                    "off", "--color", "blue", "--allow", "a", "--allow", "b", "--custom", "4",
                    NULL};
    assert_int_equal(parse(&v, 17, argv), 0);
    assert_string_equal(v.name, "bob");
    assert_int_equal(v.count, 10);
    assert_true(v.ratio == 1.0f);
    assert_true(v.verbose);
    assert_false(v.mode);
    assert_int_equal(v.color, 2);
    assert_int_equal(v.origins.n, 2);
    assert_string_equal(v.origins.v[1], "b");
    assert_int_equal(v.custom, 8);
}

static void bad_values_are_refused(void **state)
{
    (void)state;
    vals v;
    char *cases[][3] = {
        {"test", "--count", "11"},    {"test", "--count", "0"},   {"test", "--count", "3x"},
        {"test", "--ratio", "1.5"},   {"test", "--ratio", "nan"}, {"test", "--mode", "yes"},
        {"test", "--color", "pink"},  {"test", "--custom", "-1"}, {"test", "--name", ""},
        {"test", "--nosuch", "1"},    {"test", "stray", "arg"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        assert_int_equal(parse(&v, 3, cases[i]), IC_ERR_INVAL);
    char *missing[] = {"test", "--count", NULL};
    assert_int_equal(parse(&v, 2, missing), IC_ERR_INVAL);
    char *too_many[2 + 2 * IC_OPT_LIST_MAX + 2];
    int n = 0;
    too_many[n++] = "test";
    for (int i = 0; i <= IC_OPT_LIST_MAX; i++) {
        too_many[n++] = "--allow";
        too_many[n++] = "x";
    }
    too_many[n] = NULL;
    assert_int_equal(parse(&v, n, too_many), IC_ERR_INVAL);
}

static void positional_arguments_when_asked_for(void **state)
{
    (void)state;
    vals v = {0};
    assert_int_equal(ic_options_defaults(tab, N, &v), 0);
    char *argv[] = {"test", "first", "--count", "4", "second", NULL};
    int first = 0;
    assert_int_equal(ic_options_parse(tab, N, "test", "u\n", 5, argv, &v, &first), 0);
    assert_int_equal(v.count, 4);
    assert_int_equal(first, 3);
    assert_string_equal(argv[3], "first");
    assert_string_equal(argv[4], "second");
}

static void config_keys_use_the_same_rows(void **state)
{
    (void)state;
    vals v = {0};
    ic_opt_owned owned = {0};
    char why[128];
    assert_int_equal(ic_options_defaults(tab, N, &v), 0);
    assert_int_equal(ic_options_apply_key(tab, N, &owned, &v, "count", "7", why, sizeof why), 0);
    assert_int_equal(v.count, 7);
    assert_int_equal(ic_options_apply_key(tab, N, &owned, &v, "verbose", "true", why,
                                          sizeof why), 0);
    assert_true(v.verbose);
    assert_int_equal(ic_options_apply_key(tab, N, &owned, &v, "name", "carol", why, sizeof why),
                     0);
    assert_string_equal(v.name, "carol");
    assert_int_equal(ic_options_apply_key(tab, N, &owned, &v, "count", "70", why, sizeof why),
                     IC_ERR_PARSE);
    assert_string_equal(why, "invalid value '70' for 'count'");
    assert_int_equal(ic_options_apply_key(tab, N, &owned, &v, "verbose", "perhaps", why,
                                          sizeof why), IC_ERR_PARSE);
    assert_int_equal(ic_options_apply_key(tab, N, &owned, &v, "colour", "red", why, sizeof why),
                     IC_ERR_PARSE);
    assert_string_equal(why, "unknown key 'colour'");
    assert_int_equal(ic_options_apply_key(tab, N, &owned, &v, "secret", "x", why, sizeof why),
                     IC_ERR_PARSE);
    assert_non_null(strstr(why, "not allowed in a config file"));
    ic_opt_owned_free(&owned);
}

static char *capture(void (*fn)(FILE *))
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    fn(f);
    fclose(f);
    return buf;
}

static void usage_to(FILE *f) { ic_options_usage(tab, N, "usage: test\n", f); }
static void markdown_to(FILE *f) { ic_options_markdown(tab, N, "test", f); }

static void help_and_markdown_list_every_row(void **state)
{
    (void)state;
    char *help = capture(usage_to), *md = capture(markdown_to);
    assert_true(strncmp(help, "usage: test\n", 12) == 0);
    for (int i = 0; i < N; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", tab[i].name);
        assert_non_null(strstr(help, flag));
        assert_non_null(strstr(md, flag));
    }
    assert_non_null(strstr(help, "-n, --name S"));
    assert_non_null(strstr(help, "How many. Default: 3."));
    assert_null(strstr(help, "Talk. Default")); /* flags have no default to show */
    assert_non_null(strstr(md, "| `--secret S` | (flag only) |"));
    assert_non_null(strstr(md, "A share \\| with a pipe."));
    assert_non_null(strstr(md, "`--mode on\\|off`"));
    for (char *line = help; (line = strchr(line, '\n')); line++) {
        char *next = strchr(line + 1, '\n');
        if (next)
            assert_true(next - line - 1 <= 80);
    }
    free(help);
    free(md);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_come_from_the_rows),
        cmocka_unit_test(every_type_parses),
        cmocka_unit_test(bad_values_are_refused),
        cmocka_unit_test(positional_arguments_when_asked_for),
        cmocka_unit_test(config_keys_use_the_same_rows),
        cmocka_unit_test(help_and_markdown_list_every_row),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
