/* clip-query: text -> image and image -> caption search over an embedded
 * sample stream, and zero-shot labelling of an image. See clip-query(1). */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tool.h"
#include "core/atomic_file.h"
#include "core/util.h"
#include "io/image.h"
#include "kernels/blas.h"
#include "search/query.h"
#include "search/server.h"

static const char usage[] =
    "usage: clip-query --model CKPT (--text TEXT | --image FILE | --serve ADDR) [options]\n"
    "       clip-query --request ADDR JSON\n"
    "Search an embedded sample stream (clip-embed output) by text or image, or label\n"
    "an image zero-shot.\n"
    "\n"
    "  -m, --model FILE         joint CLIP checkpoint (.pth, .bin, .safetensors)\n"
    "      --text-model DIR     Hugging Face BERT directory (when the checkpoint has none)\n"
    "      --vocab FILE         the text tower's vocabulary: WordPiece vocab.txt (BERT)\n"
    "                           or BPE merges .txt.gz (English CLIP tower); default:\n"
    "                           the one shipped with clip-tools\n"
    "      --context-length N   ids per text incl. start/end (default 52, at most the\n"
    "                           model's positions)\n"
    "      --index FILE         embedded sample stream (img_emb.npy, txt_emb.npy, json)\n"
    "      --text TEXT          rank the index's images by similarity to TEXT\n"
    "      --image FILE         rank the index's captions by similarity to the image\n"
    "      --labels A,B,...     with --image: zero-shot probabilities of the labels\n"
    "                           (no --index needed)\n"
    "  -k N                     results shown (default 5)\n"
    "      --json               print a JSON array instead of lines\n"
    "      --serve ADDR         load once, then answer JSON requests on a ZeroMQ socket\n"
    "                           bound to ADDR (e.g. tcp://127.0.0.1:5557) until\n"
    "                           {\"quit\": true}, SIGINT or SIGTERM\n"
    "      --max-request BYTES  --serve: longest request (default 1048576)\n"
    "      --time-budget SEC    --serve: seconds from a request to its reply, else an\n"
    "                           error reply (default 60)\n"
    "      --workers N          --serve: requests answered at once (default 4)\n"
    "      --request ADDR JSON  send one request to a --serve ADDR and print the reply\n"
    "      --timeout SEC        --request: seconds to wait for the reply (default 600)\n"
    "  -t, --threads N          OpenMP and OpenBLAS threads (default: OMP_NUM_THREADS or\n"
    "                           all cores)\n"
    "  -h, --help               this help\n";

static void print_result(json_t *a, int as_json)
{
    if (as_json) {
        char *s = json_dumps(a, JSON_INDENT(1));
        puts(s);
        free(s);
        return;
    }
    size_t i;
    json_t *o;
    json_array_foreach(a, i, o)
    {
        const char *label = json_string_value(json_object_get(o, "label"));
        if (label) {
            printf("%.6f %s\n", json_real_value(json_object_get(o, "prob")), label);
            continue;
        }
        json_t *what = json_object_get(o, "image");
        if (!what) what = json_object_get(o, "caption");
        printf("%zu %.6f %s %s\n", i + 1, json_real_value(json_object_get(o, "score")),
               json_string_value(json_object_get(o, "key")),
               json_is_string(what) ? json_string_value(what) : "-");
    }
}

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

/* --serve: the handlers restart interrupted system calls, so a request being
 * answered finishes and its reply goes out (search/server.h) */
