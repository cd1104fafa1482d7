/* clip-tokenize: add token ids (tok.npy) to every sample of a stream, or
 * tokenise plain lines. See clip-tokenize(1). */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tool.h"
#include "core/atomic_file.h"
#include "io/sample.h"
#include "io/stream.h"
#include "text/tokenizer.h"
#include "core/util.h"

static const char usage[] =
    "usage: clip-tokenize [--vocab VOCAB.txt | --bpe [MERGES.txt.gz]] [options]\n"
    "Tokenise the captions of a sample stream into a tok.npy field, or lines of text.\n"
    "\n"
    "  --vocab FILE           Chinese BERT WordPiece vocabulary (default: the shipped\n"
    "                         bert-chinese-vocab.txt, see FILES in the man page)\n"
    "  --bpe [FILE]           OpenAI CLIP BPE instead (default FILE: the shipped\n"
    "                         bpe_simple_vocab_16e6.txt.gz)\n"
    "  --context-length N     ids per caption incl. start/end (default 52 WordPiece,\n"
    "                         77 BPE); longer texts are truncated, shorter 0-padded\n"
    "  -i, --input ENDPOINT   sample stream in: -, FILE.tar, tcp://..., ipc://... (default -)\n"
    "  -o, --output ENDPOINT  sample stream out (default -)\n"
    "      --field NAME       name of the field written (default tok.npy)\n"
    "      --lines            read one text a line, write its ids space-separated\n"
    "                         (with start/end tokens, not padded); -i/-o are files\n"
    "  -q, --quiet            no progress on stderr\n"
    "  -h, --help             this help\n";

/* Captions of a sample's json field; dies naming the sample on bad input. */
static json_t *sample_captions(const sample *s, json_t **root)
{
    const sample_field *f = sample_get(s, "json");
    if (!f) die("sample %s: no json field (captions to tokenise)", s->key);
    json_error_t err;
    *root = json_loadb((const char *)f->data, f->size, JSON_ALLOW_NUL, &err);
    if (!*root) die("sample %s: json: %s (line %d)", s->key, err.text, err.line);
    json_t *caps = json_object_get(*root, "captions");
    if (!json_is_array(caps)) die("sample %s: json has no \"captions\" list", s->key);
    return caps;
}

static void run_stream(tokenizer *t, const char *in, const char *out, const char *field, int ctx,
                       int quiet)
{
    stream_reader *r = stream_open_read(in);
    if (!r) die("%s", clip_error());
    stream_writer *w = stream_open_write(out);
    if (!w) die("%s", clip_error());
    sample s;
    sample_init(&s);
    size_t tok_cap = 8 * (size_t)ctx, n_samples = 0;
    int32_t *tok = xmalloc(tok_cap * sizeof *tok);
    progress p;
    progress_start(&p, "clip-tokenize", "samples", 0, !quiet && isatty(STDERR_FILENO));
    int rc;
    while ((rc = stream_read(r, &s)) > 0) {
        json_t *root, *caps = sample_captions(&s, &root);
        size_t n = json_array_size(caps);
        if (tok_cap < n * ctx) {
            tok_cap = n * ctx;
            tok = xrealloc(tok, tok_cap * sizeof *tok);
        }
        memset(tok, 0, n * ctx * sizeof *tok); /* pad id 0 */
        for (size_t i = 0; i < n; i++) {
            json_t *c = json_array_get(caps, i);
            if (!json_is_string(c)) die("sample %s: caption %zu is not a string", s.key, i);
            if (tokenizer_encode(t, json_string_value(c), json_string_length(c), tok + i * ctx,
                                 ctx) < 0)
                die("sample %s: caption %zu: %s", s.key, i, clip_error());
        }
        int64_t shape[2] = {(int64_t)n, ctx};
        sample_set_npy(&s, field, DT_I32, 2, shape, tok);
        json_decref(root);
        if (stream_write(w, &s) < 0) die("%s", clip_error());
        n_samples++;
        progress_update(&p, n_samples);
    }
    if (rc < 0) die("%s", clip_error());
    progress_end(&p, n_samples);
    if (stream_close_write(w) < 0) die("%s", clip_error());
    stream_close_read(r);
    sample_free(&s);
    free(tok);
}

