#include "core/util.h"

#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
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

void clip_set_verror(const char *prefix, const char *fmt, va_list ap)
{
    char tmp[sizeof error_buf]; /* the arguments may use clip_error() itself */
    int n = prefix ? snprintf(tmp, sizeof tmp, "%s: ", prefix) : 0;
    if (n >= (int)sizeof tmp) n = sizeof tmp - 1;
    vsnprintf(tmp + n, sizeof tmp - n, fmt, ap);
    memcpy(error_buf, tmp, sizeof tmp);
}

void clip_set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    clip_set_verror(NULL, fmt, ap);
    va_end(ap);
}

const char *clip_error(void) { return error_buf[0] ? error_buf : "unknown error"; }

void clip_clear_error(void) { error_buf[0] = 0; }

void clip_set_progname(const char *argv0)
{
    const char *s = strrchr(argv0, '/');
    clip_progname = s ? s + 1 : argv0;
}

uint64_t fnv1a64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

char *path_with_slashes(const char *path)
{
    char *p = xstrdup(path);
    for (char *c = p; *c; c++)
        if (*c == '\\') *c = '/';
    return p;
}

void clip_out_of_memory(size_t bytes)
{
    fprintf(stderr, "%s: out of memory (%zu bytes)\n", clip_progname, bytes);
    exit(1);
}

void clip_vnotice(const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: ", clip_progname);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void clip_notice(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    clip_vnotice(fmt, ap);
    va_end(ap);
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) clip_out_of_memory(n);
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) clip_out_of_memory(n * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) clip_out_of_memory(n);
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
        if (posix_memalign(&p, 64, bytes ? bytes : 64)) clip_out_of_memory(bytes);
        return p;
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) clip_out_of_memory(bytes);
    madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

void clip_free_big(void *p, size_t bytes)
{
    if (!p) return;
    if (bytes < BIG_THRESHOLD)
        free(p);
    else
        munmap(p, bytes);
}

/* plain syscalls, sized by fstat: stdio would add a buffer copy and a read per
 * file, noticeable at ~30 KB a photo */
char *read_file(const char *path, size_t *len)
{
    return read_file_max(path, len, SIZE_MAX / 2, NULL);
}

typedef struct {
    int fd;
    const char *path;
} fd_source;

static ssize_t read_fd(void *source, char *dst, size_t room)
{
    const fd_source *s = source;
    for (;;) {
        ssize_t got = read(s->fd, dst, room);
        if (got >= 0) return got;
        if (errno != EINTR) {
            clip_set_error("%s: %s", s->path, strerror(errno));
            return -1;
        }
    }
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
    size_t cap = regular ? (size_t)st.st_size + 1 : 1 << 16;
    fd_source src = {fd, path};
    char *buf = read_source_max(read_fd, &src, cap, limit, path, kind, len);
    close(fd);
    return buf;
}

char *read_source_max(ssize_t (*read_some)(void *source, char *dst, size_t room), void *source,
                      size_t cap, size_t limit, const char *path, const char *kind, size_t *len)
{
    size_t n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n > limit) { /* a pipe, a growing file: caught as it passes the limit */
            clip_set_error("%s: more than the limit of %zu bytes%s%s", path, limit,
                           kind ? " for a file of kind " : "", kind ? kind : "");
            free(buf);
            return NULL;
        }
        if (n + 1 >= cap) { /* never past limit + 2: room to see the limit passed */
            cap = cap > (limit + 2) / 2 ? limit + 2 : 2 * cap;
            buf = xrealloc(buf, cap);
        }
        ssize_t got = read_some(source, buf + n, cap - n - 1);
        if (got < 0) {
            free(buf);
            return NULL;
        }
        if (got == 0) break;
        n += got;
    }
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

/* ---- CPU features (util.h): found once, capped by CLIP_CPU or the test hook ---- */