static int serve(query_engine *qe, const char *addr, const query_server_options *o)
{
    query_server *srv = query_server_open(addr, o);
    if (!srv) die("%s", clip_error());
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    fprintf(stderr, "%s: serving on %s\n", clip_progname, addr);
    int rc = query_server_run(srv, qe);
    if (rc < 0) die("%s", clip_error());
    int stuck = query_server_close(srv);
    if (stop_signal)
        fprintf(stderr, "%s: stopped by %s\n", clip_progname,
                stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
    rc = stop_signal ? 128 + stop_signal : 0;
    if (stuck) _exit(rc); /* a worker is stuck in a request past its budget and uses the model */
    return rc;
}

/* --request ADDR JSON: exit 0 with the reply on stdout, 1 if it is {"error": ...} */
static int request(const char *addr, const char *req, int timeout_ms)
{
    size_t len;
    char *reply = query_server_ask(addr, req, strlen(req), timeout_ms, &len);
    if (!reply) die("%s", clip_error());
    fwrite(reply, 1, len, stdout);
    putchar('\n');
    json_t *j = json_loadb(reply, len, 0, NULL);
    int rc = json_object_get(j, "error") ? 1 : 0;
    json_decref(j);
    free(reply);
    return rc;
}

int main(int argc, char **argv)
{
    blas_setup(argc, argv);
    clip_set_progname(argv[0]);
    clip_handle_signals(); /* --serve installs its own for SIGINT and SIGTERM */
    /* clang-format off */
    enum {
        OPT_TEXT_MODEL = 256, OPT_VOCAB, OPT_CTX, OPT_INDEX, OPT_TEXT, OPT_IMAGE, OPT_LABELS,
        OPT_JSON, OPT_SERVE, OPT_REQUEST, OPT_TIMEOUT, OPT_MAX_REQUEST, OPT_BUDGET, OPT_WORKERS
    };
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"text-model", required_argument, NULL, OPT_TEXT_MODEL},
        {"vocab", required_argument, NULL, OPT_VOCAB},
        {"context-length", required_argument, NULL, OPT_CTX},
        {"index", required_argument, NULL, OPT_INDEX},
        {"text", required_argument, NULL, OPT_TEXT},
        {"image", required_argument, NULL, OPT_IMAGE},
        {"labels", required_argument, NULL, OPT_LABELS},
        {"json", no_argument, NULL, OPT_JSON},
        {"serve", required_argument, NULL, OPT_SERVE},
        {"request", required_argument, NULL, OPT_REQUEST},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"max-request", required_argument, NULL, OPT_MAX_REQUEST},
        {"time-budget", required_argument, NULL, OPT_BUDGET},
        {"workers", required_argument, NULL, OPT_WORKERS},
        {"threads", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    /* clang-format on */
    const char *model = NULL, *text_model = NULL, *vocab = NULL, *index = NULL, *text = NULL,
               *image = NULL, *serve_addr = NULL, *request_addr = NULL;
    char *labels = NULL;
    int k = 5, ctx = 0, threads = 0, as_json = 0, timeout = 600, c;
    query_server_options so = {QUERY_SERVER_MAX_REQUEST, QUERY_SERVER_TIME_BUDGET,
                               QUERY_SERVER_WORKERS, &stop_signal};
    opterr = 0;
    static const char short_opts[] = "m:k:t:h";
    while ((c = getopt_long(argc, argv, short_opts, opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case OPT_TEXT_MODEL: text_model = optarg; break;
        case OPT_VOCAB: vocab = optarg; break;
        case OPT_CTX: ctx = (int)parse_long_option("--context-length", optarg, 2, 4096); break;
        case OPT_INDEX: index = optarg; break;
        case OPT_TEXT: text = optarg; break;
        case OPT_IMAGE: image = optarg; break;
        case OPT_LABELS: labels = optarg; break;
        case OPT_JSON: as_json = 1; break;
        case OPT_SERVE: serve_addr = optarg; break;
        case OPT_REQUEST: request_addr = optarg; break;
        case OPT_TIMEOUT: timeout = (int)parse_long_option("--timeout", optarg, 1, 1000000); break;
        case OPT_MAX_REQUEST:
            so.max_request = parse_long_option("--max-request", optarg, 64, 1L << 30);
            break;
        case OPT_BUDGET:
            so.time_budget = parse_double_option("--time-budget", optarg, 1e-9, 1e6);
            break;
        case OPT_WORKERS:
            so.workers = (int)parse_long_option("--workers", optarg, 1, QUERY_SERVER_MAX_PENDING);
            break;
        case 'k': k = (int)parse_long_option("-k", optarg, 1, 1 << 30); break;
        case 't': threads = (int)parse_long_option("--threads", optarg, 1, 1024); break;
        case 'h': return print_help(usage);
        default: option_error(argv, short_opts);
        }
    }
    if (request_addr) {
        if (optind != argc - 1) usage_error("--request ADDR needs one JSON argument");
        int rc = request(request_addr, argv[optind], timeout * 1000);
        close_stdout();
        return rc;
    }
    if (optind < argc) usage_error("unexpected argument '%s'", argv[optind]);
    if (!model) usage_error("--model CKPT is required");
    if (serve_addr && (text || image || labels))
        usage_error("--serve takes its queries as requests, not --text/--image/--labels");
    if (!serve_addr && !text == !image)
        usage_error("give one of --text TEXT, --image FILE or --serve ADDR");
    if (labels && !image) usage_error("--labels needs --image FILE");
    if (!serve_addr && !labels && !index) usage_error("--index FILE is required");
    if (threads) blas_set_threads(threads);
    if ((image || serve_addr) && image_init(argv[0])) die("%s", clip_error());

    clip_model *m = load_model(model, text_model);
    int dim = m->embed_dim;
    if ((text || labels) && m->text == CLIP_TEXT_NONE)
        die("%s: no text tower (use --text-model DIR)", model);
    tokenizer *tok = NULL;
    if (m->text != CLIP_TEXT_NONE && (text || labels || serve_addr) &&
        !(tok = query_open_tokenizer(m, model, vocab, &ctx)))
        die("%s", clip_error());
    if (image && !clip_image_resolution(m)) die("%s: no image tower", model);

    recall_set ix = {0};
    recall_meta meta = {0};
    /* a text query reads the images, an image query the captions, a server both */
    unsigned what = RECALL_NAME_STREAM | (text || serve_addr ? RECALL_IMAGES : 0) |
                    (image || serve_addr ? RECALL_TEXTS_IF_ANY : 0);
    if (index && recall_load(index, what, dim, &ix, &meta)) die("%s", clip_error());
    query_engine qe;
    query_engine_init(&qe, m, tok, ctx, index ? &ix : NULL, index ? &meta : NULL);
    qe.threads = omp_get_max_threads();
    float *q = xmalloc(dim * sizeof(float));
    json_t *res = NULL;
    int rc = 0;
    if (serve_addr) {
        rc = serve(&qe, serve_addr, &so);
    } else if (text) {
        if (query_encode_text(&qe, text, strlen(text), q, NULL)) die("%s", clip_error());
        res = query_search(&qe, q, k, 0, NULL);
    } else {
        if (query_encode_image(&qe, image, q, NULL)) die("%s", clip_error());
        if (labels) {
            const char **lv = xmalloc((strlen(labels) + 1) * sizeof *lv);
            int n = query_split_labels(labels, lv);
            if (!n) usage_error("--labels: no labels given");
            if (!(res = query_zero_shot(&qe, q, lv, n, NULL))) die("%s", clip_error());
            free(lv);
        } else {
            res = query_search(&qe, q, k, 1, NULL);
        }
    }
    if (res) print_result(res, as_json);
    json_decref(res);
    free(q);
    query_engine_destroy(&qe);
    recall_meta_free(&meta, &ix);
    recall_set_free(&ix);
    if (tok) tokenizer_close(tok);
    clip_model_free(m);
    if (!rc) close_stdout();
    return rc;
}
