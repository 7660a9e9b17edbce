/* test_engine.c - the engine on real models: loading and its errors, model
 * facts, tokens, UTF-8 across byte tokens, chat format, greedy generation
 * of the known stories260K story, every generated weight type. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine.h"
#include "err.h"
#include "testutil.h"
#include "utf8.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ic_engine *load(const char *path)
{
    ic_engine_opts o = ic_engine_opts_default();
    o.model_path = path;
    o.n_ctx_tokens = 512;
    o.n_threads = 2;
    ic_engine *e = NULL;
    const char *why = NULL;
    int rc = ic_engine_create(&o, &e, &why);
    if (rc != 0)
        fprintf(stderr, "load %s: %s\n", path, why);
    assert_int_equal(rc, 0);
    return e;
}

/* One token's bytes, which must be readable, in a fresh buffer. */
static ic_buf piece_of(ic_engine *e, ic_token t)
{
    ic_buf b = {0};
    assert_int_equal(ic_engine_token_piece(e, t, &b), 0);
    return b;
}

/* Greedy continuation of prompt; returns malloc'd text. */
static char *greedy(ic_engine *e, const char *prompt, int n_gen)
{
    ic_token *toks;
    int n;
    assert_int_equal(ic_engine_tokenize(e, prompt, strlen(prompt), true, false, &toks, &n), 0);
    ic_sample_params sp = ic_sample_params_default();
    sp.temperature = 0;
    ic_sampler *smp;
    assert_int_equal(ic_engine_sampler_create(e, &sp, &smp), 0);
    ic_engine_batch_clear(e);
    int idx = 0;
    for (int i = 0; i < n; i++)
        idx = ic_engine_batch_add(e, toks[i], i, 0, i == n - 1);
    assert_int_equal(ic_engine_decode(e), 0);
    ic_utf8_stream u;
    ic_utf8_reset(&u);
    ic_buf out = {0};
    for (int g = 0; g < n_gen; g++) {
        ic_token t = ic_engine_sample(e, smp, idx);
        if (ic_engine_token_is_eog(e, t))
            break;
        ic_buf piece = piece_of(e, t);
        ic_utf8_push(&u, piece.data ? piece.data : "", piece.len, &out);
        ic_buf_free(&piece);
        ic_engine_batch_clear(e);
        idx = ic_engine_batch_add(e, t, n + g, 0, true);
        assert_int_equal(ic_engine_decode(e), 0);
    }
    ic_utf8_flush(&u, &out);
    ic_engine_sampler_destroy(smp);
    ic_engine_seq_rm(e, 0, -1, -1);
    free(toks);
    return ic_buf_take(&out);
}

/* The log-softmax and the top tokens, against a full computation: a
 * sort of the whole vocabulary, in double. */
static void logprobs_against_full_sort(void **state)
{
    (void)state;
    enum { N = 1000 };
    static float logits[N];
    unsigned x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 1103515245u + 12345u;
        logits[i] = (float)((x >> 8) % 20000) / 1000.0f - 10.0f;
    }
    logits[17] = logits[400] = 30.0f; /* a tie at the top: lower id first */
    double max = -INFINITY, sum = 0;
    for (int i = 0; i < N; i++)
        max = logits[i] > max ? logits[i] : max;
    for (int i = 0; i < N; i++)
        sum += exp(logits[i] - max);
    double lse = max + log(sum);
    ic_token_logprob top[IC_LOGPROBS_MAX];
    float lp;
    for (int k = 0; k <= IC_LOGPROBS_MAX; k += 5) {
        int n = ic_logprobs_compute(logits, N, 123, k, &lp, top);
        assert_int_equal(n, k);
        assert_float_equal(lp, logits[123] - lse, 1e-4);
        assert_true(lp <= 0);
        for (int i = 0; i < n; i++) {
            /* rank i: exactly i tokens rank before it */
            int before = 0;
            for (int t = 0; t < N; t++)
                before += logits[t] > logits[top[i].token] ||
                          (logits[t] == logits[top[i].token] && t < top[i].token);
            assert_int_equal(before, i);
            assert_float_equal(top[i].logprob, logits[top[i].token] - lse, 1e-4);
        }
        if (n >= 2) {
            assert_int_equal(top[0].token, 17);
            assert_int_equal(top[1].token, 400);
        }
    }
    /* a vocabulary of Qwen's size, logits far apart (-inf included): the
     * exponent blocks and the rest against libm in double */
    enum { BIG = 151936 + 5 };
    static float big[BIG];
    for (int i = 0; i < BIG; i++) {
        x = x * 1103515245u + 12345u;
        big[i] = (float)((x >> 8) % 60000) / 1000.0f - 40.0f;
    }
    big[BIG - 1] = -INFINITY;
    big[7] = 25.0f;
    double bmax = 25.0, bsum = 0;
    for (int i = 0; i < BIG; i++)
        bsum += exp((double)big[i] - bmax);
    double blse = bmax + log(bsum);
    for (int t = 0; t < BIG; t += 9973) {
        ic_logprobs_compute(big, BIG, t, 3, &lp, top);
        assert_float_equal(lp, (double)big[t] - blse, 1e-4 + 1e-6 * fabs(big[t] - blse));
    }
    assert_int_equal(top[0].token, 7);
    assert_float_equal(top[0].logprob, 25.0 - blse, 1e-5);
    ic_logprobs_compute(big, BIG, BIG - 1, 0, &lp, top);
    assert_true(lp < -1e30f);
    /* clamped: more than the limit, more than the vocabulary */
    assert_int_equal(ic_logprobs_compute(logits, N, 0, 99, &lp, top), IC_LOGPROBS_MAX);
    assert_int_equal(ic_logprobs_compute(logits, 3, 0, 10, &lp, top), 3);
    /* a token out of range */
    ic_logprobs_compute(logits, N, N, 0, &lp, top);
    assert_true(isinf(lp) && lp < 0);
    /* one certain token: 0, never above */
    float sure[4] = {-1e4f, 50.0f, -1e4f, -1e4f};
    ic_logprobs_compute(sure, 4, 1, 1, &lp, top);
    assert_true(lp <= 0 && lp > -1e-6);
    assert_int_equal(top[0].token, 1);
    assert_true(top[0].logprob <= 0);
}

