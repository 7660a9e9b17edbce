/* cmd.h - the subcommands of the inferencecenter binary.
 *
 * Each takes the arguments after its name (argv[0] is the subcommand) and
 * returns the process exit status. Main thread only.
 */
#ifndef IC_CMD_H
#define IC_CMD_H

/* `inferencecenter generate`: one prompt, streamed to stdout. */
int ic_cmd_generate(int argc, char **argv);

/* `inferencecenter serve`: the WebSocket server. */
int ic_cmd_serve(int argc, char **argv);

/* `inferencecenter token add`: create a client's API token, append its hash
 * to the tokens file and print the token once on stdout. */
int ic_cmd_token(int argc, char **argv);

/* `inferencecenter pull SOURCE`: download a GGUF into the models directory. */
int ic_cmd_pull(int argc, char **argv);

/* `inferencecenter list`: the models in the models directory. */
int ic_cmd_list(int argc, char **argv);

/* `inferencecenter sessions --session-store DIR`: list or purge the stored
 * durable sessions. */
int ic_cmd_sessions(int argc, char **argv);

#endif
