/* Pixel parity of the eval preprocessing against the PyTorch/PIL reference
 * (fixtures by tests/ref/prep_ref.py, `make fixtures-prep`), plus decoding
 * errors, the random-resized-crop parameters and annotation parsing. */
#include "io/annotations.h"
#include "io/image.h"
#include "unit.h"
#include "core/util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIX "tests/fixtures/prep"
#define MINI "tests/fixtures/flickr8k-mini/flickr8k-images"

/* Tolerance against the reference: the resampler reproduces Pillow's
 * fixed-point arithmetic, so the expected difference is 0; allow a level of
 * rounding slack in max and a tiny mean. */
#define MAX_DIFF 1
#define MEAN_DIFF 0.05

static int load(const char *path, image_rgb *im)
{
    size_t len;
    char *buf = read_file(path, &len);
    if (!buf) return -1;
    int rc = image_decode(buf, len, im, IMAGE_MAX_PIXELS, path);
    free(buf);
    return rc;
}

static void parity(void)
{
    FILE *f = fopen(FIX "/cases.txt", "r");
    CHECK(f != NULL, "cannot open " FIX "/cases.txt");
    if (!f) return;
    char line[512], name[128], mode[32], exp[160];
    int x, y, w, h, size, cases = 0, worst = 0;
    double worst_mean = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        if (sscanf(line, "%127s %d %d %d %d %d %31s %159s", name, &x, &y, &w, &h, &size, mode,
                   exp) != 8)
            continue;
        char path[512];
        image_rgb src, ref;
        snprintf(path, sizeof path, MINI "/%s", name);
        CHECK(load(path, &src) == 0, "%s", clip_error());
        snprintf(path, sizeof path, FIX "/%s", exp);
        CHECK(load(path, &ref) == 0, "%s", clip_error());
        if (!src.px || !ref.px) continue;
        if (x >= 0) {
            image_rgb c = {w, h, xmalloc((size_t)w * h * 3)};
            for (int r = 0; r < h; r++)
                memcpy(c.px + (size_t)r * w * 3, src.px + ((size_t)(y + r) * src.w + x) * 3,
                       (size_t)w * 3);
            image_free(&src);
            src = c;
        }
        unsigned char *out = xmalloc((size_t)size * size * 3);
        image_preprocess(&src, size, image_resize_parse(mode), out);
        CHECK(ref.w == size && ref.h == size, "%s: reference is %dx%d", exp, ref.w, ref.h);
        int mx = 0;
        double sum = 0;
        for (size_t i = 0; i < (size_t)size * size * 3; i++) {
            int d = abs(out[i] - ref.px[i]);
            mx = d > mx ? d : mx;
            sum += d;
        }
        double mean = sum / ((double)size * size * 3);
        CHECK(mx <= MAX_DIFF && mean <= MEAN_DIFF, "%s: max |diff| %d, mean %.4f", exp, mx, mean);
        if (mx > worst) worst = mx;
        if (mean > worst_mean) worst_mean = mean;
        cases++;
        free(out);
        image_free(&src);
        image_free(&ref);
    }
    fclose(f);
    CHECK(cases >= 20, "only %d parity cases", cases);
    printf("parity: %d cases vs PIL/torchvision, max |diff| %d, worst mean %.4f\n", cases, worst,
           worst_mean);
}

static void bad_images(void)
{
    size_t len;
    char *buf = read_file(MINI "/1579798212_d30844b4c5.jpg", &len);
    image_rgb im;
    CHECK(buf && image_decode(buf, len, &im, IMAGE_MAX_PIXELS, "full.jpg") == 0, "decode: %s",
          clip_error());
    CHECK(im.w == 224 && im.h == 224, "size %dx%d", im.w, im.h);
    image_free(&im);
    CHECK(image_decode(buf, len / 2, &im, IMAGE_MAX_PIXELS, "half.jpg") == -1,
          "truncated JPEG accepted");
    CHECK(strstr(clip_error(), "half.jpg") != NULL, "error does not name the file: %s",
          clip_error());
    CHECK(image_decode("hello world", 11, &im, IMAGE_MAX_PIXELS, "text.jpg") == -1,
          "text accepted");
    CHECK(image_decode(buf, 100, &im, IMAGE_MAX_PIXELS, "tiny.jpg") == -1,
          "100-byte JPEG accepted");
    CHECK(!strcmp(image_type(buf, len), "jpg"), "type");
    free(buf);
}

