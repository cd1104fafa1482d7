/* The decode ceiling for clip-prep: bench_decode [-r REPEATS] FILE...
 * reads the JPEGs into memory, then decodes each with libjpeg(-turbo) on one
 * thread with the settings of lib/io/image.c's decode_jpeg (and Pillow's):
 * jpeg_mem_src, JCS_RGB, default DCT (ISLOW) and fancy upsampling, a fresh
 * decompressor and output buffer per image. Prints "decode IMG_PER_CPU_S
 * IMG_PER_WALL_S N", the best of REPEATS (default 3) passes; the CPU-time
 * rate is the per-core figure that holds up on a shared machine. */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jpeglib.h>

#include "tool.h"
#include "core/util.h"

typedef struct {
    struct jpeg_error_mgr mgr;
    jmp_buf jb;
} jerr;

static void on_error(j_common_ptr c) { longjmp(((jerr *)c->err)->jb, 1); }

static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* 0, or -1 if the file does not decode */
static int decode(const unsigned char *buf, size_t len)
{
    struct jpeg_decompress_struct ci;
    jerr err;
    unsigned char *volatile px = NULL;
    ci.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = on_error;
    if (setjmp(err.jb)) {
        jpeg_destroy_decompress(&ci);
        free(px);
        return -1;
    }
    jpeg_create_decompress(&ci);
    jpeg_mem_src(&ci, buf, len);
    jpeg_read_header(&ci, TRUE);
    ci.out_color_space = JCS_RGB;
    jpeg_start_decompress(&ci);
    size_t stride = (size_t)ci.output_width * 3;
    px = xmalloc(stride * ci.output_height);
    while (ci.output_scanline < ci.output_height) {
        JSAMPROW row = px + ci.output_scanline * stride;
        jpeg_read_scanlines(&ci, &row, 1);
    }
    jpeg_finish_decompress(&ci);
    jpeg_destroy_decompress(&ci);
    free(px);
    return 0;
}

int main(int argc, char **argv)
{
    clip_set_progname(argv[0]);
    int reps = 3, first = 1;
    if (argc > 2 && !strcmp(argv[1], "-r")) {
        reps = (int)parse_long_option("-r", argv[2], 1, 100);
        first = 3;
    }
    int n = argc - first;
    if (n < 1) die("usage: bench_decode [-r REPEATS] FILE.jpg...");
    unsigned char **data = xmalloc(n * sizeof *data);
    size_t *len = xmalloc(n * sizeof *len);
    for (int i = 0; i < n; i++) {
        data[i] = (unsigned char *)read_file(argv[first + i], &len[i]);
        if (!data[i]) die("%s", clip_error());
    }
    for (int i = 0; i < n && i < 20; i++) decode(data[i], len[i]); /* warm-up */
    double best_cpu = 1e30, best_wall = 1e30;
    for (int r = 0; r < reps; r++) {
        double c0 = cpu_seconds(), w0 = now_seconds();
        for (int i = 0; i < n; i++)
            if (decode(data[i], len[i])) die("%s: cannot decode", argv[first + i]);
        double c = cpu_seconds() - c0, w = now_seconds() - w0;
        if (c < best_cpu) best_cpu = c;
        if (w < best_wall) best_wall = w;
    }
    printf("decode %.1f %.1f %d\n", n / best_cpu, n / best_wall, n);
    for (int i = 0; i < n; i++) free(data[i]);
    free(data);
    free(len);
    return 0;
}
