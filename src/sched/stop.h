/* stop.h - stop strings over streamed text.
 *
 * Text that matches a stop string is never emitted, and text that could
 * still become a match is held back until it is decided. Owned by one
 * thread (the scheduler's, per generation).
 */
#ifndef IC_STOP_H
#define IC_STOP_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>

#define IC_STOP_MAX 8           /* stop strings per generation */
#define IC_STOP_MAX_BYTES 256   /* longest stop string */

typedef struct ic_stop {
    char *strings[IC_STOP_MAX]; /* owned copies */
    size_t lens[IC_STOP_MAX];
    int n;
    ic_buf held;                /* text that may be the start of a match */
    bool matched;               /* a stop string was seen; nothing more passes */
} ic_stop;

/* Sets up s with copies of n strings (empty ones are ignored).
 * Returns 0, IC_ERR_INVAL (too many or too long) or IC_ERR_NOMEM. */
int ic_stop_init(ic_stop *s, const char *const *strings, int n);

/* Frees what ic_stop_init allocated. */
void ic_stop_free(ic_stop *s);

/* Feeds text; appends to out what is now certain not to be part of a match.
 * Returns 1 when a stop string matched (out then holds the text before it),
 * 0 otherwise, IC_ERR_NOMEM on allocation failure. */
int ic_stop_push(ic_stop *s, const char *text, size_t n, ic_buf *out);

/* The generation ended without a match: releases the held-back text. */
int ic_stop_flush(ic_stop *s, ic_buf *out);

#endif