static void run_lines(tokenizer *t, const char *in, const char *out, int ctx)
{
    if (stream_is_zmq(in) || stream_is_zmq(out))
        usage_error("--lines reads and writes plain files, not %s", stream_is_zmq(in) ? in : out);
    FILE *fi = strcmp(in, "-") ? fopen(in, "r") : stdin;
    if (!fi) die("%s: cannot open: %m", in);
    /* a file appears only when complete: no partial FILE after a bad line */
    atomic_file *file = NULL;
    FILE *fo = stdout;
    if (strcmp(out, "-") && atomic_file_applies(out)) {
        if (!(file = atomic_file_create(out)) || !(fo = atomic_file_stream(file)))
            die("%s", clip_error());
    } else if (strcmp(out, "-") && !(fo = fopen(out, "w"))) {
        die("%s: cannot open: %m", out);
    }
    int32_t *ids = xmalloc(ctx * sizeof *ids);
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, fi)) >= 0) {
        lineno++;
        if (len > 0 && line[len - 1] == '\n') len--;
        int n = tokenizer_encode(t, line, len, ids, ctx);
        if (n < 0) die("%s: line %zu: %s", strcmp(in, "-") ? in : "<stdin>", lineno, clip_error());
        for (int i = 0; i < n; i++) fprintf(fo, i ? " %d" : "%d", ids[i]);
        if (fputc('\n', fo) == EOF || ferror(fo)) /* stop at a full disk, not at the end */
            die("%s: write failed: %m", fo == stdout ? "stdout" : out);
    }
    if (ferror(fi)) die("%s: read error", in);
    if (file) {
        if (atomic_file_commit(file)) die("%s", clip_error());
    } else if (fo != stdout && (fflush(fo) || ferror(fo) | fclose(fo))) {
        die("%s: write failed: %m", out);
    } /* stdout: close_stdout() */
    free(line);
    free(ids);
}

int main(int argc, char **argv)
{
    clip_set_progname(argv[0]);
    clip_handle_signals();
    enum { OPT_VOCAB = 256, OPT_BPE, OPT_CONTEXT, OPT_FIELD, OPT_LINES };
    /* clang-format off */
    static const struct option opts[] = {
        {"vocab", required_argument, NULL, OPT_VOCAB},
        {"bpe", optional_argument, NULL, OPT_BPE},
        {"context-length", required_argument, NULL, OPT_CONTEXT},
        {"input", required_argument, NULL, 'i'},
        {"output", required_argument, NULL, 'o'},
        {"field", required_argument, NULL, OPT_FIELD},
        {"lines", no_argument, NULL, OPT_LINES},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    /* clang-format on */
    const char *vocab = NULL, *merges = NULL, *in = "-", *out = "-", *field = "tok.npy";
    int ctx = 0, lines = 0, quiet = 0, bpe = 0, c;
    opterr = 0; /* our own one-line message */
    static const char short_opts[] = "i:o:qh";
    while ((c = getopt_long(argc, argv, short_opts, opts, NULL)) != -1) {
        switch (c) {
        case OPT_VOCAB: vocab = optarg; break;
        case OPT_BPE:
            bpe = 1;
            /* --bpe FILE as well as --bpe=FILE: this tool takes no operands */
            if (!optarg && optind < argc && argv[optind][0] != '-') optarg = argv[optind++];
            merges = optarg;
            break;
        case OPT_CONTEXT: ctx = parse_long_option("--context-length", optarg, 2, 65536); break;
        case 'i': in = optarg; break;
        case 'o': out = optarg; break;
        case OPT_FIELD: field = optarg; break;
        case OPT_LINES: lines = 1; break;
        case 'q': quiet = 1; break;
        case 'h': return print_help(usage);
        default: option_error(argv, short_opts);
        }
    }
    if (optind < argc) usage_error("unexpected argument '%s'", argv[optind]);
    if (vocab && bpe) usage_error("give one of --vocab (WordPiece) or --bpe (CLIP BPE), not both");
    if (!*field || strchr(field, '/')) usage_error("--field: '%s' is not a field name", field);
    tokenizer *t = vocab    ? tokenizer_open_wordpiece(vocab)
                   : merges ? tokenizer_open_bpe(merges)
                            : tokenizer_open_shipped(bpe);
    if (!t) die("%s", clip_error());
    if (!ctx) ctx = tokenizer_default_context(t);
    if (lines)
        run_lines(t, in, out, ctx);
    else
        run_stream(t, in, out, field, ctx, quiet);
    tokenizer_close(t);
    close_stdout();
    return 0;
}
