#include "io/image.h"
#include "core/util.h"

#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>
#include <vips/vips.h>

/* libvips is loaded with dlopen on the first image that is not a JPEG, not
 * linked: it and the ~80 libraries it pulls in cost ~40 ms of start-up per
 * process (the decode of 150 small JPEGs) in a tool whose input is nearly
 * always JPEG. */
static struct {
    __typeof__(vips_init) *init;
    __typeof__(vips_concurrency_set) *concurrency_set;
    __typeof__(vips_cache_set_max) *cache_set_max;
    __typeof__(vips_thread_shutdown) *thread_shutdown;
    __typeof__(vips_error_buffer) *error_buffer;
    __typeof__(vips_error_clear) *error_clear;
    __typeof__(vips_image_new_from_buffer) *new_from_buffer;
    __typeof__(vips_image_hasalpha) *hasalpha;
    __typeof__(vips_extract_band) *extract_band;
    __typeof__(vips_colourspace) *colourspace;
    __typeof__(vips_cast_uchar) *cast_uchar;
    __typeof__(vips_image_write_to_memory) *write_to_memory;
    __typeof__(g_object_unref) *unref;
    __typeof__(g_free) *free;
} vips;
static const char *vips_argv0 = "clip";
static pthread_once_t vips_once = PTHREAD_ONCE_INIT;
static int vips_ready;         /* 1 loaded, -1 failed; set once, read with acquire */
static char vips_failure[256]; /* why, when -1 */

