#include "tool.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define CLIP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) /* clang's spelling */
#define CLIP_ASAN 1
#endif
#endif
#ifdef CLIP_ASAN
/* Sanitizer builds only (make check-asan): LeakSanitizer checks every exit but
 * the ones through die(). A tool that gives up leaves its live buffers to the
 * OS, and after a noreturn call the compiler keeps no pointer to them, so the
 * check would report each one; the library's own error paths return and free,
 * and the fuzzers and the exits through main check them. */
static volatile int dying;
int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void) { return dying; }
#endif

static noreturn void vexit(int status, const char *suffix, const char *fmt, va_list ap)
{
#ifdef CLIP_ASAN
    dying = 1;
#endif
    fflush(stdout);
    fprintf(stderr, "%s: ", clip_progname);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "%s\n", suffix);
    exit(status);
}

void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vexit(1, "", fmt, ap);
}

void usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vexit(2, " (see --help)", fmt, ap);
}

void warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    clip_vnotice(fmt, ap);
    va_end(ap);
}

void close_stdout(void)
{
    /* a write that failed before (a buffer flushed mid-output) left its cause
     * in errno, which nothing since has had reason to change */
    int earlier = ferror(stdout) ? errno : 0;
    errno = 0;
    int failed = fflush(stdout) | ferror(stdout);
    int cause = errno ? errno : earlier;
    if (failed) die("stdout: write failed%s%s", cause ? ": " : "", cause ? strerror(cause) : "");
    if (fclose(stdout)) { /* not die(): it flushes stdout, closed now */
        fprintf(stderr, "%s: stdout: close failed: %s\n", clip_progname, strerror(errno));
        exit(1);
    }
}

int print_help(const char *usage)
{
    fputs(usage, stdout);
    close_stdout();
    return 0;
}

void option_error(char **argv, const char *short_opts)
{
    extern int optind, optopt;
    const char *known = optopt > 0 && optopt < 256 ? strchr(short_opts, optopt) : NULL;
    if (optopt > 0 && optopt < 256 && !known) usage_error("unknown option '-%c'", optopt);
    usage_error("option '%s' is unknown or needs a value", argv[optind - 1]);
}

long parse_long_option(const char *opt, const char *val, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(val ? val : "", &end, 10);
    if (!val || !*val || *end || errno || v < min || v > max)
        usage_error("%s: expected an integer in [%ld, %ld], got '%s'", opt, min, max,
                    val ? val : "");
    return v;
}

/* val, whole, as a number (strtod's syntax): 1, else 0 */
static int read_double(const char *val, double *v)
{
    char *end;
    errno = 0;
    *v = strtod(val ? val : "", &end);
    return val && !errno && end != val && !*end;
}

double parse_double_option(const char *opt, const char *val, double min, double max)
{
    double v;
    if (!read_double(val, &v) || !(v >= min && v <= max))
        usage_error("%s: '%s' is not a number in [%g, %g]", opt, val ? val : "", min, max);
    return v;
}

double parse_fraction_option(const char *opt, const char *val, double min, double below,
                             const char *what)
{
    double v;
    if (!read_double(val, &v) || !(v >= min && v < below))
        usage_error("%s: '%s' is not a number in [%g, %g) (%s)", opt, val ? val : "", min, below,
                    what);
    return v;
}

int parse_choice_option(const char *opt, const char *val, const char *const *choices)
{
    char list[256] = "";
    for (int i = 0; choices[i]; i++) {
        if (!strcmp(val, choices[i])) return i;
        size_t n = strlen(list);
        snprintf(list + n, sizeof list - n, "%s%s", i ? (choices[i + 1] ? ", " : " or ") : "",
                 choices[i]);
    }
    usage_error("%s: expected %s, not '%s'", opt, list, val);
}
