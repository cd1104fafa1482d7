/* Errors, allocation and small helpers shared by every tool and library file. */
#ifndef CLIP_UTIL_H
#define CLIP_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdnoreturn.h>
#include <sys/types.h>

/* Library functions report failure by returning -1 (or NULL) after
 * clip_set_error(); the message is per thread and names the file/sample. */
void clip_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same from a va_list, as "prefix: message" (prefix NULL: the message
 * alone): what a file's own error function (naming its stream, its request)
 * passes its arguments on to. */
void clip_set_verror(const char *prefix, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
const char *clip_error(void);
/* Forget the last error: clip_error() is "unknown error" until the next
 * clip_set_error() (tests use it to see that a failure set its own message). */
void clip_clear_error(void);

/* The program's name for messages ("prog: message"); the tools set it.
 * Exiting is the tools' (tools/tool.h); the library returns errors. */
extern const char *clip_progname;
void clip_set_progname(const char *argv0);
/* A notice that is no error ("prog: message" on stderr): a stale temporary
 * file removed, an unknown CLIP_CPU value. The programs' own warnings are
 * tools/tool.h's warn. */
void clip_notice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void clip_vnotice(const char *fmt, va_list ap);

/* The allocators. Every size that comes from input is checked against its
 * limit before it is allocated (check_range, the CLIP_MAX_* limits), so a
 * failure here is the machine running out of memory, not bad input: the one
 * process-wide policy of the library is then to say so and exit(1) (which
 * still removes unfinished outputs, core/atomic_file.h). */
noreturn void clip_out_of_memory(size_t bytes);

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* A malloc'd copy of path with each backslash as '/' (annotation files
 * written on Windows name their images dir\x.jpg). */
char *path_with_slashes(const char *path);
/* 64-bit FNV-1a of n bytes, continuing from h (FNV1A64_INIT to start): the
 * checksums of weights (--check-sync) and of a feature cache's sources. */
#define FNV1A64_INIT 0xcbf29ce484222325ull
uint64_t fnv1a64(uint64_t h, const void *p, size_t n);

/* 64-byte aligned buffer; large ones are backed by transparent huge pages
 * (first-touch faults are slow here). Free with clip_free_big(). */
void *clip_alloc_big(size_t bytes);
void clip_free_big(void *p, size_t bytes);

/* Whole file into memory (NUL-terminated, *len excludes the NUL); malloc'd,
 * the caller frees. read_file_max is for anything a user or a peer names:
 * it refuses what is neither a regular file nor a pipe/FIFO (/dev/zero, a
 * directory), and a file of more than `limit` bytes before reading it (a
 * pipe as soon as it passes the limit), with an error naming the file, the
 * kind ("image", "vocabulary"...) and the limit.
 * read_file reads anything, unbounded: tests and benchmarks only. */
char *read_file_max(const char *path, size_t *len, size_t limit, const char *kind);
char *read_file(const char *path, size_t *len);
/* What read_file_max's loop reads from a file, from any source: all that
 * read_some gives, into a malloc'd NUL-terminated buffer (*len excludes the
 * NUL; len may be NULL) of cap bytes (at least 1) to start with, grown as it
 * fills. read_some(source, dst, room) stores up to room bytes at dst and
 * returns how many, 0 at the end, or -1 after clip_set_error. NULL (nothing
 * to free) with read_some's error, or once more than limit bytes came, with
 * "PATH: more than the limit of LIMIT bytes[ for a file of kind KIND]". */
char *read_source_max(ssize_t (*read_some)(void *source, char *dst, size_t room), void *source,
                      size_t cap, size_t limit, const char *path, const char *kind, size_t *len);

/* Limits per kind of file read whole (generous: a 24-megapixel JPEG is
 * ~15 MB, the shipped vocabularies under 2 MB). */
#define CLIP_MAX_IMAGE_FILE ((size_t)256 << 20)
#define CLIP_MAX_VOCAB_FILE ((size_t)64 << 20)
#define CLIP_MAX_CONFIG_FILE ((size_t)1 << 20)      /* config.json: a few hundred bytes */
#define CLIP_MAX_ANNOTATIONS_FILE ((size_t)4 << 30) /* COCO's captions: 90 MB */