static void vips_load(void)
{
    char so[32];
    snprintf(so, sizeof so, "libvips.so.%d", VIPS_LIBRARY_CURRENT - VIPS_LIBRARY_AGE);
    void *h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    int ok = h != NULL;
#define SYM(field, name)                                                                           \
    if (ok && !(*(void **)&vips.field = dlsym(h, #name))) ok = 0
    SYM(init, vips_init);
    SYM(concurrency_set, vips_concurrency_set);
    SYM(cache_set_max, vips_cache_set_max);
    SYM(thread_shutdown, vips_thread_shutdown);
    SYM(error_buffer, vips_error_buffer);
    SYM(error_clear, vips_error_clear);
    SYM(new_from_buffer, vips_image_new_from_buffer);
    SYM(hasalpha, vips_image_hasalpha);
    SYM(extract_band, vips_extract_band);
    SYM(colourspace, vips_colourspace);
    SYM(cast_uchar, vips_cast_uchar);
    SYM(write_to_memory, vips_image_write_to_memory);
    SYM(unref, g_object_unref);
    SYM(free, g_free);
#undef SYM
    if (!ok) {
        snprintf(vips_failure, sizeof vips_failure, "cannot load %s: %s", so, dlerror());
    } else if (vips.init(vips_argv0)) {
        snprintf(vips_failure, sizeof vips_failure, "libvips: %s", vips.error_buffer());
        vips_failure[strcspn(vips_failure, "\n")] = 0;
        ok = 0;
    } else {
        vips.concurrency_set(1);
        vips.cache_set_max(0);
    }
    __atomic_store_n(&vips_ready, ok ? 1 : -1, __ATOMIC_RELEASE);
}

int image_init(const char *argv0)
{
    if (argv0) vips_argv0 = argv0;
    return 0;
}

void image_thread_done(void)
{
    if (__atomic_load_n(&vips_ready, __ATOMIC_ACQUIRE) == 1) vips.thread_shutdown();
}

int image_resize_parse(const char *name)
{
    if (!strcmp(name, "crop")) return IMAGE_CROP;
    if (!strcmp(name, "letterbox")) return IMAGE_LETTERBOX;
    if (!strcmp(name, "squash")) return IMAGE_SQUASH;
    return -1;
}

const char *image_type(const void *buf, size_t len)
{
    const unsigned char *b = buf;
    if (len >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff) return "jpg";
    if (len >= 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8)) return "png";
    if (len >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4)) return "webp";
    if (len >= 6 && (!memcmp(b, "GIF87a", 6) || !memcmp(b, "GIF89a", 6))) return "gif";
    if (len >= 4 && (!memcmp(b, "II*\0", 4) || !memcmp(b, "MM\0*", 4))) return "tif";
    if (len >= 2 && b[0] == 'B' && b[1] == 'M') return "bmp";
    return NULL;
}

void image_free(image_rgb *im)
{
    free(im->px);
    im->px = NULL;
    im->w = im->h = 0;
}

/* ---- JPEG via libjpeg: errors longjmp back; a premature end is an error
 * (Pillow: "image file is truncated"), other warnings are ignored as Pillow does. */

typedef struct {
    struct jpeg_error_mgr mgr;
    jmp_buf jb;
    int truncated;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_on_error(j_common_ptr c)
{
    jpeg_err *e = (jpeg_err *)c->err;
    c->err->format_message(c, e->msg);
    longjmp(e->jb, 1);
}

static void jpeg_on_message(j_common_ptr c, int level)
{
    if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) ((jpeg_err *)c->err)->truncated = 1;
}

/* 1 = decoded into a new out->px, 2 = the image is fit x fit and was decoded
 * straight into fit_px (out->px NULL), 0 = not for this decoder (CMYK: left
 * to libvips), -1 = error */
static int too_large(const char *what, long long w, long long h, long long max_pixels)
{
    if (w * h <= max_pixels) return 0;
    clip_set_error("%s: image of %lldx%lld = %lld pixels, more than the limit of %lld (a "
                   "decompression bomb? raise it with --max-pixels)",
                   what, w, h, w * h, max_pixels);
    return 1;
}

static int decode_jpeg(const void *buf, size_t len, image_rgb *out, int fit, unsigned char *fit_px,
                       long long max_pixels, const char *what)
{
    struct jpeg_decompress_struct ci;
    jpeg_err err;
    unsigned char *volatile px = NULL;
    ci.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = jpeg_on_error;
    err.mgr.emit_message = jpeg_on_message;
    err.truncated = 0;
    if (setjmp(err.jb)) {
        jpeg_destroy_decompress(&ci);
        if (px != fit_px) free(px);
        clip_set_error("%s: corrupt JPEG: %s", what, err.msg);
        return -1;
    }
    jpeg_create_decompress(&ci);
    jpeg_mem_src(&ci, buf, len);
    jpeg_read_header(&ci, TRUE);
    /* from the frame header, before jpeg_start_decompress allocates (for a
     * progressive JPEG: every coefficient of the whole image) */
    if (too_large(what, ci.image_width, ci.image_height, max_pixels)) {
        jpeg_destroy_decompress(&ci);
        return -1;
    }
    if (ci.jpeg_color_space == JCS_CMYK || ci.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&ci);
        return 0;
    }
    ci.out_color_space = JCS_RGB;
    jpeg_start_decompress(&ci);
    int w = ci.output_width, h = ci.output_height;
    int direct = fit_px && w == fit && h == fit;
    px = direct ? fit_px : xmalloc((size_t)w * h * 3);
    while (ci.output_scanline < ci.output_height && !err.truncated) {
        JSAMPROW row = px + (size_t)ci.output_scanline * w * 3;
        jpeg_read_scanlines(&ci, &row, 1);
    }
    if (!err.truncated) jpeg_finish_decompress(&ci);
    jpeg_destroy_decompress(&ci);
    if (err.truncated) {
        if (!direct) free(px);
        clip_set_error("%s: corrupt JPEG: premature end of data (truncated file?)", what);
        return -1;
    }
    out->w = w;
    out->h = h;
    out->px = direct ? NULL : px;
    return direct ? 2 : 1;
}

/* ---- everything else via libvips */

