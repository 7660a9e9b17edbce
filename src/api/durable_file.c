/* durable_file.c - durable sessions' two file formats (the record's JSON
 * and the KV state file, docs/operations.md) and the record's memory; the
 * rest of durable sessions is durable.c. Network thread, except
 * ic_durable_record_info (durable.h), which is pure.
 */
#include "durable_impl.h"
#include "err.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void turns_free(gw_durable *d)
{
    for (int i = 0; i < d->n_turns; i++) {
        free(d->turns[i].prompt);
        free(d->turns[i].reply);
    }
    free(d->turns);
    d->turns = NULL;
    d->n_turns = d->cap_turns = 0;
}

void ic_gw_dur_pend_clear(gw_durable *d)
{
    free(d->pend_prompt);
    d->pend_prompt = NULL;
    d->pend_request = 0;
    ic_buf_clear(&d->pend_reply);
}

void ic_gw_dur_free(gw_durable *d)
{
    if (!d)
        return;
    free(d->kv);
    free(d->hist);
    turns_free(d);
    ic_gw_dur_pend_clear(d);
    ic_buf_free(&d->pend_reply);
    free(d->system);
    ic_req_params_free(&d->defaults);
    free(d);
}

void ic_gw_dur_file_key(const gw_durable *d, char *key, size_t cap)
{
    snprintf(key, cap, "%s%s", d->sid, RECORD_SUFFIX);
}

void ic_gw_dur_kv_key(const gw_durable *d, char *key, size_t cap)
{
    snprintf(key, cap, "%s%s", d->sid, KV_SUFFIX);
}

/* What a KV state fits: the model file, the llama.cpp build, the context's
 * shape. A state saved under another is dropped and recomputed. */
static void fingerprint(ic_gateway *g, char *out, size_t cap)
{
    ic_engine_info in;
    ic_sched_model_info(g->sched, &in);
    snprintf(out, cap, "model=%s params=%llu bytes=%llu llama=%s ctx=%d k=%s v=%s", in.name,
             (unsigned long long)in.n_params, (unsigned long long)in.file_bytes,
             IC_LLAMA_COMMIT, g->n_ctx_per_session, ic_kv_type_name(in.type_k),
             ic_kv_type_name(in.type_v));
}

void ic_gw_dur_drop_kv(ic_gateway *g, gw_durable *d)
{
    if (!d->kv_on_disk)
        return;
    char key[40];
    ic_gw_dur_kv_key(d, key, sizeof key);
    ic_store_delete(g->store, key);
    d->kv_on_disk = false;
}

bool ic_gw_dur_kv_save(ic_gateway *g, gw_durable *d, const uint8_t *kv, size_t kv_len,
                       const ic_token *hist, int n_hist)
{
    char fp[400];
    fingerprint(g, fp, sizeof fp);
    size_t head = strlen(KV_MAGIC) + strlen(fp) + 1;
    size_t toks = (size_t)n_hist * sizeof(ic_token);
    size_t len = head + sizeof(uint32_t) + toks + kv_len;
    char *blob = malloc(len + 1);
    if (!blob)
        return false;
    snprintf(blob, head + 1, "%s%s\n", KV_MAGIC, fp);
    uint32_t n = (uint32_t)n_hist;
    memcpy(blob + head, &n, sizeof n);
    memcpy(blob + head + sizeof n, hist, toks);
    memcpy(blob + head + sizeof n + toks, kv, kv_len);
    char key[40];
    ic_gw_dur_kv_key(d, key, sizeof key);
    if (ic_store_put_droppable(g->store, key, blob, len) < 0)
        return false;
    d->kv_on_disk = true;
    return true;
}

/* A KV file read back: into d->kv and d->hist, or why not. */
const char *ic_gw_dur_kv_parse(ic_gateway *g, gw_durable *d, const char *data, size_t len)
{
    char fp[400];
    fingerprint(g, fp, sizeof fp);
    size_t magic = strlen(KV_MAGIC), head = magic + strlen(fp) + 1;
    if (len < head + sizeof(uint32_t) || memcmp(data, KV_MAGIC, magic) != 0)
        return "not a KV state file";
    if (memcmp(data + magic, fp, strlen(fp)) != 0 || data[head - 1] != '\n')
        return "saved for another model, llama.cpp build or context shape";
    uint32_t n;
    memcpy(&n, data + head, sizeof n);
    size_t toks = (size_t)n * sizeof(ic_token);
    if (n == 0 || n > (uint32_t)g->n_ctx_per_session || len <= head + sizeof n + toks)
        return "truncated";
    size_t kv_len = len - head - sizeof n - toks;
    if (!(d->hist = malloc(toks)) || !(d->kv = malloc(kv_len))) {
        free(d->hist);
        d->hist = NULL;
        return "out of memory";
    }
    memcpy(d->hist, data + head + sizeof n, toks);
    memcpy(d->kv, data + head + sizeof n + toks, kv_len);
    d->n_hist = (int)n;
    d->kv_len = kv_len;
    d->kv_from_disk = true;
    return NULL;
}

