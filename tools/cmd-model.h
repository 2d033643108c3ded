/* cmd-model.h: the CLI's model-file commands (cmd-model.c). */
#ifndef DMOE_CMD_MODEL_H
#define DMOE_CMD_MODEL_H

/* dmoe info PATH: a model directory or one .safetensors file. Returns an exit code. */
int dmoe_cli_info_path(const char *path);
/* dmoe synth DIR [options]: argv excludes the word "synth". Returns an exit code. */
int dmoe_cli_synth(int argc, char **argv);

#endif