static int decode_vips(const void *buf, size_t len, image_rgb *out, long long max_pixels,
                       const char *what)
{
    pthread_once(&vips_once, vips_load);
    if (vips_ready < 0) {
        clip_set_error("%s: cannot decode image: %s", what, vips_failure);
        return -1;
    }
    VipsImage *im = vips.new_from_buffer(buf, len, "", "access", VIPS_ACCESS_SEQUENTIAL, "fail_on",
                                         VIPS_FAIL_ON_ERROR, NULL);
    VipsImage *t;
    if (!im) goto fail;
    /* new_from_buffer has read the header only: nothing is decoded yet */
    if (too_large(what, im->Xsize, im->Ysize, max_pixels)) {
        vips.unref(im);
        vips.error_clear();
        return -1;
    }
    if (vips.hasalpha(im)) { /* PIL's convert("RGB") drops alpha */
        if (vips.extract_band(im, &t, 0, "n", im->Bands - 1, NULL)) goto fail;
        vips.unref(im);
        im = t;
    }
    int grey8 = im->Bands == 1 && im->BandFmt == VIPS_FORMAT_UCHAR;
    if (!grey8 && !(im->Bands == 3 && im->BandFmt == VIPS_FORMAT_UCHAR)) {
        if (vips.colourspace(im, &t, VIPS_INTERPRETATION_sRGB, NULL)) goto fail;
        vips.unref(im);
        im = t;
        if (vips.cast_uchar(im, &t, NULL)) goto fail;
        vips.unref(im);
        im = t;
        if (im->Bands != 3) {
            clip_set_error("%s: cannot convert %d bands to RGB", what, im->Bands);
            vips.unref(im);
            return -1;
        }
    }
    size_t n;
    unsigned char *mem = vips.write_to_memory(im, &n);
    if (!mem) goto fail;
    int w = im->Xsize, h = im->Ysize;
    vips.unref(im);
    out->w = w;
    out->h = h;
    out->px = xmalloc((size_t)w * h * 3);
    if (grey8) {
        for (size_t i = 0; i < (size_t)w * h; i++)
            out->px[3 * i] = out->px[3 * i + 1] = out->px[3 * i + 2] = mem[i];
    } else {
        memcpy(out->px, mem, (size_t)w * h * 3);
    }
    vips.free(mem);
    return 0;
fail:;
    /* first line of the libvips message only: one-line errors */
    char msg[256];
    snprintf(msg, sizeof msg, "%s", vips.error_buffer());
    msg[strcspn(msg, "\n")] = 0;
    vips.error_clear();
    if (im) vips.unref(im);
    clip_set_error("%s: cannot decode image: %s", what, *msg ? msg : "unknown format");
    return -1;
}

/* image_decode, or with fit_px set: 1 if the image was fit x fit and is
 * decoded into fit_px (out left empty). */
static int decode(const void *buf, size_t len, image_rgb *out, int fit, unsigned char *fit_px,
                  long long max_pixels, const char *what)
{
    memset(out, 0, sizeof *out);
    const char *type = image_type(buf, len);
    if (!type) {
        clip_set_error("%s: not an image (unknown format)", what);
        return -1;
    }
    if (!strcmp(type, "jpg")) {
        int rc = decode_jpeg(buf, len, out, fit, fit_px, max_pixels, what);
        if (rc) return rc < 0 ? -1 : rc - 1;
    }
    return decode_vips(buf, len, out, max_pixels, what);
}

int image_decode(const void *buf, size_t len, image_rgb *out, long long max_pixels,
                 const char *what)
{
    return decode(buf, len, out, 0, NULL, max_pixels, what);
}

/* ---- Pillow-compatible bicubic resampling */

#define PREC 22 /* Pillow's PRECISION_BITS for 8-bit images */

static double cubic(double x)
{
    const double a = -0.5;
    if (x < 0) x = -x;
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
}

typedef struct {
    int ksize;
    int *lo, *n; /* first input index and tap count per output position */
    int32_t *k;  /* ksize taps per output position */
} taps;

