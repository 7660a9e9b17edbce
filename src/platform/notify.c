/* notify.c - sd_notify wrappers (see notify.h). Any thread. */
#include "notify.h"

#include <systemd/sd-daemon.h>

#include <stdint.h>
#include <stdio.h>

void ic_notify_ready(const char *status)
{
    sd_notifyf(0, "READY=1\nSTATUS=%s", status ? status : "ready");
}

void ic_notify_stopping(void) { sd_notify(0, "STOPPING=1\nSTATUS=stopping"); }

void ic_notify_status(const char *status) { sd_notifyf(0, "STATUS=%s", status); }

void ic_notify_watchdog(void) { sd_notify(0, "WATCHDOG=1"); }

int ic_notify_watchdog_interval_ms(void)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
        return 0;
    uint64_t ms = usec / 2000; /* half the interval, as systemd recommends */
    return ms < 1 ? 1 : ms > INT32_MAX ? INT32_MAX : (int)ms;
}
