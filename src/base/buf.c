/* buf.c - growable NUL-terminated byte buffer. Single-threaded per buffer. */
#include "buf.h"
#include "err.h"

#include <stdlib.h>
#include <string.h>

int ic_buf_append(ic_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p)
            return IC_ERR_NOMEM;
        b->data = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

void ic_buf_consume(ic_buf *b, size_t n)
{
    if (n >= b->len) {
        ic_buf_clear(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

void ic_buf_clear(ic_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void ic_buf_free(ic_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *ic_buf_take(ic_buf *b)
{
    char *s = b->data ? b->data : strdup("");
    b->data = NULL;
    b->len = b->cap = 0;
    return s;
}
