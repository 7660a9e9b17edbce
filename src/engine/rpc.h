/* rpc.h - llama.cpp's RPC backend (ggml-rpc): a model's layers on other
 * hosts, each running llama.cpp's `rpc-server` (installed by the bootstrap
 * as ggml-rpc-server). Registered servers are devices like GPUs: the
 * planner counts their free memory and llama.cpp puts layers on them
 * (engine.c lists them first, as llama.cpp orders them).
 *
 * The RPC protocol has no authentication and no encryption; `serve --rpc`
 * refuses non-loopback addresses unless told otherwise (docs/scaling.md).
 *
 * A lost server is fatal to the model: ggml-rpc aborts the process on any
 * failed exchange. Once a fatal handler is set (the model serves), such an
 * abort calls it and parks the thread that hit it (the backend's own
 * dispatcher thread), so the server can say so instead of dying; the
 * scheduler waiting on that thread never returns from its decode, and the
 * process must exit without joining it. Before that (start-up), the abort
 * logs the reason and exits with status 1.
 *
 * Thread: ic_rpc_add_server and ic_rpc_set_fatal_handler on one thread
 * before the model is used (the main thread in `serve`); the handler runs
 * on whichever thread failed.
 */
#ifndef IC_RPC_H
#define IC_RPC_H

#include <stddef.h>

/* Connects to endpoint ("host:port") once to see it answers (3 s), then
 * registers it with ggml (ggml_backend_reg_by_name("RPC") and its
 * ggml_backend_rpc_add_server). After ic_engine_global_init, before the
 * model loads. Returns 0, or IC_ERR_INVAL (bad endpoint, a build without
 * RPC), IC_ERR_IO (unreachable) or IC_ERR_MODEL (no devices there), with
 * a one-line reason in err. */
int ic_rpc_add_server(const char *endpoint, char *err, size_t errlen);

/* The servers registered so far. */
int ic_rpc_n_servers(void);

/* Called (once per failing thread, on that thread) with llama.cpp's
 * message when an RPC server is lost while serving; NULL: exit instead. */
typedef void (*ic_rpc_fatal_fn)(void *ud, const char *why);
void ic_rpc_set_fatal_handler(ic_rpc_fatal_fn fn, void *ud);

#endif
