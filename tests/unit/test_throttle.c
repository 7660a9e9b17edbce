/* test_throttle.c - the failed-AUTH throttle (delays, never refusals;
 * networks as keys; the global budget; a bounded table that keeps the worst
 * offenders) and the client address behind trusted proxies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "err.h"
#include "throttle.h"

#include <stdio.h>
#include <string.h>

static ic_throttle *make(int max_failures, int global_max)
{
    ic_throttle_opts o = ic_throttle_opts_default();
    o.max_failures = max_failures;
    o.window_s = 60;
    o.global_max_failures = global_max;
    o.base_delay_s = 0.25;
    o.max_delay_s = 5;
    ic_throttle *t = NULL;
    assert_int_equal(ic_throttle_create(&o, &t), 0);
    return t;
}

/* ---- the throttle ----------------------------------------------------- */

static void failures_delay_with_doubling_up_to_the_cap_then_the_window_ends(void **state)
{
    (void)state;
    ic_throttle *t = make(3, 1000);
    const char *ip = "192.0.2.1";
    for (int i = 0; i < 3; i++) {
        assert_true(ic_throttle_delay_s(t, ip, 1000.0 + i) == 0);
        ic_throttle_fail(t, ip, 1000.0 + i);
    }
    const double want[] = {0.25, 0.5, 1, 2, 4, 5, 5, 5};
    for (int i = 0; i < 8; i++) {
        assert_true(ic_throttle_delay_s(t, ip, 1003.0 + i) == want[i]);
        ic_throttle_fail(t, ip, 1003.0 + i);
    }
    /* Other networks are not affected. */
    assert_true(ic_throttle_delay_s(t, "192.0.3.1", 1010.0) == 0);
    assert_true(ic_throttle_delay_s(t, "2001:db8::1", 1010.0) == 0);
    /* The window ends 60 s after its first failure. */
    assert_true(ic_throttle_delay_s(t, ip, 1059.9) == 5);
    assert_true(ic_throttle_delay_s(t, ip, 1060.0) == 0);
    ic_throttle_fail(t, ip, 1060.0);
    assert_true(ic_throttle_delay_s(t, ip, 1061.0) == 0);
    ic_throttle_destroy(t);
}

/* One address at 192.0.2.7 fails; a valid client at 192.0.2.1 succeeds: a
 * success neither clears the network's count nor is refused (the throttle
 * has no refusal), and its delay stays within max_delay. */
static void a_network_is_one_key_and_success_does_not_reset_it(void **state)
{
    (void)state;
    ic_throttle *t = make(5, 1000);
    for (int i = 0; i < 130; i++) {
        ic_throttle_fail(t, "192.0.2.7", 100.0);
        double d = ic_throttle_delay_s(t, "192.0.2.1", 100.0);
        assert_true(d >= 0 && d <= 5);
        ic_throttle_success(t, "192.0.2.1", 100.0);
    }
    assert_true(ic_throttle_delay_s(t, "192.0.2.200", 100.0) == 5);
    assert_true(ic_throttle_delay_s(t, "::ffff:192.0.2.9", 100.0) == 5); /* mapped = IPv4 */
    assert_true(ic_throttle_delay_s(t, "192.0.3.7", 100.0) == 0);
    /* IPv6: the /64. */
    for (int i = 0; i < 6; i++)
        ic_throttle_fail(t, "2001:db8:1:2::1", 100.0);
    assert_true(ic_throttle_delay_s(t, "2001:db8:1:2:ffff:ffff:ffff:ffff", 100.0) > 0);
    assert_true(ic_throttle_delay_s(t, "2001:db8:1:3::1", 100.0) == 0);
    ic_throttle_destroy(t);
}

