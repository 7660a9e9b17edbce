/* clock.h - the one monotonic clock every module reads (CLOCK_MONOTONIC).
 *
 * Pure; any thread.
 */
#ifndef IC_CLOCK_H
#define IC_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Milliseconds since an arbitrary start, never going back. */
static inline double ic_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* The same clock in seconds. */
static inline double ic_now_s(void) { return ic_now_ms() / 1e3; }

/* The same clock in whole microseconds (for atomics). */
static inline int64_t ic_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

#endif