double now_seconds(void);

/* splitmix64: a small seedable RNG (state advanced in place). */
uint64_t splitmix64(uint64_t *state);
/* n samples of N(0, std) from splitmix64 + Box-Muller, reproducible from seed. */
void fill_normal(float *x, size_t n, float std, uint64_t seed);

/* Progress on stderr: "label: done/total (rate/s, ETA)". total 0 = unknown.
 * Rate limited to a few updates per second; progress_end prints the summary. */
typedef struct {
    const char *label;
    const char *unit;
    double t0, last;
    size_t total;
    int enabled;
} progress;
void progress_start(progress *p, const char *label, const char *unit, size_t total, int enabled);
void progress_update(progress *p, size_t done);
void progress_end(progress *p, size_t done);

/* 0 if lo <= v <= hi, else -1 after clip_set_error("WHAT is V, outside
 * LO..HI"): sizes read from files are checked before they size anything. */
int check_range(const char *what, int64_t v, int64_t lo, int64_t hi);

/* CPU features, for the one dispatch policy of every kernel. The build
 * targets x86-64's baseline (SSE2, no -march); a kernel's AVX-512 variant is
 * a function carrying one of the CLIP_TARGET_* attributes below (so that no
 * AVX-512 instruction lies outside such functions: make check-isa), called
 * only where cpu_has() says 1, the portable path otherwise.
 *
 * cpu_has() reads CPUID and the OS's XCR0 state once, capped by the
 * environment variable CLIP_CPU, so that the portable paths run (and are
 * tested) on an AVX-512 machine too:
 *   CLIP_CPU=generic  no feature: the portable paths everywhere
 *   CLIP_CPU=avx512   CPU_AVX512 only (no BF16, no VNNI)
 *   CLIP_CPU=native   what the CPU has (the default, also when unset or empty)
 * Another value counts as generic, with a warning on stderr. The cap applies
 * to our kernels only: OpenBLAS and glibc choose theirs themselves. */
enum cpu_feature {
    CPU_AVX512,      /* AVX-512 F, BW, CD, DQ, VL (x86-64-v4's) and what GCC's avx512f implies
                      * (AVX2, FMA, SSE3 to SSE4.2, POPCNT), the zmm state saved by the OS */
    CPU_AVX512_BF16, /* CPU_AVX512 and AVX512_BF16 */
    CPU_AVX512_VNNI, /* CPU_AVX512 and AVX512_VNNI */
};
int cpu_has(enum cpu_feature f);

/* "avx512+bf16+vnni", "avx512" or "generic": what cpu_has() allows, for
 * logs and benchmarks. */
const char *cpu_describe(void);

/* Test hook: from now on cap the features as CLIP_CPU=name would ("generic",
 * "avx512", "native"); NULL goes back to CLIP_CPU's cap. -1 (clip_set_error)
 * for another name. Not meant to be called while kernels run. */
int cpu_set_cap(const char *name);

/* The target attributes of the AVX-512 variants, one per cpu_feature. */
#define CLIP_ISA_AVX512 "avx512f,avx512bw,avx512cd,avx512dq,avx512vl,avx2,fma"
#define CLIP_TARGET_AVX512 __attribute__((target(CLIP_ISA_AVX512)))
#define CLIP_TARGET_AVX512_BF16 __attribute__((target(CLIP_ISA_AVX512 ",avx512bf16")))
#define CLIP_TARGET_AVX512_VNNI __attribute__((target(CLIP_ISA_AVX512 ",avx512vnni")))

/* A plain C loop body written once and compiled twice: inlined into a
 * portable function and into a CLIP_TARGET_AVX512 one, where the compiler
 * vectorises it with AVX-512 (for loops measured to gain from it). */
#define CLIP_TWICE_COMPILED static inline __attribute__((always_inline))

#endif
