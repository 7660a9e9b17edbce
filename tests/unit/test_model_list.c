/* test_model_list.c - which models `serve` serves (app/model_list.c: the
 * --model files, --models-dir, models.ini) and how a session ID names its
 * model (api/models.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "err.h"
#include "model_list.h"
#include "models.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];

static void touch(const char *name, const char *text)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    strcpy(dir, "/tmp/ic_test_models_XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void names_and_duplicates(void **state)
{
    (void)state;
    char name[128];
    ic_model_list_name_of("/a/b/stories260K.gguf", name, sizeof name);
    assert_string_equal(name, "stories260K");
    ic_model_list_name_of("plain", name, sizeof name);
    assert_string_equal(name, "plain");
    ic_model_list l = {0};
    char err[512];
    assert_int_equal(ic_model_list_add(&l, "/x/m.gguf", err, sizeof err), 0);
    assert_int_equal(ic_model_list_add(&l, "/y/m.gguf", err, sizeof err), IC_ERR_INVAL);
    assert_non_null(strstr(err, "two models are named 'm'"));
    assert_int_equal(l.n, 1);
    assert_int_equal(l.m[0].gpu_layers, IC_MODEL_GPU_LAYERS_SERVER);
    assert_int_equal(l.m[0].ctx_size, 0);
}

static void scan_sorts_and_applies_models_ini(void **state)
{
    (void)state;
    touch("b.gguf", "");
    touch("a.gguf", "");
    touch("notes.txt", "");
    touch(".hidden.gguf", "");
    touch("models.ini", "; aliases\n[chat]\npath = b.gguf\nctx-size = 512\ngpu-layers = auto\n"
                        "[far]\npath = /elsewhere/c.gguf\ngpu-layers = 3\n");
    ic_model_list l = {0};
    char err[512] = "";
    assert_int_equal(ic_model_list_add(&l, "/first/d.gguf", err, sizeof err), 0);
    assert_int_equal(ic_model_list_scan(&l, dir, err, sizeof err), 0);
    assert_int_equal(l.n, 4);
    assert_string_equal(l.m[0].name, "d");
    assert_string_equal(l.m[1].name, "a");
    assert_string_equal(l.m[2].name, "chat"); /* b.gguf, under its alias only */
    assert_int_equal(l.m[2].ctx_size, 512);
    assert_int_equal(l.m[2].gpu_layers, IC_MODEL_GPU_LAYERS_AUTO);
    assert_string_equal(l.m[3].name, "far");
    assert_string_equal(l.m[3].path, "/elsewhere/c.gguf");
    assert_int_equal(l.m[3].gpu_layers, 3);
}

static void models_ini_errors_name_the_line(void **state)
{
    (void)state;
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"[x]\nctx-size = 512\n", "models.ini:2: [x]: path = FILE comes first"},
        {"[x]\npath = a.gguf\nctx-size = 9\n", "models.ini:3: [x]: invalid 'ctx-size = 9'"},
        {"[x]\npath = a.gguf\ncolour = red\n", "models.ini:3: [x]: invalid 'colour"},
        {"path = a.gguf\n", "models.ini:1: 'path' outside a [MODEL] section"},
        {"[x/y]\npath = a.gguf\n", "a model name is letters"},
        {"[a]\npath = /other/a.gguf\n", "a second model of that name"},
    };
    touch("a.gguf", "");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        touch("models.ini", cases[i].text);
        ic_model_list l = {0};
        char err[512] = "";
        assert_int_equal(ic_model_list_scan(&l, dir, err, sizeof err), IC_ERR_PARSE);
        if (!strstr(err, cases[i].want))
            fail_msg("case %zu: '%s', wanted '%s'", i, err, cases[i].want);
    }
}

static void empty_or_missing_dir(void **state)
{
    (void)state;
    ic_model_list l = {0};
    char err[512];
    assert_int_equal(ic_model_list_scan(&l, dir, err, sizeof err), IC_ERR_INVAL);
    assert_non_null(strstr(err, "holds no .gguf file"));
    assert_int_equal(ic_model_list_scan(&l, "/nonexistent/ic", err, sizeof err), IC_ERR_IO);
}

