/* clip-embed: add image (img_emb.npy) and caption (txt_emb.npy) embeddings
 * to every sample of a stream. See clip-embed(1). */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"
#include "core/atomic_file.h"
#include "kernels/blas.h"
#include "model/clip_model.h"
#include "model/device.h"
#include "kernels/gemm_int8.h"
#include "io/stream.h"
#include "search/embed.h"
#include "core/util.h"

static const char usage[] =
    "usage: clip-embed --model CKPT [options]\n"
    "Add img_emb.npy (float32 [D]) for img.npy and txt_emb.npy (float32 [n_captions, D])\n"
    "for tok.npy to every sample of a stream; other fields pass through.\n"
    "\n"
    "  -m, --model FILE       joint CLIP checkpoint (.pth, .bin, .safetensors)\n"
    "      --text-model DIR   Hugging Face BERT directory (when the checkpoint has none)\n"
    "  -i, --input ENDPOINT   sample stream in: -, FILE.tar, tcp://..., ipc://... (default -)\n"
    "  -o, --output ENDPOINT  sample stream out (default -)\n"
    "  -b, --batch-size N     images (and captions) encoded together (default 32)\n"
    "  -t, --threads N        OpenMP and OpenBLAS threads (default: OMP_NUM_THREADS or all\n"
    "                         cores)\n"
    "      --device NAME      only cpu in this build\n"
    "      --no-images        do not embed images (img.npy passes through)\n"
    "      --no-texts         do not embed captions (tok.npy passes through)\n"
    "      --amp              bf16 matrix products (fp32 accumulation): about twice as\n"
    "                         fast, embeddings within ~1e-2 of fp32\n"
    "      --int8             int8 Linear layers (weights per channel, inputs per row):\n"
    "                         about 3.5 times fp32, embeddings within ~3e-2 of fp32\n"
    "      --progress         progress on stderr\n"
    "  -h, --help             this help\n";

int main(int argc, char **argv)
{
    blas_setup(argc, argv);
    clip_set_progname(argv[0]);
    clip_handle_signals();
    enum {
        OPT_TEXT_MODEL = 256,
        OPT_DEVICE,
        OPT_PROGRESS,
        OPT_NO_IMAGES,
        OPT_NO_TEXTS,
        OPT_AMP,
        OPT_INT8
    };
    /* clang-format off */
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"text-model", required_argument, NULL, OPT_TEXT_MODEL},
        {"input", required_argument, NULL, 'i'},
        {"output", required_argument, NULL, 'o'},
        {"batch-size", required_argument, NULL, 'b'},
        {"threads", required_argument, NULL, 't'},
        {"device", required_argument, NULL, OPT_DEVICE},
        {"progress", no_argument, NULL, OPT_PROGRESS},
        {"no-images", no_argument, NULL, OPT_NO_IMAGES},
        {"no-texts", no_argument, NULL, OPT_NO_TEXTS},
        {"amp", no_argument, NULL, OPT_AMP},
        {"int8", no_argument, NULL, OPT_INT8},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    /* clang-format on */
    const char *model = NULL, *text_model = NULL, *in = "-", *out = "-", *device = "cpu";
    int batch = 32, threads = 0, show_progress = 0, do_images = 1, do_texts = 1, c;
    int amp = 0, int8 = 0;
    opterr = 0; /* our own one-line message */
    static const char short_opts[] = "m:i:o:b:t:h";
    while ((c = getopt_long(argc, argv, short_opts, opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case OPT_TEXT_MODEL: text_model = optarg; break;
        case 'i': in = optarg; break;
        case 'o': out = optarg; break;
        case 'b': batch = (int)parse_long_option("--batch-size", optarg, 1, 4096); break;
        case 't': threads = (int)parse_long_option("--threads", optarg, 1, 1024); break;
        case OPT_DEVICE: device = optarg; break;
        case OPT_PROGRESS: show_progress = 1; break;
        case OPT_NO_IMAGES: do_images = 0; break;
        case OPT_NO_TEXTS: do_texts = 0; break;
        case OPT_AMP: amp = 1; break;
        case OPT_INT8:
            int8 = 1;
            if (!gemm_int8_available())
                warn("--int8: no AVX512_VNNI here (CPU features: %s, see CLIP_CPU), so the int8 "
                     "layers run in plain C, slower than fp32",
                     cpu_describe());
            break;
        case 'h': return print_help(usage);
        default: option_error(argv, short_opts);
        }
    }
    if (optind < argc) usage_error("unexpected argument '%s'", argv[optind]);
    if (!model) usage_error("--model CKPT is required");
    if (!device_find(device, "encoder")) die("%s", clip_error());
    if (threads) blas_set_threads(threads);

    clip_model *m = load_model(model, text_model);
    /* --int8 wins over --amp: its Linear layers leave no matrix product to bf16 */
    if (clip_model_set_precision(m, int8 ? PRECISION_INT8 : amp ? PRECISION_BF16 : PRECISION_FP32))
        die("%s: %s", model, clip_error());
    embed_config ec = {batch, do_images, do_texts};
    embedder *e = embedder_create(m, &ec, model);
    if (!e) die("%s", clip_error());
    stream_reader *r = stream_open_read(in);
    if (!r) die("%s", clip_error());
    stream_writer *w = stream_open_write(out);
    if (!w) die("%s", clip_error());
    progress p;
    progress_start(&p, "clip-embed", "samples", 0, show_progress);
    long done = embedder_run(e, r, w, &p);
    if (done < 0) die("%s", clip_error());
    progress_end(&p, done);
    if (stream_close_write(w) < 0) die("%s", clip_error());
    stream_close_read(r);
    embedder_free(e);
    clip_model_free(m);
    close_stdout();
    return 0;
}
