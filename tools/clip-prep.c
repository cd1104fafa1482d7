/* clip-prep: annotations + images (folder or archive) -> a sample stream with
 * preprocessed pixels (img.npy) and captions (json). See clip-prep(1). */
#include "tool.h"
#include "core/atomic_file.h"
#include "io/annotations.h"
#include "io/image.h"
#include "io/image_pool.h"
#include "io/image_source.h"
#include "io/npy.h"
#include "io/stream.h"
#include "core/util.h"

#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: clip-prep --annotations FILE.json --root DIR|ARCHIVE [options]\n"
    "       clip-prep [options] IMAGE...\n"
    "Preprocess images (and their captions) into a sample stream: <key>.img.npy\n"
    "(uint8 [size,size,3]) and <key>.json ({\"image\", \"captions\"}).\n"
    "  --annotations FILE  JSON list of {\"image\": path, \"caption\": [...]}\n"
    "  --root DIR|ARCHIVE  where the image paths are: a folder, .zip, .tar, .tar.gz\n"
    "  -o OUT              output: -, FILE.tar, tcp://..., ipc://... (default -)\n"
    "  --size N            output side in pixels (default 224)\n"
    "  --resize MODE       crop (default), letterbox or squash\n"
    "  --keep-original     also store the original bytes as <key>.jpg / .png\n"
    "  --skip-bad          warn about bad images and go on (exit 0)\n"
    "  --max-pixels N      refuse an image whose header claims more than N pixels\n"
    "                      (width x height; default 89478485, Pillow's limit)\n"
    "  --threads N         decoding threads (default: number of cores)\n"
    "  --progress          progress on stderr\n"
    "  -h, --help          this help\n";