/* Taps for output positions first .. first+count-1 of an in_size -> out_size resize. */
static void taps_make(taps *t, int in_size, int out_size, int first, int count)
{
    double scale = (double)in_size / out_size;
    double fscale = scale < 1 ? 1 : scale;
    double support = 2.0 * fscale;
    t->ksize = (int)ceil(support) * 2 + 1;
    t->lo = xmalloc(count * sizeof *t->lo);
    t->n = xmalloc(count * sizeof *t->n);
    t->k = xcalloc((size_t)count * t->ksize, sizeof *t->k);
    double *w = xmalloc(t->ksize * sizeof *w);
    for (int i = 0; i < count; i++) {
        double center = (first + i + 0.5) * scale;
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_size) hi = in_size;
        int n = hi - lo;
        double sum = 0;
        for (int x = 0; x < n; x++) sum += w[x] = cubic((x + lo - center + 0.5) / fscale);
        for (int x = 0; x < n; x++) {
            double v = sum != 0 ? w[x] / sum : w[x];
            t->k[(size_t)i * t->ksize + x] =
                (int32_t)(v < 0 ? -0.5 + v * (1 << PREC) : 0.5 + v * (1 << PREC));
        }
        t->lo[i] = lo;
        t->n[i] = n;
    }
    free(w);
}

static void taps_free(taps *t)
{
    free(t->lo);
    free(t->n);
    free(t->k);
}

static inline unsigned char clip8(int32_t v)
{
    v >>= PREC;
    return v < 0 ? 0 : v > 255 ? 255 : v;
}

/* One pass along rows: dst row i = sum_j k[i][j] * src row (lo[i] + j - first_row),
 * each row `row` bytes; contiguous, so it vectorises. Both passes use it, the
 * horizontal one on a transposed image. Compiled twice (util.h): SSE2 has no
 * 32-bit multiply (pmulld), so the portable copy is slower, AVX-512's runs as
 * fast as the -march=native build did. */
CLIP_TWICE_COMPILED void conv_rows_body(const unsigned char *restrict src, size_t row,
                                        int first_row, const taps *t, int count,
                                        unsigned char *restrict dst, int32_t *restrict acc)
{
    for (int i = 0; i < count; i++) {
        const int32_t *k = t->k + (size_t)i * t->ksize;
#pragma omp simd
        for (size_t c = 0; c < row; c++) acc[c] = 1 << (PREC - 1);
        for (int j = 0; j < t->n[i]; j++) {
            const unsigned char *restrict s = src + (size_t)(t->lo[i] + j - first_row) * row;
            int32_t kj = k[j];
#pragma omp simd
            for (size_t c = 0; c < row; c++) acc[c] += s[c] * kj;
        }
        unsigned char *restrict d = dst + (size_t)i * row;
#pragma omp simd
        for (size_t c = 0; c < row; c++) d[c] = clip8(acc[c]);
    }
}

static void conv_rows_portable(const unsigned char *restrict src, size_t row, int first_row,
                               const taps *t, int count, unsigned char *restrict dst,
                               int32_t *restrict acc)
{
    conv_rows_body(src, row, first_row, t, count, dst, acc);
}

CLIP_TARGET_AVX512 static void conv_rows_avx512(const unsigned char *restrict src, size_t row,
                                                int first_row, const taps *t, int count,
                                                unsigned char *restrict dst, int32_t *restrict acc)
{
    conv_rows_body(src, row, first_row, t, count, dst, acc);
}

static void conv_rows(const unsigned char *restrict src, size_t row, int first_row, const taps *t,
                      int count, unsigned char *restrict dst, int32_t *restrict acc)
{
    (cpu_has(CPU_AVX512) ? conv_rows_avx512 : conv_rows_portable)(src, row, first_row, t, count,
                                                                  dst, acc);
}

/* [rows][cols][3] -> [cols][rows][3] */
static void transpose3(const unsigned char *restrict src, int rows, int cols, size_t src_stride,
                       unsigned char *restrict dst)
{
    for (int y = 0; y < rows; y++) {
        const unsigned char *s = src + (size_t)y * src_stride;
        for (int x = 0; x < cols; x++) memcpy(dst + ((size_t)x * rows + y) * 3, s + 3 * x, 3);
    }
}

