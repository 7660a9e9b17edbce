/* throttle.c - the failed-AUTH throttle and client addresses behind trusted
 * proxies (design in throttle.h).
 *
 * Network thread: an ic_throttle and an ic_addr_list belong to it; the
 * address functions are pure. The table is a fixed array of slots with a
 * hash index (linear probing, seeded so that colliding networks cannot be
 * chosen); a full table evicts the least worth of 32 random slots, so an
 * AUTH costs O(1) whatever the table holds.
 */
#include "throttle.h"
#include "err.h"

#include <arpa/inet.h>
#include <sys/random.h>

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- addresses -------------------------------------------------------- */

/* An address: family 4 or 6 (0: not an address), 16 bytes (IPv4 in the
 * first 4). */
typedef struct ip_addr {
    unsigned char family;
    unsigned char b[16];
} ip_addr;

/* Parses a bare address (no port, no brackets). IPv4-mapped IPv6 becomes
 * IPv4. Returns true on success. */
static bool parse_ip(const char *s, size_t n, ip_addr *out)
{
    char buf[IC_CLIENT_ADDR_MAX];
    memset(out, 0, sizeof *out);
    if (n == 0 || n >= sizeof buf)
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *zone = strchr(buf, '%'); /* "fe80::1%eth0": the zone is not part of the key */
    if (zone && strchr(buf, ':'))
        *zone = '\0';
    if (inet_pton(AF_INET, buf, out->b) == 1) {
        out->family = 4;
        return true;
    }
    if (inet_pton(AF_INET6, buf, out->b) != 1)
        return false;
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(out->b, mapped, 12) == 0) {
        memmove(out->b, out->b + 12, 4);
        memset(out->b + 4, 0, 12);
        out->family = 4;
    } else {
        out->family = 6;
    }
    return true;
}

static void format_ip(const ip_addr *a, char *out, size_t cap)
{
    if (!inet_ntop(a->family == 4 ? AF_INET : AF_INET6, a->b, out, (socklen_t)cap) && cap)
        out[0] = '\0';
}

/* Keeps the first bits of a (the rest zeroed). */
static void mask_bits(ip_addr *a, int bits)
{
    for (int i = 0; i < 16; i++) {
        int keep = bits - 8 * i;
        a->b[i] &= keep >= 8 ? 0xff : keep <= 0 ? 0 : (unsigned char)(0xff << (8 - keep));
    }
}

/* One X-Forwarded-For entry: trims spaces and tabs, drops a port
 * ("1.2.3.4:80", "[::1]:80") or brackets ("[::1]"). */
static bool parse_hop(const char *s, size_t n, ip_addr *out)
{
    while (n > 0 && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return false;
        size_t rest = n - (size_t)(close - s) - 1; /* after ']' */
        if (rest > 0 && close[1] != ':')
            return false;
        return parse_ip(s + 1, (size_t)(close - s) - 1, out);
    }
    const char *colon = memchr(s, ':', n);
    if (colon && !memchr(colon + 1, ':', n - (size_t)(colon - s) - 1)) /* one ':' = a port */
        n = (size_t)(colon - s);
    return parse_ip(s, n, out);
}

/* ---- trusted proxies -------------------------------------------------- */

typedef struct addr_net {
    ip_addr net; /* masked to bits */
    int bits;
} addr_net;

struct ic_addr_list {
    addr_net *nets;
    int n;
};

static bool parse_net(const char *spec, addr_net *out)
{
    const char *slash = strchr(spec, '/');
    size_t n = slash ? (size_t)(slash - spec) : strlen(spec);
    if (!parse_ip(spec, n, &out->net))
        return false;
    int max = out->net.family == 4 ? 32 : 128;
    out->bits = max;
    if (slash) {
        /* A mapped prefix ("::ffff:10.0.0.0/104") would need its bits moved;
         * write it as IPv4 instead. */
        if (out->net.family == 4 && strchr(spec, ':'))
            return false;
        const char *d = slash + 1;
        int bits = 0;
        if (*d == '\0' || strlen(d) > 3)
            return false;
        for (; *d; d++) {
            if (*d < '0' || *d > '9')
                return false;
            bits = bits * 10 + (*d - '0');
        }
        if (bits > max)
            return false;
        out->bits = bits;
    }
    mask_bits(&out->net, out->bits);
    return true;
}

int ic_addr_list_create(const char *const *specs, int n, ic_addr_list **out, char *err,
                        size_t errlen)
{
    *out = NULL;
    if (n < 0 || (n > 0 && !specs))
        return IC_ERR_INVAL;
    ic_addr_list *l = calloc(1, sizeof *l);
    if (!l || (n > 0 && !(l->nets = calloc((size_t)n, sizeof *l->nets)))) {
        free(l);
        return IC_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) {
        if (!specs[i] || !parse_net(specs[i], &l->nets[i])) {
            if (err && errlen)
                snprintf(err, errlen,
                         "trusted proxy '%.64s' is not an address or ADDRESS/BITS network",
                         specs[i] ? specs[i] : "");
            ic_addr_list_destroy(l);
            return IC_ERR_INVAL;
        }
        l->n++;
    }
    *out = l;
    return 0;
}