int main(int argc, char **argv)
{
    clip_set_progname(argv[0]);
    clip_handle_signals();
    /* per-image buffers (~150 KB) would otherwise be fresh mmaps, each page faulted in */
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    const char *ann_path = NULL, *root = NULL, *out = "-";
    int skip_bad = 0, show = 0;
    image_pool_config pc = {.size = 224,
                            .mode = IMAGE_CROP,
                            .max_pixels = IMAGE_MAX_PIXELS,
                            .threads = (int)sysconf(_SC_NPROCESSORS_ONLN)};
    enum { O_ANN = 256, O_ROOT, O_SIZE, O_RESIZE, O_KEEP, O_SKIP, O_MAXPIX, O_THREADS, O_PROG };
    /* clang-format off */
    static const struct option opts[] = {
        {"annotations", 1, 0, O_ANN}, {"root", 1, 0, O_ROOT},       {"output", 1, 0, 'o'},
        {"size", 1, 0, O_SIZE},       {"resize", 1, 0, O_RESIZE},   {"keep-original", 0, 0, O_KEEP},
        {"skip-bad", 0, 0, O_SKIP},   {"max-pixels", 1, 0, O_MAXPIX}, {"threads", 1, 0, O_THREADS},
        {"progress", 0, 0, O_PROG},   {"help", 0, 0, 'h'},          {0, 0, 0, 0},
    };
    /* clang-format on */
    static const char short_opts[] = "o:h";
    opterr = 0; /* our own one-line message */
    int c;
    while ((c = getopt_long(argc, argv, short_opts, opts, NULL)) != -1) {
        switch (c) {
        case O_ANN: ann_path = optarg; break;
        case O_ROOT: root = optarg; break;
        case 'o': out = optarg; break;
        case O_SIZE: pc.size = (int)parse_long_option("--size", optarg, 1, 8192); break;
        case O_RESIZE:
            if ((pc.mode = image_resize_parse(optarg)) < 0)
                usage_error("--resize: expected crop, letterbox or squash, got '%s'", optarg);
            break;
        case O_MAXPIX:
            pc.max_pixels = parse_long_option("--max-pixels", optarg, 1, 1L << 40);
            break;
        case O_THREADS: pc.threads = (int)parse_long_option("--threads", optarg, 1, 256); break;
        case O_KEEP: pc.keep_original = 1; break;
        case O_SKIP: skip_bad = 1; break;
        case O_PROG: show = 1; break;
        case 'h': return print_help(usage);
        default: option_error(argv, short_opts);
        }
    }
    size_t n_paths = argc - optind;
    if (ann_path && n_paths) usage_error("give either --annotations or image paths, not both");
    if (!ann_path && !n_paths) usage_error("no input: --annotations FILE.json or image paths");

    annotations *ann = NULL;
    size_t n = ann_path ? 0 : n_paths;
    const char **paths = (const char **)argv + optind;
    if (ann_path) {
        if (!(ann = annotations_load(ann_path)) || annotations_check_root(ann, root, ann_path))
            die("%s", clip_error());
        if (ann->n_merged)
            warn("%s: %zu entr%s named an image listed before: %s captions joined its sample",
                 ann_path, ann->n_merged, ann->n_merged == 1 ? "y" : "ies",
                 ann->n_merged == 1 ? "its" : "their");
        n = ann->n;
        paths = xcalloc(n + 1, sizeof *paths);
        for (size_t i = 0; i < n; i++) paths[i] = ann->items[i].image;
    }

    if (image_init(argv[0])) die("%s", clip_error());
    image_source *src = image_source_open(root);
    if (!src) die("%s", clip_error());
    for (size_t i = 0; i < n; i++) image_source_want(src, paths[i]);

    /* a file output appears only when complete (see stream_open_write) */
    stream_writer *w = stream_open_write(out);
    if (!w) die("%s", clip_error());

    int64_t shape[3] = {pc.size, pc.size, 3};
    size_t npy_len;
    unsigned char *npy_header = npy_encode(DT_U8, 3, shape, NULL, &npy_len);
    pc.prefix = npy_header;
    pc.prefix_len = npy_len - (size_t)pc.size * pc.size * 3;
    image_pool *pool = image_pool_start(src, paths, n, &pc);
    if (!pool) die("%s", clip_error());

    progress prog;
    progress_start(&prog, "clip-prep", "images", n, show);
    sample s;
    sample_init(&s);
    size_t written = 0, bad = 0;
    char *fatal = NULL;
    image_pool_item r;
    for (size_t i = 0; !fatal && !image_pool_next(pool, &r); i++) {
        if (r.err) {
            if (!skip_bad) {
                fatal = r.err, r.err = NULL;
            } else {
                warn("skipping %s", r.err);
                bad++;
            }
            image_pool_item_free(&r);
            continue;
        }
        sample_clear(&s);
        char *key = sample_key_for_path(paths[i]);
        sample_set_key(&s, key);
        free(key);
        const annotation *a = ann ? &ann->items[i] : NULL;
        char *meta =
            annotation_sample_json(paths[i], a ? a->captions : NULL, a ? a->n_captions : 0);
        if (!meta) {
            fatal = xstrdup(clip_error());
            image_pool_item_free(&r);
            break;
        }
        /* the sample takes the buffers */
        sample_set(&s, "json", meta, strlen(meta));
        sample_set(&s, "img.npy", r.data, r.len);
        if (r.orig) sample_set(&s, image_type(r.orig, r.orig_len), r.orig, r.orig_len);
        if (stream_write(w, &s))
            fatal = xstrdup(clip_error());
        else
            written++;
        progress_update(&prog, written + bad);
    }
    image_pool_free(pool);
    if (fatal)
        stream_abort_write(w);
    else if (stream_close_write(w))
        fatal = xstrdup(clip_error());
    if (fatal) die("%s", fatal);
    progress_end(&prog, written + bad);
    if (bad) warn("%zu bad image%s skipped, %zu written", bad, bad == 1 ? "" : "s", written);
    sample_free(&s);
    image_source_close(src);
    annotations_free(ann);
    if (ann_path) free(paths);
    free(npy_header);
    close_stdout();
    return 0;
}
