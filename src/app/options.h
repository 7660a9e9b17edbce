/* options.h - a command's options as one table: each row is one option
 * (long name, short name, type, default, bounds, help), and the command
 * line parser, the --help text, the config-file keys and the docs' option
 * list (docs/options.md) all come from that row. Adding an option is adding
 * one row and the field it fills.
 *
 * Main thread, at start-up; no state outside the values struct the caller
 * passes and the strings kept in an ic_opt_owned.
 */
#ifndef IC_OPTIONS_H
#define IC_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum ic_opt_type {
    IC_OPT_STRING, /* const char *: the argument (kept alive by the parser) */
    IC_OPT_INT,    /* int in [lo, hi] */
    IC_OPT_FLOAT,  /* float in [lo, hi] */
    IC_OPT_FLAG,   /* bool, no argument on the command line; true|false in a config file */
    IC_OPT_ONOFF,  /* bool from "on" or "off" */
    IC_OPT_CHOICE, /* int: the index of the argument in choices */
    IC_OPT_LIST,   /* ic_opt_list: repeatable, each use adds one string */
    IC_OPT_CUSTOM, /* the row's parse function fills the field */
};

#define IC_OPT_LIST_MAX 16

/* A repeatable option's values, in the order given. */
typedef struct ic_opt_list {
    const char *v[IC_OPT_LIST_MAX];
    int n;
} ic_opt_list;

/* Row flags. */
#define IC_OPT_NO_CONFIG 1u /* command line only (help, config) */

typedef struct ic_option {
    const char *name;     /* long name, and the config-file key */
    char short_name;      /* 0: none */
    enum ic_opt_type type;
    size_t offset;        /* of the field in the values struct */
    const char *metavar;  /* "N", "PATH"; NULL for flags */
    const char *def;      /* default as the user would type it, parsed at start;
                           * NULL: none, or see def_help */
    const char *def_help; /* the default as help shows it when def cannot say it */
    double lo, hi;        /* INT and FLOAT bounds */
    const char *const *choices; /* CHOICE: NULL-terminated */
    /* CUSTOM: parses arg into field. Returns 0 or IC_ERR_INVAL. */
    int (*parse)(const char *arg, void *field);
    const char *help;     /* one sentence or two; wrapped by the printer */
    unsigned flags;
} ic_option;

/* Strings the values point into that came from a config file (the
 * command line's stay in argv). Free with ic_opt_owned_free. */
typedef struct ic_opt_owned {
    char **v;
    int n, cap;
} ic_opt_owned;

void ic_opt_owned_free(ic_opt_owned *o);

/* Sets every field to its row's default (rows without def are left as the
 * caller zeroed them). Returns 0, or IC_ERR_INVAL when a def does not parse
 * (a programmer error; the row is named on stderr). */
int ic_options_defaults(const ic_option *tab, int n, void *values);

/* Parses argv (argv[0] is the command's name, as in "serve"). Returns 0 to
 * run, 1 after --help (printed to stdout with usage_head first), or
 * IC_ERR_INVAL after an error line on stderr naming cmd. With first_arg
 * NULL, arguments that are not options are an error; otherwise they are
 * moved to the end of argv and *first_arg is the index of the first. */
int ic_options_parse(const ic_option *tab, int n, const char *cmd, const char *usage_head,
                     int argc, char **argv, void *values, int *first_arg);

/* Applies one config-file key (the config module's callback shape).
 * Returns 0 or IC_ERR_PARSE with the reason in why. The value is copied
 * into owned. */
int ic_options_apply_key(const ic_option *tab, int n, ic_opt_owned *owned, void *values,
                         const char *key, const char *value, char *why, size_t whylen);

/* Writes the --help text: usage_head, then one entry per row. */
void ic_options_usage(const ic_option *tab, int n, const char *usage_head, FILE *out);

/* Writes the table as a Markdown list for docs/options.md. */
void ic_options_markdown(const ic_option *tab, int n, const char *cmd, FILE *out);

#endif
