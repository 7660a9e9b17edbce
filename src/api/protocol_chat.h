/* protocol_chat.h - protocol v1's chat fields (tools, tool_choice, tool
 * results, reasoning) read from a client message's JSON; protocol.c's
 * helper, not for other modules (it names a jansson type).
 */
#ifndef IC_PROTOCOL_CHAT_H
#define IC_PROTOCOL_CHAT_H

#include "protocol.h"

#include <jansson.h>
#include <stddef.h>

/* Reads CREATE_SESSION's `tools` (infer false) or INFER's `tools`,
 * `tool_choice`, `messages`, `reasoning` and `reasoning_budget` into m.
 * Returns 0, IC_ERR_PARSE with a bad_request message in why (naming the
 * field), or IC_ERR_NOMEM. */
int ic_proto_chat_fields(const json_t *root, bool infer, ic_msg *m, char *why, size_t why_size);

/* Adds a split turn's "content", "reasoning_content" and "tool_calls" to
 * END message m. Returns 0, or -1 when out of memory. */
int ic_proto_chat_end(json_t *m, const ic_chat_parsed *p);

/* Frees what ic_proto_chat_fields allocated in m. */
void ic_proto_chat_free(ic_msg *m);

#endif
