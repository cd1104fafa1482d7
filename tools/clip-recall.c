/* clip-recall: retrieval recall R@1/5/10 both ways of an embedded stream. */
#include "tool.h"
#include "core/atomic_file.h"
#include "kernels/blas.h"
#include "search/recall.h"
#include "core/util.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

static const char usage[] =
    "usage: clip-recall [-i INPUT] [--table] [--json-out FILE]\n"
    "Reads samples with img_emb.npy and txt_emb.npy (as written by clip-embed) and prints\n"
    "image->text (txt_*) and text->image (img_*) recall at 1, 5, 10 in percent as JSON.\n"
    "  -i, --input INPUT     stream to read: -, a .tar file or a ZeroMQ address (default -)\n"
    "      --table           print a readable table on stdout instead of the JSON\n"
    "      --json-out FILE   also write the JSON to FILE\n"
    "      --block-images N  images per score block (default 256)\n"
    "      --block-texts N   captions per score block (default 4096)\n"
    "  -v, --verbose         timings on stderr\n"
    "  -h, --help            this help\n";

static void print_table(FILE *f, const recall_metrics *m)
{
    fprintf(f, "%-12s %7s %7s %7s %7s\n", "", "R@1", "R@5", "R@10", "mean");
    fprintf(f, "%-12s %7.2f %7.2f %7.2f %7.2f\n", "image->text", m->txt_r[0], m->txt_r[1],
            m->txt_r[2], m->txt_r_mean);
    fprintf(f, "%-12s %7.2f %7.2f %7.2f %7.2f\n", "text->image", m->img_r[0], m->img_r[1],
            m->img_r[2], m->img_r_mean);
    fprintf(f, "%-12s %7s %7s %7s %7.2f\n", "overall", "", "", "", m->r_mean);
    fprintf(f, "%lld images, %lld captions\n", (long long)m->n_images, (long long)m->n_texts);
}

int main(int argc, char **argv)
{
    blas_setup(argc, argv);
    clip_set_progname(argv[0]);
    clip_handle_signals();
    const char *input = "-", *json_out = NULL;
    int table = 0, verbose = 0, block_images = 0, block_texts = 0;
    enum { OPT_TABLE = 256, OPT_JSON_OUT, OPT_BLOCK_IMAGES, OPT_BLOCK_TEXTS };
    /* clang-format off */
    static const struct option opts[] = {
        {"input", required_argument, 0, 'i'},
        {"table", no_argument, 0, OPT_TABLE},
        {"json-out", required_argument, 0, OPT_JSON_OUT},
        {"block-images", required_argument, 0, OPT_BLOCK_IMAGES},
        {"block-texts", required_argument, 0, OPT_BLOCK_TEXTS},
        {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    /* clang-format on */
    static const char short_opts[] = "i:vh";
    opterr = 0; /* our own one-line message */
    int c;
    while ((c = getopt_long(argc, argv, short_opts, opts, NULL)) != -1) {
        switch (c) {
        case 'i': input = optarg; break;
        case OPT_TABLE: table = 1; break;
        case OPT_JSON_OUT: json_out = optarg; break;
        case OPT_BLOCK_IMAGES:
            block_images = (int)parse_long_option("--block-images", optarg, 1, 1 << 16);
            break;
        case OPT_BLOCK_TEXTS:
            block_texts = (int)parse_long_option("--block-texts", optarg, 1, 1 << 20);
            break;
        case 'v': verbose = 1; break;
        case 'h': return print_help(usage);
        default: option_error(argv, short_opts);
        }
    }
    if (optind < argc) usage_error("unexpected argument '%s'", argv[optind]);

    double t0 = now_seconds();
    recall_set set;
    if (recall_load_stream(input, &set)) die("%s", clip_error());
    double t1 = now_seconds();
    int64_t *img_rank = xmalloc(set.n_images * sizeof(int64_t));
    int64_t *txt_rank = xmalloc(set.n_texts * sizeof(int64_t));
    recall_ranks(&set, block_images, block_texts, img_rank, txt_rank);
    if (verbose)
        fprintf(stderr,
                "clip-recall: %lld images, %lld captions, dim %d: read in %.2f s, ranked in %.2f s "
                "(%s)\n",
                (long long)set.n_images, (long long)set.n_texts, set.dim, t1 - t0,
                now_seconds() - t1, blas_describe());
    recall_metrics m;
    recall_summarize(&set, img_rank, txt_rank, &m);
    if (m.n_image_queries < m.n_images)
        warn("%lld of %lld images have no captions: text->image candidates only",
             (long long)(m.n_images - m.n_image_queries), (long long)m.n_images);

    json_t *j = recall_metrics_json(&m);
    size_t flags = JSON_REAL_PRECISION(10);
    if (json_out) { /* a file appears whole or not at all (core/atomic_file.h) */
        atomic_file *af = NULL;
        FILE *f = NULL;
        if (atomic_file_applies(json_out)) {
            if (!(af = atomic_file_create(json_out)) || !(f = atomic_file_stream(af)))
                die("%s", clip_error());
        } else if (!(f = fopen(json_out, "w"))) {
            die("%s: cannot write: %m", json_out);
        }
        if (json_dumpf(j, f, flags) || fputc('\n', f) == EOF)
            die("%s: write failed: %m", json_out); /* a temporary file goes at exit */
        if (af && atomic_file_commit(af)) die("%s", clip_error());
        if (!af && fclose(f)) die("%s: write failed: %m", json_out);
    }
    if (table)
        print_table(stdout, &m);
    else if (json_dumpf(j, stdout, flags) || putchar('\n') == EOF)
        die("stdout: write failed");
    json_decref(j);
    free(img_rank);
    free(txt_rank);
    recall_set_free(&set);
    close_stdout();
    return 0;
}
