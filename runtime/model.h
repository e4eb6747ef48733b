/* model.h - the model as one rank holds it: config, this rank's weight shards, run state.
 *
 * Every backend reads this same description. Weight pointers live in the backend's
 * memory (host for the CPU backend, device for CUDA). Shapes are given as
 * [rows][cols] with cols contiguous (GGUF ne[0] = cols); "local" sizes are this rank's
 * shard from the shard plan: nh = local query heads, nkv = local KV heads, ff = local
 * FFN columns, nv = local vocabulary rows, hd = head_dim, d = n_embd. */
#ifndef TPLLM_MODEL_H
#define TPLLM_MODEL_H

#include "../kernels/kernels.h"
#include "../parallel/shard.h"
#include "config.h"

struct layer_weights {
    float *attn_norm;       /* [d] (replicated) */
    struct kmat wq;         /* full [n_head*hd][d]   -> local [nh*hd][d] (column-parallel) */
    struct kmat wk;         /* full [n_kv*hd][d]     -> local [nkv*hd][d] */
    struct kmat wv;         /* full [n_kv*hdv][d]    -> local [nkv*hdv][d] */
    float *bq, *bk, *bv;    /* qwen2 biases, local [nh*hd], [nkv*hd], [nkv*hdv]; NULL otherwise */
    float *q_norm, *k_norm; /* gemma3 QK-norm weights [hd] (replicated); NULL otherwise */
    struct kmat wo;         /* full [d][n_head*hdv]  -> local [d][nh*hdv] (row-parallel: columns) */
    float *post_attn_norm;  /* gemma3 [d]; NULL otherwise */
    float *ffn_norm;        /* [d] */
    struct kmat w_gate;     /* full [n_ff][d]        -> local [ff][d] */
    struct kmat w_up;       /* full [n_ff][d]        -> local [ff][d] */
    struct kmat w_down;     /* full [d][n_ff]        -> local [d][ff] (row-parallel) */
    float *post_ffn_norm;   /* gemma3 [d]; NULL otherwise */
};

/* This rank's slice of the model. */
struct model_shard {
    int rank, tp;
    int64_t q_head0, n_head_l;   /* first global query head, local count */
    int64_t kv_head0, n_kv_l;    /* first global KV head, local count */
    int64_t ff0, n_ff_l;         /* first FFN column, local count */
    int64_t vocab0, n_vocab_l;   /* first vocabulary row of the LM head, local count */
    int64_t o_granule, ff_granule; /* reduction granules of attn_output / ffn_down (matmul_f64) */
};

struct model {
    struct model_config cfg;
    struct model_shard sh;
    const struct gguf_file *file;  /* kept open: embedding rows are read from the mapping */
    struct kbackend *be;
    struct kmat tok_embd;          /* [n_vocab][d], host mapping (looked up row by row) */
    struct layer_weights *layers;  /* [n_layer] */
    float *output_norm;            /* [d] */
    struct kmat output;            /* full [n_vocab][d] -> local [nv][d] (tied: rows of token_embd) */
    float *rope_freqs;             /* [n_rot/2] Llama 3 frequency factors (host), or NULL */
    float *rope_freqs_dev;         /* the same in backend memory */
    void *weights_mem;             /* the one backend allocation holding every weight above */
    size_t weights_bytes;          /* its size */
    uint64_t bytes_read;           /* bytes this rank copied out of the file */
    /* while loading (model_load_progress): called with the bytes loaded so far and the total */
    void (*progress)(void *user, uint64_t done, uint64_t total);
    void *progress_user;
};

/* Derive the shard-plan inputs from a config and the file's tensor types. */
int model_shard_model(struct shard_model *sm, const struct model_config *c, const struct gguf_file *f, tp_err *e);

/* Bytes of every weight this rank holds, computed from the header alone (the loader
 * allocates exactly this). */
int model_weight_bytes(const struct model_config *c, const struct gguf_file *f, const struct shard_plan *p,
                       int rank, size_t *bytes, tp_err *e);

/* One tensor slice of a rank, for `tpllm plan --tensors`. */
struct model_slice {
    const char *name;   /* the tensor's name (points into the gguf_file) */
    int type;           /* ggml type of the stored slice (norms/biases are converted to F32) */
    char split;         /* 'r' rows (column-parallel), 'c' columns (row-parallel), '-' replicated */
    int64_t begin, end; /* the rows or columns owned */
    int64_t rows, cols; /* the slice's shape */
    size_t bytes;
};
/* The slices rank holds, in load order; *out is malloc'd (free it). */
int model_slices(const struct model_config *c, const struct gguf_file *f, const struct shard_plan *p, int rank,
                 struct model_slice **out, int *n, tp_err *e);

/* Load this rank's shard of every weight into backend memory, reading only its byte
 * ranges of the file. Tensors of unsupported types are refused by name. */
int model_load(struct model *m, const struct gguf_file *f, const struct model_config *c,
               const struct shard_plan *p, int rank, struct kbackend *be, tp_err *e);
/* The same, calling progress(user, bytes loaded, total) as it goes (progress may be NULL). */
int model_load_progress(struct model *m, const struct gguf_file *f, const struct model_config *c,
                        const struct shard_plan *p, int rank, struct kbackend *be,
                        void (*progress)(void *user, uint64_t done, uint64_t total), void *user, tp_err *e);
void model_free(struct model *m);

#endif
