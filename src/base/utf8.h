/* utf8.h - incremental UTF-8 repair for streamed token text.
 *
 * Token pieces may split a multi-byte character, and models sample lone byte
 * tokens that never form a valid character. The stream holds back an
 * incomplete sequence until it completes, and replaces any byte sequence
 * that can never become valid (overlong forms, surrogates, stray
 * continuation bytes, > U+10FFFF) with U+FFFD, one per maximal invalid
 * subpart as Unicode recommends. Its output is always valid UTF-8.
 * Owned by one thread (the scheduler's, per generation).
 */
#ifndef IC_UTF8_H
#define IC_UTF8_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct ic_utf8_stream {
    unsigned char pending[4]; /* bytes of an incomplete character */
    int n_pending;            /* how many of pending are used */
    int n_needed;             /* total length of the character being built */
} ic_utf8_stream;

/* Resets the stream to empty. */
void ic_utf8_reset(ic_utf8_stream *s);

/* Appends the valid part of in[0..n) to out, holding back an incomplete tail.
 * Returns 0 or IC_ERR_NOMEM. */
int ic_utf8_push(ic_utf8_stream *s, const char *in, size_t n, ic_buf *out);

/* Ends the stream: a held-back incomplete tail becomes U+FFFD. */
int ic_utf8_flush(ic_utf8_stream *s, ic_buf *out);

/* Returns true when s[0..n) is entirely valid UTF-8. */
bool ic_utf8_valid(const char *s, size_t n);

#endif
