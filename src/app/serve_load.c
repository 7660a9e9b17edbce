/* serve_load.c - the model loader of `inferencecenter serve`: the memory
 * plan of each model (GPU layers, the sessions whose KV fits), loading with
 * a retry on fewer layers, residency at start (the awake models stay
 * within the memory budget; api/models.c keeps them there afterwards),
 * and SIGHUP's rescan of --models-dir. Runs on the loader thread (and the
 * rescan thread); the gateway gets the schedulers when they are ready.
 */
#include "serve.h"

#include "engine.h"
#include "err.h"
#include "host.h"
#include "log.h"
#include "notify.h"
#include "plan.h"
#include "rpc.h"
#include "spec.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The plan for path as memory is now; free_* (may be NULL) get the GPUs'
 * free VRAM less the margins, and the host's available RAM. Returns 0, or
 * -1 when the planner cannot read the model. */
static int plan_of(const serve_args *a, const char *path, const ic_sched_opts *so,
                   const ic_engine_opts *eo, ic_plan *p, int64_t *free_vram, int64_t *free_ram)
{
    ic_model_shape shape;
    char err[256];
    if (ic_plan_read_shape(path, &shape, err, sizeof err) < 0)
        return -1;
    ic_plan_input in = ic_plan_input_default();
    ic_engine_device devs[IC_PLAN_MAX_DEVICES];
    in.n_devices = ic_engine_supports_gpu() ? ic_engine_gpu_devices(devs, IC_PLAN_MAX_DEVICES) : 0;
    for (int i = 0; i < in.n_devices; i++) {
        in.device_free_bytes[i] = devs[i].free_bytes;
        in.device_names[i] = devs[i].name;
    }
    int64_t ram_total;
    ic_host_memory(&ram_total, &in.host_available_bytes);
    in.margin_bytes = (int64_t)a->vram_margin_mib << 20;
    in.n_sessions = so->max_sessions;
    in.n_extra_seqs = so->prefix_slots;
    in.n_ctx_per_session = so->n_ctx_per_session;
    in.n_batch_tokens = (uint32_t)a->batch;
    in.kv_unified = so->kv_unified;
    in.type_k = eo->type_k;
    in.type_v = eo->type_v;
    /* --spec draft: each model has a draft context of its own shape,
     * planned first (as if alone), its memory taken from what the model
     * may use and counted in the model's footprint */
    ic_plan draft = {0};
    ic_model_shape dshape;
    bool with_draft = a->spec == IC_SPEC_DRAFT && a->draft_model &&
                      ic_plan_read_shape(a->draft_model, &dshape, err, sizeof err) == 0;
    ic_plan_input din = in;
    if (with_draft) {
        ic_plan_compute(&dshape, &in, &draft);
        ic_plan_shape_free(&dshape);
        for (int i = 0; i < in.n_devices; i++)
            din.device_free_bytes[i] -= draft.device_vram_bytes[i];
        if (din.host_available_bytes > 0)
            din.host_available_bytes -= draft.ram_bytes;
    }
    ic_plan_compute(&shape, &din, p);
    ic_plan_shape_free(&shape);
    p->vram_bytes += draft.vram_bytes;
    p->ram_bytes += draft.ram_bytes;
    int64_t vram = 0;
    for (int i = 0; i < in.n_devices; i++)
        if (in.device_free_bytes[i] > in.margin_bytes)
            vram += in.device_free_bytes[i] - in.margin_bytes;
    if (free_vram)
        *free_vram = vram;
    if (free_ram)
        *free_ram = in.host_available_bytes;
    return 0;
}

/* The memory plan: GPU layers for auto, and the sessions whose KV cache
 * fits (so->max_sessions may go down). A model the planner cannot read is
 * left to the engine, whose error says what is wrong with it. */