/* --- the record as JSON ------------------------------------------------ */

static json_t *params_json(const ic_req_params *p)
{
    json_t *o = json_object();
    json_t *stop = json_array();
    for (int i = 0; stop && i < p->n_stop; i++)
        json_array_append_new(stop, json_string(p->stop[i]));
    json_object_set_new(o, "set", json_integer(p->set));
    json_object_set_new(o, "max_tokens", json_integer(p->max_tokens));
    json_object_set_new(o, "temperature", json_real(p->temperature));
    json_object_set_new(o, "top_k", json_integer(p->top_k));
    json_object_set_new(o, "top_p", json_real(p->top_p));
    json_object_set_new(o, "min_p", json_real(p->min_p));
    json_object_set_new(o, "repeat_penalty", json_real(p->repeat_penalty));
    json_object_set_new(o, "repeat_last_n", json_integer(p->repeat_last_n));
    json_object_set_new(o, "seed", json_integer(p->seed));
    json_object_set_new(o, "ignore_eos", json_boolean(p->ignore_eos));
    json_object_set_new(o, "allow_special", json_boolean(p->allow_special));
    json_object_set_new(o, "priority", json_integer(p->priority));
    json_object_set_new(o, "stop", stop);
    return o;
}

static int params_from_json(const json_t *o, ic_req_params *p)
{
    memset(p, 0, sizeof *p);
    if (!json_is_object(o))
        return IC_ERR_PARSE;
    p->set = (unsigned)json_integer_value(json_object_get(o, "set"));
    p->max_tokens = (int)json_integer_value(json_object_get(o, "max_tokens"));
    p->temperature = (float)json_real_value(json_object_get(o, "temperature"));
    p->top_k = (int)json_integer_value(json_object_get(o, "top_k"));
    p->top_p = (float)json_real_value(json_object_get(o, "top_p"));
    p->min_p = (float)json_real_value(json_object_get(o, "min_p"));
    p->repeat_penalty = (float)json_real_value(json_object_get(o, "repeat_penalty"));
    p->repeat_last_n = (int)json_integer_value(json_object_get(o, "repeat_last_n"));
    p->seed = (uint32_t)json_integer_value(json_object_get(o, "seed"));
    p->ignore_eos = json_is_true(json_object_get(o, "ignore_eos"));
    p->allow_special = json_is_true(json_object_get(o, "allow_special"));
    json_int_t prio = json_integer_value(json_object_get(o, "priority"));
    p->priority = prio >= IC_PRIORITY_LOW && prio <= IC_PRIORITY_HIGH ? (enum ic_priority)prio
                                                                      : IC_PRIORITY_NORMAL;
    const json_t *stop = json_object_get(o, "stop");
    size_t n = json_array_size(stop);
    for (size_t i = 0; i < n && i < IC_STOP_MAX; i++) {
        const char *t = json_string_value(json_array_get(stop, i));
        if (!t || !(p->stop[p->n_stop] = strdup(t))) {
            ic_req_params_free(p);
            return IC_ERR_PARSE;
        }
        p->n_stop++;
    }
    return 0;
}

