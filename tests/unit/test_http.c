/* test_http.c - the server's pure HTTP parsing: request lines, header
 * blocks (smuggling shapes refused), chunked bodies, Host and Origin. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "http.h"

#include <stdlib.h>
#include <string.h>

static int line(const char *l)
{
    const char *why = "";
    return ic_http_check_request_line(l, strlen(l), 4096, &why);
}

static void request_lines(void **state)
{
    (void)state;
    assert_int_equal(line("GET /health HTTP/1.1"), 0);
    assert_int_equal(line("GET /a?b=%41 HTTP/1.0"), 0);
    assert_int_equal(line("GET /health"), 400);           /* HTTP/0.9 */
    assert_int_equal(line("CONNECT a:443 HTTP/1.1"), 405);
    assert_int_equal(line("PRI * HTTP/2.0"), 505);
    assert_int_equal(line("GET /a%00 HTTP/1.1"), 400);
    assert_int_equal(line("GET /a%4 HTTP/1.1"), 400);
    assert_int_equal(line("GET http://x/ HTTP/1.1"), 400);
    assert_int_equal(line("G(T / HTTP/1.1"), 400);
    assert_int_equal(line("GET / HTTP/1.1x"), 400);
    assert_int_equal(line("GET /\x7f HTTP/1.1"), 400);
    char big[5000];
    memset(big, 'a', sizeof big);
    memcpy(big, "GET /", 5);
    memcpy(big + sizeof big - 10, " HTTP/1.1", 10);
    assert_int_equal(line(big), 414);
}

static int head(const char *text, ic_http_head *h)
{
    static char buf[8192];
    size_t n = strlen(text);
    memcpy(buf, text, n + 1);
    const char *why;
    return ic_http_parse_head(buf, n, 4096, h, &why);
}

static void header_blocks(void **state)
{
    (void)state;
    ic_http_head h;
    assert_int_equal(head("POST /v1/x%2Fy?q=1 HTTP/1.1\r\nHost: localhost:1\r\n"
                          "Content-Length: 12\r\nX-Forwarded-For: 1.2.3.4\r\n"
                          "x-forwarded-for: 5.6.7.8\r\nAuthorization: Bearer t\r\n"
                          "X-Api-Key:   k  \r\nOrigin: http://a\r\n"
                          "Content-Type: application/json\r\n\r\n", &h), 0);
    assert_string_equal(h.method, "POST");
    assert_string_equal(h.path, "/v1/x/y");
    assert_string_equal(h.query, "q=1");
    assert_string_equal(h.host, "localhost:1");
    assert_int_equal(h.content_length, 12);
    assert_string_equal(h.forwarded_for, "1.2.3.4, 5.6.7.8");
    assert_string_equal(h.authorization, "Bearer t");
    assert_string_equal(h.api_key, "k");
    assert_string_equal(h.content_type, "application/json");
    assert_true(h.keep_alive);
    assert_false(h.upgrade_ws);

    assert_int_equal(head("GET / HTTP/1.0\r\n\r\n", &h), 0);
    assert_false(h.keep_alive);
    assert_string_equal(h.query, "");
    assert_int_equal(head("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", &h), 0);
    assert_false(h.keep_alive);
    assert_int_equal(head("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\n"
                          "Connection: keep-alive, Upgrade\r\n\r\n", &h), 0);
    assert_true(h.upgrade_ws);
    assert_int_equal(head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                          "Expect: 100-continue\r\n\r\n", &h), 0);
    assert_true(h.chunked && h.expect_continue);

    /* refused */
    assert_int_equal(head("GET / HTTP/1.1\r\n\r\n", &h), 400);            /* no Host */
    assert_int_equal(head("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", &h), 400);
    assert_int_equal(head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                          "Content-Length: 1\r\n\r\n", &h), 400);
    assert_int_equal(head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n", &h), 400);
    assert_int_equal(head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", &h), 400);
    assert_int_equal(head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
                          &h), 501);
    assert_int_equal(head("GET / HTTP/1.1\r\nHost : a\r\n\r\n", &h), 400);
    assert_int_equal(head("GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", &h), 400);
    assert_int_equal(head("GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", &h), 400);
    assert_int_equal(head("GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", &h), 417);
}

static int feed_all(const char *in, size_t max, ic_buf *out)
{
    ic_http_chunked c = {0};
    size_t n = strlen(in), used = 0;
    /* one byte at a time: the decoder must not care how input is split */
    for (size_t i = 0; i < n; i++) {
        int r = ic_http_chunked_feed(&c, in + i, 1, out, max, &used);
        if (r)
            return r;
    }
    return 0;
}

static void chunked_bodies(void **state)
{
    (void)state;
    ic_buf out = {0};
    assert_int_equal(feed_all("3\r\nabc\r\nA;x=y\r\n0123456789\r\n0\r\nT: 1\r\n\r\n", 100, &out),
                     1);
    assert_int_equal(out.len, 13);
    assert_memory_equal(out.data, "abc0123456789", 13);
    ic_buf_clear(&out);
    assert_int_equal(feed_all("0\r\n\r\n", 100, &out), 1);
    assert_int_equal(out.len, 0);
    assert_int_equal(feed_all("zz\r\n", 100, &out), 400);
    ic_buf_clear(&out);
    assert_int_equal(feed_all("\r\n", 100, &out), 400);
    ic_buf_clear(&out);
    assert_int_equal(feed_all("65\r\n", 100, &out), 413);            /* 101 > 100 */
    ic_buf_clear(&out);
    assert_int_equal(feed_all("40\r\n" "0123456789012345678901234567890123456789"
                              "012345678901234567890123\r\n40\r\n", 100, &out), 413);
    ic_buf_clear(&out);
    assert_int_equal(feed_all("fffffffffffffffff\r\n", 100, &out), 413);
    ic_buf_clear(&out);
    assert_int_equal(feed_all("3\r\nabcX", 100, &out), 400);         /* no CRLF after data */
    /* what follows the body is left unconsumed */
    ic_http_chunked c = {0};
    size_t used;
    ic_buf_clear(&out);
    const char *two = "1\r\na\r\n0\r\n\r\nGET /";
    assert_int_equal(ic_http_chunked_feed(&c, two, strlen(two), &out, 100, &used), 1);
    assert_int_equal(used, strlen(two) - 5);
    ic_buf_free(&out);
}