static void plan_memory(const serve_args *a, const char *path, int gpu_layers,
                        ic_sched_opts *so, ic_engine_opts *eo)
{
    eo->n_gpu_layers = gpu_layers == GPU_LAYERS_AUTO ? 0 : gpu_layers;
    ic_plan p;
    if (plan_of(a, path, so, eo, &p, NULL, NULL) < 0)
        return;
    if (gpu_layers == GPU_LAYERS_AUTO) {
        eo->n_gpu_layers = p.n_gpu_layers;
        ic_log_info("%s", p.summary);
    }
    if (p.max_sessions < so->max_sessions) {
        ic_log_warn("memory holds the KV cache of %d sessions, not --max-sessions %d "
                    "(%.1f MiB each): serving %d", p.max_sessions, so->max_sessions,
                    (double)p.kv_bytes_per_session / (1 << 20), p.max_sessions);
        so->max_sessions = p.max_sessions;
    }
    if (!p.host_fits)
        ic_log_warn("host memory looks too small for the model's CPU part (%.0f MiB needed)",
                    (double)p.ram_bytes / (1 << 20));
}

static double hottest_gpu(void *ud)
{
    ic_hw_sample hw;
    ic_gpu_monitor_sample(ud, &hw);
    return hw.max_temperature_c;
}

static void watchdog_beat(void *ud)
{
    (void)ud;
    ic_notify_watchdog();
}

/* Loads the model, retrying with fewer GPU layers when an automatic split
 * still runs out of memory. */
static int load_engine(int gpu_layers, ic_engine_opts *eo, ic_engine **e)
{
    for (;;) {
        const char *why = NULL;
        int rc = ic_engine_create(eo, e, &why);
        if (rc == 0)
            return 0;
        bool retry = gpu_layers == GPU_LAYERS_AUTO && eo->n_gpu_layers > 0 &&
                     (rc == IC_ERR_MODEL || rc == IC_ERR_CONTEXT || rc == IC_ERR_NOMEM);
        if (!retry) {
            ic_log_error("cannot load model %s: %s", eo->model_path, why);
            return rc;
        }
        int fewer = ic_plan_fewer_layers(eo->n_gpu_layers);
        ic_log_warn("loading with %d GPU layers failed (%s); retrying with %d",
                    eo->n_gpu_layers, why, fewer);
        eo->n_gpu_layers = fewer;
    }
}

/* A lost RPC server (engine/rpc.h), on the backend's thread: the gateway
 * reports it; during the teardown (freeing the model talks to the servers)
 * nobody would, and the scheduler's join would wait for ever: exit. */
static void rpc_lost(void *ud, const char *why)
{
    serve_loader *ld = ud;
    if (atomic_load(&ld->tearing_down)) {
        ic_log_error("an RPC server was lost during shutdown (%s): exiting now", why);
        _exit(1);
    }
    ic_gateway_engine_failed(ld->gw, why);
}

/* The plan inputs of model m: the server's sessions and context, or
 * models.ini's ctx-size. */
static void plan_opts(const serve_args *a, const ic_model_spec *m, ic_sched_opts *so,
                      ic_engine_opts *eo)
{
    *so = ic_sched_opts_default();
    so->max_sessions = a->max_sessions;
    so->n_ctx_per_session = (uint32_t)(m->ctx_size > 0 ? m->ctx_size : a->ctx_size);
    so->kv_unified = a->kv_unified;
    so->prefix_slots = a->prefix_cache;
    *eo = ic_engine_opts_default();
    eo->type_k = (ic_kv_type)a->cache_type_k;
    eo->type_v = (ic_kv_type)a->cache_type_v;
}

