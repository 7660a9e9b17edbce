/* stop.c - stop-string matching with hold-back (see stop.h). Pure. */
#include "stop.h"
#include "err.h"

#include <stdlib.h>
#include <string.h>

int ic_stop_init(ic_stop *s, const char *const *strings, int n)
{
    memset(s, 0, sizeof *s);
    if (n > IC_STOP_MAX)
        return IC_ERR_INVAL;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(strings[i]);
        if (len > IC_STOP_MAX_BYTES) {
            ic_stop_free(s);
            return IC_ERR_INVAL;
        }
        if (len == 0)
            continue;
        s->strings[s->n] = strdup(strings[i]);
        if (!s->strings[s->n]) {
            ic_stop_free(s);
            return IC_ERR_NOMEM;
        }
        s->lens[s->n++] = len;
    }
    return 0;
}

void ic_stop_free(ic_stop *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->strings[i]);
    ic_buf_free(&s->held);
    memset(s, 0, sizeof *s);
}

/* Length of the longest suffix of text that is a proper prefix of a stop string. */
static size_t partial_match(const ic_stop *s, const char *text, size_t len)
{
    size_t best = 0;
    for (int i = 0; i < s->n; i++) {
        size_t max = s->lens[i] - 1 < len ? s->lens[i] - 1 : len;
        for (size_t k = max; k > best; k--) {
            if (memcmp(text + len - k, s->strings[i], k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

int ic_stop_push(ic_stop *s, const char *text, size_t n, ic_buf *out)
{
    if (s->matched)
        return 1;
    if (s->n == 0)
        return ic_buf_append(out, text, n);
    if (ic_buf_append(&s->held, text, n) < 0)
        return IC_ERR_NOMEM;
    /* Earliest full match wins; text before it is released. */
    const char *first = NULL;
    for (int i = 0; i < s->n; i++) {
        const char *p = memmem(s->held.data, s->held.len, s->strings[i], s->lens[i]);
        if (p && (!first || p < first))
            first = p;
    }
    if (first) {
        s->matched = true;
        int rc = ic_buf_append(out, s->held.data, (size_t)(first - s->held.data));
        ic_buf_clear(&s->held);
        return rc < 0 ? rc : 1;
    }
    size_t keep = partial_match(s, s->held.data, s->held.len);
    size_t release = s->held.len - keep;
    if (ic_buf_append(out, s->held.data, release) < 0)
        return IC_ERR_NOMEM;
    ic_buf_consume(&s->held, release);
    return 0;
}

int ic_stop_flush(ic_stop *s, ic_buf *out)
{
    if (s->matched || s->held.len == 0)
        return 0;
    int rc = ic_buf_append(out, s->held.data, s->held.len);
    ic_buf_clear(&s->held);
    return rc;
}