/* The probe that bypassed the old table: 1,100 addresses x 7 tries. */
static void rotating_over_1100_addresses_is_throttled(void **state)
{
    (void)state;
    char addr[64];
    /* (a) within a few /24s: each network's own count throttles. */
    ic_throttle *t = make(5, 1000000);
    int delayed = 0;
    for (int i = 0; i < 1100; i++) {
        snprintf(addr, sizeof addr, "10.0.%d.%d", i / 250, i % 250 + 1);
        for (int k = 0; k < 7; k++) {
            delayed += ic_throttle_delay_s(t, addr, 10.0) > 0;
            ic_throttle_fail(t, addr, 10.0);
        }
    }
    assert_int_equal(delayed, 1100 * 7 - 5 * 5);
    ic_throttle_destroy(t);
    /* (b) every address in its own /24 (and so its own key): the global
     * budget throttles once 100 failures are spent. Undelayed: the first 5
     * tries of addresses 0-13 (98 attempts) and 2 of address 14. */
    t = make(5, 100);
    delayed = 0;
    for (int i = 0; i < 1100; i++) {
        snprintf(addr, sizeof addr, "10.%d.%d.1", i / 256, i % 256);
        for (int k = 0; k < 7; k++) {
            delayed += ic_throttle_delay_s(t, addr, 10.0) > 0;
            ic_throttle_fail(t, addr, 10.0);
        }
    }
    assert_int_equal(delayed, 1100 * 7 - 72);
    /* ... and IPv6 /64s the same. */
    ic_throttle_destroy(t);
    t = make(5, 100);
    delayed = 0;
    for (int i = 0; i < 1100; i++) {
        snprintf(addr, sizeof addr, "2001:db8:%x::1", i);
        for (int k = 0; k < 7; k++) {
            delayed += ic_throttle_delay_s(t, addr, 10.0) > 0;
            ic_throttle_fail(t, addr, 10.0);
        }
    }
    assert_int_equal(delayed, 1100 * 7 - 72);
    ic_throttle_destroy(t);
}

static void global_budget_spares_networks_that_authenticated(void **state)
{
    (void)state;
    ic_throttle *t = make(5, 10);
    ic_throttle_success(t, "198.51.100.4", 0.0);
    for (int i = 0; i < 10; i++) {
        char addr[32];
        snprintf(addr, sizeof addr, "203.0.%d.1", i);
        ic_throttle_fail(t, addr, 1.0);
    }
    assert_true(ic_throttle_delay_s(t, "192.0.2.1", 2.0) == 5);     /* unknown: waits */
    assert_true(ic_throttle_delay_s(t, "198.51.100.9", 2.0) == 0);  /* known network */
    /* The global window ends too. */
    assert_true(ic_throttle_delay_s(t, "192.0.2.1", 61.0) == 0);
    ic_throttle_destroy(t);
}

/* A flood of new networks (more than the table holds) must not evict the
 * network with the most failures. */
static void full_table_evicts_the_harmless_and_keeps_the_worst(void **state)
{
    (void)state;
    ic_throttle *t = make(5, 1000000);
    for (int i = 0; i < 40; i++)
        ic_throttle_fail(t, "192.0.2.1", 0.0);
    char addr[64];
    for (int i = 0; i < 3 * IC_THROTTLE_SLOTS; i++) {
        snprintf(addr, sizeof addr, "2001:db8:%x:%x::1", i / 65536, i % 65536);
        ic_throttle_fail(t, addr, 1.0 + i * 1e-3); /* each newer than the attacker */
    }
    assert_true(ic_throttle_delay_s(t, "192.0.2.1", 20.0) == 5);
    /* Networks with 5 failures outrank those with 1. */
    ic_throttle_destroy(t);
    t = make(5, 1000000);
    for (int n = 0; n < 100; n++) {
        snprintf(addr, sizeof addr, "10.1.%d.1", n);
        for (int k = 0; k < 6; k++)
            ic_throttle_fail(t, addr, 0.0);
    }
    for (int i = 0; i < 2 * IC_THROTTLE_SLOTS; i++) {
        snprintf(addr, sizeof addr, "2001:db8:%x::1", i);
        ic_throttle_fail(t, addr, 1.0);
    }
    for (int n = 0; n < 100; n++) {
        snprintf(addr, sizeof addr, "10.1.%d.9", n);
        assert_true(ic_throttle_delay_s(t, addr, 2.0) > 0);
    }
    /* Once their windows are over, they are forgotten. */
    assert_true(ic_throttle_delay_s(t, "10.1.0.9", 61.0) == 0);
    ic_throttle_destroy(t);
}

/* Heavy churn through the index (insertions and evictions at 3x the table
 * size): the networks seen last are all still found. */
