/* cmd_pull.c - `inferencecenter pull SOURCE` (fetch a GGUF into the models
 * directory) and `inferencecenter list` (what the directory holds).
 *
 * pull: SOURCE is an http(s) URL or hf:OWNER/REPO/PATH.gguf[@REVISION]
 * (resolved against $IC_HF_ENDPOINT, default https://huggingface.co). The
 * bytes go to NAME.gguf.part (never taken for a model: not *.gguf), resumed
 * with Range when it exists; the SHA-256 is checked against --sha256 or the
 * one the server publishes; the GGUF header is read; only then is the part
 * renamed to NAME.gguf (after fsync, and the directory's fsync after). A
 * checksum mismatch or a file that is not a GGUF deletes the part; an
 * interrupted or stalled transfer keeps it for the next run.
 *
 * Main thread.
 */
#include "cli.h"
#include "cmd.h"
#include "download.h"
#include "err.h"
#include "options.h"
#include "plan.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HF_DEFAULT_ENDPOINT "https://huggingface.co"

typedef struct pull_args {
    const char *models_dir;
    const char *sha256;
    const char *name;
    int stall_timeout_s;
    bool quiet;
} pull_args;

#define F(field) offsetof(pull_args, field)
#define MODELS_DIR_ROW                                                                      \
    {.name = "models-dir", .type = IC_OPT_STRING, .offset = F(models_dir), .metavar = "DIR",  \
     .def_help = "$XDG_DATA_HOME/inferencecenter/models (~/.local/share/...)",                \
     .help = "Directory of models; created when missing."}
static const ic_option pull_options[] = {
    MODELS_DIR_ROW,
    {.name = "sha256", .type = IC_OPT_STRING, .offset = F(sha256), .metavar = "HEX",
     .help = "Expected SHA-256 of the file (else the one the server publishes)."},
    {.name = "name", .type = IC_OPT_STRING, .offset = F(name), .metavar = "NAME",
     .def_help = "the file name without .gguf", .help = "Model name to save it as."},
    {.name = "timeout", .type = IC_OPT_INT, .offset = F(stall_timeout_s), .metavar = "S",
     .def = "30", .lo = 1, .hi = 3600,
     .help = "Give up when the server sends nothing for S seconds (run again to resume)."},
    {.name = "quiet", .short_name = 'q', .type = IC_OPT_FLAG, .offset = F(quiet),
     .help = "No progress bar."},
};
static const ic_option list_options[] = {MODELS_DIR_ROW};
#undef F
#define N_PULL_OPTIONS ((int)(sizeof pull_options / sizeof *pull_options))

static const char pull_usage[] =
    "usage: inferencecenter pull SOURCE [options]\n"
    "\n"
    "Downloads a GGUF model into the models directory (resumable; the SHA-256\n"
    "and the GGUF header are checked before the file appears there). SOURCE is\n"
    "an https:// URL or hf:OWNER/REPO/FILE.gguf[@REVISION] (Hugging Face;\n"
    "$IC_HF_ENDPOINT names a mirror, $HF_TOKEN a token for gated files).\n"
    "\n";

static const char list_usage[] =
    "usage: inferencecenter list [--models-dir DIR]\n"
    "\n"
    "Lists the models in the directory: name, size, weight type, parameters.\n"
    "\n";

/* The default directory: $XDG_DATA_HOME/inferencecenter/models, else
 * ~/.local/share/inferencecenter/models. */
static const char *default_models_dir(char *buf, size_t cap)
{
    const char *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(buf, cap, "%s/inferencecenter/models", xdg);
    else
        snprintf(buf, cap, "%s/.local/share/inferencecenter/models", home ? home : ".");
    return buf;
}

/* mkdir -p with mode 0755. Returns 0 or IC_ERR_IO. */
static int make_dirs(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return IC_ERR_IO;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return IC_ERR_IO;
        *p = '/';
    }
    return mkdir(buf, 0755) == 0 || errno == EEXIST ? 0 : IC_ERR_IO;
}