void ic_addr_list_destroy(ic_addr_list *l)
{
    if (!l)
        return;
    free(l->nets);
    free(l);
}

static bool list_has(const ic_addr_list *l, const ip_addr *a)
{
    for (int i = 0; l && i < l->n; i++) {
        ip_addr m = *a;
        mask_bits(&m, l->nets[i].bits);
        if (m.family == l->nets[i].net.family && memcmp(m.b, l->nets[i].net.b, 16) == 0)
            return true;
    }
    return false;
}

bool ic_addr_list_contains(const ic_addr_list *l, const char *addr)
{
    ip_addr a;
    return addr && parse_ip(addr, strlen(addr), &a) && list_has(l, &a);
}

void ic_client_addr(const char *peer, const char *xff, const ic_addr_list *trusted, char *out,
                    size_t cap)
{
    if (!out || cap == 0)
        return;
    ip_addr cur;
    if (!peer || !parse_ip(peer, strlen(peer), &cur)) {
        snprintf(out, cap, "%s", peer ? peer : "");
        return;
    }
    /* cur: the hop we believe so far. Walk right to left while it is a
     * trusted proxy. */
    size_t end = xff ? strlen(xff) : 0;
    while (end > 0 && list_has(trusted, &cur)) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',')
            start--;
        ip_addr hop;
        bool blank = strspn(xff + start, " \t") >= end - start;
        if (!blank && !parse_hop(xff + start, end - start, &hop))
            break; /* nothing left of a bad entry can be believed */
        if (!blank)
            cur = hop;
        end = start > 0 ? start - 1 : 0;
    }
    format_ip(&cur, out, cap);
}

/* ---- the throttle ----------------------------------------------------- */

/* One network. Network thread. */
typedef struct throttle_slot {
    ip_addr key;             /* masked to /24 or /64; family 0 = not an address */
    double window_start_s;   /* first failure of the current window */
    int failures;            /* within the current window */
    double last_seen_s;      /* last AUTH, for eviction among equals */
    double good_until_s;     /* a success: no global delay until then */
} throttle_slot;

#define INDEX_SIZE (2 * IC_THROTTLE_SLOTS) /* a power of two: load <= 1/2 */
#define EVICT_SAMPLES 32                   /* slots looked at to pick a victim */

struct ic_throttle {
    ic_throttle_opts o;
    double global_start_s;   /* the current global window */
    int global_failures;     /* in it */
    bool global_started;
    int n_used;              /* slots[0..n_used) are in use */
    uint64_t seed;           /* of the index's hash, so collisions cannot be planned */
    uint64_t rng;            /* xorshift state for eviction samples */
    throttle_slot slots[IC_THROTTLE_SLOTS];
    uint16_t index[INDEX_SIZE]; /* linear probing; slot number + 1, 0 = empty */
};

ic_throttle_opts ic_throttle_opts_default(void)
{
    return (ic_throttle_opts){
        .max_failures = 5,
        .window_s = 60,
        .global_max_failures = 100,
        .base_delay_s = 0.25,
        .max_delay_s = 5,
    };
}

