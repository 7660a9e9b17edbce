/* main.c - the inferencecenter binary: picks a subcommand and runs it.
 *
 * Wiring only; each subcommand lives in cmd_*.c. Main thread.
 */
#include "cmd.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: inferencecenter <command> [options]\n"
    "\n"
    "A self-hosted LLM inference server on llama.cpp.\n"
    "\n"
    "commands:\n"
    "  serve      serve the model to WebSocket clients (protocol v1)\n"
    "  generate   stream one completion of a prompt to stdout\n"
    "  token      manage API tokens (token add NAME --tokens FILE)\n"
    "  pull       download a GGUF model (URL or hf:OWNER/REPO/FILE.gguf)\n"
    "  list       the models in the models directory\n"
    "  sessions   list or purge the durable sessions of a --session-store\n"
    "\n"
    "  inferencecenter <command> --help   options of a command\n"
    "  inferencecenter --version          version and llama.cpp commit\n";

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("inferencecenter %s (llama.cpp %.12s)\n", IC_VERSION, IC_LLAMA_COMMIT);
        return 0;
    }
    if (strcmp(cmd, "serve") == 0)
        return ic_cmd_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "generate") == 0)
        return ic_cmd_generate(argc - 1, argv + 1);
    if (strcmp(cmd, "token") == 0)
        return ic_cmd_token(argc - 1, argv + 1);
    if (strcmp(cmd, "pull") == 0)
        return ic_cmd_pull(argc - 1, argv + 1);
    if (strcmp(cmd, "list") == 0)
        return ic_cmd_list(argc - 1, argv + 1);
    if (strcmp(cmd, "sessions") == 0)
        return ic_cmd_sessions(argc - 1, argv + 1);
    fprintf(stderr, "inferencecenter: unknown command '%s'\n\n%s", cmd, usage);
    return 2;
}