#define CPU_ALL ((1u << CPU_AVX512) | (1u << CPU_AVX512_BF16) | (1u << CPU_AVX512_VNNI))

static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;
static unsigned cpu_found;    /* the CPU_* bits of this CPU and OS */
static unsigned cpu_env_cap;  /* the bits CLIP_CPU lets through */
static int cpu_hook_cap = -1; /* cpu_set_cap's bits, -1: CLIP_CPU's */

/* CPUID leaves 1 and 7 (sub-leaves 0 and 1), and XCR0: the OS must save the
 * xmm, ymm, opmask and both zmm parts of the state, or the instructions fault.
 * Leaf 1 also has what GCC's avx512f target implies and may emit (SSE3 to
 * SSE4.2, POPCNT), which every AVX-512 CPU has, but checked all the same. */
static unsigned detect_features(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    /* SSE3, SSSE3, FMA, SSE4.1, SSE4.2, POPCNT, OSXSAVE, AVX */
    const unsigned need1 =
        1u << 0 | 1u << 9 | 1u << 12 | 1u << 19 | 1u << 20 | 1u << 23 | 1u << 27 | 1u << 28;
    if ((c & need1) != need1) return 0;
    unsigned xcr0, xcr0_hi;
    __asm__("xgetbv" : "=a"(xcr0), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0 & 0xe6) != 0xe6) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    unsigned max_sub = a;
    /* AVX2, AVX512F, DQ, CD, BW, VL: CLIP_ISA_AVX512 */
    const unsigned need = 1u << 5 | 1u << 16 | 1u << 17 | 1u << 28 | 1u << 30 | 1u << 31;
    if ((b & need) != need) return 0;
    unsigned f = 1u << CPU_AVX512;
    if ((c >> 11) & 1) f |= 1u << CPU_AVX512_VNNI;
    if (max_sub >= 1) {
        __cpuid_count(7, 1, a, b, c, d);
        if ((a >> 5) & 1) f |= 1u << CPU_AVX512_BF16;
    }
    return f;
}

/* the bits a CLIP_CPU value lets through, -1 for an unknown one */
static int cap_bits(const char *name)
{
    if (!*name || !strcmp(name, "native")) return CPU_ALL;
    if (!strcmp(name, "avx512")) return 1u << CPU_AVX512;
    if (!strcmp(name, "generic")) return 0;
    return -1;
}

static void cpu_init(void)
{
    cpu_found = detect_features();
    const char *env = getenv("CLIP_CPU");
    int cap = env ? cap_bits(env) : (int)CPU_ALL;
    if (cap < 0) {
        clip_notice("CLIP_CPU=%s: not generic, avx512 or native; using the generic kernels", env);
        cap = 0;
    }
    cpu_env_cap = cap;
}

static unsigned cpu_allowed(void)
{
    pthread_once(&cpu_once, cpu_init);
    int hook = __atomic_load_n(&cpu_hook_cap, __ATOMIC_RELAXED);
    return cpu_found & (hook >= 0 ? (unsigned)hook : cpu_env_cap);
}

int cpu_has(enum cpu_feature f) { return (cpu_allowed() >> f) & 1; }

const char *cpu_describe(void)
{
    static const char *names[] = {"avx512", "avx512+bf16", "avx512+vnni", "avx512+bf16+vnni"};
    unsigned a = cpu_allowed();
    if (!((a >> CPU_AVX512) & 1)) return "generic";
    return names[((a >> CPU_AVX512_BF16) & 1) | ((a >> CPU_AVX512_VNNI) & 1) << 1];
}

int cpu_set_cap(const char *name)
{
    int cap = name ? cap_bits(name) : -1;
    if (name && cap < 0) {
        clip_set_error("CPU cap '%s': expected generic, avx512 or native", name);
        return -1;
    }
    pthread_once(&cpu_once, cpu_init);
    __atomic_store_n(&cpu_hook_cap, cap, __ATOMIC_RELAXED);
    return 0;
}
