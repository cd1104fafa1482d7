/* What the programs share and the library never does: ending the process.
 * Each tool (and test program) prints "prog: message" and exits; the library
 * only returns errors (clip_error()). Exit status 1: a failure; 2: a usage
 * error (an unknown option, a bad option value). */
#ifndef CLIP_TOOL_H
#define CLIP_TOOL_H

#include <stdnoreturn.h>

#include "core/util.h"
#include "model/clip_model.h"

/* "prog: message" on stderr, exit 1. */
noreturn void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "prog: message (see --help)" on stderr, exit 2. */
noreturn void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "prog: message" on stderr, and go on. */
void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Before exiting 0: flush and close stdout, and die if any write to it
 * failed (a full disk, /dev/full, a closed pipe). */
void close_stdout(void);
/* --help: the usage text on stdout, then close_stdout; returns 0, main's status. */
int print_help(const char *usage);
/* getopt_long returned '?' or ':': a usage error naming the option that is
 * unknown or needs a value (short_opts: the string given to getopt_long). */
noreturn void option_error(char **argv, const char *short_opts);
/* An integer option value in [min, max], or a usage error naming the option. */
long parse_long_option(const char *opt, const char *val, long min, long max);
/* A number in [min, max], or a usage error naming the option. */
double parse_double_option(const char *opt, const char *val, double min, double max);
/* A number in [min, below) (what: the value's meaning, for the message), or a usage error. */
double parse_fraction_option(const char *opt, const char *val, double min, double below,
                             const char *what);
/* The index of val in choices (NULL-terminated), or a usage error listing them. */
int parse_choice_option(const char *opt, const char *val, const char *const *choices);
/* clip_model_load(ckpt_path, bert_dir) with its warnings shown ("prog:
 * warning" each), or die with its error. The caller frees the model. Inline,
 * so that only the programs that load a model link the model code and the
 * BLAS (whose libgfortran brings libquadmath, which registers printf
 * extensions: glibc then formats every printf the slow, positional way). */
static inline clip_model *load_model(const char *ckpt_path, const char *bert_dir)
{
    clip_model *m = clip_model_load(ckpt_path, bert_dir);
    if (!m) die("%s", clip_error());
    for (int i = 0; i < m->n_warnings; i++) warn("%s", m->warnings[i]);
    return m;
}

#endif