static void session_ids_name_their_model(void **state)
{
    (void)state;
    assert_int_equal(ic_models_session_base(0), 0);
    assert_int_equal(ic_models_index_of(1), 0);
    assert_int_equal(ic_models_index_of(ic_models_session_base(3) + 1), 3);
    assert_int_equal(ic_models_index_of(ic_models_session_base(4) - 1), 3);
    ic_models ms = {.n = 2};
    strcpy(ms.m[0].name, "first");
    strcpy(ms.m[1].name, "second");
    assert_int_equal(ic_models_find(&ms, NULL), 0);
    assert_int_equal(ic_models_find(&ms, ""), 0);
    assert_int_equal(ic_models_find(&ms, "second"), 1);
    assert_int_equal(ic_models_find(&ms, "third"), -1);
    assert_null(ic_models_sched_of(&ms, ic_models_session_base(5) + 1)); /* no such model */
}

#define MIB ((int64_t)1 << 20)

/* Residency by bytes: the least recently used idle models sleep until
 * the wanted one fits beside the rest, and no more than that. */
static void sleepers_by_bytes(void **state)
{
    (void)state;
    ic_models_room_item m[4] = {
        {.awake = true, .last_used_ms = 10, .ram_bytes = 300 * MIB},  /* big, oldest */
        {.awake = true, .last_used_ms = 20, .ram_bytes = 10 * MIB},   /* small */
        {.awake = false, .ram_bytes = 200 * MIB},                     /* wanted */
        {.awake = true, .last_used_ms = 30, .ram_bytes = 100 * MIB},
    };
    ic_models_budget b = {.ram_bytes = 400 * MIB};
    int out[4];
    bool fits = false;
    /* 300 + 10 + 100 + 200 = 610 > 400: the big oldest one goes; 310 fits */
    assert_int_equal(ic_models_choose_sleepers(m, 4, 2, &b, out, &fits), 1);
    assert_true(fits);
    assert_int_equal(out[0], 0);
    /* a count bound would have cost the small one too: 2 at most */
    b.max_loaded = 2;
    assert_int_equal(ic_models_choose_sleepers(m, 4, 2, &b, out, &fits), 2);
    assert_true(fits);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 1);
    /* everything fits: nobody sleeps */
    b = (ic_models_budget){.ram_bytes = 610 * MIB};
    assert_int_equal(ic_models_choose_sleepers(m, 4, 2, &b, out, &fits), 0);
    assert_true(fits);
    /* no bounds at all */
    b = (ic_models_budget){0};
    assert_int_equal(ic_models_choose_sleepers(m, 4, 2, &b, out, &fits), 0);
    assert_true(fits);
}

/* Busy models are never chosen; when the rest cannot make room the wanted
 * one loads over the budget (fits false), after the idle ones sleep. */
static void sleepers_skip_busy(void **state)
{
    (void)state;
    ic_models_room_item m[3] = {
        {.awake = true, .busy = true, .last_used_ms = 1, .vram_bytes = 6000 * MIB},
        {.awake = true, .last_used_ms = 5, .vram_bytes = 1000 * MIB},
        {.awake = false, .vram_bytes = 4000 * MIB},
    };
    ic_models_budget b = {.vram_bytes = 8000 * MIB};
    int out[3];
    bool fits = true;
    assert_int_equal(ic_models_choose_sleepers(m, 3, 2, &b, out, &fits), 1);
    assert_false(fits);
    assert_int_equal(out[0], 1);
    /* once the busy one is idle it goes instead (it is the older) */
    m[0].busy = false;
    assert_int_equal(ic_models_choose_sleepers(m, 3, 2, &b, out, &fits), 1);
    assert_true(fits);
    assert_int_equal(out[0], 0);
    /* a model alone over the budget: everyone idle sleeps, still no fit */
    m[2].vram_bytes = 9000 * MIB;
    assert_int_equal(ic_models_choose_sleepers(m, 3, 2, &b, out, &fits), 2);
    assert_false(fits);
    /* the wanted one awake already counts once, not twice */
    ic_models_room_item one[2] = {{.awake = true, .ram_bytes = 50 * MIB},
                                  {.awake = true, .ram_bytes = 50 * MIB}};
    b = (ic_models_budget){.ram_bytes = 100 * MIB, .max_loaded = 2};
    assert_int_equal(ic_models_choose_sleepers(one, 2, 1, &b, out, &fits), 0);
    assert_true(fits);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(names_and_duplicates),
        cmocka_unit_test_setup_teardown(scan_sorts_and_applies_models_ini, setup, teardown),
        cmocka_unit_test_setup_teardown(models_ini_errors_name_the_line, setup, teardown),
        cmocka_unit_test_setup_teardown(empty_or_missing_dir, setup, teardown),
        cmocka_unit_test(session_ids_name_their_model),
        cmocka_unit_test(sleepers_by_bytes),
        cmocka_unit_test(sleepers_skip_busy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
