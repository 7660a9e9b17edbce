/* gpu.c - hardware monitor (see gpu.h): NVIDIA GPUs through NVML, which is
 * dlopen'd at create so that the server neither links against nor needs the
 * driver; the host's CPU and RAM come from host.c.
 *
 * Thread: whichever thread created the monitor (network or scheduler); a
 * monitor is never shared. It owns the dlopen handle, NVML's init reference
 * (released with nvmlShutdown) and the last reading.
 */
#include "gpu.h"
#include "clock.h"
#include "err.h"
#include "host.h"
#include "log.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The few NVML types used here. They mirror NVML's ABI (nvml.h, which is not
 * installed and must not be needed): return codes are a C enum (int),
 * devices are opaque pointers, and the v1 structs below are laid out as the
 * driver writes them. */
typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct nvmlMemory_st {
    unsigned long long total, free, used; /* bytes */
} nvmlMemory_t;
typedef struct nvmlUtilization_st {
    unsigned int gpu, memory; /* percent over NVML's last sample period */
} nvmlUtilization_t;

#define NVML_SUCCESS 0
#define NVML_TEMPERATURE_GPU 0
#define NVML_NAME_BYTES 96 /* NVML_DEVICE_NAME_V2_BUFFER_SIZE */

/* The entry points used, resolved by name; all but error_string required. */
typedef struct nvml_api {
    nvmlReturn_t (*init)(void);
    nvmlReturn_t (*shutdown)(void);
    nvmlReturn_t (*get_count)(unsigned int *count);
    nvmlReturn_t (*get_handle)(unsigned int index, nvmlDevice_t *dev);
    nvmlReturn_t (*get_name)(nvmlDevice_t dev, char *name, unsigned int length);
    nvmlReturn_t (*get_temperature)(nvmlDevice_t dev, int sensor, unsigned int *temp_c);
    nvmlReturn_t (*get_utilization)(nvmlDevice_t dev, nvmlUtilization_t *util);
    nvmlReturn_t (*get_memory)(nvmlDevice_t dev, nvmlMemory_t *mem);
    nvmlReturn_t (*get_power)(nvmlDevice_t dev, unsigned int *power_mw);
    const char *(*error_string)(nvmlReturn_t rc);
} nvml_api;

struct ic_gpu_monitor {
    ic_gpu_monitor_opts opts;
    void *lib;      /* dlopen handle; NULL without NVML */
    bool nvml_init; /* we hold one nvmlInit reference */
    nvml_api api;
    int n_gpus;
    nvmlDevice_t dev[IC_GPU_MAX];        /* NULL where the handle was refused */
    char name[IC_GPU_MAX][NVML_NAME_BYTES]; /* read once: names do not change */
    ic_host_cpu cpu;                          /* /proc/stat at the previous sample */
    double last_ms;                           /* when `last` was read; 0 = never */
    ic_hw_sample last;
};

ic_gpu_monitor_opts ic_gpu_monitor_opts_default(void)
{
    return (ic_gpu_monitor_opts){
        .nvml_path = NULL, .min_interval_ms = 1000.0, .read_host = true, .log_info = true};
}

static const char *nvml_strerror(const ic_gpu_monitor *m, nvmlReturn_t rc)
{
    const char *s = m->api.error_string ? m->api.error_string(rc) : NULL;
    return s ? s : "unknown NVML error";
}

/* dlsym hands back a void * that POSIX guarantees to be usable as a function
 * pointer; ISO C has no cast between the two, so the bits are copied. */
_Static_assert(sizeof(void *) == sizeof(void (*)(void)), "POSIX function pointers");
static bool sym(void *lib, const char *name, void *fn_slot)
{
    void *p = dlsym(lib, name);
    memcpy(fn_slot, &p, sizeof p);
    return p != NULL;
}

