/* The joint CLIP model: the ViT image tower, a text tower (Chinese BERT with
 * its ln_final + text_projection head, or OpenAI's English text
 * transformer) and logit_scale, loaded from a checkpoint and, for BERT, an
 * optional Hugging Face directory. */
#ifndef CLIP_CLIP_MODEL_H
#define CLIP_CLIP_MODEL_H

#include <stdint.h>

#include "model/bert.h"
#include "model/clip_text.h"
#include "model/vit.h"

typedef enum { CLIP_TEXT_NONE, CLIP_TEXT_BERT, CLIP_TEXT_CLIP } clip_text_kind;

typedef struct {
    vit *visual;         /* NULL when the checkpoint has no `visual.*` */
    bert *bert;          /* Chinese tower, NULL if none */
    clip_text *ctext;    /* English tower, NULL if none */
    clip_text_kind text; /* the tower clip_encode_texts uses (BERT when present) */
    float logit_scale;   /* ln of the scale; ln(1/0.07) when absent */
    int embed_dim;
    int max_batch; /* encode in chunks of this many (activation memory), default 32 */
    /* how clip_encode_* compute: PRECISION_FP32 after loading; change the
     * precision with clip_model_set_precision only. compute.prof may be
     * pointed at the caller's counters (benchmarks). */
    compute_ctx compute;
    /* what loading noticed without refusing it, one line each (no program
     * name, no newline), for the caller to show, e.g. "no text_projection
     * for the BERT tower: initialising [768, 512] from N(0, 768^-0.5)";
     * owned by the model */
    char **warnings;
    int n_warnings;
} clip_model;

/* ckpt_path: joint checkpoint (.pth, .bin, .safetensors). bert_dir (or NULL):
 * Hugging Face BERT directory (config.json + pytorch_model.bin or
 * model.safetensors), whose weights are used when the checkpoint has no BERT
 * under `transformer.`. Head counts (and BERT's eps): the checkpoint's
 * "clip_config" metadata record when it has one (clip-train writes it, in
 * .safetensors and .pth: "image" for the ViT, "text" for BERT, "clip_text"
 * for the English text transformer, each {"heads": N, ...}), validated (a
 * positive divisor of the width, else an error naming the file); else
 * config.json (BERT); else width / MODEL_DEFAULT_HEAD_DIM (64, the OpenAI
 * and Hugging Face convention). A missing text_projection is drawn from
 * N(0, hidden^-0.5) with a fixed seed (with a warning in m->warnings). NULL
 * with clip_error() naming the file/tensor on failure. */
clip_model *clip_model_load(const char *ckpt_path, const char *bert_dir);
/* The same from a checkpoint already loaded (ckpt_path names it in messages). */
clip_model *clip_model_from_ckpt(const ckpt *c, const char *ckpt_path, const char *bert_dir);
void clip_model_free(clip_model *m);

/* Set the precision of clip_encode_*: PRECISION_INT8 quantises the Linear
 * weights of every tower as they are now (once, owned by the towers; set it
 * again after changing weights), another precision frees them. 0, or -1
 * with an error (out of memory), the model left as it was. */
int clip_model_set_precision(clip_model *m, clip_precision p);

/* Append a line to m->warnings (printf format). 0, or -1 with an error (out
 * of memory). For the loaders: clip_model_load, train_model_load. */
int clip_model_warn(clip_model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Image side length the image tower expects (0 without one). */
int clip_image_resolution(const clip_model *m);
/* The text tower's vocabulary size and most ids per text (0, 0 without one). */
void clip_text_limits(const clip_model *m, int *vocab, int *max_len);

/* pixels: uint8 [B, R, R, 3], R = clip_image_resolution(). out: [B, embed_dim]
 * L2-normalised. 0, or -1 with an error. */
int clip_encode_images(clip_model *m, const uint8_t *pixels, int B, float *out);
/* ids: int32 [B, L] token ids (0-padded). out: [B, embed_dim] L2-normalised. */
int clip_encode_texts(clip_model *m, const int32_t *ids, int B, int L, float *out);

#endif
