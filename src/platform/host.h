/* host.h - the host's CPU and RAM use, read from /proc.
 *
 * A CPU reader keeps the previous /proc/stat reading to give the use
 * between two readings; it belongs to the thread that owns it (the GPU
 * monitor embeds one). ic_host_memory needs no state: any thread.
 */
#ifndef IC_HOST_H
#define IC_HOST_H

#include <stdint.h>

/* /proc/stat jiffies at the previous reading (zero-initialise). */
typedef struct ic_host_cpu {
    unsigned long long prev_busy, prev_total;
} ic_host_cpu;

/* All CPUs' busy share since the previous call, 0..100 (0 on the first
 * call or when /proc/stat cannot be read). */
double ic_host_cpu_pct(ic_host_cpu *c);

/* MemTotal and MemAvailable from /proc/meminfo, in bytes; 0 when they
 * cannot be read. */
void ic_host_memory(int64_t *total_bytes, int64_t *available_bytes);

#endif