/* The record's file (malloc'd compact JSON), or NULL when out of memory. */
char *ic_gw_dur_record_json(const gw_durable *d)
{
    json_t *o = json_object();
    json_t *turns = json_array();
    if (!o || !turns) {
        json_decref(o);
        json_decref(turns);
        return NULL;
    }
    json_object_set_new(o, "format", json_string(RECORD_FORMAT));
    json_object_set_new(o, "version", json_integer(RECORD_VERSION));
    json_object_set_new(o, "session_id", json_string(d->sid));
    json_object_set_new(o, "token_sha256", json_string(d->token_sha256));
    json_object_set_new(o, "client", json_string(d->client));
    json_object_set_new(o, "system", d->system ? json_string(d->system) : json_null());
    json_object_set_new(o, "defaults", params_json(&d->defaults));
    json_object_set_new(o, "n_ctx_used", json_integer(d->n_ctx_used));
    json_object_set_new(o, "updated_ms", json_integer(d->updated_wall_ms));
    for (int i = 0; i < d->n_turns; i++) {
        json_t *t = json_object();
        json_object_set_new(t, "prompt", json_string(d->turns[i].prompt));
        json_object_set_new(t, "raw", json_boolean(d->turns[i].raw));
        json_object_set_new(t, "reply", json_string(d->turns[i].reply));
        json_array_append_new(turns, t);
    }
    json_object_set_new(o, "turns", turns);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

static bool hex64(const char *s)
{
    if (!s || strlen(s) != 64)
        return false;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

int ic_gw_dur_push_turn(gw_durable *d, const char *prompt, bool raw, const char *reply,
                     size_t reply_len)
{
    if (d->n_turns == d->cap_turns) {
        int cap = d->cap_turns ? d->cap_turns * 2 : 8;
        dur_turn *t = realloc(d->turns, (size_t)cap * sizeof *t);
        if (!t)
            return IC_ERR_NOMEM;
        d->turns = t;
        d->cap_turns = cap;
    }
    dur_turn t = {.prompt = strdup(prompt), .raw = raw, .reply = strndup(reply, reply_len)};
    if (!t.prompt || !t.reply) {
        free(t.prompt);
        free(t.reply);
        return IC_ERR_NOMEM;
    }
    d->turns[d->n_turns++] = t;
    return 0;
}

/* A record from its file; NULL and *why when it is not one. */
gw_durable *ic_gw_dur_record_parse(const char *key, const char *data, size_t len, const char **why)
{
    json_error_t jerr;
    json_t *o = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    gw_durable *d = calloc(1, sizeof *d);
    *why = "not a session record (truncated or corrupt JSON)";
    if (!o || !json_is_object(o) || !d)
        goto fail;
    const char *fmt = json_string_value(json_object_get(o, "format"));
    const char *sid = json_string_value(json_object_get(o, "session_id"));
    const char *hash = json_string_value(json_object_get(o, "token_sha256"));
    const char *client = json_string_value(json_object_get(o, "client"));
    const json_t *sys = json_object_get(o, "system");
    const json_t *turns = json_object_get(o, "turns");
    if (!fmt || strcmp(fmt, RECORD_FORMAT) != 0 ||
        json_integer_value(json_object_get(o, "version")) != RECORD_VERSION) {
        *why = "not a version 1 session record";
        goto fail;
    }
    if (!sid || ic_proto_session_num(sid, &d->num) < 0 || !hex64(hash) || !client ||
        strlen(client) > IC_CLIENT_NAME_MAX || !(json_is_null(sys) || json_is_string(sys)) ||
        !json_is_array(turns) || params_from_json(json_object_get(o, "defaults"),
                                                  &d->defaults) < 0) {
        *why = "a field is missing or of the wrong type";
        goto fail;
    }
    snprintf(d->sid, sizeof d->sid, "%s", sid);
    char want[40];
    ic_gw_dur_file_key(d, want, sizeof want);
    if (strcmp(want, key) != 0) {
        *why = "its session_id does not match its name";
        goto fail;
    }
    snprintf(d->token_sha256, sizeof d->token_sha256, "%s", hash);
    snprintf(d->client, sizeof d->client, "%s", client);
    if (json_is_string(sys) && !(d->system = strdup(json_string_value(sys))))
        goto fail;
    for (size_t i = 0; i < json_array_size(turns); i++) {
        const json_t *t = json_array_get(turns, i);
        const char *p = json_string_value(json_object_get(t, "prompt"));
        const char *r = json_string_value(json_object_get(t, "reply"));
        const json_t *raw = json_object_get(t, "raw");
        if (!p || !r || !json_is_boolean(raw)) {
            *why = "a turn is missing a field";
            goto fail;
        }
        if (ic_gw_dur_push_turn(d, p, json_is_true(raw), r, strlen(r)) < 0) {
            *why = "out of memory";
            goto fail;
        }
    }
    d->n_ctx_used = (int)json_integer_value(json_object_get(o, "n_ctx_used"));
    d->updated_wall_ms = (int64_t)json_integer_value(json_object_get(o, "updated_ms"));
    json_decref(o);
    return d;
fail:
    json_decref(o);
    ic_gw_dur_free(d);
    return NULL;
}

int ic_durable_record_info(const char *key, const char *data, size_t len, ic_durable_info *out,
                           const char **why)
{
    memset(out, 0, sizeof *out);
    gw_durable *d = ic_gw_dur_record_parse(key, data, len, why);
    if (!d)
        return IC_ERR_PARSE;
    snprintf(out->session_id, sizeof out->session_id, "%s", d->sid);
    snprintf(out->client, sizeof out->client, "%s", d->client);
    out->n_turns = d->n_turns;
    out->n_ctx_used = d->n_ctx_used;
    out->updated_ms = d->updated_wall_ms;
    out->bytes = d->system ? strlen(d->system) : 0;
    for (int i = 0; i < d->n_turns; i++)
        out->bytes += strlen(d->turns[i].prompt) + strlen(d->turns[i].reply);
    ic_gw_dur_free(d);
    return 0;
}
