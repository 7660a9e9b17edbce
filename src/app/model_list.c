/* model_list.c - the served models' files and names (see model_list.h). */
#include "model_list.h"

#include "config.h"
#include "err.h"

#include <ctype.h>
#include <dirent.h>
#include <stdbool.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void ic_model_list_name_of(const char *path, char *name, size_t cap)
{
    const char *base = strrchr(path, '/');
    snprintf(name, cap, "%s", base ? base + 1 : path);
    size_t n = strlen(name);
    if (n > 5 && strcmp(name + n - 5, ".gguf") == 0)
        name[n - 5] = '\0';
}

int ic_model_list_add(ic_model_list *l, const char *path, char *err, size_t errlen)
{
    char name[128];
    ic_model_list_name_of(path, name, sizeof name);
    for (int i = 0; i < l->n; i++) {
        if (strcmp(l->m[i].name, name) == 0) {
            snprintf(err, errlen, "two models are named '%s' (%s and %s)", name, l->m[i].path,
                     path);
            return IC_ERR_INVAL;
        }
    }
    if (l->n == IC_MODEL_LIST_MAX) {
        snprintf(err, errlen, "at most %d models can be served (%s is one more)",
                 IC_MODEL_LIST_MAX, path);
        return IC_ERR_INVAL;
    }
    if (strlen(path) >= sizeof l->m[0].path) {
        snprintf(err, errlen, "model path too long: %.64s...", path);
        return IC_ERR_INVAL;
    }
    ic_model_spec *s = &l->m[l->n++];
    snprintf(s->name, sizeof s->name, "%s", name);
    snprintf(s->path, sizeof s->path, "%s", path);
    s->gpu_layers = IC_MODEL_GPU_LAYERS_SERVER;
    return 0;
}

/* models.ini, while it is read. */
typedef struct ini_state {
    ic_model_list *l;
    const char *dir;
    int first;                 /* entries before the scan's */
    char section[128];         /* the section being read */
    int index;                 /* its entry, or -1 before its path= */
} ini_state;

static bool valid_name(const char *s)
{
    if (!*s || strlen(s) >= 128)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("._-", *s))
            return false;
    return true;
}

/* path= of a section: the scanned entry of that file takes the alias, or
 * a new entry is added. */
static int ini_path(ini_state *st, const char *value, char *why, size_t whylen)
{
    char path[4096];
    if (value[0] == '/')
        snprintf(path, sizeof path, "%s", value);
    else
        snprintf(path, sizeof path, "%s/%s", st->dir, value);
    for (int i = 0; i < st->l->n; i++) {
        if (strcmp(st->l->m[i].name, st->section) == 0 && strcmp(st->l->m[i].path, path) != 0) {
            snprintf(why, whylen, "[%s]: a second model of that name", st->section);
            return IC_ERR_PARSE;
        }
    }
    ic_model_list *l = st->l;
    for (int i = st->first; i < l->n; i++) {
        if (strcmp(l->m[i].path, path) == 0) {
            snprintf(l->m[i].name, sizeof l->m[i].name, "%s", st->section);
            st->index = i;
            return 0;
        }
    }
    char err[256];
    if (ic_model_list_add(l, path, err, sizeof err) < 0) {
        snprintf(why, whylen, "%s", err);
        return IC_ERR_PARSE;
    }
    st->index = l->n - 1;
    snprintf(l->m[st->index].name, sizeof l->m[st->index].name, "%s", st->section);
    return 0;
}

static int ini_key(void *ud, const char *section, const char *key, const char *value,
                   char *why, size_t whylen)
{
    ini_state *st = ud;
    if (!*section) {
        snprintf(why, whylen, "'%s' outside a [MODEL] section", key);
        return IC_ERR_PARSE;
    }
    if (strcmp(section, st->section) != 0) {
        if (!valid_name(section)) {
            snprintf(why, whylen, "[%.64s]: a model name is letters, digits, '.', '_', '-'",
                     section);
            return IC_ERR_PARSE;
        }
        snprintf(st->section, sizeof st->section, "%s", section);
        st->index = -1;
    }
    if (strcmp(key, "path") == 0)
        return ini_path(st, value, why, whylen);
    if (st->index < 0) {
        snprintf(why, whylen, "[%s]: path = FILE comes first", section);
        return IC_ERR_PARSE;
    }
    ic_model_spec *s = &st->l->m[st->index];
    char *end;
    long v = strtol(value, &end, 10);
    bool number = *value && !*end;
    if (strcmp(key, "ctx-size") == 0 && number && v >= 64 && v <= 1 << 20) {
        s->ctx_size = (int)v;
    } else if (strcmp(key, "gpu-layers") == 0 && strcmp(value, "auto") == 0) {
        s->gpu_layers = IC_MODEL_GPU_LAYERS_AUTO;
    } else if (strcmp(key, "gpu-layers") == 0 && number && v >= 0 && v <= 10000) {
        s->gpu_layers = (int)v;
    } else {
        snprintf(why, whylen, "[%s]: invalid '%s = %s' (keys: path, ctx-size 64..1048576, "
                              "gpu-layers auto|N)", section, key, value);
        return IC_ERR_PARSE;
    }
    return 0;
}

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

int ic_model_list_scan(ic_model_list *l, const char *dir, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "cannot read --models-dir %s: %s", dir, strerror(errno));
        return IC_ERR_IO;
    }
    char *names[256];
    int n = 0, first = l->n;
    for (struct dirent *e; (e = readdir(d)) && n < 256;) {
        size_t len = strlen(e->d_name);
        if (len > 5 && e->d_name[0] != '.' && strcmp(e->d_name + len - 5, ".gguf") == 0 &&
            (names[n] = strdup(e->d_name)))
            n++;
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (rc == 0)
            rc = ic_model_list_add(l, path, err, errlen);
        free(names[i]);
    }
    char ini[4096];
    snprintf(ini, sizeof ini, "%s/models.ini", dir);
    if (rc == 0 && access(ini, F_OK) == 0) {
        ini_state st = {.l = l, .dir = dir, .first = first, .index = -1};
        rc = ic_config_load_sections(ini, ini_key, &st, err, errlen);
        n += l->n > first;
    }
    if (rc == 0 && n == 0) {
        snprintf(err, errlen, "--models-dir %s holds no .gguf file", dir);
        rc = IC_ERR_INVAL;
    }
    return rc;
}