void serve_residency(serve_loader *ld)
{
    const serve_args *a = ld->args;
    const ic_model_list *l = &a->list;
    int count = a->max_loaded_models;
    ld->budget = (ic_models_budget){.max_loaded = count > 0 && count < l->n ? count : 0};
    if (l->n == 1 && !a->models_dir)
        return; /* nothing to choose between, ever */
    int64_t free_vram = 0, free_ram = 0, need_vram = 0, need_ram = 0;
    for (int i = 0; i < l->n; i++) {
        ic_sched_opts so;
        ic_engine_opts eo;
        plan_opts(a, &l->m[i], &so, &eo);
        ic_plan p;
        if (plan_of(a, l->m[i].path, &so, &eo, &p, &free_vram, &free_ram) < 0)
            continue; /* counted as 0: its load will say what is wrong with it */
        ld->vram_bytes[i] = p.vram_bytes;
        ld->ram_bytes[i] = p.ram_bytes;
        if (l->n > 1)
            ic_log_info("residency: model %s needs %.1f MiB RAM and %.1f MiB VRAM awake",
                        l->m[i].name, (double)p.ram_bytes / (1 << 20),
                        (double)p.vram_bytes / (1 << 20));
        need_vram += p.vram_bytes;
        need_ram += p.ram_bytes;
    }
    ld->budget.vram_bytes = free_vram; /* 0 without GPUs: nothing to bound */
    ld->budget.ram_bytes = a->models_ram_mib > 0 ? (int64_t)a->models_ram_mib << 20 : free_ram;
    if (l->n == 1)
        return;
    char count_s[64] = "";
    if (ld->budget.max_loaded > 0)
        snprintf(count_s, sizeof count_s, ", at most %d at once", ld->budget.max_loaded);
    ic_log_info("residency: the %d models need %.0f MiB RAM and %.0f MiB VRAM together; the "
                "awake ones are kept within %.0f MiB RAM (%s) and %.0f MiB VRAM%s, the others "
                "sleep until asked for", l->n, (double)need_ram / (1 << 20),
                (double)need_vram / (1 << 20), (double)ld->budget.ram_bytes / (1 << 20),
                a->models_ram_mib > 0 ? "--models-ram" : "available now",
                (double)ld->budget.vram_bytes / (1 << 20), count_s);
}

