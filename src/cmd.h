/* cmd.h - the subcommands of the inferencecenter binary.
 *
 * Each takes the arguments after its name (argv[0] is the subcommand) and
 * returns the process exit status. Main thread only.
 */
#ifndef IC_CMD_H
#define IC_CMD_H

/* `inferencecenter generate`: one prompt, streamed to stdout. */
int ic_cmd_generate(int argc, char **argv);

#endif