/* Horizontal pass over rows [r0, r1) of in, window columns [x0, x0+win_w). */
static void resample_h(const image_rgb *in, int out_w, int x0, int win_w, int r0, int r1,
                       unsigned char *dst)
{
    int rows = r1 - r0;
    if (out_w == in->w) {
        for (int y = r0; y < r1; y++)
            memcpy(dst + (size_t)(y - r0) * win_w * 3, in->px + ((size_t)y * in->w + x0) * 3,
                   (size_t)win_w * 3);
        return;
    }
    taps t;
    taps_make(&t, in->w, out_w, x0, win_w);
    int c0 = t.lo[0], c1 = 0;
    for (int i = 0; i < win_w; i++) {
        if (t.lo[i] < c0) c0 = t.lo[i];
        if (t.lo[i] + t.n[i] > c1) c1 = t.lo[i] + t.n[i];
    }
    size_t row = (size_t)rows * 3;
    unsigned char *tin = xmalloc((size_t)(c1 - c0) * row), *tout = xmalloc((size_t)win_w * row);
    int32_t *acc = xmalloc(row * sizeof *acc);
    transpose3(in->px + ((size_t)r0 * in->w + c0) * 3, rows, c1 - c0, (size_t)in->w * 3, tin);
    conv_rows(tin, row, c0, &t, win_w, tout, acc);
    transpose3(tout, win_w, rows, row, dst);
    free(acc);
    free(tout);
    free(tin);
    taps_free(&t);
}

void image_resize_window(const image_rgb *in, int out_w, int out_h, int x0, int y0, int win_w,
                         int win_h, unsigned char *out)
{
    size_t row = (size_t)win_w * 3;
    if (out_h == in->h) { /* Pillow skips the vertical pass too */
        resample_h(in, out_w, x0, win_w, y0, y0 + win_h, out);
        return;
    }
    taps t;
    taps_make(&t, in->h, out_h, y0, win_h);
    int r0 = t.lo[0], r1 = 0;
    for (int i = 0; i < win_h; i++) {
        if (t.lo[i] < r0) r0 = t.lo[i];
        if (t.lo[i] + t.n[i] > r1) r1 = t.lo[i] + t.n[i];
    }
    unsigned char *tmp = xmalloc((size_t)(r1 - r0) * row);
    int32_t *acc = xmalloc(row * sizeof *acc);
    resample_h(in, out_w, x0, win_w, r0, r1, tmp);
    conv_rows(tmp, row, r0, &t, win_h, out, acc);
    free(acc);
    free(tmp);
    taps_free(&t);
}

/* Python's int(round(d / 2.0)): half to even. */
static int half_round_even(int d)
{
    int q = d / 2;
    return (d % 2 && q % 2) ? q + 1 : q;
}

void image_preprocess(const image_rgb *in, int size, enum image_resize mode, unsigned char *out)
{
    int w = in->w, h = in->h;
    if (mode == IMAGE_SQUASH) {
        image_resize_window(in, size, size, 0, 0, size, size, out);
    } else if (mode == IMAGE_CROP) {
        int nw, nh;
        if (w <= h) {
            nw = size;
            nh = (int)((double)size * h / w);
        } else {
            nh = size;
            nw = (int)((double)size * w / h);
        }
        image_resize_window(in, nw, nh, half_round_even(nw - size), half_round_even(nh - size),
                            size, size, out);
    } else {
        int nw, nh;
        if (w >= h) {
            nw = size;
            nh = (int)floor((double)size * h / w + 0.5);
        } else {
            nh = size;
            nw = (int)floor((double)size * w / h + 0.5);
        }
        if (nw < 1) nw = 1;
        if (nh < 1) nh = 1;
        static const unsigned char pad[3] = {IMAGE_PAD_R, IMAGE_PAD_G, IMAGE_PAD_B};
        for (size_t i = 0; i < (size_t)size * size; i++) memcpy(out + 3 * i, pad, 3);
        unsigned char *tmp = xmalloc((size_t)nw * nh * 3);
        image_resize_window(in, nw, nh, 0, 0, nw, nh, tmp);
        int ox = (size - nw) / 2, oy = (size - nh) / 2;
        for (int y = 0; y < nh; y++)
            memcpy(out + ((size_t)(y + oy) * size + ox) * 3, tmp + (size_t)y * nw * 3,
                   (size_t)nw * 3);
        free(tmp);
    }
}

