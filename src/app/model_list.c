/* model_list.c - the served models' files and names (see model_list.h). */
#include "model_list.h"

#include "err.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    int n = 0;
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
    if (rc == 0 && n == 0) {
        snprintf(err, errlen, "--models-dir %s holds no .gguf file", dir);
        rc = IC_ERR_INVAL;
    }
    return rc;
}
