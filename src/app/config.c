/* config.c - the --config file on libinih (see config.h). Main thread.
 *
 * inih as Debian builds it does not pass line numbers to the handler, so
 * the file is read through our own line reader, which counts lines: the
 * handler then knows the line of every key it sees.
 */
#include "config.h"
#include "err.h"

#include <ini.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

typedef struct reader {
    FILE *f;
    int line;                 /* lines read so far = the current line's number */
    ic_config_apply_fn apply;
    ic_config_section_fn apply_section; /* set: sections are allowed */
    void *ud;
    bool failed;              /* the first error is kept; later keys are ignored */
    int err_line;
    char why[256];
} reader;

static char *read_line(char *str, int num, void *stream)
{
    reader *r = stream;
    if (r->failed)
        return NULL;
    char *s = fgets(str, num, r->f);
    if (!s)
        return NULL;
    r->line++;
    if (!strchr(s, '\n') && !feof(r->f)) {
        /* inih's buffer (as Debian builds it) holds num - 1 bytes: the rest
         * would come back as a line of its own. Refuse, clearly. */
        r->failed = true;
        r->err_line = r->line;
        snprintf(r->why, sizeof r->why, "line is longer than %d characters", num - 2);
        return NULL;
    }
    return s;
}

static int on_key(void *user, const char *section, const char *name, const char *value)
{
    reader *r = user;
    if (r->failed)
        return 1;
    int rc = 0;
    if (r->apply_section) {
        rc = r->apply_section(r->ud, section ? section : "", name, value ? value : "", r->why,
                              sizeof r->why);
    } else if (section && *section) {
        snprintf(r->why, sizeof r->why, "sections are not supported ([%s]); write keys alone",
                 section);
        rc = IC_ERR_PARSE;
    } else {
        rc = r->apply(r->ud, name, value ? value : "", r->why, sizeof r->why);
    }
    if (rc < 0) {
        r->failed = true;
        r->err_line = r->line;
        return 0;
    }
    return 1;
}

static int load(const char *path, reader *rd, char *err, size_t errlen);

int ic_config_load(const char *path, ic_config_apply_fn apply, void *ud, char *err,
                   size_t errlen)
{
    reader r = {.apply = apply, .ud = ud};
    return load(path, &r, err, errlen);
}

int ic_config_load_sections(const char *path, ic_config_section_fn apply, void *ud, char *err,
                            size_t errlen)
{
    reader r = {.apply_section = apply, .ud = ud};
    return load(path, &r, err, errlen);
}

static int load(const char *path, reader *rd, char *err, size_t errlen)
{
    reader r = *rd;
    r.f = fopen(path, "r");
    if (!r.f) {
        snprintf(err, errlen, "%s: cannot read the config file", path);
        return IC_ERR_IO;
    }
    int bad = ini_parse_stream(read_line, &r, on_key, &r);
    fclose(r.f);
    if (r.failed) {
        snprintf(err, errlen, "%s:%d: %s", path, r.err_line, r.why);
        return IC_ERR_PARSE;
    }
    if (bad != 0) {
        /* inih's own complaint: a line that is not `key = value` or [section]. */
        snprintf(err, errlen, "%s:%d: %s", path, bad > 0 ? bad : r.line,
                 bad > 0 ? "not a 'key = value' line" : "out of memory");
        return IC_ERR_PARSE;
    }
    return 0;
}