static void random_resized_crop(void)
{
    uint64_t rng = 42;
    for (int i = 0; i < 1000; i++) {
        int x, y, cw, ch;
        image_rrc_params(300, 200, 0.08, 1.0, 0.75, 4.0 / 3, &rng, &x, &y, &cw, &ch);
        CHECK(x >= 0 && y >= 0 && cw > 0 && ch > 0 && x + cw <= 300 && y + ch <= 200,
              "crop %d %d %d %d out of bounds", x, y, cw, ch);
        double area = (double)cw * ch / (300 * 200), r = (double)cw / ch;
        if (i < 5)
            CHECK(area > 0.07 && area < 1.01 && r > 0.7 && r < 1.4, "area %g ratio %g", area, r);
    }
    /* 1000x10 never fits a ratio-limited crop of >= 8% area: the fallback
     * is the centre crop clamped to ratio 4/3 */
    int x, y, cw, ch;
    image_rrc_params(1000, 10, 0.08, 1.0, 0.75, 4.0 / 3, &rng, &x, &y, &cw, &ch);
    CHECK(cw == 13 && ch == 10 && x == 493 && y == 0, "fallback %d %d %d %d", x, y, cw, ch);
    image_rrc_params(10, 1000, 0.08, 1.0, 0.75, 4.0 / 3, &rng, &x, &y, &cw, &ch);
    CHECK(cw == 10 && ch == 13 && x == 0 && y == 493, "fallback %d %d %d %d", x, y, cw, ch);

    image_rgb im;
    CHECK(load(MINI "/1579798212_d30844b4c5.jpg", &im) == 0, "%s", clip_error());
    unsigned char *a = xmalloc(64 * 64 * 3), *b = xmalloc(64 * 64 * 3);
    uint64_t r1 = 7, r2 = 7;
    int f1 = image_random_resized_crop(&im, 64, &r1, a);
    int f2 = image_random_resized_crop(&im, 64, &r2, b);
    CHECK(f1 == f2 && !memcmp(a, b, 64 * 64 * 3), "same seed, different crops");
    memcpy(b, a, 64 * 64 * 3);
    image_hflip(b, 64, 64);
    CHECK(!memcmp(a, b + 63 * 3, 3) && !memcmp(a + 63 * 3, b, 3), "hflip");
    int flips = 0;
    for (int i = 0; i < 200; i++) flips += image_random_resized_crop(&im, 32, &r1, a);
    CHECK(flips > 70 && flips < 130, "%d flips of 200", flips);
    free(a);
    free(b);
    image_free(&im);
}

static const char *write_tmp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/test_image_%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

static void annotations_parse(void)
{
    annotations *a = annotations_load("tests/fixtures/flickr8k-mini/cn_mini.json");
    CHECK(a && a->n == 8 && a->items[0].n_captions == 5, "cn_mini.json: %s",
          a ? "wrong counts" : clip_error());
    if (a)
        CHECK(!strcmp(a->items[0].image, "flickr8k-images/2090545563_a4e66ec76b.jpg"), "%s",
              a->items[0].image);
    annotations_free(a);
    a = annotations_load(write_tmp("[{\"image\": \"d\\\\x.jpg\", \"caption\": [\"a\"]}]"));
    CHECK(a && !strcmp(a->items[0].image, "d/x.jpg"), "backslash path");
    annotations_free(a);
    a = annotations_load(write_tmp("[{\"image\": \"a.jpg\", \"caption\": [\"a\"]},\n"
                                   " {\"image\": \"b.jpg\", \"caption\": [\"a\", 3]}]"));
    CHECK(!a && strstr(clip_error(), "entry 1") && strstr(clip_error(), "b.jpg"), "got: %s",
          clip_error());
    a = annotations_load(write_tmp("[{\"image\": \"a.jpg\", \"caption\": [\"a\"]"));
    CHECK(!a && strstr(clip_error(), "malformed JSON"), "got: %s", clip_error());
    unlink(write_tmp(""));
}

int main(int argc, char **argv)
{
    if (image_init(argv[0])) {
        fprintf(stderr, "%s\n", clip_error());
        return 1;
    }
    parity();
    bad_images();
    random_resized_crop();
    annotations_parse();
    return unit_done();
}