static void missing_file_is_io_error(void **state)
{
    (void)state;
    ic_engine_opts o = ic_engine_opts_default();
    o.model_path = "/nonexistent/model.gguf";
    ic_engine *e = (ic_engine *)1;
    const char *why = NULL;
    assert_int_equal(ic_engine_create(&o, &e, &why), IC_ERR_IO);
    assert_null(e);
    assert_non_null(strstr(why, "does not exist"));
}

static void text_file_is_not_a_model(void **state)
{
    (void)state;
    char path[] = "/tmp/ic-test-notmodel-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "hello, I am not a model\n", 24), 24);
    close(fd);
    ic_engine_opts o = ic_engine_opts_default();
    o.model_path = path;
    ic_engine *e = NULL;
    const char *why = NULL;
    assert_int_equal(ic_engine_create(&o, &e, &why), IC_ERR_MODEL);
    assert_non_null(strstr(why, "not a GGUF"));
    unlink(path);
}

/* Copies the first `keep` bytes of src into a temp file. */
static void truncated_copy(const char *src, long keep, char *path)
{
    FILE *in = fopen(src, "rb");
    assert_non_null(in);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    char buf[65536];
    long left = keep;
    while (left > 0) {
        size_t n = fread(buf, 1, left < (long)sizeof buf ? (size_t)left : sizeof buf, in);
        assert_true(n > 0);
        assert_int_equal(write(fd, buf, n), (ssize_t)n);
        left -= (long)n;
    }
    fclose(in);
    close(fd);
}