/* Resolves every entry point; returns the first missing name or NULL. */
static const char *resolve(ic_gpu_monitor *m)
{
    nvml_api *a = &m->api;
#define IC_NVML_SYM(field, name)                                                                   \
    do {                                                                                           \
        if (!sym(m->lib, name, &a->field))                                                         \
            return name;                                                                           \
    } while (0)
    IC_NVML_SYM(init, "nvmlInit_v2");
    IC_NVML_SYM(shutdown, "nvmlShutdown");
    IC_NVML_SYM(get_count, "nvmlDeviceGetCount_v2");
    IC_NVML_SYM(get_handle, "nvmlDeviceGetHandleByIndex_v2");
    IC_NVML_SYM(get_name, "nvmlDeviceGetName");
    IC_NVML_SYM(get_temperature, "nvmlDeviceGetTemperature");
    IC_NVML_SYM(get_utilization, "nvmlDeviceGetUtilizationRates");
    IC_NVML_SYM(get_memory, "nvmlDeviceGetMemoryInfo");
    IC_NVML_SYM(get_power, "nvmlDeviceGetPowerUsage");
#undef IC_NVML_SYM
    sym(m->lib, "nvmlErrorString", &a->error_string); /* optional */
    return NULL;
}

/* Drops whatever load_nvml got so far: the monitor then has no GPUs. */
static void unload_nvml(ic_gpu_monitor *m)
{
    if (m->nvml_init)
        m->api.shutdown();
    if (m->lib)
        dlclose(m->lib);
    m->lib = NULL;
    m->nvml_init = false;
    m->n_gpus = 0;
    memset(&m->api, 0, sizeof m->api);
}

/* Opens NVML and lists the GPUs. Returns true when it found one; else
 * writes why into `why` and holds nothing, except when NVML works but lists
 * no GPU (has_nvml is then true). */
static bool load_nvml(ic_gpu_monitor *m, char *why, size_t whylen)
{
    const char *path = m->opts.nvml_path;
    if (!path || !*path)
        path = getenv("IC_NVML_LIBRARY");
    if (!path || !*path)
        path = "libnvidia-ml.so.1";
    m->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!m->lib) {
        const char *e = dlerror();
        snprintf(why, whylen, "NVML not loaded (%s)", e ? e : path);
        return false;
    }
    const char *missing = resolve(m);
    if (missing) {
        snprintf(why, whylen, "%s lacks %s", path, missing);
        unload_nvml(m);
        return false;
    }
    nvmlReturn_t rc = m->api.init();
    if (rc != NVML_SUCCESS) {
        snprintf(why, whylen, "nvmlInit failed (%s)", nvml_strerror(m, rc));
        unload_nvml(m);
        return false;
    }
    m->nvml_init = true;
    unsigned int count = 0;
    rc = m->api.get_count(&count);
    if (rc != NVML_SUCCESS) {
        snprintf(why, whylen, "nvmlDeviceGetCount failed (%s)", nvml_strerror(m, rc));
        unload_nvml(m);
        return false;
    }
    m->n_gpus = count > IC_GPU_MAX ? IC_GPU_MAX : (int)count;
    for (int i = 0; i < m->n_gpus; i++) {
        if (m->api.get_handle((unsigned int)i, &m->dev[i]) != NVML_SUCCESS)
            m->dev[i] = NULL; /* listed, with every reading failed */
        if (!m->dev[i] || m->api.get_name(m->dev[i], m->name[i], NVML_NAME_BYTES) != NVML_SUCCESS)
            snprintf(m->name[i], NVML_NAME_BYTES, "GPU %d", i);
        m->name[i][NVML_NAME_BYTES - 1] = '\0';
    }
    if (m->n_gpus == 0) {
        snprintf(why, whylen, "NVML reports no GPU");
        return false; /* keep NVML: has_nvml stays true, the GPUs are just absent */
    }
    return true;
}

/* The info line naming each GPU and its memory. */
static void log_gpus(const ic_gpu_monitor *m)
{
    char line[1536] = "", size[32];
    size_t n = 0;
    for (int i = 0; i < m->n_gpus && n < sizeof line; i++) {
        nvmlMemory_t mem = {0};
        if (m->dev[i] && m->api.get_memory(m->dev[i], &mem) == NVML_SUCCESS)
            snprintf(size, sizeof size, "%.1f GiB", (double)mem.total / (1024.0 * 1024.0 * 1024.0));
        else
            snprintf(size, sizeof size, "memory unknown");
        int w = snprintf(line + n, sizeof line - n, "%s%d: %s (%s)", i ? ", " : "", i,
                         m->name[i], size);
        n += w < 0 ? 0 : (size_t)w;
    }
    ic_log_info("gpu: %d NVIDIA GPU%s: %s", m->n_gpus, m->n_gpus == 1 ? "" : "s", line);
}

