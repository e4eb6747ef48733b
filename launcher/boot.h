/* boot.h - bring a rank up for the model-running commands: MPI, communicator, backend,
 * model file, shard plan, weights, engine, tokenizer, and the startup report. */
#ifndef TPLLM_BOOT_H
#define TPLLM_BOOT_H

#include "kernels/memtrack.h"
#include "runtime/engine.h"
#include "runtime/planner.h"
#include "runtime/tokenizer.h"

struct boot_opts {
    const char *model;       /* -m */
    int tp;                  /* --tp: 0 = the MPI world size; otherwise must equal it */
    int threads;             /* --threads: 0 = default from the topology */
    const char *backend;     /* --backend cpu|cuda|auto */
    int simd;                /* --simd: KSIMD_* or -1 (auto: TPLLM_SIMD, else the default level) */
    struct engine_opts eng;  /* --ctx, --max-batch-tokens, --kv-type, --kv-blocks ... */
    int64_t device_mem;      /* --device-mem: budget per rank in bytes (0: free memory x mem_fraction) */
    double mem_fraction;     /* --mem-fraction (default 0.90) */
    bool quiet;              /* no startup report */
};
void boot_opts_default(struct boot_opts *o);

/* Parse the options shared by generate/serve/bench/perplexity/verify. Returns 1 when
 * argv[*i] was consumed (with its value), 0 when it is not a shared option, or -1 with
 * a message printed for a bad value. */
int boot_parse_opt(struct boot_opts *o, int argc, char **argv, int *i);
/* Usage lines for the shared options. */
extern const char *boot_opts_usage;

/* --config FILE, for generate, serve, bench, perplexity and verify (`cmd`; other commands are
 * left alone): replaces *argc / *argv (argv[0] is the command's name) with the options of
 * every --config FILE, in order, followed by the command line without its --config options,
 * so that the command's parser reads the files first and the command line wins. Checks the
 * file's syntax and that each option exists for `cmd`; the values are left to the parser.
 * Returns 0, or -1 with a message naming the file, the line and the option. */
int boot_config_expand(const char *cmd, int *argc, char ***argv);
/* The command's parser calls boot_config_at(argv[i]) for each argument it reads, and
 * boot_config_at(NULL) when it is done; after a parse error, boot_config_blame() names the
 * config file line that the offending argument came from (nothing if it came from the
 * command line). */
void boot_config_at(const char *arg);
void boot_config_blame(void);

struct boot {
    int rank, size;
    struct comm *comm;       /* MPI: control messages, host buffers */
    struct comm *dev_comm;   /* CUDA ranks at tp > 1: NCCL (or host-staged MPI) for device buffers; else NULL */
    struct gguf_file *file;
    struct model_config cfg;
    struct shard_plan plan;
    struct kbackend *be;
    struct model model;
    bool model_loaded;
    struct engine *engine;
    struct tokenizer *tok;
    struct memtrack track;   /* this rank's memory: the backend allocates through it */
    struct plan plan_mem;    /* the memory plan the engine was sized by */
    double load_seconds;
    bool quiet;
};

/* Collective: every rank calls it. On failure every rank returns the same non-zero
 * status; the failing rank's message is in e (rank 0 prints it). */
int boot_start(struct boot *b, const struct boot_opts *o, tp_err *e);
/* Release everything (collective; MPI stays initialised). */
void boot_finish(struct boot *b);

/* MPI_Init_thread / MPI_Finalize wrappers used by the commands. */
int boot_mpi_init(int *argc, char ***argv);
void boot_mpi_finalize(void);

/* Parse sizes like "12GiB", "512MiB", "8e9": bytes, or -1. */
int64_t boot_parse_size(const char *s);

#endif
