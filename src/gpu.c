/* gpu.c - hardware monitor (see gpu.h): CPU and RAM from /proc. NVML
 * support comes with the hardware issue; until then no GPU is reported,
 * which is also the right answer on a machine without an NVIDIA GPU.
 * Network thread.
 */
#include "gpu.h"
#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct ic_gpu_monitor {
    unsigned long long prev_busy, prev_total; /* jiffies at the previous sample */
    double last_ms;                           /* when `last` was read; 0 = never */
    ic_hw_sample last;
};

/* Readings are reused for this long: a client asking for METRICS in a loop
 * costs no extra /proc reads. */
#define SAMPLE_INTERVAL_MS 1000.0

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int ic_gpu_monitor_create(ic_gpu_monitor **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : IC_ERR_NOMEM;
}

void ic_gpu_monitor_destroy(ic_gpu_monitor *m) { free(m); }

static void read_cpu(ic_gpu_monitor *m, double *pct)
{
    *pct = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 4)
        return;
    unsigned long long idle = v[3] + v[4], total = 0;
    for (int i = 0; i < 8; i++)
        total += v[i];
    unsigned long long busy = total - idle;
    if (m->prev_total && total > m->prev_total)
        *pct = 100.0 * (double)(busy - m->prev_busy) / (double)(total - m->prev_total);
    m->prev_busy = busy;
    m->prev_total = total;
}

static void read_ram(int64_t *used, int64_t *total)
{
    *used = *total = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return;
    char line[256];
    long long kb, mem_total = 0, mem_avail = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemTotal: %lld kB", &kb) == 1)
            mem_total = kb;
        else if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1)
            mem_avail = kb;
    }
    fclose(f);
    *total = mem_total * 1024;
    *used = (mem_total - mem_avail) * 1024;
}

void ic_gpu_monitor_sample(ic_gpu_monitor *m, ic_hw_sample *out)
{
    double t = now_ms();
    if (m->last_ms == 0 || t - m->last_ms >= SAMPLE_INTERVAL_MS) {
        memset(&m->last, 0, sizeof m->last);
        read_cpu(m, &m->last.cpu_pct);
        read_ram(&m->last.ram_used_bytes, &m->last.ram_total_bytes);
        m->last_ms = t;
    }
    *out = m->last;
}
