/* main.c - the tpllm program: dispatch to a subcommand. */
#include <stdio.h>
#include <string.h>

#include "boot.h"
#include "commands.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
};

static const struct command commands[] = {
    {"inspect", cmd_inspect, "print a GGUF model's architecture, hyperparameters and tensors"},
    {"synth", cmd_synth, "write a synthetic Llama/Qwen2/Gemma3-style GGUF model with random weights"},
    {"perplexity", cmd_perplexity, "llama.cpp-compatible perplexity of a text file"},
    {"verify", cmd_verify, "compare the job (its TP size, its backend) with a one-rank CPU reference"},
    {"plan", cmd_plan, "per-rank shard table and memory plan, from the GGUF header alone"},
    {"generate", cmd_generate, "generate text from a prompt (tensor-parallel under mpirun)"},
    {"bench", cmd_bench, "throughput sweeps: prompt processing and batched decode (llama-bench style), checked"},
    {"serve", cmd_serve, "serve the model to many clients: OpenAI-compatible HTTP (+ ZeroMQ), continuous batching"},
};

static void usage(FILE *out) {
    fprintf(out, "usage: tpllm COMMAND [options]   (tpllm COMMAND --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-11s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("tpllm %s\n", TPLLM_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(argv[1], commands[i].name)) continue;
        int sub_argc = argc - 1;
        char **sub_argv = argv + 1;
        /* --config FILE (the model-running commands): the file's options go first */
        if (boot_config_expand(commands[i].name, &sub_argc, &sub_argv)) return 2;
        int rc = commands[i].run(sub_argc, sub_argv);
        if (rc == 2) boot_config_blame(); /* a bad option from a config file: name its line */
        return rc;
    }
    fprintf(stderr, "tpllm: unknown command '%s'. Run 'tpllm --help' for the list of commands.\n", argv[1]);
    return 2;
}
