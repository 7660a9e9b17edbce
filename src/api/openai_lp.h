/* openai_lp.h - private to openai.c and openai_logprobs.c: the logprobs
 * value of a choice, as jansson. */
#ifndef IC_OPENAI_LP_H
#define IC_OPENAI_LP_H

#include "openai.h"

#include <jansson.h>

/* null when r carries no log-probabilities; chat: {"content":[...],
 * "refusal":null}; completions: the legacy {tokens, token_logprobs,
 * top_logprobs, text_offset}. A new reference, or NULL (out of memory). */
json_t *ic_oai__logprobs_json(const ic_oai_response *r);

#endif
