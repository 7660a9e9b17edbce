/* test_idmap.c - the id map: put/get/del across growth and tombstones,
 * and walks with ic_idmap_next (every entry once, deletes during a walk). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "idmap.h"

#include <stdbool.h>
#include <string.h>

enum { N = 1000 };

static int vals[N + 1];

static void put_get_del_across_growth(void **state)
{
    (void)state;
    ic_idmap m = {0};
    assert_null(ic_idmap_get(&m, 5));
    assert_true(ic_idmap_put(&m, 0, vals) < 0);
    assert_true(ic_idmap_put(&m, UINT64_MAX, vals) < 0);
    for (uint64_t i = 1; i <= N; i++)
        assert_int_equal(ic_idmap_put(&m, i * 7919, &vals[i]), 0);
    assert_int_equal(ic_idmap_len(&m), N);
    for (uint64_t i = 1; i <= N; i += 2)
        assert_ptr_equal(ic_idmap_del(&m, i * 7919), &vals[i]);
    assert_null(ic_idmap_del(&m, 7919));
    for (uint64_t i = 1; i <= N; i++)
        assert_ptr_equal(ic_idmap_get(&m, i * 7919), i % 2 ? NULL : &vals[i]);
    assert_int_equal(ic_idmap_len(&m), N / 2);
    ic_idmap_free(&m);
}

static void walk_sees_each_entry_once_and_allows_deletes(void **state)
{
    (void)state;
    ic_idmap m = {0};
    ic_idmap_iter it = IC_IDMAP_ITER_INIT;
    assert_false(ic_idmap_next(&m, &it, NULL, NULL)); /* empty, never allocated */
    for (uint64_t i = 1; i <= N; i++)
        assert_int_equal(ic_idmap_put(&m, i, &vals[i]), 0);
    static bool seen[N + 1];
    memset(seen, 0, sizeof seen);
    int n = 0;
    uint64_t id;
    void *v;
    it = IC_IDMAP_ITER_INIT;
    while (ic_idmap_next(&m, &it, &id, &v)) {
        assert_true(id >= 1 && id <= N);
        assert_false(seen[id]);
        assert_ptr_equal(v, &vals[id]);
        seen[id] = true;
        n++;
        if (id % 3 == 0)
            assert_ptr_equal(ic_idmap_del(&m, id), v); /* the entry just returned */
    }
    assert_int_equal(n, N);
    assert_int_equal(ic_idmap_len(&m), N - N / 3);
    /* A walk after the deletes sees exactly the rest. */
    n = 0;
    it = IC_IDMAP_ITER_INIT;
    while (ic_idmap_next(&m, &it, &id, NULL)) {
        assert_true(id % 3 != 0);
        n++;
    }
    assert_int_equal(n, N - N / 3);
    ic_idmap_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(put_get_del_across_growth),
        cmocka_unit_test(walk_sees_each_entry_once_and_allows_deletes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
