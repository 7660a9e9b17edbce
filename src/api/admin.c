/* admin.c - an admin's model operations: MODEL_LOAD / MODEL_UNLOAD over
 * WebSocket and POST /admin/models/NAME/load|unload over HTTP, for
 * clients whose token has admin=true (auth.h). Unloading ends the model's
 * running generations with END model_unloaded and puts it to sleep (its
 * sessions stay, their KV in host memory; the next INFER loads it again);
 * loading wakes it, or reloads an awake one from its file. Network thread.
 */
#include "gateway_impl.h"
#include "clock.h"
#include "err.h"
#include "log.h"

#include <stdio.h>
#include <string.h>

/* Asks model name's scheduler to load or unload. Returns 0 and *index,
 * IC_ERR_NOT_FOUND or IC_ERR_NOMEM. */
static int act(ic_gateway *g, const char *name, bool load, const char *who, int *index)
{
    int i = name && *name ? ic_models_find(&g->models, name) : -1;
    if (i < 0 || !g->models.m[i].sched)
        return IC_ERR_NOT_FOUND;
    ic_model_entry *e = &g->models.m[i];
    int rc;
    if (load) {
        ic_models_make_room(&g->models, i, &g->opts.models_budget, ic_now_ms());
        rc = ic_sched_load(e->sched);
    } else {
        rc = ic_sched_unload(e->sched);
        if (rc == 0)
            e->resident = false;
    }
    if (rc == 0)
        ic_log_info("admin %s: model %s %s", who, e->name, load ? "loads" : "unloads");
    *index = i;
    return rc;
}

void ic_gw_on_model_admin(ic_gateway *g, client_conn *c, const ic_msg *m)
{
    bool load = m->type == IC_MSG_MODEL_LOAD;
    const char *what = load ? "MODEL_LOAD" : "MODEL_UNLOAD";
    char msg[200];
    if (!c->client.admin) {
        snprintf(msg, sizeof msg, "%s needs an admin's token (admin=true in the tokens file)",
                 what);
        ic_gw_send_error(g, c->id, IC_CODE_FORBIDDEN, msg, NULL, &m->id);
        return;
    }
    if (!m->model) {
        ic_gw_send_error(g, c->id, IC_CODE_BAD_REQUEST, "field 'model' must be a string", NULL,
                         &m->id);
        return;
    }
    int i;
    int rc = act(g, m->model, load, c->client.name, &i);
    if (rc == IC_ERR_NOT_FOUND) {
        snprintf(msg, sizeof msg, "no model named '%.64s' on this server", m->model);
        ic_gw_send_error(g, c->id, IC_CODE_MODEL_NOT_FOUND, msg, NULL, &m->id);
    } else if (rc < 0) {
        ic_gw_send_error(g, c->id, IC_CODE_INTERNAL, ic_strerror(rc), NULL, &m->id);
    } else {
        ic_gw_send_json(g, c->id, ic_proto_model_status(g->models.m[i].name, load, &m->id));
    }
}

static void json_response(ic_http_response *resp, int status, char *body)
{
    resp->status = status;
    resp->content_type = "application/json";
    resp->body = body;
    resp->len = body ? strlen(body) : 0;
}

void ic_gw_http_model_admin(ic_gateway *g, const ic_http_request *req, ic_http_response *resp)
{
    /* /admin/models/NAME/load or /admin/models/NAME/unload */
    const char *name = req->path + strlen("/admin/models/");
    const char *slash = strrchr(name, '/');
    bool load = slash && strcmp(slash, "/load") == 0;
    if (!slash || slash == name || (!load && strcmp(slash, "/unload") != 0) ||
        (size_t)(slash - name) >= IC_MODEL_NAME_MAX) {
        json_response(resp, 404, ic_proto_http_error("not found"));
        return;
    }
    const char *auth = req->authorization;
    const char *token = auth && strncmp(auth, "Bearer ", 7) == 0 ? auth + 7 : NULL;
    ic_client_cfg cfg;
    if (!g->auth) {
        json_response(resp, 403, ic_proto_http_error(
                                     "forbidden: model admin needs --tokens and an admin token"));
        return;
    }
    if (!token || ic_auth_check(g->auth, token, &cfg) < 0) {
        ic_metrics_auth_failed(g->metrics);
        json_response(resp, 401, ic_proto_http_error("bearer token required"));
        return;
    }
    if (!cfg.admin) {
        json_response(resp, 403, ic_proto_http_error(
                                     "forbidden: this token is not an admin's (admin=true)"));
        return;
    }
    char model[IC_MODEL_NAME_MAX];
    snprintf(model, sizeof model, "%.*s", (int)(slash - name), name);
    int i;
    int rc = act(g, model, load, cfg.name, &i);
    if (rc == IC_ERR_NOT_FOUND)
        json_response(resp, 404, ic_proto_http_error("no such model"));
    else if (rc < 0)
        json_response(resp, 500, ic_proto_http_error(ic_strerror(rc)));
    else
        json_response(resp, 200, ic_proto_model_status(g->models.m[i].name, load, NULL));
}
