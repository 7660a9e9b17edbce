/* cmd_token.c - `inferencecenter token add`: create a client's API token.
 *
 * Runs on the main thread. The token goes to stdout, alone on one line, so
 * that a script can capture it; everything else goes to stderr. Only the
 * token's hash is written to the tokens file, so the token is shown once.
 */
#include "auth.h"
#include "cli.h"
#include "cmd.h"
#include "err.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct token_args {
    const char *name;   /* client name */
    const char *tokens; /* tokens file */
    int max_sessions;   /* 0 = the server's per-client default */
    enum ic_priority priority;
    bool admin;         /* admin=true: may load and unload models */
} token_args;

static const char usage[] =
    "usage: inferencecenter token add NAME --tokens FILE [options]\n"
    "\n"
    "Creates a random API token for client NAME, appends its SHA-256 hash to\n"
    "FILE (created with mode 0600 if missing) and prints the token on stdout.\n"
    "The token is shown only this once: the file keeps only its hash. To rotate\n"
    "a client's key, add a second token for the same NAME, then delete the old\n"
    "line. A running server reads the file again on SIGHUP.\n"
    "\n"
    "  --tokens FILE        tokens file (required)\n"
    "  --max-sessions N     sessions the client may hold at once, 1 to 4096\n"
    "                       (default or 0: the server's per-client limit)\n"
    "  --priority P         highest priority its requests may use: high, normal\n"
    "                       or low (default normal)\n"
    "  --admin              the client may load and unload models (MODEL_LOAD,\n"
    "                       MODEL_UNLOAD, POST /admin/models/NAME/load|unload)\n"
    "  -h, --help           this help\n";

/* Returns 0, 1 after --help, or IC_ERR_INVAL after printing why. */
static int parse_add_args(int argc, char **argv, token_args *a)
{
    enum { O_TOKENS = 256, O_MAX_SESSIONS, O_PRIORITY, O_ADMIN };
    static const struct option opts[] = {
        {"tokens", required_argument, 0, O_TOKENS},
        {"max-sessions", required_argument, 0, O_MAX_SESSIONS},
        {"priority", required_argument, 0, O_PRIORITY},
        {"admin", no_argument, 0, O_ADMIN},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int c, idx = -1, rc = 0;
    optind = 1;
    opterr = 0; /* getopt would name the action ("add:"), not the command */
    while (rc == 0 && (c = getopt_long(argc, argv, "h", opts, &idx)) != -1) {
        switch (c) {
        case O_TOKENS: a->tokens = optarg; break;
        case O_MAX_SESSIONS: rc = ic_cli_parse_int(optarg, 0, INT_MAX, &a->max_sessions); break;
        case O_PRIORITY: rc = ic_priority_parse(optarg, &a->priority); break;
        case O_ADMIN: a->admin = true; break;
        case 'h': fputs(usage, stdout); return 1;
        default:
            fprintf(stderr, "inferencecenter token: unknown option or missing value: '%s'\n",
                    argv[optind - 1]);
            return IC_ERR_INVAL;
        }
        if (rc < 0)
            fprintf(stderr, "inferencecenter token: invalid value '%s' for --%s\n", optarg,
                    opts[idx].name);
    }
    if (rc == 0 && optind == argc) {
        fprintf(stderr, "inferencecenter token: add needs a client NAME\n");
        rc = IC_ERR_INVAL;
    }
    if (rc == 0 && optind + 1 < argc) {
        fprintf(stderr, "inferencecenter token: unexpected argument '%s'\n", argv[optind + 1]);
        rc = IC_ERR_INVAL;
    }
    if (rc == 0 && !a->tokens) {
        fprintf(stderr, "inferencecenter token: --tokens is required\n");
        rc = IC_ERR_INVAL;
    }
    if (rc == 0)
        a->name = argv[optind];
    return rc;
}

static int token_add(int argc, char **argv)
{
    token_args a = {.priority = IC_PRIORITY_NORMAL};
    int rc = parse_add_args(argc, argv, &a);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    char token[80], err[512];
    rc = ic_auth_add_token_admin(a.tokens, a.name, a.max_sessions, a.priority, a.admin, token,
                                 sizeof token, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "inferencecenter token: %s\n", err[0] ? err : ic_strerror(rc));
        return rc == IC_ERR_INVAL ? 2 : 1;
    }
    printf("%s\n", token);
    int out_failed = fflush(stdout) != 0 || ferror(stdout);
    explicit_bzero(token, sizeof token);
    if (out_failed) {
        /* The hash is in the file but nobody will ever see its token. */
        fprintf(stderr, "inferencecenter token: could not write the token to stdout; "
                        "delete the new line for %s at the end of %s and try again\n",
                a.name, a.tokens);
        return 1;
    }
    fprintf(stderr, "added client %s to %s; this token is shown only once\n", a.name, a.tokens);
    return 0;
}

int ic_cmd_token(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    const char *action = argv[1];
    if (strcmp(action, "--help") == 0 || strcmp(action, "-h") == 0 ||
        strcmp(action, "help") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    if (strcmp(action, "add") == 0)
        return token_add(argc - 1, argv + 1);
    fprintf(stderr,
            "inferencecenter token: unknown action '%s' (see inferencecenter token --help)\n",
            action);
    return 2;
}