int ic_throttle_create(const ic_throttle_opts *opts, ic_throttle **out)
{
    *out = NULL;
    if (!opts || opts->max_failures < 1 || !(opts->window_s > 0) ||
        opts->global_max_failures < 1 || !(opts->base_delay_s >= 0) ||
        !(opts->max_delay_s >= opts->base_delay_s) || !isfinite(opts->max_delay_s))
        return IC_ERR_INVAL;
    ic_throttle *t = calloc(1, sizeof *t);
    if (!t)
        return IC_ERR_NOMEM;
    t->o = *opts;
    uint64_t r[2] = {0, 0};
    if (getrandom(r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        r[0] = (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)t;
        r[1] = (uint64_t)ts.tv_sec * 0x9E3779B97F4A7C15u;
    }
    t->seed = r[0];
    t->rng = r[1] | 1;
    *out = t;
    return 0;
}

void ic_throttle_destroy(ic_throttle *t)
{
    free(t);
}

static ip_addr key_of(const char *addr)
{
    ip_addr a;
    if (!addr || !parse_ip(addr, strlen(addr), &a))
        memset(&a, 0, sizeof a); /* every non-address shares one key */
    else
        mask_bits(&a, a.family == 4 ? 24 : 64);
    return a;
}

static bool key_equal(const ip_addr *a, const ip_addr *b)
{
    return a->family == b->family && memcmp(a->b, b->b, sizeof a->b) == 0;
}

/* The key's home in the index: a seeded mix of its bytes. */
static size_t home(const ic_throttle *t, const ip_addr *k)
{
    uint64_t lo, hi;
    memcpy(&lo, k->b, 8);
    memcpy(&hi, k->b + 8, 8);
    uint64_t h = t->seed ^ k->family;
    h = (h ^ lo) * 0xFF51AFD7ED558CCDu;
    h = (h ^ (h >> 33) ^ hi) * 0xC4CEB9FE1A85EC53u;
    h ^= h >> 33;
    return (size_t)h & (INDEX_SIZE - 1);
}

/* The index position holding key, or that of the empty entry ending its run. */
static size_t index_pos(const ic_throttle *t, const ip_addr *key)
{
    size_t p = home(t, key);
    while (t->index[p] && !key_equal(&t->slots[t->index[p] - 1].key, key))
        p = (p + 1) & (INDEX_SIZE - 1);
    return p;
}

static throttle_slot *find(ic_throttle *t, const ip_addr *key)
{
    size_t p = index_pos(t, key);
    return t->index[p] ? &t->slots[t->index[p] - 1] : NULL;
}

/* Removes the index entry at p, shifting later entries of the run back so
 * that every key stays reachable from its home. */
static void index_remove(ic_throttle *t, size_t p)
{
    const size_t mask = INDEX_SIZE - 1;
    t->index[p] = 0;
    for (size_t q = (p + 1) & mask; t->index[q]; q = (q + 1) & mask) {
        size_t h = home(t, &t->slots[t->index[q] - 1].key);
        /* The entry at q may move to p unless its home lies in (p, q]. */
        bool stays = p <= q ? (h > p && h <= q) : (h > p || h <= q);
        if (!stays) {
            t->index[p] = t->index[q];
            t->index[q] = 0;
            p = q;
        }
    }
}

static bool window_over(const ic_throttle *t, const throttle_slot *s, double now_s)
{
    return now_s - s->window_start_s >= t->o.window_s;
}

/* How much a slot is worth keeping: its failures in a live window. */
static int worth(const ic_throttle *t, const throttle_slot *s, double now_s)
{
    return window_over(t, s, now_s) ? 0 : s->failures;
}

static uint64_t next_random(ic_throttle *t)
{
    uint64_t x = t->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return t->rng = x;
}

/* A free slot, else the least worth of EVICT_SAMPLES random slots (the
 * least recently seen among equals): a full table forgets the harmless, and
 * a network is only at risk when every sample has at least its failures. */
static throttle_slot *victim(ic_throttle *t, double now_s)
{
    if (t->n_used < IC_THROTTLE_SLOTS)
        return &t->slots[t->n_used++];
    throttle_slot *best = NULL;
    int best_worth = INT_MAX;
    for (int i = 0; i < EVICT_SAMPLES; i++) {
        throttle_slot *s = &t->slots[next_random(t) % IC_THROTTLE_SLOTS];
        int w = worth(t, s, now_s);
        if (!best || w < best_worth || (w == best_worth && s->last_seen_s < best->last_seen_s)) {
            best = s;
            best_worth = w;
        }
    }
    index_remove(t, index_pos(t, &best->key));
    return best;
}

/* The slot of key, made if needed, its window brought up to date. */
static throttle_slot *slot_for(ic_throttle *t, const ip_addr *key, double now_s)
{
    throttle_slot *s = find(t, key);
    if (!s) {
        s = victim(t, now_s);
        memset(s, 0, sizeof *s);
        s->key = *key;
        s->window_start_s = now_s;
        s->good_until_s = -INFINITY;
        t->index[index_pos(t, key)] = (uint16_t)(s - t->slots + 1);
    } else if (window_over(t, s, now_s)) {
        s->failures = 0;
        s->window_start_s = now_s;
    }
    s->last_seen_s = now_s;
    return s;
}

static void global_update(ic_throttle *t, double now_s)
{
    if (!t->global_started || now_s - t->global_start_s >= t->o.window_s) {
        t->global_started = true;
        t->global_start_s = now_s;
        t->global_failures = 0;
    }
}

double ic_throttle_delay_s(ic_throttle *t, const char *addr, double now_s)
{
    if (!t)
        return 0;
    ip_addr key = key_of(addr);
    const throttle_slot *s = find(t, &key);
    double d = 0;
    bool live = s && !window_over(t, s, now_s);
    if (live && s->failures >= t->o.max_failures) {
        int excess = s->failures - t->o.max_failures;
        d = excess >= 60 ? t->o.max_delay_s : ldexp(t->o.base_delay_s, excess);
        if (d > t->o.max_delay_s)
            d = t->o.max_delay_s;
    }
    global_update(t, now_s);
    bool good = s && now_s < s->good_until_s;
    if (t->global_failures >= t->o.global_max_failures && !good)
        d = t->o.max_delay_s;
    return d;
}

void ic_throttle_fail(ic_throttle *t, const char *addr, double now_s)
{
    if (!t)
        return;
    ip_addr key = key_of(addr);
    throttle_slot *s = slot_for(t, &key, now_s);
    if (s->failures < INT_MAX)
        s->failures++;
    global_update(t, now_s);
    if (t->global_failures < INT_MAX)
        t->global_failures++;
}

void ic_throttle_success(ic_throttle *t, const char *addr, double now_s)
{
    if (!t)
        return;
    ip_addr key = key_of(addr);
    throttle_slot *s = slot_for(t, &key, now_s);
    s->good_until_s = now_s + t->o.window_s;
}