int ic_gpu_monitor_create(const ic_gpu_monitor_opts *opts, ic_gpu_monitor **out)
{
    *out = NULL;
    ic_gpu_monitor *m = calloc(1, sizeof *m);
    if (!m)
        return IC_ERR_NOMEM;
    m->opts = opts ? *opts : ic_gpu_monitor_opts_default();
    char why[512];
    bool found = load_nvml(m, why, sizeof why);
    m->opts.nvml_path = NULL; /* borrowed for this call only */
    if (m->opts.log_info) {
        if (found)
            log_gpus(m);
        else
            ic_log_info("gpu: %s; no GPU monitoring, the server runs on the CPU", why);
    }
    *out = m;
    return 0;
}

void ic_gpu_monitor_destroy(ic_gpu_monitor *m)
{
    if (!m)
        return;
    unload_nvml(m);
    free(m);
}

int ic_gpu_monitor_n_gpus(const ic_gpu_monitor *m) { return m ? m->n_gpus : 0; }

bool ic_gpu_monitor_has_nvml(const ic_gpu_monitor *m) { return m && m->nvml_init; }

static void read_ram(ic_hw_sample *s)
{
    ic_host_memory(&s->ram_total_bytes, &s->ram_available_bytes);
    s->ram_used_bytes = s->ram_total_bytes - s->ram_available_bytes;
}

/* One GPU's readings; each failed read leaves its value at -1 (memory: 0)
 * so that one unsupported counter does not hide the others. */
static void read_gpu(const ic_gpu_monitor *m, int i, ic_gpu_reading *g)
{
    *g = (ic_gpu_reading){.index = i, .temperature_c = -1, .utilization_pct = -1, .power_w = -1};
    snprintf(g->name, sizeof g->name, "%s", m->name[i]);
    nvmlDevice_t d = m->dev[i];
    if (!d)
        return;
    unsigned int temp_c, power_mw;
    nvmlUtilization_t util;
    nvmlMemory_t mem;
    if (m->api.get_temperature(d, NVML_TEMPERATURE_GPU, &temp_c) == NVML_SUCCESS)
        g->temperature_c = (double)temp_c;
    if (m->api.get_utilization(d, &util) == NVML_SUCCESS)
        g->utilization_pct = (double)util.gpu;
    if (m->api.get_memory(d, &mem) == NVML_SUCCESS) {
        g->memory_used_bytes = (int64_t)mem.used;
        g->memory_total_bytes = (int64_t)mem.total;
    }
    if (m->api.get_power(d, &power_mw) == NVML_SUCCESS)
        g->power_w = (double)power_mw / 1000.0;
}

void ic_gpu_monitor_sample_now(ic_gpu_monitor *m, ic_hw_sample *out)
{
    ic_hw_sample *s = &m->last;
    memset(s, 0, sizeof *s);
    s->max_temperature_c = -1;
    s->n_gpus = m->n_gpus;
    for (int i = 0; i < m->n_gpus; i++) {
        read_gpu(m, i, &s->gpus[i]);
        if (s->gpus[i].temperature_c > s->max_temperature_c)
            s->max_temperature_c = s->gpus[i].temperature_c;
    }
    if (m->opts.read_host) {
        s->cpu_pct = ic_host_cpu_pct(&m->cpu);
        read_ram(s);
    }
    m->last_ms = ic_now_ms();
    *out = *s;
}

void ic_gpu_monitor_sample(ic_gpu_monitor *m, ic_hw_sample *out)
{
    if (m->last_ms == 0 || ic_now_ms() - m->last_ms >= m->opts.min_interval_ms) {
        ic_gpu_monitor_sample_now(m, out);
        return;
    }
    *out = m->last;
}
