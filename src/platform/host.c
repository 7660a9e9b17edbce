/* host.c - CPU and RAM use from /proc (see host.h). */
#include "host.h"

#include <stdio.h>

double ic_host_cpu_pct(ic_host_cpu *c)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return 0;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 4)
        return 0;
    unsigned long long idle = v[3] + v[4], total = 0;
    for (int i = 0; i < 8; i++)
        total += v[i];
    unsigned long long busy = total - idle;
    double pct = 0;
    if (c->prev_total && total > c->prev_total && busy >= c->prev_busy)
        pct = 100.0 * (double)(busy - c->prev_busy) / (double)(total - c->prev_total);
    if (pct > 100.0)
        pct = 100.0;
    c->prev_busy = busy;
    c->prev_total = total;
    return pct;
}

void ic_host_memory(int64_t *total_bytes, int64_t *available_bytes)
{
    *total_bytes = *available_bytes = 0;
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
    *total_bytes = mem_total * 1024;
    *available_bytes = mem_avail * 1024;
}
