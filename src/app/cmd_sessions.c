/* cmd_sessions.c - `inferencecenter sessions --session-store DIR`: lists
 * the durable sessions a server on that store would resume, and purges
 * them (docs/operations.md, Durable sessions).
 *
 * Main thread. Reads and removes files directly: run it while the server
 * is stopped, or on sessions that are not live (a live session's next END
 * writes its file again).
 */
#include "cli.h"
#include "cmd.h"
#include "durable.h"
#include "err.h"
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct sessions_args {
    const char *store;
    const char *purge_id;       /* one session */
    bool purge_all;
    bool purge_bad;             /* files the server would skip */
    int purge_older_s;          /* last END older than this; -1: no */
} sessions_args;

static const char usage[] =
    "usage: inferencecenter sessions --session-store DIR [options]\n"
    "\n"
    "Lists the durable sessions in DIR (serve --session-store): id, client,\n"
    "turns, context tokens, text bytes and the time of the last END; files the\n"
    "server would skip are listed as bad, with why. With a purge option the\n"
    "matching files are removed instead (and each one named on stdout).\n"
    "\n"
    "  --session-store DIR      the store (required)\n"
    "  --purge ID               remove session ID\n"
    "  --purge-all              remove every session\n"
    "  --purge-bad              remove the files the server would skip\n"
    "  --purge-older-than S     remove sessions whose last END is older than S seconds\n"
    "  -h, --help               this help\n";

/* Returns 0, 1 after --help, or IC_ERR_INVAL after printing why. */
static int parse_args(int argc, char **argv, sessions_args *a)
{
    enum { O_STORE = 256, O_PURGE, O_PURGE_ALL, O_PURGE_BAD, O_PURGE_OLDER };
    static const struct option opts[] = {
        {"session-store", required_argument, 0, O_STORE},
        {"purge", required_argument, 0, O_PURGE},
        {"purge-all", no_argument, 0, O_PURGE_ALL},
        {"purge-bad", no_argument, 0, O_PURGE_BAD},
        {"purge-older-than", required_argument, 0, O_PURGE_OLDER},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int c, rc = 0;
    optind = 1;
    opterr = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_STORE: a->store = optarg; break;
        case O_PURGE: a->purge_id = optarg; break;
        case O_PURGE_ALL: a->purge_all = true; break;
        case O_PURGE_BAD: a->purge_bad = true; break;
        case O_PURGE_OLDER:
            rc = ic_cli_parse_int(optarg, 0, INT_MAX, &a->purge_older_s);
            if (rc < 0)
                fprintf(stderr, "inferencecenter sessions: invalid value '%s' for "
                                "--purge-older-than\n", optarg);
            break;
        case 'h': fputs(usage, stdout); return 1;
        default:
            fprintf(stderr, "inferencecenter sessions: unknown option or missing value: '%s'\n",
                    argv[optind - 1]);
            return IC_ERR_INVAL;
        }
    }
    if (rc == 0 && optind < argc) {
        fprintf(stderr, "inferencecenter sessions: unexpected argument '%s'\n", argv[optind]);
        rc = IC_ERR_INVAL;
    }
    if (rc == 0 && !a->store) {
        fprintf(stderr, "inferencecenter sessions: --session-store is required\n");
        rc = IC_ERR_INVAL;
    }
    return rc;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n > k && strcmp(s + n - k, suffix) == 0;
}

static bool purging(const sessions_args *a)
{
    return a->purge_id || a->purge_all || a->purge_bad || a->purge_older_s >= 0;
}

/* Whether a file (info NULL: bad) goes. */
static bool to_purge(const sessions_args *a, const ic_durable_info *info, int64_t now_ms)
{
    if (!info)
        return a->purge_bad;
    return a->purge_all || (a->purge_id && strcmp(a->purge_id, info->session_id) == 0) ||
           (a->purge_older_s >= 0 && now_ms - info->updated_ms > a->purge_older_s * 1000LL);
}

static void print_info(const ic_durable_info *in)
{
    char when[32] = "?";
    time_t t = (time_t)(in->updated_ms / 1000);
    struct tm tm;
    if (gmtime_r(&t, &tm))
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("%-22s %-16s %6d %8d %10zu  %s\n", in->session_id, in->client[0] ? in->client : "-",
           in->n_turns, in->n_ctx_used, in->bytes, when);
}

int ic_cmd_sessions(int argc, char **argv)
{
    sessions_args a = {.purge_older_s = -1};
    int rc = parse_args(argc, argv, &a);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    int dir_fd = open(a.store, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dir_fd >= 0 ? fdopendir(dir_fd) : NULL;
    if (!d) {
        fprintf(stderr, "inferencecenter sessions: %s: %s\n", a.store, strerror(errno));
        if (dir_fd >= 0)
            close(dir_fd);
        return 1;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t now_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    bool purge = purging(&a);
    if (!purge)
        printf("%-22s %-16s %6s %8s %10s  %s\n", "SESSION", "CLIENT", "TURNS", "TOKENS", "BYTES",
               "LAST END (UTC)");
    int n = 0, n_bad = 0, n_purged = 0, failed = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.' || !ends_with(e->d_name, IC_DURABLE_SUFFIX))
            continue;
        size_t len = 0;
        char *data = ic_store_read_file(dir_fd, e->d_name, &len);
        ic_durable_info info;
        const char *why = "cannot read it";
        bool ok = data && ic_durable_record_info(e->d_name, data, len, &info, &why) == 0;
        free(data);
        n += ok;
        n_bad += !ok;
        if (!purge) {
            if (ok)
                print_info(&info);
            else
                printf("%-22s bad: %s\n", e->d_name, why);
            continue;
        }
        if (!to_purge(&a, ok ? &info : NULL, now_ms))
            continue;
        if (unlinkat(dir_fd, e->d_name, 0) < 0) {
            fprintf(stderr, "inferencecenter sessions: cannot remove %s: %s\n", e->d_name,
                    strerror(errno));
            failed = 1;
            continue;
        }
        printf("removed %s\n", e->d_name);
        n_purged++;
        if (ok) { /* and its KV state, if it had one on disk */
            char kv[64];
            snprintf(kv, sizeof kv, "%s.kv", info.session_id);
            unlinkat(dir_fd, kv, 0);
        }
    }
    if (n_purged > 0)
        fsync(dir_fd); /* the removals are durable too */
    closedir(d);
    if (purge) {
        fprintf(stderr, "%d files removed from %s\n", n_purged, a.store);
        if (a.purge_id && n_purged == 0 && !failed) {
            fprintf(stderr, "inferencecenter sessions: no session %s in %s\n", a.purge_id,
                    a.store);
            return 1;
        }
    } else {
        fprintf(stderr, "%d sessions, %d bad files in %s\n", n, n_bad, a.store);
    }
    return failed;
}
