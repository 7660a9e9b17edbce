/* idmap.h - a hash map from nonzero 64-bit IDs to pointers (open
 * addressing, linear probing, grows at 50% load). Used by the network
 * thread to find connections and sessions by ID. Single-threaded.
 */
#ifndef IC_IDMAP_H
#define IC_IDMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The fields are the map's own: read them only through the functions. */
typedef struct ic_idmap {
    uint64_t *keys;          /* 0 = empty slot; tombstones are UINT64_MAX */
    void **vals;
    size_t cap;              /* a power of two, or 0 before the first put */
    size_t len;              /* live entries */
    size_t used;             /* live entries + tombstones */
} ic_idmap;

/* Returns the value for id, or NULL. */
void *ic_idmap_get(const ic_idmap *m, uint64_t id);

/* Sets id -> val (id must not be 0 or UINT64_MAX). Returns 0 or IC_ERR_NOMEM. */
int ic_idmap_put(ic_idmap *m, uint64_t id, void *val);

/* Removes id; returns its value or NULL. */
void *ic_idmap_del(ic_idmap *m, uint64_t id);

/* Calls fn for every entry; fn must not change the map. */
void ic_idmap_each(const ic_idmap *m, void (*fn)(uint64_t id, void *val, void *ud), void *ud);

/* A position in a walk over the map: start from IC_IDMAP_ITER_INIT. */
typedef struct ic_idmap_iter {
    size_t slot;             /* the next slot to look at */
} ic_idmap_iter;

#define IC_IDMAP_ITER_INIT ((ic_idmap_iter){0})

/* The next entry of the walk: returns true and sets *id and *val (either
 * may be NULL), or false when every entry has been seen. During a walk the
 * caller may ic_idmap_del any entry (the walk then skips it if not yet
 * seen) but must not ic_idmap_put: a put may move every entry. */
bool ic_idmap_next(const ic_idmap *m, ic_idmap_iter *it, uint64_t *id, void **val);

/* The number of live entries. */
size_t ic_idmap_len(const ic_idmap *m);

/* Frees the map's memory (not the values). */
void ic_idmap_free(ic_idmap *m);

#endif
