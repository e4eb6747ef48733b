/* config.h - model hyperparameters read from GGUF metadata, cross-checked against tensors. */
#ifndef TPLLM_CONFIG_H
#define TPLLM_CONFIG_H

#include "gguf.h"

enum model_arch { ARCH_LLAMA = 0, ARCH_QWEN2 = 1, ARCH_GEMMA3 = 2, ARCH_COUNT };

enum rope_scaling { ROPE_SCALING_NONE = 0, ROPE_SCALING_LINEAR = 1, ROPE_SCALING_YARN = 2, ROPE_SCALING_LLAMA3 = 3 };

struct model_config {
    enum model_arch arch;
    char arch_name[32];      /* general.architecture */
    char name[128];          /* general.name, or "" */
    int64_t n_embd;          /* hidden size (residual stream width) */
    int64_t n_layer;         /* transformer blocks */
    int64_t n_head;          /* query heads */
    int64_t n_head_kv;       /* key/value heads (GQA: n_head % n_head_kv == 0) */
    int64_t head_dim;        /* per-head width of Q and K (attention.key_length) */
    int64_t head_dim_v;      /* per-head width of V (attention.value_length) */
    int64_t n_ff;            /* FFN hidden size */
    int64_t n_vocab;         /* rows of the embedding table */
    int64_t n_ctx_train;     /* context length the model was trained for */
    float norm_eps;          /* RMSNorm epsilon */
    float rope_base;         /* rope theta of global layers */
    float rope_base_local;   /* rope theta of sliding-window layers (gemma3: 10000) */
    int64_t n_rot;           /* rotated dims per head (rope.dimension_count) */
    enum rope_scaling rope_scaling;
    float rope_scale;        /* linear/YaRN factor (context / original context), 1 for none */
    int64_t rope_n_ctx_orig; /* YaRN / Llama 3: original context */
    int64_t sliding_window;  /* tokens seen by sliding-window layers; 0: none */
    int64_t swa_period;      /* gemma3: every swa_period-th layer is global (6); 0: all global */
    bool tied_embeddings;    /* no output.weight: the LM head is token_embd */
    bool has_qkv_bias;       /* qwen2 */
    bool has_qk_norm;        /* gemma3 */
    bool has_post_norms;     /* gemma3: post-attention and post-FFN norms */
    float norm_offset;       /* added to norm weights: 0 (gemma3's +1 is baked into its GGUF weights by llama.cpp) */
    float embd_scale;        /* multiply embeddings by this (gemma3: sqrt(n_embd)); 1 otherwise */
    float attn_scale;        /* softmax scale (1/sqrt(head_dim), or gemma's query_pre_attn_scalar^-0.5) */
    int act;                 /* enum act_kind: SiLU (llama, qwen2) or GELU-tanh (gemma3) */
    int rope_mode;           /* enum rope_mode */
    /* special tokens (-1: none) */
    int32_t bos_id, eos_id, eot_id, pad_id, unk_id;
    bool add_bos, add_eos;
};

/* Whether layer il uses the sliding window (and the local rope base). */
bool model_config_layer_is_swa(const struct model_config *c, int64_t il);

/* Read the config of a llama / qwen2 / gemma3 model from f's metadata, then check every
 * expected tensor is present with the expected shape. A missing or inconsistent key or
 * tensor is TP_EFORMAT naming it with expected / found; another architecture is
 * TP_EUNSUPPORTED listing the supported ones. */
int model_config_load(struct model_config *c, const struct gguf_file *f, tp_err *e);

/* Expected shape of per-layer tensor `suffix` ("attn_q.weight") in GGUF order (ne[0] =
 * input width): returns false when the architecture has no such tensor. */
bool model_config_tensor_shape(const struct model_config *c, const char *suffix, int64_t ne[2]);

const char *model_arch_name(enum model_arch a);

/* The widest matmul input of the model: n_embd, n_ff or n_head x head_dim (attn_output). */
static inline int64_t model_config_max_in(const struct model_config *c) {
    int64_t m = c->n_embd > c->n_ff ? c->n_embd : c->n_ff;
    return m > c->n_head * c->head_dim ? m : c->n_head * c->head_dim;
}

#endif