static void index_survives_churn(void **state)
{
    (void)state;
    ic_throttle *t = make(1, 1000000);
    char addr[64];
    const int n = 3 * IC_THROTTLE_SLOTS;
    for (int i = 0; i < n; i++) {
        snprintf(addr, sizeof addr, "10.%d.%d.1", i / 256, i % 256);
        ic_throttle_fail(t, addr, 1.0 + i * 1e-4);
    }
    int found = 0;
    for (int i = n - 200; i < n; i++) {
        snprintf(addr, sizeof addr, "10.%d.%d.200", i / 256, i % 256);
        found += ic_throttle_delay_s(t, addr, 2.0) > 0;
    }
    assert_int_equal(found, 200);
    /* The table is bounded: of all n networks at most IC_THROTTLE_SLOTS
     * are remembered. */
    found = 0;
    for (int i = 0; i < n; i++) {
        snprintf(addr, sizeof addr, "10.%d.%d.1", i / 256, i % 256);
        found += ic_throttle_delay_s(t, addr, 2.0) > 0;
    }
    assert_true(found <= IC_THROTTLE_SLOTS && found > IC_THROTTLE_SLOTS / 2);
    ic_throttle_destroy(t);
}

static void edge_cases(void **state)
{
    (void)state;
    ic_throttle *t = (ic_throttle *)1;
    ic_throttle_opts o = ic_throttle_opts_default();
    o.max_failures = 0;
    assert_int_equal(ic_throttle_create(&o, &t), IC_ERR_INVAL);
    assert_null(t);
    o = ic_throttle_opts_default();
    o.window_s = 0;
    assert_int_equal(ic_throttle_create(&o, &t), IC_ERR_INVAL);
    o = ic_throttle_opts_default();
    o.max_delay_s = 0.1; /* below base */
    assert_int_equal(ic_throttle_create(&o, &t), IC_ERR_INVAL);
    ic_throttle_destroy(NULL);
    assert_true(ic_throttle_delay_s(NULL, "a", 0.0) == 0);
    ic_throttle_fail(NULL, "a", 0.0);
    ic_throttle_success(NULL, "a", 0.0);
    /* Whatever is not an address shares one key, NULL and "" included. */
    t = make(1, 1000);
    char longaddr[200];
    memset(longaddr, 'a', sizeof longaddr - 1);
    longaddr[sizeof longaddr - 1] = '\0';
    ic_throttle_fail(t, longaddr, 0.0);
    assert_true(ic_throttle_delay_s(t, NULL, 1.0) > 0);
    assert_true(ic_throttle_delay_s(t, "", 1.0) > 0);
    assert_true(ic_throttle_delay_s(t, "unix:/x", 1.0) > 0);
    assert_true(ic_throttle_delay_s(t, "127.0.0.1", 1.0) == 0);
    ic_throttle_destroy(t);
}

/* ---- client addresses ------------------------------------------------- */

static ic_addr_list *list(const char *const *specs, int n)
{
    ic_addr_list *l = NULL;
    char err[128];
    assert_int_equal(ic_addr_list_create(specs, n, &l, err, sizeof err), 0);
    return l;
}

static void expect_client(const char *peer, const char *xff, const ic_addr_list *l,
                          const char *want)
{
    char out[IC_CLIENT_ADDR_MAX];
    memset(out, 'x', sizeof out);
    ic_client_addr(peer, xff, l, out, sizeof out);
    if (strcmp(out, want) != 0)
        fail_msg("peer %s xff '%s': got '%s', want '%s'", peer, xff ? xff : "(null)", out,
                 want);
}

