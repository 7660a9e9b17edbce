/* web.h - the web console: GET /, /console.js and /console.css, built into
 * the binary at compile time (src/api/web/, embedded by embed.cmake).
 *
 * Stateless: the assets are constant data. Network thread (it fills the
 * server's HTTP response), though nothing here needs a particular thread.
 */
#ifndef IC_WEB_H
#define IC_WEB_H

#include "server.h"

#include <stdbool.h>

/* If req names one of the console's files, fills resp and returns true:
 * 200 with the file (gzip'd when Accept-Encoding allows it), or 304 when
 * If-None-Match names its ETag; both with Content-Security-Policy,
 * X-Content-Type-Options, Referrer-Policy, Cache-Control, ETag and Vary.
 * resp->body is malloc'd (the server frees it); NULL on out of memory.
 * Returns false, touching nothing, for any other path. */
bool ic_web_serve(const ic_http_request *req, ic_http_response *resp);

/* The Content-Security-Policy every console response carries. */
extern const char ic_web_csp[];

#endif
