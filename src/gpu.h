/* gpu.h - the hardware monitor: GPUs (through NVML, loaded at run time) and
 * the host's CPU and RAM use from /proc.
 *
 * Owned by the network thread, which samples it for METRICS. Without NVML
 * (or without an NVIDIA GPU) it reports no GPUs.
 */
#ifndef IC_GPU_H
#define IC_GPU_H

#include "protocol.h"

#include <stdint.h>

#define IC_GPU_MAX 16

typedef struct ic_gpu_monitor ic_gpu_monitor;

typedef struct ic_hw_sample {
    int n_gpus;
    ic_metrics_gpu gpus[IC_GPU_MAX];
    double cpu_pct;           /* all CPUs, since the previous sample */
    int64_t ram_used_bytes;   /* MemTotal - MemAvailable */
    int64_t ram_total_bytes;
} ic_hw_sample;

/* Creates the monitor. Returns 0 or IC_ERR_NOMEM. */
int ic_gpu_monitor_create(ic_gpu_monitor **out);

/* NULL is ok. */
void ic_gpu_monitor_destroy(ic_gpu_monitor *m);

/* The current values: read at most once a second, else the last reading. */
void ic_gpu_monitor_sample(ic_gpu_monitor *m, ic_hw_sample *out);

#endif
