/* clip-merge: weight-space ensembling (WiSE-FT) of a zero-shot and a
 * fine-tuned checkpoint. */
#include "tool.h"
#include "ckpt/checkpoint.h"
#include "core/atomic_file.h"
#include "ckpt/merge.h"
#include "core/util.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

static const char usage[] =
    "usage: clip-merge [--alpha A] ZERO FINE -o OUT\n"
    "Interpolates two checkpoints of one architecture tensor by tensor (WiSE-FT):\n"
    "OUT = (1 - A) * ZERO + A * FINE. A fine-tuned model merged with its zero-shot start\n"
    "keeps much of what the start knew. Inputs: .pth, pytorch_model.bin or .safetensors.\n"
    "  -a, --alpha A      weight of FINE (default 0.5; 0 gives ZERO, 1 gives FINE, bit for bit)\n"
    "  -o, --output OUT   .safetensors, or .pth/.pt/.bin (PyTorch zip); written atomically\n"
    "  -q, --quiet        no summary on stderr\n"
    "  -h, --help         this help\n";

int main(int argc, char **argv)
{
    clip_set_progname(argv[0]);
    clip_handle_signals();
    const char *out_path = NULL;
    double alpha = 0.5;
    int quiet = 0;
    /* clang-format off */
    static const struct option opts[] = {
        {"alpha", required_argument, 0, 'a'}, {"output", required_argument, 0, 'o'},
        {"quiet", no_argument, 0, 'q'},       {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    /* clang-format on */
    static const char short_opts[] = "a:o:qh";
    opterr = 0; /* our own one-line message */
    int c;
    while ((c = getopt_long(argc, argv, short_opts, opts, NULL)) != -1) {
        switch (c) {
        case 'a': alpha = parse_double_option("--alpha", optarg, -1e3, 1e3); break;
        case 'o': out_path = optarg; break;
        case 'q': quiet = 1; break;
        case 'h': return print_help(usage);
        default: option_error(argv, short_opts);
        }
    }
    if (argc - optind != 2 || !out_path) {
        fputs(usage, stderr);
        return 2;
    }
    const char *zero_path = argv[optind], *fine_path = argv[optind + 1];
    ckpt *zero = ckpt_load(zero_path);
    if (!zero) die("%s", clip_error());
    ckpt *fine = ckpt_load(fine_path);
    if (!fine) die("%s", clip_error());
    ckpt *merged = ckpt_interpolate(zero, fine, alpha);
    if (!merged) die("%s", clip_error());
    ckpt_out_tensor *t = ckpt_out_views(merged);
    if (ckpt_save(out_path, t, ckpt_count(merged), ckpt_metadata_pairs(merged)) < 0)
        die("%s", clip_error());
    if (!quiet)
        fprintf(stderr, "%s: %zu tensors, %g x %s + %g x %s -> %s\n", clip_progname,
                ckpt_count(merged), 1 - alpha, zero_path, alpha, fine_path, out_path);
    free(t);
    ckpt_free(merged);
    ckpt_free(fine);
    ckpt_free(zero);
    close_stdout();
    return 0;
}
