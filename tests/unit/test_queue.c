/* test_queue.c - the queue: FIFO, bounds, waiting, many producers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "err.h"
#include "queue.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

static void fifo_and_bound(void **state)
{
    (void)state;
    ic_queue *q;
    assert_int_equal(ic_queue_create(3, &q), 0);
    int v[4];
    assert_int_equal(ic_queue_push(q, &v[0]), 1); /* was empty */
    assert_int_equal(ic_queue_push(q, &v[1]), 0);
    assert_int_equal(ic_queue_push(q, &v[2]), 0);
    assert_int_equal(ic_queue_push(q, &v[3]), IC_ERR_OVERLOADED);
    assert_int_equal(ic_queue_len(q), 3);
    assert_ptr_equal(ic_queue_pop(q), &v[0]);
    assert_ptr_equal(ic_queue_pop(q), &v[1]);
    assert_ptr_equal(ic_queue_pop(q), &v[2]);
    assert_null(ic_queue_pop(q));
    ic_queue_destroy(q, NULL);
}

static void unbounded_grows_and_destroy_frees(void **state)
{
    (void)state;
    ic_queue *q;
    assert_int_equal(ic_queue_create(0, &q), 0);
    for (int i = 0; i < 1000; i++) {
        int *p = malloc(sizeof *p);
        *p = i;
        assert_true(ic_queue_push(q, p) >= 0);
    }
    for (int i = 0; i < 500; i++) {
        int *p = ic_queue_pop(q);
        assert_int_equal(*p, i);
        free(p);
    }
    ic_queue_destroy(q, free); /* the other 500: leak-checked under ASan */
}

static void pop_wait_times_out_and_interrupts(void **state)
{
    (void)state;
    ic_queue *q;
    assert_int_equal(ic_queue_create(0, &q), 0);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    assert_null(ic_queue_pop_wait(q, 50));
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ms = (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
    assert_true(ms >= 45);
    ic_queue_interrupt(q);
    assert_null(ic_queue_pop_wait(q, -1)); /* returns at once */
    ic_queue_destroy(q, NULL);
}

#define PRODUCERS 4
#define PER_PRODUCER 20000

static void *producer(void *arg)
{
    ic_queue *q = arg;
    for (intptr_t i = 1; i <= PER_PRODUCER; i++)
        while (ic_queue_push(q, (void *)i) < 0)
            ;
    return NULL;
}

static void many_producers_lose_nothing(void **state)
{
    (void)state;
    ic_queue *q;
    assert_int_equal(ic_queue_create(64, &q), 0);
    pthread_t t[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++)
        pthread_create(&t[i], NULL, producer, q);
    long long sum = 0;
    for (int got = 0; got < PRODUCERS * PER_PRODUCER; got++)
        sum += (intptr_t)ic_queue_pop_wait(q, -1);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(t[i], NULL);
    assert_true(sum == (long long)PRODUCERS * PER_PRODUCER * (PER_PRODUCER + 1) / 2);
    ic_queue_destroy(q, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fifo_and_bound),
        cmocka_unit_test(unbounded_grows_and_destroy_frees),
        cmocka_unit_test(pop_wait_times_out_and_interrupts),
        cmocka_unit_test(many_producers_lose_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
