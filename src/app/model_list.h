/* model_list.h - which models `serve` serves: the --model files in the
 * order given, then every *.gguf of --models-dir (sorted by name), each
 * named by its file name without ".gguf". Main thread at start-up (and
 * the loader thread reads the result).
 */
#ifndef IC_MODEL_LIST_H
#define IC_MODEL_LIST_H

#include <stddef.h>

#define IC_MODEL_LIST_MAX 16 /* = IC_MODELS_MAX (api/models.h) */

#define IC_MODEL_GPU_LAYERS_SERVER (-3) /* gpu_layers: the server's --gpu-layers */
#define IC_MODEL_GPU_LAYERS_AUTO (-2)   /* = cmd_serve's automatic split */

typedef struct ic_model_spec {
    char name[128];
    char path[4096];
    int ctx_size;              /* models.ini ctx-size; 0: the server's --ctx-size */
    int gpu_layers;            /* models.ini gpu-layers, or IC_MODEL_GPU_LAYERS_SERVER */
} ic_model_spec;

/* Main thread; the loader thread reads it after. */
typedef struct ic_model_list {
    int n;
    ic_model_spec m[IC_MODEL_LIST_MAX];
} ic_model_list;

/* The name a file is served under: its base name without ".gguf". */
void ic_model_list_name_of(const char *path, char *name, size_t cap);

/* Adds path under its file's name. Returns 0, or IC_ERR_INVAL (a second
 * model of that name, or more than IC_MODEL_LIST_MAX) with a reason in err. */
int ic_model_list_add(ic_model_list *l, const char *path, char *err, size_t errlen);

/* Adds every *.gguf file of dir, sorted by name, then applies
 * dir/models.ini when there is one: each [NAME] section is a model called
 * NAME, with keys path (relative to dir, or absolute; required), ctx-size
 * (64..1048576) and gpu-layers (auto or a count). A file it names is served
 * under NAME instead of its file name. Returns 0, IC_ERR_IO (dir cannot be
 * read), IC_ERR_PARSE (models.ini: "FILE:LINE: reason") or
 * ic_model_list_add's error, with err. */
int ic_model_list_scan(ic_model_list *l, const char *dir, char *err, size_t errlen);

#endif
