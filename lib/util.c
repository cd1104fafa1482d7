#include "util.h"

#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char error_buf[1024];
const char *clip_progname = "clip";

void clip_set_error(const char *fmt, ...)
{
    char tmp[sizeof error_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap); /* fmt may use clip_error() itself */
    va_end(ap);
    memcpy(error_buf, tmp, sizeof tmp);
}

const char *clip_error(void) { return error_buf[0] ? error_buf : "unknown error"; }

void clip_clear_error(void) { error_buf[0] = 0; }

void clip_set_progname(const char *argv0)
{
    const char *s = strrchr(argv0, '/');
    clip_progname = s ? s + 1 : argv0;
}

void die(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "%s: ", clip_progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

void warn(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", clip_progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory (%zu bytes)", n);
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) die("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) die("out of memory (%zu bytes)", n);
    return p;
}

char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

char *xstrndup(const char *s, size_t n)
{
    char *d = xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

#define BIG_THRESHOLD (1u << 21)

void *clip_alloc_big(size_t bytes)
{
    if (bytes < BIG_THRESHOLD) {
        void *p = NULL;
        if (posix_memalign(&p, 64, bytes ? bytes : 64)) die("out of memory (%zu bytes)", bytes);
        return p;
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("out of memory (%zu bytes)", bytes);
    madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

void clip_free_big(void *p, size_t bytes)
{
    if (!p) return;
    if (bytes < BIG_THRESHOLD) free(p);
    else munmap(p, bytes);
}

/* plain syscalls, sized by fstat: stdio would add a buffer copy and a read per
 * file, noticeable at ~30 KB a photo */
char *read_file(const char *path, size_t *len)
{
    return read_file_max(path, len, SIZE_MAX / 2, NULL);
}

char *read_file_max(const char *path, size_t *len, size_t limit, const char *kind)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        clip_set_error("%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    int ok = !fstat(fd, &st), regular = ok && S_ISREG(st.st_mode);
    /* pipes and FIFOs (--image <(curl ...)) are read, up to the limit */
    if (kind && !regular && !(ok && S_ISFIFO(st.st_mode))) {
        clip_set_error("%s: not a regular file or a pipe (a%s %s must be one)", path,
                       strchr("aeiou", kind[0]) ? "n" : "", kind);
        close(fd);
        return NULL;
    }
    if (kind && (uint64_t)st.st_size > limit) {
        clip_set_error("%s: %lld bytes, more than the limit of %zu for a%s %s", path,
                       (long long)st.st_size, limit, strchr("aeiou", kind[0]) ? "n" : "", kind);
        close(fd);
        return NULL;
    }
    size_t cap = regular ? (size_t)st.st_size + 1 : 1 << 16, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n > limit) { /* the file grew past the limit while being read */
            clip_set_error("%s: more than the limit of %zu bytes%s%s", path, limit,
                           kind ? " for a file of kind " : "", kind ? kind : "");
            free(buf);
            close(fd);
            return NULL;
        }
        if (n + 1 >= cap) { /* never past limit + 2: room to see the limit passed */
            cap = cap > (limit + 2) / 2 ? limit + 2 : 2 * cap;
            buf = xrealloc(buf, cap);
        }
        ssize_t got = read(fd, buf + n, cap - n - 1);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            clip_set_error("%s: %s", path, strerror(errno));
            free(buf);
            close(fd);
            return NULL;
        }
        if (got == 0) break;
        n += got;
    }
    close(fd);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

int check_range(const char *what, int64_t v, int64_t lo, int64_t hi)
{
    if (v >= lo && v <= hi) return 0;
    clip_set_error("%s is %lld, outside %lld..%lld", what, (long long)v, (long long)lo,
                   (long long)hi);
    return -1;
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

double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void progress_start(progress *p, const char *label, const char *unit, size_t total, int enabled)
{
    p->label = label;
    p->unit = unit;
    p->total = total;
    p->enabled = enabled;
    p->t0 = p->last = now_seconds();
}

static void progress_print(progress *p, size_t done, int final)
{
    double t = now_seconds() - p->t0;
    double rate = t > 0 ? done / t : 0;
    if (p->total) {
        double eta = rate > 0 ? (p->total - (done < p->total ? done : p->total)) / rate : 0;
        fprintf(stderr, "\r%s: %zu/%zu %s (%.1f/s, %s %.0fs)%s", p->label, done, p->total, p->unit,
                rate, final ? "took" : "ETA", final ? t : eta, final ? "\n" : "   ");
    } else {
        fprintf(stderr, "\r%s: %zu %s (%.1f/s, %.0fs)%s", p->label, done, p->unit, rate, t,
                final ? "\n" : "   ");
    }
}

void progress_update(progress *p, size_t done)
{
    if (!p->enabled) return;
    double t = now_seconds();
    if (t - p->last < 0.25) return;
    p->last = t;
    progress_print(p, done, 0);
}

void progress_end(progress *p, size_t done)
{
    if (p->enabled) progress_print(p, done, 1);
}

long parse_long_option(const char *opt, const char *val, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(val ? val : "", &end, 10);
    if (!val || !*val || *end || errno || v < min || v > max)
        die("%s: expected an integer in [%ld, %ld], got '%s'", opt, min, max, val ? val : "");
    return v;
}

uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void fill_normal(float *x, size_t n, float std, uint64_t seed)
{
    for (size_t i = 0; i < n; i += 2) {
        double u1 = ((splitmix64(&seed) >> 11) + 1.0) * 0x1.0p-53;
        double u2 = (splitmix64(&seed) >> 11) * 0x1.0p-53;
        double r = sqrt(-2.0 * log(u1));
        x[i] = (float)(std * r * cos(2 * M_PI * u2));
        if (i + 1 < n) x[i + 1] = (float)(std * r * sin(2 * M_PI * u2));
    }
}

/* AVX-512 F/BW/VL with the OS saving the opmask and zmm state (OSXSAVE, XCR0)
 * plus the feature bits asked for */
static int detect_avx512(int leaf7_ecx_bit, int leaf7_1_eax_bit)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    unsigned max_sub = a;
    if (!((b >> 16) & 1) || !((b >> 30) & 1) || !((b >> 31) & 1)) return 0;
    if (leaf7_ecx_bit >= 0 && !((c >> leaf7_ecx_bit) & 1)) return 0;
    if (leaf7_1_eax_bit >= 0) {
        if (max_sub < 1) return 0;
        __cpuid_count(7, 1, a, b, c, d);
        if (!((a >> leaf7_1_eax_bit) & 1)) return 0;
    }
    __cpuid(1, a, b, c, d);
    if (!((c >> 27) & 1)) return 0;
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0xe6) == 0xe6;
}

int cpu_has(enum cpu_feature f)
{
    static int known[2] = {-1, -1};
    int v = __atomic_load_n(&known[f], __ATOMIC_RELAXED);
    if (v < 0) {
        v = f == CPU_AVX512_BF16 ? detect_avx512(-1, 5) : detect_avx512(11, -1);
        __atomic_store_n(&known[f], v, __ATOMIC_RELAXED);
    }
    return v;
}
