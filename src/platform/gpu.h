/* gpu.h - the hardware monitor: NVIDIA GPUs through NVML, loaded at run
 * time with dlopen (never required), and the host's CPU and RAM use from
 * /proc (host.h). The only module that touches NVML.
 *
 * A monitor belongs to the thread that created it: the network thread keeps
 * one for METRICS and /metrics, the scheduler thread one for the thermal
 * guard (NVML itself is thread-safe and reference-counts its init). Without
 * the library, or without a GPU, a monitor reports no GPUs.
 */
#ifndef IC_GPU_H
#define IC_GPU_H

#include <stdbool.h>
#include <stdint.h>

#define IC_GPU_MAX 16

typedef struct ic_gpu_monitor ic_gpu_monitor;

typedef struct ic_gpu_monitor_opts {
    /* NVML library to dlopen; NULL: $IC_NVML_LIBRARY, else libnvidia-ml.so.1. */
    const char *nvml_path;
    /* Readings are reused for this long (default 1000 ms). */
    double min_interval_ms;
    /* Also read CPU and RAM from /proc (default true). */
    bool read_host;
    /* Log the one informational line about NVML's absence or the GPUs found
     * (default true; the second monitor of a process turns it off). */
    bool log_info;
} ic_gpu_monitor_opts;

/* One GPU's readings; -1 where a reading failed (memory: 0). */
typedef struct ic_gpu_reading {
    int index;
    char name[96];
    double temperature_c;
    double utilization_pct;
    int64_t memory_used_bytes;
    int64_t memory_total_bytes;
    double power_w;
} ic_gpu_reading;

typedef struct ic_hw_sample {
    int n_gpus;
    ic_gpu_reading gpus[IC_GPU_MAX];
    double max_temperature_c; /* hottest GPU; -1 without GPUs or readings */
    double cpu_pct;           /* all CPUs, since the previous sample */
    int64_t ram_used_bytes;   /* MemTotal - MemAvailable */
    int64_t ram_total_bytes;
    int64_t ram_available_bytes; /* MemAvailable */
} ic_hw_sample;

/* nvml_path NULL, 1000 ms, host readings on, info line on. */
ic_gpu_monitor_opts ic_gpu_monitor_opts_default(void);

/* Creates the monitor and loads NVML if it can (a missing library or a
 * failing nvmlInit is not an error: the monitor then reports no GPUs).
 * Returns 0 or IC_ERR_NOMEM. opts may be NULL (defaults). */
int ic_gpu_monitor_create(const ic_gpu_monitor_opts *opts, ic_gpu_monitor **out);

/* Shuts NVML down (if loaded) and unloads it. NULL is ok. */
void ic_gpu_monitor_destroy(ic_gpu_monitor *m);

/* GPUs NVML reported at create (0 without NVML). */
int ic_gpu_monitor_n_gpus(const ic_gpu_monitor *m);

/* True when NVML was loaded and initialised. */
bool ic_gpu_monitor_has_nvml(const ic_gpu_monitor *m);

/* The current values: read at most once per min_interval_ms, else the last
 * reading. A GPU whose reading fails keeps its other values; a failed
 * temperature reads -1. */
void ic_gpu_monitor_sample(ic_gpu_monitor *m, ic_hw_sample *out);

/* Reads now, whatever the interval. */
void ic_gpu_monitor_sample_now(ic_gpu_monitor *m, ic_hw_sample *out);

#endif
