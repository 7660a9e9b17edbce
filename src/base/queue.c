/* queue.c - mutex + condition-variable FIFO of pointers (a growable ring).
 * Any thread pushes; one consumer pops. See queue.h.
 */
#include "queue.h"
#include "err.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

struct ic_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* signalled on push and on interrupt */
    void **items;            /* ring of cap slots; guarded by mu */
    size_t cap, head, len;   /* guarded by mu */
    size_t max_len;          /* 0 = unbounded; immutable */
    bool interrupted;        /* guarded by mu */
};

int ic_queue_create(size_t capacity, ic_queue **out)
{
    ic_queue *q = calloc(1, sizeof *q);
    if (!q)
        return IC_ERR_NOMEM;
    q->max_len = capacity;
    q->cap = capacity ? capacity : 64;
    q->items = calloc(q->cap, sizeof *q->items);
    if (!q->items) {
        free(q);
        return IC_ERR_NOMEM;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&q->mu, NULL);
    *out = q;
    return 0;
}

void ic_queue_destroy(ic_queue *q, void (*free_item)(void *))
{
    if (!q)
        return;
    for (size_t i = 0; i < q->len; i++) {
        if (free_item)
            free_item(q->items[(q->head + i) % q->cap]);
    }
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    free(q->items);
    free(q);
}

/* Doubles the ring, unrolling it so head is 0. Called with mu held; a
 * bounded queue's ring already has max_len slots and never grows. */
static int grow(ic_queue *q)
{
    void **items = malloc(q->cap * 2 * sizeof *items);
    if (!items)
        return IC_ERR_NOMEM;
    for (size_t i = 0; i < q->len; i++)
        items[i] = q->items[(q->head + i) % q->cap];
    free(q->items);
    q->items = items;
    q->head = 0;
    q->cap *= 2;
    return 0;
}

int ic_queue_push_many(ic_queue *q, void *const *items, size_t n)
{
    int rc = 0;
    pthread_mutex_lock(&q->mu);
    if (q->max_len && q->len + n > q->max_len)
        rc = IC_ERR_OVERLOADED;
    while (rc == 0 && q->len + n > q->cap)
        rc = grow(q);
    if (rc == 0 && n > 0) {
        bool was_empty = q->len == 0;
        for (size_t i = 0; i < n; i++)
            q->items[(q->head + q->len + i) % q->cap] = items[i];
        q->len += n;
        /* One consumer waits only on an empty queue: wake it on that edge
         * alone, not once per item. */
        if (was_empty)
            pthread_cond_signal(&q->cv);
        rc = was_empty;
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int ic_queue_push(ic_queue *q, void *item) { return ic_queue_push_many(q, &item, 1); }

/* Called with mu held. */
static void *take(ic_queue *q)
{
    if (q->len == 0)
        return NULL;
    void *item = q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return item;
}

void *ic_queue_pop(ic_queue *q)
{
    pthread_mutex_lock(&q->mu);
    void *item = take(q);
    pthread_mutex_unlock(&q->mu);
    return item;
}

void *ic_queue_pop_wait(ic_queue *q, int timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_ms > 0) {
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&q->mu);
    while (q->len == 0 && !q->interrupted && timeout_ms != 0) {
        int rc = timeout_ms < 0 ? pthread_cond_wait(&q->cv, &q->mu)
                                : pthread_cond_timedwait(&q->cv, &q->mu, &deadline);
        if (rc == ETIMEDOUT)
            break;
    }
    q->interrupted = false;
    void *item = take(q);
    pthread_mutex_unlock(&q->mu);
    return item;
}

void ic_queue_interrupt(ic_queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->interrupted = true;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

size_t ic_queue_len(ic_queue *q)
{
    pthread_mutex_lock(&q->mu);
    size_t n = q->len;
    pthread_mutex_unlock(&q->mu);
    return n;
}
