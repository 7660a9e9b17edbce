/* options.c - one table per command's options (see options.h): the
 * command-line parser (getopt_long over a struct option array built from
 * the rows), config keys, --help and the docs' list.
 *
 * Main thread, at start-up.
 */
#include "options.h"
#include "cli.h"
#include "err.h"

#include <getopt.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define OPT_HELP_VAL 1000 /* getopt value of --help; row i has 2000 + i */

void ic_opt_owned_free(ic_opt_owned *o)
{
    for (int i = 0; i < o->n; i++)
        free(o->v[i]);
    free(o->v);
    *o = (ic_opt_owned){0};
}

static int parse_bool_word(const char *v, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0) {
            *out = strcasecmp(v, yes[i]) == 0;
            return 0;
        }
    }
    return IC_ERR_INVAL;
}

/* Stores arg (NULL for a flag given on the command line) into the row's
 * field. arg must outlive values. */
static int apply(const ic_option *o, const char *arg, void *values)
{
    void *field = (char *)values + o->offset;
    switch (o->type) {
    case IC_OPT_STRING:
        if (!arg || !*arg)
            return IC_ERR_INVAL;
        *(const char **)field = arg;
        return 0;
    case IC_OPT_INT:
        return ic_cli_parse_int(arg, (int)o->lo, (int)o->hi, field);
    case IC_OPT_FLOAT:
        return ic_cli_parse_float(arg, (float)o->lo, (float)o->hi, field);
    case IC_OPT_FLAG:
        if (!arg) {
            *(bool *)field = true;
            return 0;
        }
        return parse_bool_word(arg, field);
    case IC_OPT_ONOFF:
        if (strcmp(arg, "on") != 0 && strcmp(arg, "off") != 0)
            return IC_ERR_INVAL;
        *(bool *)field = strcmp(arg, "on") == 0;
        return 0;
    case IC_OPT_CHOICE:
        for (int i = 0; o->choices[i]; i++) {
            if (strcmp(arg, o->choices[i]) == 0) {
                *(int *)field = i;
                return 0;
            }
        }
        return IC_ERR_INVAL;
    case IC_OPT_LIST: {
        ic_opt_list *l = field;
        if (!arg || !*arg || l->n == IC_OPT_LIST_MAX)
            return IC_ERR_INVAL;
        l->v[l->n++] = arg;
        return 0;
    }
    case IC_OPT_CUSTOM:
        return o->parse(arg, field);
    }
    return IC_ERR_INVAL;
}

int ic_options_defaults(const ic_option *tab, int n, void *values)
{
    for (int i = 0; i < n; i++) {
        if (tab[i].def && apply(&tab[i], tab[i].def, values) < 0) {
            fprintf(stderr, "option table: default '%s' of --%s does not parse\n", tab[i].def,
                    tab[i].name);
            return IC_ERR_INVAL;
        }
    }
    return 0;
}

static bool takes_arg(const ic_option *o) { return o->type != IC_OPT_FLAG; }

/* Builds getopt_long's tables from the rows; *longs is malloc'd. */
static int build_getopt(const ic_option *tab, int n, struct option **longs, char *shorts,
                        size_t cap)
{
    struct option *lo = calloc((size_t)n + 2, sizeof *lo);
    if (!lo)
        return IC_ERR_NOMEM;
    size_t k = 0;
    shorts[k++] = ':'; /* a missing argument is ':' rather than '?' */
    for (int i = 0; i < n; i++) {
        lo[i] = (struct option){tab[i].name, takes_arg(&tab[i]) ? required_argument : no_argument,
                                NULL, 2000 + i};
        if (tab[i].short_name && k + 3 < cap) {
            shorts[k++] = tab[i].short_name;
            if (takes_arg(&tab[i]))
                shorts[k++] = ':';
        }
    }
    lo[n] = (struct option){"help", no_argument, NULL, OPT_HELP_VAL};
    shorts[k++] = 'h';
    shorts[k] = '\0';
    *longs = lo;
    return 0;
}

static int row_of(const ic_option *tab, int n, int c)
{
    if (c >= 2000 && c < 2000 + n)
        return c - 2000;
    for (int i = 0; i < n; i++) {
        if (tab[i].short_name && tab[i].short_name == c)
            return i;
    }
    return -1;
}

int ic_options_parse(const ic_option *tab, int n, const char *cmd, const char *usage_head,
                     int argc, char **argv, void *values, int *first_arg)
{
    struct option *longs;
    char shorts[128];
    if (build_getopt(tab, n, &longs, shorts, sizeof shorts) < 0)
        return IC_ERR_NOMEM;
    int c, rc = 0;
    optind = 1;
    opterr = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, shorts, longs, NULL)) != -1) {
        if (c == 'h' || c == OPT_HELP_VAL) {
            ic_options_usage(tab, n, usage_head, stdout);
            rc = 1;
            break;
        }
        int i = row_of(tab, n, c == ':' || c == '?' ? optopt : c);
        if (c == ':' || c == '?') {
            const char *what = c == ':' ? "needs a value" : "is not an option";
            if (i >= 0)
                fprintf(stderr, "inferencecenter %s: --%s %s\n", cmd, tab[i].name, what);
            else
                fprintf(stderr, "inferencecenter %s: '%s' %s\n", cmd, argv[optind - 1], what);
            rc = IC_ERR_INVAL;
        } else if (apply(&tab[i], optarg, values) < 0) {
            fprintf(stderr, "inferencecenter %s: invalid value '%s' for --%s\n", cmd,
                    optarg ? optarg : "", tab[i].name);
            rc = IC_ERR_INVAL;
        }
    }
    free(longs);
    if (first_arg)
        *first_arg = optind;
    if (rc == 0 && optind < argc && !first_arg) {
        fprintf(stderr, "inferencecenter %s: unexpected argument '%s'\n", cmd, argv[optind]);
        rc = IC_ERR_INVAL;
    }
    if (rc < 0)
        fprintf(stderr, "try: inferencecenter %s --help\n", cmd);
    return rc;
}

