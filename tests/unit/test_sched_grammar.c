/* test_sched_grammar.c - ic_gen_params.grammar through the scheduler on
 * the real engine: the answer follows the grammar at temperature 1, a
 * grammar that does not compile is an ERROR naming the problem (and the
 * session stays usable), a lazy grammar's triggers are copied by
 * ic_sched_infer (the caller's strings die before the generation runs). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "buf.h"
#include "err.h"
#include "sched.h"
#include "spec.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ic_sched *make_spec(int spec_mode)
{
    ic_sched_opts so = ic_sched_opts_default();
    so.spec_mode = spec_mode;
    so.max_sessions = 2;
    so.n_ctx_per_session = 512;
    ic_engine_opts eo = ic_engine_opts_default();
    eo.model_path = test_model_path();
    eo.n_threads = 2;
    ic_sched_engine_opts(&so, &eo);
    ic_engine *e = NULL;
    assert_int_equal(ic_engine_create(&eo, &e, NULL), 0);
    ic_sched *s = NULL;
    assert_int_equal(ic_sched_create(e, &so, &s), 0);
    return s;
}

static ic_sched *make(void) { return make_spec(IC_SPEC_OFF); }

static uint64_t open_session(ic_sched *s)
{
    uint64_t id = 0;
    assert_int_equal(ic_sched_open_session(s, NULL, &id), 0);
    return id;
}

/* Runs one INFER to its END or ERROR; the text in *out. Returns the
 * terminal event (caller frees). */
static ic_event *run(ic_sched *s, uint64_t sid, uint64_t rid, const char *prompt,
                     const ic_gen_params *p, ic_buf *out)
{
    assert_int_equal(ic_sched_infer(s, sid, rid, prompt, true, p), 0);
    for (;;) {
        ic_event *ev = ic_sched_poll_event(s, 60000);
        assert_non_null(ev);
        if (ev->request_id == rid && ev->type == IC_EVENT_TOKEN)
            ic_buf_append(out, ev->text, ev->text_len);
        if (ev->request_id == rid &&
            (ev->type == IC_EVENT_END || ev->type == IC_EVENT_ERROR))
            return ev;
        ic_event_free(ev);
    }
}

static ic_gen_params params(uint32_t seed, int max_tokens)
{
    ic_gen_params p = { 0 };
    p.sample = ic_sample_params_default();
    p.sample.temperature = 1.0f;
    p.sample.top_k = 0;
    p.sample.top_p = 1.0f;
    p.sample.min_p = 0.0f;
    p.sample.seed = seed;
    p.max_tokens = max_tokens;
    return p;
}

static void test_grammar_forces_output(void **state)
{
    (void)state;
    ic_sched *s = make();
    uint64_t sid = open_session(s);
    for (int i = 0; i < 10; i++) {
        /* The caller's copy is gone before the scheduler compiles it. */
        char *gbnf = strdup("root ::= \"[\" [a-c]+ \"]\"");
        ic_grammar g = { .gbnf = gbnf };
        ic_gen_params p = params(100 + (uint32_t)i, 12);
        p.grammar = &g;
        ic_buf out = { 0 };
        ic_event *ev = run(s, sid, 1 + (uint64_t)i, i == 0 ? "Once upon a time" : "", &p, &out);
        free(gbnf);
        assert_int_equal(ev->type, IC_EVENT_END);
        ic_buf_append(&out, "", 1);
        const char *t = out.data;
        assert_true(out.len >= 2);
        assert_int_equal(t[0], '[');
        size_t n = strspn(t + 1, "abc");
        /* Complete ("[ab]", ended by the grammar) or cut by max_tokens. */
        if (ev->reason != IC_END_LENGTH) {
            assert_int_equal(t[1 + n], ']');
            assert_int_equal(t[2 + n], '\0');
            assert_true(n >= 1);
        } else {
            assert_true(t[1 + n] == '\0' || (t[1 + n] == ']' && t[2 + n] == '\0'));
        }
        ic_event_free(ev);
        ic_buf_free(&out);
    }
    ic_sched_destroy(s);
}

