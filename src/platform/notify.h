/* notify.h - service manager notifications (systemd's sd_notify): READY,
 * STOPPING, STATUS and the watchdog. The only includer of sd-daemon.h.
 *
 * Outside systemd (no $NOTIFY_SOCKET) every call does nothing. Any thread:
 * sd_notify is thread-safe and each call is one datagram.
 */
#ifndef IC_NOTIFY_H
#define IC_NOTIFY_H

/* READY=1 with a STATUS line: the model is loaded and clients are served. */
void ic_notify_ready(const char *status);

/* STOPPING=1: a graceful shutdown has begun. */
void ic_notify_stopping(void);

/* STATUS=<text>, shown by systemctl status. */
void ic_notify_status(const char *status);

/* WATCHDOG=1: the caller is alive and making progress. */
void ic_notify_watchdog(void);

/* Half of the watchdog interval systemd asks for (WatchdogSec), in ms: how
 * often to call ic_notify_watchdog. 0 when there is no watchdog. */
int ic_notify_watchdog_interval_ms(void);

#endif
