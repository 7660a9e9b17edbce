/* cli.h - small helpers the subcommands share for their command lines.
 * Main thread; pure.
 */
#ifndef IC_CLI_H
#define IC_CLI_H

#include <getopt.h>

/* Parses a whole string as an integer in [lo, hi]. Returns 0 or IC_ERR_INVAL. */
int ic_cli_parse_int(const char *s, int lo, int hi, int *out);

/* Parses a whole string as a finite float in [lo, hi]. Returns 0 or IC_ERR_INVAL. */
int ic_cli_parse_float(const char *s, float lo, float hi, float *out);

/* The long name of option value c in opts (for messages), also when the
 * user gave its short form; "?" if none. */
const char *ic_cli_option_name(const struct option *opts, int c);

#endif
