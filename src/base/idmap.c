/* idmap.c - open-addressing hash map of 64-bit IDs (see idmap.h). */
#include "idmap.h"
#include "err.h"

#include <stdlib.h>

#define TOMB UINT64_MAX

static size_t hash(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

void *ic_idmap_get(const ic_idmap *m, uint64_t id)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = hash(id) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == id)
            return m->vals[i];
        if (m->keys[i] == 0)
            return NULL;
    }
}

static int rehash(ic_idmap *m, size_t cap)
{
    uint64_t *keys = calloc(cap, sizeof *keys);
    void **vals = calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return IC_ERR_NOMEM;
    }
    for (size_t j = 0; j < m->cap; j++) {
        if (m->keys[j] == 0 || m->keys[j] == TOMB)
            continue;
        size_t i = hash(m->keys[j]) & (cap - 1);
        while (keys[i])
            i = (i + 1) & (cap - 1);
        keys[i] = m->keys[j];
        vals[i] = m->vals[j];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    m->used = m->len;
    return 0;
}

int ic_idmap_put(ic_idmap *m, uint64_t id, void *val)
{
    if (id == 0 || id == TOMB)
        return IC_ERR_INVAL;
    if ((m->used + 1) * 2 > m->cap) {
        int rc = rehash(m, m->cap ? (m->len + 1) * 4 > m->cap ? m->cap * 2 : m->cap : 16);
        if (rc < 0)
            return rc;
    }
    size_t tomb = SIZE_MAX;
    for (size_t i = hash(id) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == id) {
            m->vals[i] = val;
            return 0;
        }
        if (m->keys[i] == TOMB && tomb == SIZE_MAX)
            tomb = i;
        if (m->keys[i] == 0) {
            if (tomb != SIZE_MAX)
                i = tomb;
            else
                m->used++;
            m->keys[i] = id;
            m->vals[i] = val;
            m->len++;
            return 0;
        }
    }
}

void *ic_idmap_del(ic_idmap *m, uint64_t id)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = hash(id) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == id) {
            void *v = m->vals[i];
            m->keys[i] = TOMB;
            m->vals[i] = NULL;
            m->len--;
            return v;
        }
        if (m->keys[i] == 0)
            return NULL;
    }
}

void ic_idmap_each(const ic_idmap *m, void (*fn)(uint64_t id, void *val, void *ud), void *ud)
{
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i] != 0 && m->keys[i] != TOMB)
            fn(m->keys[i], m->vals[i], ud);
    }
}

bool ic_idmap_next(const ic_idmap *m, ic_idmap_iter *it, uint64_t *id, void **val)
{
    for (; it->slot < m->cap; it->slot++) {
        uint64_t k = m->keys[it->slot];
        if (k == 0 || k == TOMB)
            continue;
        if (id)
            *id = k;
        if (val)
            *val = m->vals[it->slot];
        it->slot++;
        return true;
    }
    return false;
}

size_t ic_idmap_len(const ic_idmap *m) { return m->len; }

void ic_idmap_free(ic_idmap *m)
{
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->cap = m->len = m->used = 0;
}
