/* utf8.c - incremental UTF-8 validation and repair (see utf8.h). Pure. */
#include "utf8.h"
#include "err.h"

#include <string.h>

static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */

void ic_utf8_reset(ic_utf8_stream *s) { memset(s, 0, sizeof *s); }

/* Length of the character a lead byte starts, or 0 if it can never lead. */
static int lead_length(unsigned char c)
{
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return 2;
    if (c >= 0xE0 && c <= 0xEF)
        return 3;
    if (c >= 0xF0 && c <= 0xF4)
        return 4;
    return 0;
}

/* Whether c may follow the bytes already pending. The second byte's range
 * depends on the lead byte; that is what excludes overlongs, surrogates and
 * code points past U+10FFFF. */
static bool continues(const ic_utf8_stream *s, unsigned char c)
{
    if (s->n_pending == 1) {
        switch (s->pending[0]) {
        case 0xE0: return c >= 0xA0 && c <= 0xBF;
        case 0xED: return c >= 0x80 && c <= 0x9F;
        case 0xF0: return c >= 0x90 && c <= 0xBF;
        case 0xF4: return c >= 0x80 && c <= 0x8F;
        default: break;
        }
    }
    return c >= 0x80 && c <= 0xBF;
}

int ic_utf8_push(ic_utf8_stream *s, const char *in, size_t n, ic_buf *out)
{
    size_t run = 0; /* start of a run of plain ASCII copied in one go */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (s->n_pending == 0 && c < 0x80)
            continue;
        if (ic_buf_append(out, in + run, i - run) < 0)
            return IC_ERR_NOMEM;
        run = i + 1;
        if (s->n_pending > 0) {
            if (continues(s, c)) {
                s->pending[s->n_pending++] = c;
                if (s->n_pending == s->n_needed) {
                    if (ic_buf_append(out, (char *)s->pending, (size_t)s->n_needed) < 0)
                        return IC_ERR_NOMEM;
                    s->n_pending = 0;
                }
                continue;
            }
            /* The partial character can never complete: replace it, then
             * read c again as the start of something new. */
            s->n_pending = 0;
            if (ic_buf_append(out, replacement, 3) < 0)
                return IC_ERR_NOMEM;
            if (c < 0x80) {
                run = i;
                continue;
            }
        }
        int len = lead_length(c);
        if (len == 0) {
            if (ic_buf_append(out, replacement, 3) < 0)
                return IC_ERR_NOMEM;
            continue;
        }
        s->pending[0] = c;
        s->n_pending = 1;
        s->n_needed = len;
    }
    return ic_buf_append(out, in + run, n - run);
}

int ic_utf8_flush(ic_utf8_stream *s, ic_buf *out)
{
    if (s->n_pending == 0)
        return 0;
    s->n_pending = 0;
    return ic_buf_append(out, replacement, 3);
}

bool ic_utf8_valid(const char *p, size_t n)
{
    ic_utf8_stream s;
    ic_utf8_reset(&s);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (s.n_pending == 0) {
            int len = lead_length(c);
            if (len == 0)
                return false;
            if (len > 1) {
                s.pending[0] = c;
                s.n_pending = 1;
                s.n_needed = len;
            }
            continue;
        }
        if (!continues(&s, c))
            return false;
        s.pending[s.n_pending++] = c;
        if (s.n_pending == s.n_needed)
            s.n_pending = 0;
    }
    return s.n_pending == 0;
}