static void truncated_gguf_is_not_a_model(void **state)
{
    (void)state;
    const char *src = test_tiny_path("f32");
    FILE *f = fopen(src, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    long cuts[] = {8, 200, size / 2, size - 16};
    for (int i = 0; i < 4; i++) {
        char path[] = "/tmp/ic-test-trunc-XXXXXX";
        truncated_copy(src, cuts[i], path);
        ic_engine_opts o = ic_engine_opts_default();
        o.model_path = path;
        ic_engine *e = NULL;
        const char *why = NULL;
        assert_int_equal(ic_engine_create(&o, &e, &why), IC_ERR_MODEL);
        assert_null(e);
        unlink(path);
    }
}

static void model_facts(void **state)
{
    (void)state;
    ic_engine *e = load(test_model_path());
    ic_engine_info in;
    ic_engine_get_info(e, &in);
    assert_true(in.n_params > 0);
    assert_true(in.size_bytes > 0);
    assert_true(in.file_bytes >= in.size_bytes);
    assert_true(in.n_ctx_train_tokens > 0);
    assert_true(in.n_vocab > 0);
    assert_true(strlen(in.name) > 0);
    assert_true(in.n_ctx_tokens >= 512);
    if (test_stories_path()) {
        assert_int_equal(in.n_vocab, 512);
        assert_int_equal(in.n_layer, 5);
        assert_int_equal(in.file_bytes, 1185376);
        assert_int_equal(in.n_ctx_train_tokens, 2048);
    }
    ic_engine_destroy(e);
}

static void stories_greedy_story(void **state)
{
    (void)state;
    if (!test_stories_path())
        skip();
    ic_engine *e = load(test_stories_path());
    char *text = greedy(e, "Once upon a time", 32);
    /* The model's known greedy story: a girl named Lily who plays. */
    assert_non_null(strstr(text, "Lily"));
    char *again = greedy(e, "Once upon a time", 32);
    assert_string_equal(text, again); /* greedy is deterministic */
    free(again);
    free(text);
    ic_engine_destroy(e);
}

static void tokenize_round_trip(void **state)
{
    (void)state;
    ic_engine *e = load(test_model_path());
    const char *s = "The cat sat on the mat.";
    ic_token *toks;
    int n;
    assert_int_equal(ic_engine_tokenize(e, s, strlen(s), false, false, &toks, &n), 0);
    assert_true(n > 0 && n < (int)strlen(s) + 1);
    ic_buf out = {0};
    for (int i = 0; i < n; i++) {
        assert_int_equal(ic_engine_token_piece(e, toks[i], &out), 0); /* appends */
    }
    /* SentencePiece adds a leading space to the first word. */
    assert_non_null(strstr(out.data, s));
    ic_buf_free(&out);
    free(toks);
    ic_engine_destroy(e);
}

/* An emoji in an SPM vocabulary with byte fallback is four byte tokens:
 * their pieces are lone bytes, and the stream must join them into one
 * character, emitting nothing before the last. */
static void byte_tokens_join_into_one_character(void **state)
{
    (void)state;
    ic_engine *e = load(test_tiny_path("f32"));
    ic_token *toks;
    int n;
    assert_int_equal(ic_engine_tokenize(e, "\xF0\x9F\x98\x80", 4, false, false, &toks, &n), 0);
    assert_true(n >= 2); /* an emoji is byte tokens */
    ic_utf8_stream u;
    ic_utf8_reset(&u);
    ic_buf out = {0};
    int emitted_before_last = 0;
    for (int i = 0; i < n; i++) {
        ic_buf piece = piece_of(e, toks[i]);
        ic_utf8_push(&u, piece.data ? piece.data : "", piece.len, &out);
        ic_buf_free(&piece);
        if (i < n - 1)
            emitted_before_last += (int)out.len - (out.len && out.data[0] == ' ');
    }
    ic_utf8_flush(&u, &out);
    assert_int_equal(emitted_before_last, 0);
    assert_non_null(strstr(out.data, "\xF0\x9F\x98\x80"));
    /* A lone byte token that can never complete becomes U+FFFD. */
    ic_utf8_reset(&u);
    ic_buf_clear(&out);
    ic_buf piece = piece_of(e, toks[n - 1]);
    ic_utf8_push(&u, piece.data ? piece.data : "", piece.len, &out);
    ic_buf_free(&piece);
    ic_utf8_push(&u, "x", 1, &out);
    ic_utf8_flush(&u, &out);
    assert_true(ic_utf8_valid(out.data, out.len));
    assert_non_null(strstr(out.data, "\xEF\xBF\xBD"));
    ic_buf_free(&out);
    free(toks);
    ic_engine_destroy(e);
}

static void bad_token_id_is_refused(void **state)
{
    (void)state;
    ic_engine *e = load(test_model_path());
    ic_engine_info in;
    ic_engine_get_info(e, &in);
    ic_buf b = {0};
    assert_int_equal(ic_engine_token_piece(e, -1, &b), IC_ERR_INVAL);
    assert_int_equal(ic_engine_token_piece(e, in.n_vocab, &b), IC_ERR_INVAL);
    assert_int_equal(b.len, 0);
    ic_engine_destroy(e);
}

static void chat_format_fallback_or_template(void **state)
{
    (void)state;
    ic_engine *e = load(test_model_path());
    ic_engine_info in;
    ic_engine_get_info(e, &in);
    ic_chat_msg msgs[] = {{"system", "Be brief."}, {"user", "Hi there"}};
    char *text = NULL;
    assert_int_equal(ic_engine_chat_format(e, msgs, 2, true, &text), 0);
    assert_non_null(strstr(text, "Be brief."));
    assert_non_null(strstr(text, "Hi there"));
    if (!in.has_chat_template) {
        assert_string_equal(text, "Be brief.\n\nUser: Hi there\nAssistant:");
    }
    free(text);
    ic_engine_destroy(e);
}

static void every_weight_type_loads_and_generates(void **state)
{
    (void)state;
    const char *types[] = {"f32", "f16", "q8_0", "q4_0"};
    for (int i = 0; i < 4; i++) {
        ic_engine *e = load(test_tiny_path(types[i]));
        char *text = greedy(e, "Hello world", 8);
        assert_true(ic_utf8_valid(text, strlen(text)));
        free(text);
        ic_engine_destroy(e);
    }
}

int main(void)
{
    ic_engine_global_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(missing_file_is_io_error),
        cmocka_unit_test(text_file_is_not_a_model),
        cmocka_unit_test(truncated_gguf_is_not_a_model),
        cmocka_unit_test(logprobs_against_full_sort),
        cmocka_unit_test(model_facts),
        cmocka_unit_test(stories_greedy_story),
        cmocka_unit_test(tokenize_round_trip),
        cmocka_unit_test(byte_tokens_join_into_one_character),
        cmocka_unit_test(bad_token_id_is_refused),
        cmocka_unit_test(chat_format_fallback_or_template),
        cmocka_unit_test(every_weight_type_loads_and_generates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