static void test_bad_grammar_refused(void **state)
{
    (void)state;
    ic_sched *s = make();
    uint64_t sid = open_session(s);
    ic_grammar g = { .gbnf = "root ::= undefined_rule" };
    ic_gen_params p = params(1, 8);
    p.grammar = &g;
    ic_buf out = { 0 };
    ic_event *ev = run(s, sid, 7, "Once", &p, &out);
    assert_int_equal(ev->type, IC_EVENT_ERROR);
    assert_int_equal(ev->err, IC_ERR_INVAL);
    assert_non_null(strstr(ev->message, "grammar"));
    assert_int_equal(out.len, 0);
    ic_event_free(ev);
    /* Unbalanced syntax too. */
    g.gbnf = "root ::= (\"a\"";
    ev = run(s, sid, 8, "Once", &p, &out);
    assert_int_equal(ev->type, IC_EVENT_ERROR);
    assert_int_equal(ev->err, IC_ERR_INVAL);
    ic_event_free(ev);
    /* Nothing lost: the session still answers, unconstrained. */
    p.grammar = NULL;
    ev = run(s, sid, 9, "Once", &p, &out);
    assert_int_equal(ev->type, IC_EVENT_END);
    assert_true(ev->stats.generated_tokens >= 1);
    ic_event_free(ev);
    ic_buf_free(&out);
    ic_sched_destroy(s);
}

static void test_lazy_grammar_copied(void **state)
{
    (void)state;
    ic_sched *s = make();
    uint64_t sid = open_session(s);
    char *word = strdup("<call>"), *pat = strdup("[\\s\\S]*?(<call>[\\s\\S]*)");
    char *gbnf = strdup("root ::= \"<call>\" [0-9]+ \"</call>\"");
    ic_grammar_trigger t = { .word = word, .pattern = pat };
    ic_grammar g = { .gbnf = gbnf, .lazy = true, .triggers = &t, .n_triggers = 1 };
    ic_gen_params p = params(3, 16);
    p.grammar = &g;
    assert_int_equal(ic_sched_infer(s, sid, 5, "Once upon a time", true, &p), 0);
    free(word);
    free(pat);
    free(gbnf);
    ic_buf out = { 0 };
    for (;;) {
        ic_event *ev = ic_sched_poll_event(s, 60000);
        assert_non_null(ev);
        bool done = ev->type == IC_EVENT_END || ev->type == IC_EVENT_ERROR;
        if (done)
            assert_int_equal(ev->type, IC_EVENT_END);
        if (ev->type == IC_EVENT_TOKEN)
            ic_buf_append(&out, ev->text, ev->text_len);
        ic_event_free(ev);
        if (done)
            break;
    }
    /* If the trigger ever fired, what follows it obeys the grammar. */
    ic_buf_append(&out, "", 1);
    const char *c = strstr(out.data, "<call>");
    if (c) {
        size_t n = strspn(c + 6, "0123456789");
        assert_true(c[6 + n] == '\0' || strncmp(c + 6 + n, "</call>", strlen(c + 6 + n)) == 0);
    }
    ic_buf_free(&out);
    ic_sched_destroy(s);
}

/* Speculation with a grammar: every emitted token is sampled (and fed to
 * the grammar) in order from the target's logits, so seeded output is the
 * same with and without drafts, and follows the grammar. */
static void test_grammar_with_speculation_same_text(void **state)
{
    (void)state;
    ic_sched *sp[2] = { make_spec(IC_SPEC_OFF), make_spec(IC_SPEC_NGRAM) };
    char text[2][10][256];
    int drafted = 0;
    for (int k = 0; k < 2; k++) {
        uint64_t sid = open_session(sp[k]);
        for (int i = 0; i < 10; i++) {
            ic_grammar g = { .gbnf = "root ::= \"[\" (\"ab\" | \"c\")+ \"]\"" };
            ic_gen_params p = params(700 + (uint32_t)i, 40);
            p.grammar = &g;
            ic_buf out = { 0 };
            ic_event *ev = run(sp[k], sid, 1 + (uint64_t)i, i == 0 ? "Once upon a time" : "",
                               &p, &out);
            assert_int_equal(ev->type, IC_EVENT_END);
            drafted += ev->stats.drafted_tokens;
            ic_buf_append(&out, "", 1);
            assert_int_equal(out.data[0], '[');
            snprintf(text[k][i], sizeof text[k][i], "%s", out.data);
            ic_event_free(ev);
            ic_buf_free(&out);
        }
        ic_sched_destroy(sp[k]);
    }
    for (int i = 0; i < 10; i++)
        assert_string_equal(text[0][i], text[1][i]);
    assert_true(drafted > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grammar_forces_output),
        cmocka_unit_test(test_bad_grammar_refused),
        cmocka_unit_test(test_lazy_grammar_copied),
        cmocka_unit_test(test_grammar_with_speculation_same_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
