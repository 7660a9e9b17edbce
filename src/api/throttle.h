/* throttle.h - the failed-AUTH throttle, and the client address behind a
 * trusted proxy (X-Forwarded-For).
 *
 * Design. The throttle never refuses a token without checking it: every
 * AUTH is checked (in constant time, by ic_auth_check), and a correct token
 * always gets in. What the throttle decides is how long the *answer* waits.
 *
 *   - Keys are networks, not addresses: an IPv4 address counts for its /24,
 *     an IPv6 address for its /64 (an IPv4-mapped IPv6 address is IPv4), so
 *     rotating over the addresses of one network rotates over one key.
 *     Anything that does not parse as an address shares one key.
 *   - Per key, failures are counted in a window of window_s seconds from the
 *     key's first failure. The first max_failures failures of a window are
 *     answered at once. From then on every AUTH from that key, success or
 *     failure, is answered after base_delay_s * 2^(failures - max_failures),
 *     at most max_delay_s.
 *   - A global budget: once all keys together have global_max_failures
 *     failures in the current global window (window_s long), every AUTH from
 *     a key without a success in the last window_s waits max_delay_s. Keys
 *     that authenticated recently keep only their own delay. Rotating over
 *     networks therefore buys at most global_max_failures fast attempts per
 *     window, however many networks the attacker has.
 *   - Successes are delayed exactly as failures are: an answer that came at
 *     once only for a correct token would tell the attacker that a guess was
 *     wrong without waiting, and he would hang up and guess again. So each
 *     guess from a throttled network holds a connection for the delay; the
 *     guess rate is at most (connections he can hold) / max_delay_s, and the
 *     connection caps bound those. A valid client in an attacked network
 *     gets in, later by at most max_delay_s; a success does not reset the
 *     network's failures (a shared NAT with valid users would otherwise
 *     reset the attacker's count).
 *   - Memory is bounded: IC_THROTTLE_SLOTS keys (240 KiB with the hash
 *     index). When the table is full, the key to forget is the one with the
 *     fewest failures in a live window (0 once its window is over; the least
 *     recently seen among equals) of 32 slots drawn at random, so a flood of
 *     new networks evicts the harmless and keeps the worst offenders (one is
 *     at risk only if all 32 drawn have at least as many failures); the
 *     global count lives outside the table and no eviction resets it. Each
 *     AUTH costs O(1).
 *
 * Owned by the network thread (no locks). Times are seconds on any clock
 * that only moves forward (ic_now_s).
 */
#ifndef IC_THROTTLE_H
#define IC_THROTTLE_H

#include <stdbool.h>
#include <stddef.h>

#define IC_THROTTLE_SLOTS 4096
#define IC_CLIENT_ADDR_MAX 64   /* a client address with its NUL (INET6_ADDRSTRLEN is 46) */

typedef struct ic_throttle ic_throttle;

typedef struct ic_throttle_opts {
    int max_failures;           /* per network per window answered at once (>= 1) */
    double window_s;            /* > 0 */
    int global_max_failures;    /* all networks together per window (>= 1) */
    double base_delay_s;        /* the first delay, doubled per further failure */
    double max_delay_s;         /* >= base_delay_s */
} ic_throttle_opts;

/* max_failures 5, window 60 s, global 100, delays 0.25 s to 5 s. */
ic_throttle_opts ic_throttle_opts_default(void);

/* Returns 0, IC_ERR_INVAL (opts out of range) or IC_ERR_NOMEM. */
int ic_throttle_create(const ic_throttle_opts *opts, ic_throttle **out);

/* NULL is ok. */
void ic_throttle_destroy(ic_throttle *t);

/* Seconds to wait before answering an AUTH from addr that arrives now
 * (0: answer at once). Does not count the attempt: call ic_throttle_fail or
 * ic_throttle_success once it is checked. NULL t: 0. */
double ic_throttle_delay_s(ic_throttle *t, const char *addr, double now_s);

/* Records a failed attempt from addr. */
void ic_throttle_fail(ic_throttle *t, const char *addr, double now_s);

/* Records a successful AUTH from addr (exempts its network from the global
 * delay for window_s). */
void ic_throttle_success(ic_throttle *t, const char *addr, double now_s);

/* --- client addresses behind proxies --- */

/* Trusted proxies: addresses or networks ("10.0.0.1", "10.0.0.0/8",
 * "::1", "fd00::/8"). */
typedef struct ic_addr_list ic_addr_list;

/* Parses each of specs[0..n). Returns 0 and *out (n may be 0), IC_ERR_INVAL
 * with the bad entry named in err, or IC_ERR_NOMEM. */
int ic_addr_list_create(const char *const *specs, int n, ic_addr_list **out, char *err,
                        size_t errlen);

/* NULL is ok. */
void ic_addr_list_destroy(ic_addr_list *l);

/* Whether addr (text) is in the list. NULL list or unparsable addr: false. */
bool ic_addr_list_contains(const ic_addr_list *l, const char *addr);

/* The client's address for a connection from peer carrying the
 * X-Forwarded-For value xff (NULL or "" when absent; several header lines
 * joined with ","), written to out (cap >= IC_CLIENT_ADDR_MAX):
 *   - peer not in trusted (or no xff): peer itself, the header ignored;
 *   - else the right-most entry of xff that is not in trusted; each entry
 *     may carry spaces around it and a port ("1.2.3.4:80", "[2001:db8::1]:80");
 *   - every entry trusted: the left-most one;
 *   - an entry that is not an address: the hop to its right (the last
 *     trusted address seen), as nothing left of it can be believed.
 * The result is printed in canonical form (inet_ntop; IPv4-mapped IPv6 as
 * IPv4) when it parses. Pure; any thread. */
void ic_client_addr(const char *peer, const char *xff, const ic_addr_list *trusted, char *out,
                    size_t cap);

#endif
