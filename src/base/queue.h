/* queue.h - thread-safe FIFO queues of pointers: all of the project's mutex
 * and condition-variable code lives here.
 *
 * Any thread may push; pops are for one consumer thread (a push wakes a
 * waiting consumer only when the queue was empty). An item
 * pushed belongs to whoever pops it; ic_queue_destroy frees what is left.
 */
#ifndef IC_QUEUE_H
#define IC_QUEUE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct ic_queue ic_queue;

/* Creates a queue holding at most capacity items (0 = unbounded).
 * Returns 0 or IC_ERR_NOMEM. */
int ic_queue_create(size_t capacity, ic_queue **out);

/* Frees the queue; each item still in it is passed to free_item (if not NULL). */
void ic_queue_destroy(ic_queue *q, void (*free_item)(void *));

/* Appends item. Returns 1 if the queue was empty before (the consumer may
 * need a wake-up), 0 if not, IC_ERR_OVERLOADED when full, IC_ERR_NOMEM. */
int ic_queue_push(ic_queue *q, void *item);

/* Appends n items under one lock and one wake-up (all or, when a bounded
 * queue lacks room, none). Returns like ic_queue_push. */
int ic_queue_push_many(ic_queue *q, void *const *items, size_t n);

/* Removes and returns the oldest item, or NULL when empty. Never blocks. */
void *ic_queue_pop(ic_queue *q);

/* Like ic_queue_pop but waits up to timeout_ms (-1 = forever) for an item.
 * Returns NULL on time-out or after ic_queue_interrupt. */
void *ic_queue_pop_wait(ic_queue *q, int timeout_ms);

/* Makes a waiting (or the next) ic_queue_pop_wait return at once. */
void ic_queue_interrupt(ic_queue *q);

/* Items in the queue now. */
size_t ic_queue_len(ic_queue *q);

#endif