int ic_options_apply_key(const ic_option *tab, int n, ic_opt_owned *owned, void *values,
                         const char *key, const char *value, char *why, size_t whylen)
{
    const ic_option *o = NULL;
    for (int i = 0; i < n && !o; i++) {
        if (strcmp(tab[i].name, key) == 0)
            o = &tab[i];
    }
    if (!o || (o->flags & IC_OPT_NO_CONFIG)) {
        snprintf(why, whylen, "unknown key '%s'%s", key,
                 o || strcmp(key, "help") == 0 ? " (not allowed in a config file)" : "");
        return IC_ERR_PARSE;
    }
    if (owned->n == owned->cap) {
        int cap = owned->cap ? owned->cap * 2 : 16;
        char **v = realloc(owned->v, (size_t)cap * sizeof *v);
        if (!v)
            return IC_ERR_NOMEM;
        owned->v = v;
        owned->cap = cap;
    }
    char *copy = strdup(value);
    if (!copy)
        return IC_ERR_NOMEM;
    owned->v[owned->n++] = copy;
    if (apply(o, copy, values) < 0) {
        snprintf(why, whylen, "invalid value '%s' for '%s'", value, key);
        return IC_ERR_PARSE;
    }
    return 0;
}

/* "--name METAVAR" or "-s, --name METAVAR" for help and docs. */
static void flag_text(const ic_option *o, char *buf, size_t cap)
{
    char sh[8] = "    ";
    if (o->short_name)
        snprintf(sh, sizeof sh, "-%c, ", o->short_name);
    snprintf(buf, cap, "%s--%s%s%s", sh, o->name, o->metavar ? " " : "",
             o->metavar ? o->metavar : "");
}

/* The default as help shows it, or NULL. */
static const char *default_text(const ic_option *o)
{
    if (o->def_help)
        return o->def_help;
    if (o->type == IC_OPT_FLAG || o->type == IC_OPT_LIST)
        return NULL;
    return o->def;
}

/* Writes text wrapped at width 80, the first line after col columns
 * already written, later lines indented to indent. */
static void wrap(FILE *out, const char *text, int col, int indent)
{
    const char *p = text;
    while (*p) {
        while (*p == ' ')
            p++;
        size_t w = strcspn(p, " ");
        if (col > indent && col + 1 + (int)w > 80) {
            fprintf(out, "\n%*s", indent, "");
            col = indent;
        } else if (col > indent || (col == indent && p != text)) {
            fputc(' ', out);
            col++;
        }
        fwrite(p, 1, w, out);
        col += (int)w;
        p += w;
    }
    fputc('\n', out);
}

void ic_options_usage(const ic_option *tab, int n, const char *usage_head, FILE *out)
{
    fputs(usage_head, out);
    const int indent = 31;
    for (int i = 0; i < n; i++) {
        char flag[96], help[768];
        flag_text(&tab[i], flag, sizeof flag);
        const char *d = default_text(&tab[i]);
        snprintf(help, sizeof help, "%s%s%s%s", tab[i].help, d ? " Default: " : "", d ? d : "",
                 d ? "." : "");
        int col = fprintf(out, "  %-*s", indent - 3, flag);
        if (col >= indent) {
            fprintf(out, "\n%*s", indent, "");
            col = indent;
        } else {
            fputc(' ', out);
            col++;
        }
        wrap(out, help, col, indent);
    }
    fprintf(out, "  %-*s %s\n", indent - 3, "-h, --help", "this help");
}

/* A Markdown table cell: '|' escaped. */
static void md_cell(FILE *out, const char *text)
{
    for (const char *h = text; *h; h++) {
        if (*h == '|')
            fputc('\\', out);
        fputc(*h, out);
    }
}

void ic_options_markdown(const ic_option *tab, int n, const char *cmd, FILE *out)
{
    fprintf(out, "<!-- generated by `inferencecenter %s --help-markdown`; do not edit -->\n\n",
            cmd);
    fprintf(out, "| flag | config key | default | meaning |\n|---|---|---|---|\n");
    for (int i = 0; i < n; i++) {
        char flag[96];
        flag_text(&tab[i], flag, sizeof flag);
        const char *f = flag, *d = default_text(&tab[i]);
        while (*f == ' ')
            f++;
        fputs("| `", out);
        md_cell(out, f);
        if (tab[i].flags & IC_OPT_NO_CONFIG)
            fputs("` | (flag only) | ", out);
        else
            fprintf(out, "` | `%s` | ", tab[i].name);
        md_cell(out, d ? d : "");
        fputs(" | ", out);
        md_cell(out, tab[i].help);
        fputs(" |\n", out);
    }
}