/* Resolves SOURCE into url; file_name gets the last path segment. Returns
 * 0 or IC_ERR_INVAL with the reason on stderr. */
static int resolve_source(const char *src, char *url, size_t cap, char *file_name, size_t fcap)
{
    const char *path_start;
    if (strncmp(src, "hf:", 3) == 0) {
        const char *ref = src + 3, *at = strrchr(ref, '@');
        const char *s1 = strchr(ref, '/'), *s2 = s1 ? strchr(s1 + 1, '/') : NULL;
        if (!s1 || !s2 || s1 == ref || s2 == s1 + 1 || !s2[1] || (at && at < s2)) {
            fprintf(stderr, "inferencecenter pull: '%s' is not hf:OWNER/REPO/FILE.gguf\n", src);
            return IC_ERR_INVAL;
        }
        const char *endpoint = getenv("IC_HF_ENDPOINT");
        if (!endpoint || !*endpoint)
            endpoint = HF_DEFAULT_ENDPOINT;
        size_t elen = strlen(endpoint);
        while (elen > 0 && endpoint[elen - 1] == '/')
            elen--;
        int rlen = at ? (int)(at - ref) : (int)strlen(ref);
        int n = snprintf(url, cap, "%.*s/%.*s/resolve/%s/%.*s", (int)elen, endpoint,
                         (int)(s2 - ref), ref, at ? at + 1 : "main", (int)(rlen - (s2 + 1 - ref)),
                         s2 + 1);
        if (n < 0 || (size_t)n >= cap)
            return IC_ERR_INVAL;
        path_start = url + elen;
    } else if (strncmp(src, "https://", 8) == 0 || strncmp(src, "http://", 7) == 0) {
        if (snprintf(url, cap, "%s", src) >= (int)cap)
            return IC_ERR_INVAL;
        path_start = strchr(url + 8, '/');
        if (!path_start) {
            fprintf(stderr, "inferencecenter pull: '%s' names no file\n", src);
            return IC_ERR_INVAL;
        }
    } else {
        fprintf(stderr, "inferencecenter pull: SOURCE must be an https:// URL or "
                        "hf:OWNER/REPO/FILE.gguf, not '%s'\n", src);
        return IC_ERR_INVAL;
    }
    size_t plen = strcspn(path_start, "?#");
    const char *last = path_start;
    for (size_t i = 0; i < plen; i++) {
        if (path_start[i] == '/')
            last = path_start + i + 1;
    }
    int n = (int)(path_start + plen - last);
    if (n <= 0 || (size_t)n >= fcap) {
        fprintf(stderr, "inferencecenter pull: '%s' names no file\n", src);
        return IC_ERR_INVAL;
    }
    snprintf(file_name, fcap, "%.*s", n, last);
    return 0;
}

/* A model name is a file name: letters, digits, and . _ - + (not first). */
static bool valid_name(const char *s)
{
    if (!*s || *s == '.' || *s == '-' || strlen(s) > 200)
        return false;
    for (; *s; s++) {
        if (!isalnum((unsigned char)*s) && !strchr("._-+", *s))
            return false;
    }
    return true;
}

static bool valid_sha(const char *s)
{
    if (strlen(s) != 64)
        return false;
    for (; *s; s++) {
        if (!isxdigit((unsigned char)*s))
            return false;
    }
    return true;
}

static void human_bytes(double b, char *buf, size_t cap)
{
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        u++;
    }
    snprintf(buf, cap, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
}