static void xff_is_believed_only_from_trusted_proxies(void **state)
{
    (void)state;
    const char *specs[] = {"127.0.0.1", "10.0.0.0/8", "fd00::/8"};
    ic_addr_list *l = list(specs, 3);
    /* Not from a proxy: the header is the client's own claim. */
    expect_client("192.0.2.5", "203.0.113.9", l, "192.0.2.5");
    expect_client("192.0.2.5", NULL, l, "192.0.2.5");
    /* From a proxy: the right-most untrusted entry. */
    expect_client("127.0.0.1", "203.0.113.9", l, "203.0.113.9");
    expect_client("127.0.0.1", "6.6.6.6, 203.0.113.9", l, "203.0.113.9");
    expect_client("127.0.0.1", "6.6.6.6, 203.0.113.9, 10.1.2.3", l, "203.0.113.9");
    expect_client("127.0.0.1", "6.6.6.6,203.0.113.9,10.1.2.3,  10.9.9.9 ", l, "203.0.113.9");
    /* Spoofed left part is ignored: what the client sent comes first. */
    expect_client("127.0.0.1", "10.0.0.5, 1.1.1.1", l, "1.1.1.1");
    /* Ports and brackets; IPv6 and mapped forms come out canonical. */
    expect_client("127.0.0.1", "203.0.113.9:4711", l, "203.0.113.9");
    expect_client("127.0.0.1", "[2001:DB8::0:1]:443", l, "2001:db8::1");
    expect_client("127.0.0.1", "[2001:db8::1]", l, "2001:db8::1");
    expect_client("127.0.0.1", "2001:db8::1", l, "2001:db8::1");
    expect_client("::ffff:127.0.0.1", "::ffff:198.51.100.1", l, "198.51.100.1");
    expect_client("fd00::5", "198.51.100.1", l, "198.51.100.1");
    expect_client("fe80::1%eth0", "198.51.100.1", l, "fe80::1"); /* zone dropped */
    /* Every hop trusted: the left-most. */
    expect_client("127.0.0.1", "10.0.0.7, 10.0.0.8", l, "10.0.0.7");
    /* No header or an empty one: the proxy itself. */
    expect_client("127.0.0.1", NULL, l, "127.0.0.1");
    expect_client("127.0.0.1", "", l, "127.0.0.1");
    expect_client("127.0.0.1", " , ,", l, "127.0.0.1");
    /* Garbage stops the walk at the last hop we believe. */
    expect_client("127.0.0.1", "1.1.1.1, unknown", l, "127.0.0.1");
    expect_client("127.0.0.1", "1.1.1.1, garbage, 10.0.0.3", l, "10.0.0.3");
    expect_client("127.0.0.1", "1.2.3.4.5", l, "127.0.0.1");
    expect_client("127.0.0.1", "[::1", l, "127.0.0.1");
    expect_client("127.0.0.1", "[::1]x", l, "127.0.0.1");
    char huge[300];
    memset(huge, '1', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    expect_client("127.0.0.1", huge, l, "127.0.0.1");
    /* No list: never believed; an unparsable peer comes back as it is. */
    expect_client("127.0.0.1", "1.1.1.1", NULL, "127.0.0.1");
    expect_client("weird", "1.1.1.1", l, "weird");
    ic_addr_list_destroy(l);
}

static void addr_list_parses_addresses_and_networks(void **state)
{
    (void)state;
    const char *ok[] = {"192.0.2.1", "198.51.100.0/24", "::1", "2001:db8::/32"};
    ic_addr_list *l = list(ok, 4);
    assert_true(ic_addr_list_contains(l, "192.0.2.1"));
    assert_false(ic_addr_list_contains(l, "192.0.2.2"));
    assert_true(ic_addr_list_contains(l, "198.51.100.255"));
    assert_true(ic_addr_list_contains(l, "::ffff:198.51.100.3"));
    assert_true(ic_addr_list_contains(l, "2001:db8:ffff::9"));
    assert_false(ic_addr_list_contains(l, "2001:db9::1"));
    assert_false(ic_addr_list_contains(l, "::2"));
    assert_false(ic_addr_list_contains(l, "nonsense"));
    assert_false(ic_addr_list_contains(NULL, "::1"));
    ic_addr_list_destroy(l);
    const char *all[] = {"0.0.0.0/0"};
    l = list(all, 1);
    assert_true(ic_addr_list_contains(l, "8.8.8.8"));
    assert_false(ic_addr_list_contains(l, "2001:db8::1")); /* IPv4 networks hold only IPv4 */
    ic_addr_list_destroy(l);

    const char *bad[] = {"", "1.2.3.4/33", "::/129", "1.2.3.4/", "1.2.3.4/-1", "1.2.3.4/8x",
                         "example.com", "10.0.0.0/0008", "::ffff:10.0.0.0/104"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        l = (ic_addr_list *)1;
        char err[128] = "";
        assert_int_equal(ic_addr_list_create(&bad[i], 1, &l, err, sizeof err), IC_ERR_INVAL);
        assert_null(l);
        assert_non_null(strstr(err, "trusted proxy"));
    }
    l = list(NULL, 0);
    assert_false(ic_addr_list_contains(l, "127.0.0.1"));
    ic_addr_list_destroy(l);
    ic_addr_list_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(failures_delay_with_doubling_up_to_the_cap_then_the_window_ends),
        cmocka_unit_test(a_network_is_one_key_and_success_does_not_reset_it),
        cmocka_unit_test(rotating_over_1100_addresses_is_throttled),
        cmocka_unit_test(global_budget_spares_networks_that_authenticated),
        cmocka_unit_test(full_table_evicts_the_harmless_and_keeps_the_worst),
        cmocka_unit_test(index_survives_churn),
        cmocka_unit_test(edge_cases),
        cmocka_unit_test(xff_is_believed_only_from_trusted_proxies),
        cmocka_unit_test(addr_list_parses_addresses_and_networks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