/* Waits (up to a minute) until s has gone to sleep. Loader thread. */
static void wait_asleep(ic_sched *s)
{
    for (int i = 0; i < 6000; i++) {
        ic_sched_stats st;
        ic_sched_get_stats(s, &st);
        if (st.state == IC_SCHED_SLEEPING)
            return;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* The residency choice's view of the loaded models plus model want (not
 * loaded yet, or just loaded): awake (not sleeping), busy (work running or
 * queued), and the later loaded the sooner chosen (the default model, 0,
 * stays awake the longest). */
static int room_items(const serve_loader *ld, int want, ic_models_room_item *it)
{
    int n = want >= ld->n ? want + 1 : ld->n;
    for (int j = 0; j < n; j++) {
        it[j] = (ic_models_room_item){.last_used_ms = -(double)j, .vram_bytes = ld->vram_bytes[j],
                                      .ram_bytes = ld->ram_bytes[j]};
        if (j == want || j >= ld->n)
            continue;
        ic_sched_stats st;
        ic_sched_get_stats(ld->sched[j], &st);
        it[j].awake = st.state != IC_SCHED_SLEEPING;
        it[j].busy = st.generating + st.queued > 0;
    }
    return n;
}

/* Puts models to sleep (and waits) until model want fits beside the awake
 * ones. Returns false when it does not fit even so (it loads anyway). */
static bool make_room_to_load(serve_loader *ld, int want, const char *name)
{
    ic_models_room_item it[IC_MODEL_LIST_MAX];
    int out[IC_MODEL_LIST_MAX];
    bool fits;
    int n = room_items(ld, want, it);
    int k = ic_models_choose_sleepers(it, n, want, &ld->budget, out, &fits);
    for (int i = 0; i < k; i++) {
        if (ic_sched_sleep(ld->sched[out[i]]) < 0)
            continue;
        ic_log_info("model %s sleeps to make room for %s", ld->list.m[out[i]].name, name);
        wait_asleep(ld->sched[out[i]]);
    }
    if (!fits)
        ic_log_warn("model %s does not fit the residency budget beside the busy models: "
                    "loading it anyway", name);
    return fits;
}

/* Loads one model and starts its scheduler (ld->sched[ld->n], with its
 * chat templates); so may lose sessions to the memory plan. */
static int load_one(serve_loader *ld, const ic_model_spec *m, ic_sched_opts *so)
{
    const serve_args *a = ld->args;
    ic_engine_opts eo = ic_engine_opts_default();
    eo.model_path = m->path;
    eo.n_threads = a->threads;
    eo.n_batch_tokens = (uint32_t)a->batch;
    eo.progress = true;
    eo.type_k = (ic_kv_type)a->cache_type_k;
    eo.type_v = (ic_kv_type)a->cache_type_v;
    eo.flash_attn = a->flash_attn;
    if (m->ctx_size > 0) /* models.ini */
        so->n_ctx_per_session = (uint32_t)m->ctx_size;
    int gpu_layers = m->gpu_layers != IC_MODEL_GPU_LAYERS_SERVER ? m->gpu_layers : a->gpu_layers;
    plan_memory(a, m->path, gpu_layers, so, &eo);
    ic_sched_engine_opts(so, &eo);
    ic_log_info("loading model %s as %s", m->path, m->name);
    ic_engine *e = NULL;
    if (load_engine(gpu_layers, &eo, &e) < 0)
        return -1;
    char why[256] = "";
    ic_chat *chat = NULL;
    if (ic_chat_create(e, NULL, &chat, why, sizeof why) < 0)
        ic_log_warn("the chat template of %s cannot be used (%s): the OpenAI chat API is off "
                    "for it", m->name, why);
    ic_sched *sched = NULL;
    int rc = ic_sched_create(e, so, &sched);
    if (rc < 0) {
        ic_log_error("cannot start the scheduler: %s", ic_strerror(rc));
        ic_chat_destroy(chat);
        return -1;
    }
    ld->sched[ld->n] = sched;
    ld->chat[ld->n++] = chat;
    return 0;
}

void *serve_load_models(void *arg)
{
    serve_loader *ld = arg;
    const serve_args *a = ld->args;
    ic_sched_opts so = ic_sched_opts_default();
    so.max_sessions = a->max_sessions;
    so.n_ctx_per_session = (uint32_t)a->ctx_size;
    so.kv_unified = a->kv_unified;
    so.prefix_slots = a->prefix_cache;
    so.max_step_ms = a->max_step_ms;
    so.min_prefill_tokens = a->min_prefill_tokens;
    so.slow_step_whole = a->slow_step_prompts == 0;
    so.spec_mode = a->spec;
    so.spec_max_tokens = a->spec_max;
    so.draft_model_path = a->draft_model;
    so.wake = ic_gateway_wake;
    so.wake_ud = ld->gw;
    so.idle_unload_s = a->idle_unload_s;
    ic_gpu_monitor_opts mo = ic_gpu_monitor_opts_default();
    mo.log_info = false; /* the gateway's monitor says what it found */
    mo.read_host = false; /* the guard reads temperatures only */
    if (ic_gpu_monitor_create(&mo, &ld->thermal) == 0 && a->temp_limit_c > 0 &&
        ic_gpu_monitor_has_nvml(ld->thermal)) {
        so.temp_limit_c = a->temp_limit_c;
        so.read_temp_c = hottest_gpu;
        so.temp_ud = ld->thermal;
    }
    so.heartbeat_interval_ms = ic_notify_watchdog_interval_ms();
    so.heartbeat = so.heartbeat_interval_ms > 0 ? watchdog_beat : NULL;
    ic_gateway_model served[IC_MODEL_LIST_MAX];
    ld->list = a->list; /* names for the log (the list is final at start) */
    for (int i = 0; i < a->list.n; i++) {
        /* Each is loaded once (a bad file fails at start, not at a swap);
         * the awake ones stay within the budget, so those loaded earlier
         * may go to sleep first. */
        make_room_to_load(ld, i, a->list.m[i].name);
        ic_sched_opts mso = so;
        mso.session_id_base = ic_models_session_base(i);
        if (load_one(ld, &a->list.m[i], &mso) < 0) {
            ic_gateway_load_failed(ld->gw);
            return NULL;
        }
        served[i] = (ic_gateway_model){.sched = ld->sched[i], .chat = ld->chat[i],
                                       .name = a->list.m[i].name,
                                       .vram_bytes = ld->vram_bytes[i],
                                       .ram_bytes = ld->ram_bytes[i]};
        if (i == 0)
            so.max_sessions = mso.max_sessions; /* HELLO's: the default model's */
    }
    ld->so = so;
    ic_gateway_attach_models(ld->gw, served, ld->n);
    atomic_store(&ld->loaded_all, true);
    if (ic_rpc_n_servers() > 0) /* a lost RPC server now fails the model, not the process */
        ic_rpc_set_fatal_handler(rpc_lost, ld);
    char status[160];
    snprintf(status, sizeof status, "serving %s%s, %d sessions", a->model,
             ld->n > 1 ? " and more" : "", so.max_sessions);
    ic_notify_ready(status);
    return NULL;
}

/* The planned footprint of a model SIGHUP found, as serve_residency
 * plans the others (memory as it is now, the model as if alone). */
static void plan_new(serve_loader *ld, int index, const ic_model_spec *m)
{
    ic_sched_opts so;
    ic_engine_opts eo;
    plan_opts(ld->args, m, &so, &eo);
    ic_plan p;
    bool known = plan_of(ld->args, m->path, &so, &eo, &p, NULL, NULL) == 0;
    ld->vram_bytes[index] = known ? p.vram_bytes : 0;
    ld->ram_bytes[index] = known ? p.ram_bytes : 0;
}

/* SIGHUP: loads the files new in --models-dir since the last look (one
 * that is gone stays served until a restart). Its own thread: a load takes
 * long, and the signal thread must stay free for SIGTERM. */
static void *rescan(void *arg)
{
    serve_loader *ld = arg;
    const serve_args *a = ld->args;
    ic_model_list now = {0};
    char err[512];
    if (ic_model_list_scan(&now, a->models_dir, err, sizeof err) < 0 && now.n == 0)
        ic_log_warn("SIGHUP: %s", err);
    int added = 0;
    for (int i = 0; i < now.n; i++) {
        bool known = false;
        for (int j = 0; j < ld->list.n; j++)
            known |= strcmp(ld->list.m[j].name, now.m[i].name) == 0;
        if (known)
            continue;
        if (ic_model_list_add(&ld->list, now.m[i].path, err, sizeof err) < 0) {
            ic_log_warn("SIGHUP: %s", err);
            break;
        }
        int index = ld->n;
        plan_new(ld, index, &now.m[i]);
        /* Loaded once to check it; then awake only when it fits beside
         * the awake models without putting any to sleep. */
        ic_models_room_item it[IC_MODEL_LIST_MAX];
        int out[IC_MODEL_LIST_MAX];
        bool fits;
        int n = room_items(ld, index, it);
        bool stays = ic_models_choose_sleepers(it, n, index, &ld->budget, out, &fits) == 0 && fits;
        if (!stays)
            make_room_to_load(ld, index, now.m[i].name);
        ic_sched_opts so = ld->so;
        so.session_id_base = ic_models_session_base(index);
        if (load_one(ld, &now.m[i], &so) < 0) {
            ld->list.n--; /* not served: a later SIGHUP tries again */
            continue;
        }
        if (!stays) /* it waits asleep until asked for */
            ic_sched_sleep(ld->sched[index]);
        ic_gateway_model m = {.sched = ld->sched[index], .chat = ld->chat[index],
                              .name = now.m[i].name, .vram_bytes = ld->vram_bytes[index],
                              .ram_bytes = ld->ram_bytes[index]};
        ic_gateway_add_model(ld->gw, &m);
        added++;
    }
    ic_log_info("SIGHUP: --models-dir rescanned, %d new models", added);
    atomic_store(&ld->rescanning, false);
    return NULL;
}

void serve_start_rescan(serve_loader *ld)
{
    if (!ld->args->models_dir)
        return;
    if (!atomic_load(&ld->loaded_all) || atomic_exchange(&ld->rescanning, true)) {
        ic_log_info("SIGHUP: models are still loading; --models-dir not rescanned");
        return;
    }
    if (ld->rescan_started)
        pthread_join(ld->rescan_tid, NULL);
    ld->rescan_started = pthread_create(&ld->rescan_tid, NULL, rescan, ld) == 0;
    if (!ld->rescan_started)
        atomic_store(&ld->rescanning, false);
}
