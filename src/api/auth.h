/* auth.h - API tokens: the tokens file, hashed tokens, constant-time
 * checks and creating tokens. (The failed-attempt throttle is throttle.h.)
 *
 * Tokens file: one client per line,
 *   NAME sha256:<64 hex digits> [max_sessions=N] [priority=high|normal|low]
 * blank lines and lines starting with '#' are ignored. Only hashes are
 * kept in memory. An ic_auth is immutable once loaded: the network thread
 * swaps in a new one on SIGHUP.
 */
#ifndef IC_AUTH_H
#define IC_AUTH_H

#include "types.h"

#include <stdbool.h>
#include <stddef.h>

#define IC_CLIENT_NAME_MAX 64

typedef struct ic_auth ic_auth;

typedef struct ic_client_cfg {
    char name[IC_CLIENT_NAME_MAX + 1];
    int max_sessions;           /* 0 = the server's per-client default */
    enum ic_priority priority;  /* highest priority its requests may use */
    bool admin;                 /* admin=true: may load and unload models */
} ic_client_cfg;

/* Loads a tokens file. Returns 0 and *out, or IC_ERR_IO / IC_ERR_PARSE
 * with a one-line reason in err ("FILE:LINE: what is wrong"). */
int ic_auth_load(const char *path, ic_auth **out, char *err, size_t errlen);

/* NULL is ok. */
void ic_auth_destroy(ic_auth *a);

/* Number of clients (lines) loaded. */
int ic_auth_count(const ic_auth *a);

/* Checks a presented token against every entry in constant time (the time
 * does not depend on which entry, if any, matches). Returns 0 and the
 * client's configuration, or IC_ERR_AUTH. */
int ic_auth_check(const ic_auth *a, const char *token, ic_client_cfg *out);

/* Creates a random token (256 bits from the kernel), appends its hash line
 * to path (created with mode 0600 if missing) and writes the token, to be
 * shown once, into token_out (at least 80 bytes). max_sessions 0 = default.
 * Returns 0, IC_ERR_INVAL (bad name or options, err says why), IC_ERR_IO. */
int ic_auth_add_token(const char *path, const char *name, int max_sessions,
                      enum ic_priority priority, char *token_out, size_t cap, char *err,
                      size_t errlen);
/* As ic_auth_add_token; admin adds admin=true to the line. */
int ic_auth_add_token_admin(const char *path, const char *name, int max_sessions,
                            enum ic_priority priority, bool admin, char *token_out, size_t cap,
                            char *err, size_t errlen);

/* Compares a presented secret with the expected one (e.g. --metrics-token
 * against a bearer token) in time that depends on neither's content nor
 * length: both are hashed, the hashes compared with CRYPTO_memcmp. NULL
 * presented is false. Any thread. */
bool ic_auth_secret_equal(const char *presented, const char *expected);

#endif
