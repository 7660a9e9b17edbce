/* test_prefix.c - the shared system-prompt prefix cache on the real engine
 * (llama-spm, and qwen2 without a BOS): one owner computes, others wait;
 * an owner that goes hands over; a prefix is published only when its
 * cells hold exactly its system prompt's tokens. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "convo.h"
#include "engine.h"
#include "err.h"
#include "prefix.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SYSTEM "You are a storyteller who tells long stories about cats and dogs."

/* What the fake scheduler tells ic_prefix_publish about sessions 1..3. */
static const ic_token *hists[4];
static int n_hists[4];

static const ic_token *hist_of(void *ud, uint64_t sid, int *n)
{
    (void)ud;
    *n = sid < 4 ? n_hists[sid] : 0;
    return sid < 4 ? hists[sid] : NULL;
}

typedef struct fixture {
    ic_engine *e;
    ic_prefix_cache *pc;
    ic_convo *c;
    ic_token *prompt; /* the first turn's tokens: system prompt, then " Hello" */
    int n_prompt;
    ic_token *sys;    /* the system prompt's tokens */
    int n_sys;
} fixture;

static void fixture_init(fixture *f, const char *vocab)
{
    memset(f, 0, sizeof *f);
    memset(hists, 0, sizeof hists);
    char path[512];
    const char *dir = getenv("IC_TEST_MODELS");
    snprintf(path, sizeof path, "%s/vocab-%s.gguf", dir ? dir : "test-models", vocab);
    ic_engine_opts eo = ic_engine_opts_default();
    eo.model_path = path;
    eo.n_seq_max = 5;
    eo.n_ctx_tokens = 5 * 256;
    eo.n_batch_tokens = 256;
    eo.n_threads = 1;
    assert_int_equal(ic_engine_create(&eo, &f->e, NULL), 0);
    assert_int_equal(ic_prefix_cache_create(2, 3, &f->pc), 0);
    assert_int_equal(ic_convo_create(SYSTEM, &f->c), 0);
    assert_int_equal(ic_convo_begin_turn(f->c, f->e, " Hello", true, false, &f->prompt,
                                         &f->n_prompt, NULL), 0);
    assert_int_equal(ic_convo_system_tokens(f->c, f->e, &f->sys, &f->n_sys), 0);
    assert_true(f->n_sys >= 8 && f->n_sys < f->n_prompt);
}

static void fixture_free(fixture *f)
{
    ic_prefix_cache_destroy(f->pc);
    ic_convo_destroy(f->c);
    ic_engine_destroy(f->e);
    free(f->prompt);
    free(f->sys);
}

/* Decodes tokens [from, n) into seq (what the owner does). */
static void decode_from(fixture *f, const ic_token *t, int from, int n, int seq)
{
    ic_engine_batch_clear(f->e);
    for (int i = from; i < n; i++)
        assert_true(ic_engine_batch_add(f->e, t[i], i, seq, i == n - 1) >= 0);
    assert_int_equal(ic_engine_decode(f->e), 0);
}

static void decode(fixture *f, const ic_token *t, int n, int seq) { decode_from(f, t, 0, n, seq); }

static enum ic_prefix_verdict attach(fixture *f, uint64_t sid, int *shared)
{
    return ic_prefix_attach(f->pc, f->e, f->c, sid, (int)sid - 1, f->prompt, f->n_prompt, 1,
                            shared);
}

