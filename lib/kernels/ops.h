/* Forward passes of the layers the towers are built from (llm.c style):
 * plain functions over row-major float buffers. Each keeps what its backward
 * twin will need (LayerNorm mean/rstd, GELU pre-activation, attention
 * probabilities) in caller-owned buffers. Rows are parallelised with OpenMP,
 * sharing OpenBLAS's thread pool. */
#ifndef CLIP_OPS_H
#define CLIP_OPS_H

#include <stddef.h>
#include <stdint.h>

/* out, mean, rstd: N rows of C. mean/rstd [N] are saved for backward. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, int N, int C, float eps);

/* x * 0.5 * (1 + erf(x / sqrt 2)), BERT's exact GELU. */
void gelu_erf_forward(float *out, const float *inp, size_t n);
/* x * sigmoid(1.702 x), OpenAI CLIP's QuickGELU. */
void quickgelu_forward(float *out, const float *inp, size_t n);
void tanh_forward(float *out, const float *inp, size_t n);

/* out[i, :] += bias for N rows of C. */
void bias_add_forward(float *out, const float *bias, int N, int C);
void residual_forward(float *out, const float *a, const float *b, size_t n);

/* Multi-head self-attention core for B sequences of T tokens.
 * qkv [B*T, 3C]: Q | K | V, head h in columns h*C/NH.. of each.
 * att [B, NH, T, T]: softmax probabilities (kept for backward).
 * out [B*T, C]: heads side by side, before the output projection.
 * key_valid [B*T] (may be NULL): 0 masks a key (BERT's [PAD]).
 * causal: a token attends only to itself and earlier ones (CLIP text). */
void attention_forward(float *out, float *att, const float *qkv, const uint8_t *key_valid,
                       int causal, int B, int T, int C, int NH);

/* Row-wise softmax in place over n entries (used by attention). */
void softmax_row(float *x, int n);

/* out[i] = x[i] / ||x[i]|| for N rows of D (out may equal x); norms [N]
 * (NULL: not kept) gets ||x[i]|| for the backward. The norm is summed in
 * double and floored at 1e-12 (F.normalize's eps). */
void l2_normalize(float *out, float *norms, const float *x, int N, int D);
/* dx = (du - u (u . du)) / ||x||, the gradient through x -> u = x / ||x||,
 * from l2_normalize's u and norms (dx may equal du). */
void l2_normalize_backward(float *dx, const float *du, const float *u, const float *norms, int N,
                           int D);
/* -1 with an error naming the text and position of an id outside [0, vocab). */
int check_token_ids(const int32_t *ids, int B, int L, int vocab);
/* Length of the longest of B texts of L ids (trailing 0s are padding; at
 * least 1). When shorter than L, the texts are copied into out as [B, used]:
 * trailing padding changes no text tower's output (BERT masks it; the CLIP
 * tower is causal and reads the EOT position). */
int trim_padding(int32_t *out, const int32_t *ids, int B, int L);

/* ---- backward passes ----
 * Each accumulates (+=) into the gradients it is given (llm.c convention: the
 * caller zeroes them before a step); a NULL gradient is skipped. Gradient
 * buffers must not alias the buffers they are computed from. */

/* mean/rstd: what layernorm_forward saved. dweight/dbias are reduced over
 * rows by column blocks (race-free, deterministic). */
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, const float *mean, const float *rstd,
                        int N, int C);
void gelu_erf_backward(float *dinp, const float *inp, const float *dout, size_t n);
void quickgelu_backward(float *dinp, const float *inp, const float *dout, size_t n);
/* out: tanh's output (forward result), not its input. */
void tanh_backward(float *dinp, const float *out, const float *dout, size_t n);
/* dqkv [B*T, 3C] += gradient of attention_forward w.r.t. qkv, given dout
 * [B*T, C] and the forward's qkv and att. datt: caller scratch [B, NH, T, T]
 * (overwritten). Masked (padding or causal) entries have att == 0 and so get
 * no gradient; a sequence with no valid key was attended unmasked forward
 * and is differentiated the same way. */
void attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                        const float *att, int B, int T, int C, int NH);

/* x[0..n) = 0, in parallel (backward scratch). */
void zero_floats(float *x, size_t n);

#endif
