/* download.h - one file over HTTP(S) with libcurl (the only includer of
 * curl.h): resumable into a ".part" file, SHA-256 computed while it
 * streams, the checksum the server publishes captured (Hugging Face's
 * X-Linked-Etag, an LFS object id), a stall time-out, and a progress
 * callback.
 *
 * The caller's thread (the `pull` command's main thread); blocking. The
 * part file is the caller's: this module only appends to it or starts it
 * anew, and never renames or deletes it.
 */
#ifndef IC_DOWNLOAD_H
#define IC_DOWNLOAD_H

#include <stdbool.h>
#include <stdint.h>

typedef struct ic_download_opts {
    const char *bearer_token;   /* Authorization: Bearer (never sent to another host
                                   on a redirect); NULL: none */
    int connect_timeout_s;      /* default 30 */
    int stall_timeout_s;        /* no byte for this long: IC_ERR_TIMEOUT (default 30) */
    /* Called at most ~10 times a second and once at the end: bytes in the
     * part file so far, the total (-1 unknown), bytes of this transfer. */
    void (*progress)(void *ud, int64_t have_bytes, int64_t total_bytes, int64_t new_bytes,
                     bool done);
    void *progress_ud;
} ic_download_opts;

typedef struct ic_download_result {
    long http_status;           /* of the last response; 0 when none came */
    int64_t bytes_total;        /* size of the whole file in the part file */
    int64_t bytes_transferred;  /* bytes this call received */
    bool resumed;               /* continued an existing part file (206) */
    char sha256[65];            /* of the whole file, lowercase hex */
    char published_sha256[65];  /* what the server says it is ("" when it says nothing) */
    char error[256];            /* on an error: one line for the user */
} ic_download_result;

ic_download_opts ic_download_opts_default(void);

/* Fetches url into part_path, continuing what part_path already holds with
 * a Range request (a server that ignores it restarts the file). Returns 0,
 * or IC_ERR_NOT_FOUND (404), IC_ERR_AUTH (401/403), IC_ERR_TIMEOUT (stall
 * or connect time-out), IC_ERR_IO (disk full, cannot write), IC_ERR_SYS
 * (network, other HTTP statuses), IC_ERR_NOMEM; result->error says why.
 * Nothing is written to part_path unless the server answers 200 or 206. */
int ic_download_file(const char *url, const char *part_path, const ic_download_opts *opts,
                     ic_download_result *result);

/* SHA-256 of a whole file as lowercase hex. Returns 0 or IC_ERR_IO. */
int ic_download_sha256_file(const char *path, char hex[65]);

#endif
