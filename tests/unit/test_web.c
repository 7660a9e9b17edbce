/* test_web.c - the built-in web console's HTTP answers: the embedded bytes
 * are the source files, the security headers, ETag revalidation (304) and
 * the choice of gzip from Accept-Encoding. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "web.h"
#include "web_asset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *read_file(const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", IC_WEB_SRC_DIR, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static const char *header(const ic_http_response *r, const char *name)
{
    for (int i = 0; i < r->n_headers; i++)
        if (strcmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

static ic_http_response serve(const char *path, const char *inm, const char *enc)
{
    ic_http_request req = {.path = path, .if_none_match = inm, .accept_encoding = enc};
    ic_http_response resp = {.status = 500, .content_type = "application/json"};
    assert_true(ic_web_serve(&req, &resp));
    assert_non_null(resp.body);
    return resp;
}

static void embedded_files_are_the_sources(void **state)
{
    (void)state;
    const char *paths[] = {"/", "/console.js", "/console.css"};
    const char *files[] = {"console.html", "console.js", "console.css"};
    const char *types[] = {"text/html; charset=utf-8", "text/javascript; charset=utf-8",
                           "text/css; charset=utf-8"};
    for (int i = 0; i < 3; i++) {
        size_t len;
        char *want = read_file(files[i], &len);
        ic_http_response r = serve(paths[i], NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.content_type, types[i]);
        assert_int_equal(r.len, len);
        assert_memory_equal(r.body, want, len);
        assert_null(header(&r, "content-encoding"));
        free(r.body);
        free(want);
    }
}

static void security_and_cache_headers(void **state)
{
    (void)state;
    ic_http_response r = serve("/", NULL, NULL);
    const char *csp = header(&r, "content-security-policy");
    assert_non_null(csp);
    assert_non_null(strstr(csp, "script-src 'self';"));
    assert_non_null(strstr(csp, "connect-src 'self';"));
    assert_null(strstr(csp, "unsafe"));
    assert_string_equal(header(&r, "x-content-type-options"), "nosniff");
    assert_string_equal(header(&r, "referrer-policy"), "no-referrer");
    assert_string_equal(header(&r, "cache-control"), "no-cache");
    assert_string_equal(header(&r, "vary"), "Accept-Encoding");
    const char *etag = header(&r, "etag");
    assert_non_null(etag);
    assert_int_equal(strlen(etag), 22); /* "<20 hex digits>" */
    assert_true(etag[0] == '"' && etag[21] == '"');
    free(r.body);
}

static void other_paths_are_not_the_consoles(void **state)
{
    (void)state;
    const char *paths[] = {"/index.html", "/ws", "/health", "/console.js/", "", "/CONSOLE.JS"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        ic_http_request req = {.path = paths[i]};
        ic_http_response resp = {.status = 500};
        assert_false(ic_web_serve(&req, &resp));
        assert_int_equal(resp.status, 500);
        assert_null(resp.body);
        assert_int_equal(resp.n_headers, 0);
    }
}

static void if_none_match_gives_304(void **state)
{
    (void)state;
    const ic_web_asset *a = &ic_web_assets[1];
    char weak[64], list[128];
    snprintf(weak, sizeof weak, "W/%s", a->etag);
    snprintf(list, sizeof list, "\"nope\", %s , \"other\"", a->etag);
    const char *match[] = {a->etag, weak, list, "*"};
    for (int i = 0; i < 4; i++) {
        ic_http_response r = serve(a->path, match[i], NULL);
        assert_int_equal(r.status, 304);
        assert_int_equal(r.len, 0);
        assert_string_equal(header(&r, "etag"), a->etag);
        assert_null(header(&r, "content-encoding"));
        free(r.body);
    }
    /* Another tag, a prefix of it, the gzip one, or the other file's: 200. */
    char prefix[32];
    snprintf(prefix, sizeof prefix, "%.10s\"", a->etag);
    const char *miss[] = {"\"0123\"", prefix, a->etag_gz, ic_web_assets[0].etag, ""};
    for (int i = 0; i < 5; i++) {
        ic_http_response r = serve(a->path, miss[i], NULL);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.len, a->len);
        free(r.body);
    }
    /* With gzip, the gzip representation's own tag revalidates. */
    ic_http_response r = serve(a->path, a->etag_gz, "gzip");
    assert_int_equal(r.status, 304);
    free(r.body);
}

static void gzip_when_accepted(void **state)
{
    (void)state;
    const ic_web_asset *a = &ic_web_assets[1];
    const char *yes[] = {"gzip", "GZip", "deflate, gzip;q=0.5", "br,gzip", "gzip ;q=1",
                         "identity, gzip"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
        ic_http_response r = serve(a->path, NULL, yes[i]);
        assert_int_equal(r.status, 200);
        assert_string_equal(header(&r, "content-encoding"), "gzip");
        assert_string_equal(header(&r, "etag"), a->etag_gz);
        assert_int_equal(r.len, a->gz_len);
        assert_true(r.len < a->len);
        assert_int_equal((unsigned char)r.body[0], 0x1f); /* gzip magic */
        assert_int_equal((unsigned char)r.body[1], 0x8b);
        free(r.body);
    }
    const char *no[] = {"gzip;q=0", "gzip; q=0.0", "x-gzip", "br, deflate", "gzipped", ""};
    for (size_t i = 0; i < sizeof no / sizeof *no; i++) {
        ic_http_response r = serve(a->path, NULL, no[i]);
        assert_null(header(&r, "content-encoding"));
        assert_string_equal(header(&r, "etag"), a->etag);
        assert_int_equal(r.len, a->len);
        free(r.body);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(embedded_files_are_the_sources),
        cmocka_unit_test(security_and_cache_headers),
        cmocka_unit_test(other_paths_are_not_the_consoles),
        cmocka_unit_test(if_none_match_gives_304),
        cmocka_unit_test(gzip_when_accepted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