/* The progress bar's state (stderr on a terminal). */
typedef struct bar {
    double t0_s;
    int64_t start_bytes;
    bool shown;
} bar;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void draw_bar(void *ud, int64_t have, int64_t total, int64_t new_bytes, bool done)
{
    bar *b = ud;
    double el = now_s() - b->t0_s;
    double rate = el > 0.05 ? (double)new_bytes / el : 0;
    char h[32], t[32], r[32], eta[32] = "";
    human_bytes((double)have, h, sizeof h);
    human_bytes(total > 0 ? (double)total : 0, t, sizeof t);
    human_bytes(rate, r, sizeof r);
    if (total > 0 && rate > 0 && !done) {
        long s = (long)((double)(total - have) / rate);
        snprintf(eta, sizeof eta, "  ETA %ld:%02ld", s / 60, s % 60);
    }
    if (total > 0)
        fprintf(stderr, "\r  %3d%%  %s / %s  %s/s%s\033[K",
                (int)(100.0 * (double)have / (double)total), h, t, r, eta);
    else
        fprintf(stderr, "\r  %s  %s/s\033[K", h, r);
    if (done)
        fputc('\n', stderr);
    b->shown = true;
}

/* fsync a file or directory by path. Returns 0 or IC_ERR_IO. */
static int sync_path(const char *path, bool dir)
{
    int fd = open(path, dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    if (fd < 0)
        return IC_ERR_IO;
    int rc = fsync(fd) == 0 ? 0 : IC_ERR_IO;
    close(fd);
    return rc;
}

/* The checks after a complete transfer: checksum, GGUF header, then the
 * atomic rename. Returns the exit status. */
static int finish(const pull_args *a, const char *part, const char *dest, const char *dir,
                  const ic_download_result *r)
{
    const char *want = a->sha256              ? a->sha256
                       : r->published_sha256[0] ? r->published_sha256
                                                : NULL;
    if (want && strcasecmp(want, r->sha256) != 0) {
        fprintf(stderr, "inferencecenter pull: checksum mismatch: got sha256 %s, expected %s "
                        "(%s); the download was deleted\n", r->sha256, want,
                a->sha256 ? "--sha256" : "published by the server");
        unlink(part);
        return 1;
    }
    ic_model_shape shape;
    char err[512];
    if (ic_plan_read_shape(part, &shape, err, sizeof err) < 0) {
        fprintf(stderr, "inferencecenter pull: the file is not a GGUF model (%s); the "
                        "download was deleted\n", err);
        unlink(part);
        return 1;
    }
    char size[32];
    human_bytes((double)r->bytes_total, size, sizeof size);
    if (sync_path(part, false) < 0 || rename(part, dest) != 0 || sync_path(dir, true) < 0) {
        fprintf(stderr, "inferencecenter pull: cannot move %s to %s: %s\n", part, dest,
                strerror(errno));
        ic_plan_shape_free(&shape);
        return 1;
    }
    printf("%s: %s, %s weights, %.2fB parameters, sha256 %s%s\n", dest, size,
           shape.weight_type, (double)shape.n_params / 1e9, r->sha256,
           want ? " (verified)" : " (no checksum published: not verified)");
    ic_plan_shape_free(&shape);
    return 0;
}

int ic_cmd_pull(int argc, char **argv)
{
    pull_args a = {0};
    int first = 0;
    if (ic_options_defaults(pull_options, N_PULL_OPTIONS, &a) < 0)
        return 2;
    int rc = ic_options_parse(pull_options, N_PULL_OPTIONS, "pull", pull_usage, argc, argv, &a,
                              &first);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    if (argc - first != 1) {
        fprintf(stderr, "inferencecenter pull: give one SOURCE (see --help)\n");
        return 2;
    }
    if (a.sha256 && !valid_sha(a.sha256)) {
        fprintf(stderr, "inferencecenter pull: --sha256 needs 64 hex digits\n");
        return 2;
    }
    char url[4096], file[256], dirbuf[4096];
    if (resolve_source(argv[first], url, sizeof url, file, sizeof file) < 0)
        return 2;
    char name[256];
    size_t flen = strlen(file);
    if (a.name)
        snprintf(name, sizeof name, "%s", a.name);
    else
        snprintf(name, sizeof name, "%.*s",
                 (int)(flen > 5 && strcmp(file + flen - 5, ".gguf") == 0 ? flen - 5 : flen), file);
    if (!valid_name(name)) {
        fprintf(stderr, "inferencecenter pull: '%s' is not a usable model name (letters, "
                        "digits, . _ - +); give one with --name\n", name);
        return 2;
    }
    const char *dir = a.models_dir ? a.models_dir : default_models_dir(dirbuf, sizeof dirbuf);
    if (make_dirs(dir) < 0) {
        fprintf(stderr, "inferencecenter pull: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char dest[4600], part[4608];
    snprintf(dest, sizeof dest, "%s/%s.gguf", dir, name);
    snprintf(part, sizeof part, "%s.part", dest);
    if (access(dest, F_OK) == 0) {
        fprintf(stderr, "inferencecenter pull: %s is already there (delete it to fetch it "
                        "again)\n", dest);
        return 0;
    }
    ic_download_opts o = ic_download_opts_default();
    o.stall_timeout_s = a.stall_timeout_s;
    const char *tok = getenv("HF_TOKEN");
    o.bearer_token = tok && *tok ? tok : NULL;
    bar b = {.t0_s = now_s()};
    if (!a.quiet && isatty(STDERR_FILENO)) {
        o.progress = draw_bar;
        o.progress_ud = &b;
    }
    fprintf(stderr, "pulling %s\n", url);
    ic_download_result r;
    rc = ic_download_file(url, part, &o, &r);
    if (b.shown && rc < 0)
        fputc('\n', stderr);
    if (rc < 0) {
        fprintf(stderr, "inferencecenter pull: %s\n", r.error[0] ? r.error : ic_strerror(rc));
        bool resumable = rc == IC_ERR_TIMEOUT || rc == IC_ERR_IO || rc == IC_ERR_SYS;
        if (resumable && access(part, F_OK) == 0)
            fprintf(stderr, "  %s keeps the %" PRId64 " bytes so far; the same command "
                            "resumes\n", part, r.bytes_total);
        return 1;
    }
    if (r.resumed)
        fprintf(stderr, "resumed: %" PRId64 " bytes were already there, %" PRId64 " fetched\n",
                r.bytes_total - r.bytes_transferred, r.bytes_transferred);
    return finish(&a, part, dest, dir, &r);
}

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

int ic_cmd_list(int argc, char **argv)
{
    pull_args a = {0};
    int rc = ic_options_parse(list_options, 1, "list", list_usage, argc, argv, &a, NULL);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    char dirbuf[4096];
    const char *dir = a.models_dir ? a.models_dir : default_models_dir(dirbuf, sizeof dirbuf);
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "inferencecenter list: cannot read %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char *names[4096];
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < 4096;) {
        size_t len = strlen(e->d_name);
        if (len > 5 && strcmp(e->d_name + len - 5, ".gguf") == 0 &&
            (names[n] = strdup(e->d_name)))
            n++;
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    printf("%-32s %10s  %-8s %8s  %s\n", "NAME", "SIZE", "WEIGHTS", "PARAMS", "ARCH");
    for (int i = 0; i < n; i++) {
        char path[8192], size[32], err[256];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        struct stat st;
        human_bytes(stat(path, &st) == 0 ? (double)st.st_size : 0, size, sizeof size);
        int nlen = (int)strlen(names[i]) - 5;
        ic_model_shape s;
        if (ic_plan_read_shape(path, &s, err, sizeof err) < 0) {
            printf("%-32.*s %10s  (not a readable GGUF model)\n", nlen, names[i], size);
        } else {
            double p = (double)s.n_params;
            char params[32];
            snprintf(params, sizeof params, p >= 1e9 ? "%.1fB" : p >= 1e6 ? "%.1fM" : "%.0fK",
                     p >= 1e9 ? p / 1e9 : p >= 1e6 ? p / 1e6 : p / 1e3);
            printf("%-32.*s %10s  %-8s %8s  %s\n", nlen, names[i], size, s.weight_type, params,
                   s.arch);
            ic_plan_shape_free(&s);
        }
        free(names[i]);
    }
    return 0;
}
