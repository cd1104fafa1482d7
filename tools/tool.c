#include "tool.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static noreturn void vexit(int status, const char *suffix, const char *fmt, va_list ap)
{
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

void close_stdout(void)
{
    errno = 0;
    int failed = fflush(stdout) | ferror(stdout);
    if (failed) die("stdout: write failed%s%s", errno ? ": " : "", errno ? strerror(errno) : "");
    if (fclose(stdout)) { /* not die(): it flushes stdout, closed now */
        fprintf(stderr, "%s: stdout: close failed: %s\n", clip_progname, strerror(errno));
        exit(1);
    }
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
        usage_error("%s: expected an integer in [%ld, %ld], got '%s'", opt, min, max, val ? val : "");
    return v;
}
