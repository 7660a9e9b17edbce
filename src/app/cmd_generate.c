/* cmd_generate.c - `inferencecenter generate`: load a model, stream one
 * completion to stdout, print timings to stderr. With --chat the prompt is
 * a user turn rendered with the model's own template by the chat module
 * (engine/chat.h, as the server's chat mode and OpenAI API do), optionally
 * constrained by --json-schema.
 *
 * Runs on the main thread and drives the engine directly (no scheduler):
 * one sequence, prompt in chunks of the batch size, then one token per
 * decode.
 */
#include "buf.h"
#include "cli.h"
#include "chat.h"
#include "cmd.h"
#include "engine.h"
#include "clock.h"
#include "err.h"
#include "log.h"
#include "utf8.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct gen_args {
    const char *model;
    const char *prompt;
    bool chat;                /* prompt is a user turn of a chat */
    const char *system;       /* --chat: the system message, or NULL */
    const char *json_schema;  /* --chat: constrains the answer, or NULL */
    int max_tokens;
    int n_threads;
    int n_gpu_layers;
    int n_ctx_tokens;
    ic_sample_params sample;
} gen_args;

static const char usage[] =
    "usage: inferencecenter generate --model PATH --prompt TEXT [options]\n"
    "\n"
    "Streams the model's continuation of TEXT to stdout; timings go to stderr.\n"
    "\n"
    "  -m, --model PATH       GGUF model file (required)\n"
    "  -p, --prompt TEXT      prompt text (required)\n"
    "      --chat             TEXT is a user message: render it with the model's chat\n"
    "                         template (Jinja, as llama-server) and stop at the turn's end\n"
    "      --system TEXT      --chat: a system message before it\n"
    "      --json-schema JSON --chat: the answer must be an instance of this JSON Schema\n"
    "  -n, --max-tokens N     tokens to generate (default 128)\n"
    "  -t, --temperature T    sampling temperature, 0 = greedy (default 0.8)\n"
    "  -s, --seed S           sampling seed (default random)\n"
    "      --top-k N          (default 40)\n"
    "      --top-p P          (default 0.95)\n"
    "      --min-p P          (default 0.05)\n"
    "      --repeat-penalty R (default 1.0, off)\n"
    "      --repeat-last-n N  (default 64)\n"
    "      --threads N        CPU threads (default: all cores)\n"
    "      --gpu-layers N     layers to offload to the GPU (default 0; -1 = all)\n"
    "      --ctx-size N       context tokens (default: the model's training context)\n"
    "  -h, --help             this help\n";

static int parse_args(int argc, char **argv, gen_args *a)
{
    enum { O_TOPK = 256, O_TOPP, O_MINP, O_RPEN, O_RLAST, O_THREADS, O_GPU, O_CTX, O_CHAT,
           O_SYSTEM, O_SCHEMA };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"prompt", required_argument, 0, 'p'},
        {"max-tokens", required_argument, 0, 'n'}, {"temperature", required_argument, 0, 't'},
        {"seed", required_argument, 0, 's'},    {"top-k", required_argument, 0, O_TOPK},
        {"top-p", required_argument, 0, O_TOPP}, {"min-p", required_argument, 0, O_MINP},
        {"repeat-penalty", required_argument, 0, O_RPEN},
        {"repeat-last-n", required_argument, 0, O_RLAST},
        {"threads", required_argument, 0, O_THREADS},
        {"gpu-layers", required_argument, 0, O_GPU}, {"ctx-size", required_argument, 0, O_CTX},
        {"chat", no_argument, 0, O_CHAT},       {"system", required_argument, 0, O_SYSTEM},
        {"json-schema", required_argument, 0, O_SCHEMA},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0},
    };
    int c, seed = -1, rc = 0;
    optind = 1;
    while (rc == 0 && (c = getopt_long(argc, argv, "m:p:n:t:s:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'p': a->prompt = optarg; break;
        case 'n': rc = ic_cli_parse_int(optarg, 1, 1 << 20, &a->max_tokens); break;
        case 't': rc = ic_cli_parse_float(optarg, 0.0f, 100.0f, &a->sample.temperature); break;
        case 's': rc = ic_cli_parse_int(optarg, 0, INT32_MAX, &seed); break;
        case O_TOPK: rc = ic_cli_parse_int(optarg, 0, 1 << 20, &a->sample.top_k); break;
        case O_TOPP: rc = ic_cli_parse_float(optarg, 0.0f, 1.0f, &a->sample.top_p); break;
        case O_MINP: rc = ic_cli_parse_float(optarg, 0.0f, 1.0f, &a->sample.min_p); break;
        case O_RPEN: rc = ic_cli_parse_float(optarg, 0.01f, 10.0f, &a->sample.repeat_penalty); break;
        case O_RLAST: rc = ic_cli_parse_int(optarg, -1, 1 << 20, &a->sample.repeat_last_n_tokens); break;
        case O_THREADS: rc = ic_cli_parse_int(optarg, 1, 1024, &a->n_threads); break;
        case O_GPU: rc = ic_cli_parse_int(optarg, -1, 100000, &a->n_gpu_layers); break;
        case O_CTX: rc = ic_cli_parse_int(optarg, 16, 1 << 24, &a->n_ctx_tokens); break;
        case O_CHAT: a->chat = true; break;
        case O_SYSTEM: a->system = optarg; break;
        case O_SCHEMA: a->json_schema = optarg; break;
        case 'h': fputs(usage, stdout); return 1;
        default: return IC_ERR_INVAL;
        }
        if (rc < 0)
            fprintf(stderr, "inferencecenter generate: invalid value '%s' for --%s\n", optarg,
                    ic_cli_option_name(opts, c));
    }
    if (rc == 0 && optind < argc) {
        fprintf(stderr, "inferencecenter generate: unexpected argument '%s'\n", argv[optind]);
        rc = IC_ERR_INVAL;
    }
    if (rc == 0 && (!a->model || !a->prompt)) {
        fprintf(stderr, "inferencecenter generate: --model and --prompt are required\n");
        rc = IC_ERR_INVAL;
    }
    if (rc == 0 && !a->chat && (a->system || a->json_schema)) {
        fprintf(stderr, "inferencecenter generate: --system and --json-schema need --chat\n");
        rc = IC_ERR_INVAL;
    }
    if (seed >= 0)
        a->sample.seed = (uint32_t)seed;
    return rc;
}

