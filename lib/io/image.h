/* Image decoding and preprocessing to uint8 RGB [size, size, 3] (HWC).
 *
 * Resizing is a separable bicubic convolution (Keys kernel, a = -0.5) whose
 * support widens with the downscale factor (antialiasing), computed with the
 * same centre convention and 22-bit fixed-point rounding as Pillow's
 * Image.resize(BICUBIC), so the output matches the PyTorch/PIL reference
 * preprocessing (torchvision Resize + CenterCrop) pixel for pixel; see
 * tests/unit/test_image.c for the measured tolerance.
 *
 * JPEG is decoded with libjpeg(-turbo) directly (the same decoder and default
 * settings as Pillow; libvips' per-image pipeline overhead is several times
 * the decode of a small photo), every other format with libvips (loaded on
 * first use). Like the reference (PIL open + convert("RGB")) EXIF
 * orientation is not applied, alpha is dropped (not composited) and grey is
 * replicated to RGB. */
#ifndef CLIP_IMAGE_H
#define CLIP_IMAGE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int w, h;
    unsigned char *px; /* h * w * 3 bytes, malloc'd */
} image_rgb;

enum image_resize { IMAGE_CROP, IMAGE_LETTERBOX, IMAGE_SQUASH };

/* Letterbox padding: the CLIP normalisation mean, so padding normalises to ~0. */
#define IMAGE_PAD_R 123
#define IMAGE_PAD_G 117
#define IMAGE_PAD_B 104

/* Call once from main before any decoding. libvips is loaded (dlopen) and
 * initialised (one thread per call, operation cache off) only when the first
 * non-JPEG image is decoded; if it cannot be, that image's decode fails with
 * the reason. */
int image_init(const char *argv0);
/* Call at the end of each worker thread that decoded (frees libvips'
 * per-thread state, if it was loaded). */
void image_thread_done(void);

/* Parse "crop" | "letterbox" | "squash"; -1 if unknown. */
int image_resize_parse(const char *name);

/* "jpg", "png", "webp", "gif", "tif", "bmp" from the magic bytes, or NULL. */
const char *image_type(const void *buf, size_t len);

/* The default limit on width x height: Pillow's MAX_IMAGE_PIXELS (a 3 KB
 * JPEG may claim 65500x65500). */
#define IMAGE_MAX_PIXELS 89478485LL

/* Decode to RGB. An image whose header claims more than max_pixels pixels
 * is refused before anything is decoded or allocated. what = name for the
 * error message (the file). */
int image_decode(const void *buf, size_t len, image_rgb *out, long long max_pixels,
                 const char *what);
void image_free(image_rgb *im);

/* Pillow-compatible bicubic resize of in to out_w x out_h, computing only the
 * window [x0, x0+win_w) x [y0, y0+win_h) of the result into out (win_h *
 * win_w * 3 bytes). The window is how resize-then-crop is done in one pass. */
void image_resize_window(const image_rgb *in, int out_w, int out_h, int x0, int y0, int win_w,
                         int win_h, unsigned char *out);

/* Eval preprocessing into out[size * size * 3]:
 *  crop:      short side -> size (long = int(size * long / short)), centre crop
 *             with Python's round-half-even offsets (torchvision CenterCrop);
 *  letterbox: long side -> size (short rounded, at least 1), centred on a
 *             size x size canvas filled with IMAGE_PAD_{R,G,B};
 *  squash:    both sides -> size (Chinese-CLIP's Resize((size, size))). */
void image_preprocess(const image_rgb *in, int size, enum image_resize mode, unsigned char *out);

/* Decode + preprocess in one call; a JPEG that is already size x size is
 * decoded straight into out. */
int image_load(const void *buf, size_t len, int size, enum image_resize mode, unsigned char *out,
               long long max_pixels, const char *what);

/* Training augmentation. The RNG is the caller's (splitmix64 state), so a
 * data loader can seed each sample reproducibly. */
uint64_t image_rng_next(uint64_t *state);
double image_rng_uniform(uint64_t *state);         /* [0, 1) */
int64_t image_rng_int(uint64_t *state, int64_t n); /* [0, n) */

/* torchvision RandomResizedCrop.get_params: 10 tries of area scale in
 * [scale_min, scale_max] and log-uniform aspect ratio in [ratio_min,
 * ratio_max], else the centre crop clamped to the ratio range. */
void image_rrc_params(int w, int h, double scale_min, double scale_max, double ratio_min,
                      double ratio_max, uint64_t *rng, int *x, int *y, int *cw, int *ch);

/* Random resized crop (scale 0.08-1, ratio 3/4-4/3, bicubic) to size x size,
 * then a horizontal flip with probability 1/2. Returns 1 if flipped. */
int image_random_resized_crop(const image_rgb *in, int size, uint64_t *rng, unsigned char *out);

void image_hflip(unsigned char *px, int w, int h);

#endif