int image_load(const void *buf, size_t len, int size, enum image_resize mode, unsigned char *out,
               long long max_pixels, const char *what)
{
    /* an image that already has the output size is its own preprocessing
     * (every mode is the identity then): it is decoded in place */
    image_rgb im;
    int rc = decode(buf, len, &im, size, out, max_pixels, what);
    if (rc) return rc < 0 ? -1 : 0;
    image_preprocess(&im, size, mode, out);
    image_free(&im);
    return 0;
}

/* ---- training augmentation */

uint64_t image_rng_next(uint64_t *state) { return splitmix64(state); }

double image_rng_uniform(uint64_t *state) { return (image_rng_next(state) >> 11) * 0x1p-53; }

int64_t image_rng_int(uint64_t *state, int64_t n)
{
    return n <= 1 ? 0 : (int64_t)(image_rng_uniform(state) * n);
}

void image_rrc_params(int w, int h, double scale_min, double scale_max, double ratio_min,
                      double ratio_max, uint64_t *rng, int *x, int *y, int *cw, int *ch)
{
    double area = (double)w * h, lr0 = log(ratio_min), lr1 = log(ratio_max);
    for (int tries = 0; tries < 10; tries++) {
        double target = area * (scale_min + (scale_max - scale_min) * image_rng_uniform(rng));
        double ar = exp(lr0 + (lr1 - lr0) * image_rng_uniform(rng));
        int tw = (int)nearbyint(sqrt(target * ar)), th = (int)nearbyint(sqrt(target / ar));
        if (tw > 0 && tw <= w && th > 0 && th <= h) {
            *y = (int)image_rng_int(rng, h - th + 1);
            *x = (int)image_rng_int(rng, w - tw + 1);
            *cw = tw;
            *ch = th;
            return;
        }
    }
    double in_ratio = (double)w / h;
    if (in_ratio < ratio_min) {
        *cw = w;
        *ch = (int)nearbyint(w / ratio_min);
    } else if (in_ratio > ratio_max) {
        *ch = h;
        *cw = (int)nearbyint(h * ratio_max);
    } else {
        *cw = w;
        *ch = h;
    }
    *y = (h - *ch) / 2;
    *x = (w - *cw) / 2;
}

void image_hflip(unsigned char *px, int w, int h)
{
    for (int y = 0; y < h; y++) {
        unsigned char *r = px + (size_t)y * w * 3;
        for (int a = 0, b = w - 1; a < b; a++, b--)
            for (int c = 0; c < 3; c++) {
                unsigned char t = r[3 * a + c];
                r[3 * a + c] = r[3 * b + c];
                r[3 * b + c] = t;
            }
    }
}

int image_random_resized_crop(const image_rgb *in, int size, uint64_t *rng, unsigned char *out)
{
    int x, y, cw, ch;
    image_rrc_params(in->w, in->h, 0.08, 1.0, 3.0 / 4.0, 4.0 / 3.0, rng, &x, &y, &cw, &ch);
    image_rgb crop = {cw, ch, xmalloc((size_t)cw * ch * 3)};
    for (int r = 0; r < ch; r++)
        memcpy(crop.px + (size_t)r * cw * 3, in->px + ((size_t)(y + r) * in->w + x) * 3,
               (size_t)cw * 3);
    image_resize_window(&crop, size, size, 0, 0, size, size, out);
    image_free(&crop);
    int flip = image_rng_uniform(rng) < 0.5;
    if (flip) image_hflip(out, size, size);
    return flip;
}