static void owner_computes_then_shares(const char *vocab)
{
    fixture f;
    fixture_init(&f, vocab);
    int shared = -1;
    assert_int_equal(attach(&f, 1, &shared), IC_PREFIX_NONE); /* 1 computes */
    assert_int_equal(shared, 0);
    assert_int_equal(attach(&f, 2, &shared), IC_PREFIX_WAIT);
    assert_int_equal(attach(&f, 1, &shared), IC_PREFIX_NONE); /* the owner never waits */
    /* Half-way: not yet. */
    decode(&f, f.prompt, f.n_sys / 2, 0);
    hists[1] = f.prompt;
    n_hists[1] = f.n_sys / 2;
    ic_prefix_publish(f.pc, f.e, hist_of, NULL);
    assert_int_equal(ic_prefix_cells(f.pc), 0);
    assert_int_equal(attach(&f, 2, &shared), IC_PREFIX_WAIT);
    /* Past the system prompt: ready, and shared with the next session. */
    decode_from(&f, f.prompt, f.n_sys / 2, f.n_prompt, 0);
    n_hists[1] = f.n_prompt;
    ic_prefix_publish(f.pc, f.e, hist_of, NULL);
    assert_int_equal(ic_prefix_cells(f.pc), f.n_sys);
    assert_int_equal(attach(&f, 2, &shared), IC_PREFIX_SHARED);
    assert_int_equal(shared, f.n_sys);
    ic_prefix_drop_ready(f.pc, f.e);
    assert_int_equal(ic_prefix_cells(f.pc), 0);
    fixture_free(&f);
}

static void owner_computes_then_shares_spm(void **state)
{
    (void)state;
    owner_computes_then_shares("llama-spm");
}

static void owner_computes_then_shares_qwen2(void **state)
{
    (void)state;
    owner_computes_then_shares("qwen2");
}

/* Defect 2: the owner's generation ends (abort, close, disconnect) before
 * the prefix is ready: a waiter must take over at once, not wait forever. */
static void released_owner_hands_over(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, "qwen2");
    int shared = 0;
    assert_int_equal(attach(&f, 1, &shared), IC_PREFIX_NONE);
    assert_int_equal(attach(&f, 2, &shared), IC_PREFIX_WAIT);
    ic_prefix_release(f.pc, f.e, 2); /* not the owner: changes nothing */
    assert_int_equal(attach(&f, 3, &shared), IC_PREFIX_WAIT);
    ic_prefix_release(f.pc, f.e, 1);
    assert_int_equal(attach(&f, 2, &shared), IC_PREFIX_NONE); /* 2 computes now */
    assert_int_equal(attach(&f, 3, &shared), IC_PREFIX_WAIT);
    /* Without a release, publishing sees the owner gone (NULL) and drops. */
    ic_prefix_publish(f.pc, f.e, hist_of, NULL);
    assert_int_equal(attach(&f, 3, &shared), IC_PREFIX_NONE);
    fixture_free(&f);
}

/* Defect 7: the owner's cells hold other tokens than the system prompt's
 * (it was aborted, and its next turn re-tokenized the end differently):
 * they must never become the shared prefix. */
static void foreign_cells_are_never_published(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, "llama-spm");
    int shared = 0;
    assert_int_equal(attach(&f, 1, &shared), IC_PREFIX_NONE);
    ic_token *other = malloc((size_t)f.n_prompt * sizeof *other);
    memcpy(other, f.prompt, (size_t)f.n_prompt * sizeof *other);
    other[f.n_sys - 1] = other[f.n_sys - 1] == 100 ? 101 : 100; /* the last system token */
    decode(&f, other, f.n_prompt, 0);
    hists[1] = other;
    n_hists[1] = f.n_prompt;
    ic_prefix_publish(f.pc, f.e, hist_of, NULL);
    assert_int_equal(ic_prefix_cells(f.pc), 0);
    /* The entry is gone: the next session computes it itself. */
    assert_int_equal(attach(&f, 2, &shared), IC_PREFIX_NONE);
    assert_int_equal(shared, 0);
    free(other);
    fixture_free(&f);
}

static void common_prefix(void **state)
{
    (void)state;
    ic_token a[] = {1, 2, 3, 4}, b[] = {1, 2, 9};
    assert_int_equal(ic_tokens_common_prefix(a, 4, b, 3), 2);
    assert_int_equal(ic_tokens_common_prefix(a, 4, a, 2), 2);
    assert_int_equal(ic_tokens_common_prefix(a, 0, b, 3), 0);
}

int main(void)
{
    ic_engine_global_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(owner_computes_then_shares_spm),
        cmocka_unit_test(owner_computes_then_shares_qwen2),
        cmocka_unit_test(released_owner_hands_over),
        cmocka_unit_test(foreign_cells_are_never_published),
        cmocka_unit_test(common_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