/* Decodes the prompt in chunks of the batch size; the last token's logits
 * are requested. Returns 0 or an ic_err. */
static int decode_prompt(ic_engine *e, const ic_token *toks, int n, int batch)
{
    for (int i = 0; i < n; i += batch) {
        int end = i + batch < n ? i + batch : n;
        ic_engine_batch_clear(e);
        for (int j = i; j < end; j++)
            ic_engine_batch_add(e, toks[j], j, 0, j == n - 1);
        int rc = ic_engine_decode(e);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Writes a token's text to stdout through the UTF-8 repair stream, or
 * into hold (not NULL) to be printed once parsed. */
static void emit(const ic_engine *e, ic_token tok, ic_utf8_stream *u, ic_buf *piece,
                 ic_buf *out, ic_buf *hold)
{
    ic_buf_clear(piece);
    ic_buf_clear(out);
    if (ic_engine_token_piece(e, tok, piece) == 0 && piece->len)
        ic_utf8_push(u, piece->data, piece->len, out);
    if (hold && out->len) {
        if (ic_buf_append(hold, out->data, out->len) < 0)
            fwrite(out->data, 1, out->len, stdout);
    } else if (out->len) {
        fwrite(out->data, 1, out->len, stdout);
        fflush(stdout);
    }
}

/* --chat: the prompt as a user turn (after --system) in the model's own
 * template; *out holds the text and the grammar. Returns 0 or an ic_err
 * (said on stderr). */
static int render_chat(ic_engine *e, const gen_args *a, ic_chat **chat, ic_chat_prompt **out)
{
    char why[256] = "";
    int rc = ic_chat_create(e, NULL, chat, why, sizeof why);
    ic_chat_message msgs[2];
    size_t n = 0;
    if (a->system)
        msgs[n++] = (ic_chat_message){.role = "system", .content = a->system};
    msgs[n++] = (ic_chat_message){.role = "user", .content = a->prompt};
    ic_chat_render_opts o = ic_chat_render_opts_default();
    o.json_schema = a->json_schema;
    if (rc == 0)
        rc = ic_chat_render(*chat, msgs, n, &o, out, why, sizeof why);
    if (rc < 0)
        fprintf(stderr, "inferencecenter generate: %s\n", why);
    return rc;
}

static int generate(ic_engine *e, const gen_args *a)
{
    ic_engine_info info;
    ic_engine_get_info(e, &info);
    ic_token *toks = NULL;
    int n_prompt = 0, rc;
    double t0 = ic_now_ms();
    ic_chat *chat = NULL;
    ic_chat_prompt *cp = NULL;
    ic_grammar grammar = {0};
    if (a->chat) {
        rc = render_chat(e, a, &chat, &cp);
        /* the template's text holds its control tokens: parsed, as the server does */
        if (rc == 0)
            rc = ic_engine_tokenize(e, cp->prompt, strlen(cp->prompt), true, true, &toks, &n_prompt);
        if (rc == 0)
            grammar = ic_chat_prompt_grammar(cp);
    } else {
        rc = ic_engine_tokenize(e, a->prompt, strlen(a->prompt), true, false, &toks, &n_prompt);
    }
    if (rc == 0 && n_prompt + a->max_tokens > (int)info.n_ctx_tokens) {
        fprintf(stderr, "inferencecenter generate: prompt (%d tokens) + --max-tokens (%d) "
                        "exceed the context (%u tokens)\n",
                n_prompt, a->max_tokens, info.n_ctx_tokens);
        free(toks);
        ic_chat_prompt_free(cp);
        ic_chat_destroy(chat);
        return IC_ERR_PROMPT_TOO_LONG;
    }
    ic_sampler *smp = NULL;
    char gerr[256] = "";
    if (rc == 0 && grammar.gbnf) {
        rc = ic_engine_sampler_create_constrained(e, &a->sample, &grammar, &smp, gerr, sizeof gerr);
        if (rc < 0)
            fprintf(stderr, "inferencecenter generate: grammar: %s\n", gerr);
    }
    rc = rc || smp ? rc : ic_engine_sampler_create(e, &a->sample, &smp);
    rc = rc ? rc : decode_prompt(e, toks, n_prompt, (int)info.n_batch_tokens);
    ic_utf8_stream u;
    ic_utf8_reset(&u);
    ic_buf out = {0}, piece = {0}, held = {0};
    double t_first = 0, t_last = 0;
    int n_gen = 0, idx = -1;
    while (rc == 0 && n_gen < a->max_tokens) {
        ic_token tok = ic_engine_sample(e, smp, idx);
        t_last = ic_now_ms();
        if (n_gen++ == 0)
            t_first = t_last;
        if (ic_engine_token_is_eog(e, tok))
            break;
        emit(e, tok, &u, &piece, &out, a->json_schema ? &held : NULL);
        if (n_gen == a->max_tokens)
            break;
        ic_engine_batch_clear(e);
        idx = ic_engine_batch_add(e, tok, n_prompt + n_gen - 1, 0, true);
        rc = ic_engine_decode(e);
    }
    ic_buf_clear(&out);
    ic_utf8_flush(&u, &out);
    if (a->json_schema && ic_buf_append(&held, out.data ? out.data : "", out.len) == 0) {
        /* The template's parser takes what its grammar allows around the
         * JSON (a code fence, a generation prompt) off: the JSON alone. */
        ic_chat_parsed *p = NULL;
        if (ic_chat_parse(cp, held.data ? held.data : "", held.len, false, &p, NULL, 0) == 0)
            fputs(p->content, stdout);
        else
            fwrite(held.data ? held.data : "", 1, held.len, stdout);
        ic_chat_parsed_free(p);
    } else {
        fwrite(out.data ? out.data : "", 1, out.len, stdout);
    }
    ic_buf_free(&held);
    fputc('\n', stdout);
    fflush(stdout);
    ic_buf_free(&out);
    ic_buf_free(&piece);
    if (rc == 0) {
        double gen_s = (t_last - t_first) / 1e3;
        fprintf(stderr, "prompt tokens: %d\ngenerated tokens: %d\ntime to first token: %.1f ms\n"
                        "tokens/s: %.2f\n",
                n_prompt, n_gen, t_first - t0, n_gen > 1 && gen_s > 0 ? (n_gen - 1) / gen_s : 0.0);
    }
    ic_engine_sampler_destroy(smp);
    free(toks);
    ic_chat_prompt_free(cp);
    ic_chat_destroy(chat);
    return rc;
}

int ic_cmd_generate(int argc, char **argv)
{
    gen_args a = {.max_tokens = 128, .n_ctx_tokens = 0, .sample = ic_sample_params_default()};
    int rc = parse_args(argc, argv, &a);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    ic_engine_global_init();
    ic_engine_opts eo = ic_engine_opts_default();
    eo.model_path = a.model;
    eo.n_threads = a.n_threads;
    eo.n_gpu_layers = a.n_gpu_layers;
    eo.n_ctx_tokens = (uint32_t)a.n_ctx_tokens;
    eo.progress = true;
    ic_engine *e = NULL;
    const char *why = NULL;
    rc = ic_engine_create(&eo, &e, &why);
    if (rc < 0) {
        fprintf(stderr, "inferencecenter: error: %s: %s\n", a.model, why);
        return 1;
    }
    rc = generate(e, &a);
    if (rc < 0 && rc != IC_ERR_PROMPT_TOO_LONG)
        fprintf(stderr, "inferencecenter: error: %s\n", ic_strerror(rc));
    ic_engine_destroy(e);
    return rc < 0 ? 1 : 0;
}