static void hosts(void **state)
{
    (void)state;
    assert_true(ic_http_host_ok("127.0.0.1:8765", "127.0.0.1", NULL));
    assert_true(ic_http_host_ok("localhost", "127.0.0.1", NULL));
    assert_true(ic_http_host_ok("LocalHost.:80", "127.0.0.1", NULL));
    assert_true(ic_http_host_ok("[::1]:8765", "127.0.0.1", NULL));
    assert_true(ic_http_host_ok("10.1.2.3", "0.0.0.0", NULL));
    assert_true(ic_http_host_ok("gpu-box:8765", "gpu-box", NULL));
    assert_true(ic_http_host_ok("api.example:8765", "0.0.0.0", "other, API.example"));
    assert_false(ic_http_host_ok("evil.example", "127.0.0.1", NULL));
    assert_false(ic_http_host_ok("localhost.evil.example", "127.0.0.1", NULL));
    assert_false(ic_http_host_ok("127.0.0.1.nip.io", "127.0.0.1", NULL));
    assert_false(ic_http_host_ok("a:b:c", "127.0.0.1", NULL));
    assert_false(ic_http_host_ok("[::1", "127.0.0.1", NULL));
    assert_false(ic_http_host_ok("", "127.0.0.1", NULL));
    assert_false(ic_http_host_ok("localhost:99999x", "127.0.0.1", NULL));
}

static void origins(void **state)
{
    (void)state;
    assert_true(ic_http_origin_ok(NULL, "127.0.0.1:8765", NULL));
    assert_true(ic_http_origin_ok("http://127.0.0.1:8765", "127.0.0.1:8765", NULL));
    assert_true(ic_http_origin_ok("http://LOCALHOST:8765", "localhost:8765", NULL));
    assert_true(ic_http_origin_ok("http://localhost", "localhost", NULL));
    assert_true(ic_http_origin_ok("https://box:443", "box:443", NULL));
    assert_true(ic_http_origin_ok("http://app.example", "127.0.0.1:8765", "http://app.example"));
    assert_true(ic_http_origin_ok("http://anything", "127.0.0.1:8765", "*"));
    assert_false(ic_http_origin_ok("http://evil.example", "127.0.0.1:8765", NULL));
    assert_false(ic_http_origin_ok("http://127.0.0.1:8766", "127.0.0.1:8765", NULL));
    assert_false(ic_http_origin_ok("http://localhost:8765", "127.0.0.1:8765", NULL));
    assert_false(ic_http_origin_ok("null", "127.0.0.1:8765", NULL));
    assert_false(ic_http_origin_ok("file://", "127.0.0.1:8765", NULL));
    assert_false(ic_http_origin_ok("http://127.0.0.1:8765/x", "127.0.0.1:8765", NULL));
    assert_false(ic_http_origin_ok("http://127.0.0.1:8765", NULL, NULL));
    assert_false(ic_http_origin_ok("http://app.example.evil", "127.0.0.1:8765",
                                   "http://app.example"));
}

/* Random mutations of valid input never crash the parsers (run under ASan). */
static void mutations_do_not_crash(void **state)
{
    (void)state;
    const char *base = "POST /a%41?b=1 HTTP/1.1\r\nHost: [::1]:80\r\nOrigin: http://x\r\n"
                       "Transfer-Encoding: chunked\r\nX-Forwarded-For: 1\r\n\r\n";
    const char *body = "4;e\r\nabcd\r\n0\r\nT: x\r\n\r\n";
    srand(7);
    char buf[512];
    for (int i = 0; i < 20000; i++) {
        size_t n = strlen(base);
        memcpy(buf, base, n + 1);
        for (int k = rand() % 4; k >= 0; k--)
            buf[rand() % n] = (char)(rand() % 256);
        if (rand() % 3 == 0)
            n = (size_t)rand() % n;
        ic_http_head h;
        const char *why;
        ic_http_parse_head(buf, n, 64, &h, &why);
        ic_http_check_request_line(buf, n, 64, &why);
        memcpy(buf, body, strlen(body) + 1);
        n = strlen(body);
        buf[rand() % n] = (char)(rand() % 256);
        ic_http_chunked c = {0};
        ic_buf out = {0};
        size_t used;
        ic_http_chunked_feed(&c, buf, n, &out, 16, &used);
        assert_true(used <= n && out.len <= 16);
        ic_buf_free(&out);
        buf[rand() % 40] = '\0';
        ic_http_host_ok(buf, "127.0.0.1", "a,b");
        ic_http_origin_ok(buf, "127.0.0.1:1", "a,b");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(request_lines),
        cmocka_unit_test(header_blocks),
        cmocka_unit_test(chunked_bodies),
        cmocka_unit_test(hosts),
        cmocka_unit_test(origins),
        cmocka_unit_test(mutations_do_not_crash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
