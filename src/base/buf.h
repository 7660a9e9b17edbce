/* buf.h - a growable byte buffer, always NUL-terminated.
 *
 * Owned by whoever holds it; not shared between threads.
 */
#ifndef IC_BUF_H
#define IC_BUF_H

#include <stddef.h>

typedef struct ic_buf {
    char *data;      /* NUL-terminated, NULL until the first append */
    size_t len;      /* bytes used, not counting the NUL */
    size_t cap;      /* bytes allocated */
} ic_buf;

/* Appends n bytes. Returns 0 or IC_ERR_NOMEM (buffer unchanged then). */
int ic_buf_append(ic_buf *b, const char *s, size_t n);

/* Removes the first n bytes (n <= len). */
void ic_buf_consume(ic_buf *b, size_t n);

/* Empties the buffer, keeping its memory. */
void ic_buf_clear(ic_buf *b);

/* Frees the memory; the buffer is empty and reusable afterwards. */
void ic_buf_free(ic_buf *b);

/* Hands the string to the caller (who frees it) and empties the buffer.
 * Returns "" duplicated when empty; NULL only when out of memory. */
char *ic_buf_take(ic_buf *b);

#endif
