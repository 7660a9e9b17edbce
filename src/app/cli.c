/* cli.c - command-line parsing helpers (see cli.h). */
#include "cli.h"
#include "err.h"

#include <stdlib.h>

int ic_cli_parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi)
        return IC_ERR_INVAL;
    *out = (int)v;
    return 0;
}

int ic_cli_parse_float(const char *s, float lo, float hi, float *out)
{
    char *end;
    float v = strtof(s, &end);
    if (*s == '\0' || *end != '\0' || !(v >= lo && v <= hi))
        return IC_ERR_INVAL;
    *out = v;
    return 0;
}

const char *ic_cli_option_name(const struct option *opts, int c)
{
    for (; opts->name; opts++) {
        if (opts->val == c)
            return opts->name;
    }
    return "?";
}
