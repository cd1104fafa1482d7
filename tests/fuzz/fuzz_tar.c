/* Fuzzes the sample-stream readers of lib/io/stream.c on tar inputs (written to a memfd,
 * as both take a path): stream_open_read + stream_read (the one-pass reader of every tool)
 * and sample_file_open + sample_file_read (random access, clip-train and clip-recall).
 * Each input is read whole or refused with an error naming it, never crashes, leaks or
 * reads out of bounds; every sample has a key and named fields, whose bytes are all read
 * here, and the .npy fields parse or are refused naming the sample. Where both readers
 * take a plain tar, they must give the same samples, byte for byte (or random access refuses
 * one, naming the input). Seeds:
 * tests/fuzz/corpus/tar/ (tests/fuzz/make_seeds.py); the driver: tests/fuzz/fuzz.h. */
#include "io/sample_file.h"
#include "io/stream.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_NAME "fuzz_tar"
#define FUZZ_TOKENS                                                                                \
    {                                                                                              \
        ".npy", ".json", ".img.npy",                                                               \
            "ustar\0"                                                                              \
            "00",                                                                                  \
            "ustar  \0", "././@PaxHeader", "././@LongLink", "30 path=a.b/c.d\n",                   \
            "20 size=99999999\n", "0000644\0", "77777777777\0", "\x80\0\0\0\0\0\0\0\0\0\0\x01",    \
            "\xff\xff\xff\xff", "\x1f\x8b\x08", "BZh9", "00000001000\0"                            \
    }

static int fuzz_one(const unsigned char *data, size_t size);

/* Each header's checksum made right again (most mutants of a header break it, and libarchive
 * checks it first), walking the members by their size fields. */
static void fix_checksums(unsigned char *b, size_t n)
{
    for (size_t off = 0; off + 512 <= n;) {
        unsigned char *h = b + off;
        size_t i = 0;
        while (i < 512 && !h[i]) i++;
        if (i == 512) break; /* an end-of-archive block */
        unsigned sum = 0;
        for (i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? ' ' : h[i];
        char field[8];
        snprintf(field, sizeof field, "%06o", sum & 0777777);
        memcpy(h + 148, field, 7); /* six digits and a NUL */
        h[155] = ' ';
        uint64_t member = 0;
        for (i = 124; i < 136 && h[i] >= '0' && h[i] <= '7'; i++) member = member * 8 + h[i] - '0';
        if (member > n) break; /* base-256 or beyond the input: no next header to find */
        off += 512 + (member + 511) / 512 * 512;
    }
}
#define FUZZ_FIXUP fix_checksums
#include "fuzz.h"

static int plain_tar(const unsigned char *d, size_t n)
{
    return n >= 263 && !memcmp(d + 257, "ustar", 5); /* not gzip, bzip2, xz, ... */
}

/* every field's bytes read; .npy fields parsed or refused naming the sample */
static void check_sample(const sample *s)
{
    if (!s->key || !*s->key) fuzz_fail("a sample without a key");
    for (int i = 0; i < s->n; i++) {
        const sample_field *f = &s->fields[i];
        if (!f->name || !*f->name) fuzz_fail("a field without a name");
        volatile unsigned char sum = 0;
        for (size_t j = 0; j < f->size; j++) sum ^= f->data[j];
        (void)sum;
        size_t len = strlen(f->name);
        npy_array a;
        if (len >= 3 && !strcmp(f->name + len - 3, "npy") && sample_get_npy(s, f->name, &a) &&
            strncmp(clip_error(), "sample ", 7))
            fuzz_fail("a malformed .npy field's error does not name the sample");
    }
}

static int same_sample(const sample *a, const sample *b)
{
    if (strcmp(a->key, b->key) || a->n != b->n) return 0;
    for (int i = 0; i < a->n; i++) {
        const sample_field *f = sample_get(b, a->fields[i].name);
        if (!f || f->size != a->fields[i].size ||
            (f->size && memcmp(f->data, a->fields[i].data, f->size)))
            return 0;
    }
    return 1;
}

static int fuzz_one(const unsigned char *data, size_t size)
{
    const char *path = fuzz_as_file(data, size);
    size_t n_kept = 0, cap = 16; /* the stream's samples, for the comparison */
    sample *kept = xmalloc(cap * sizeof *kept);
    int stream_ok = 0;
    stream_reader *r = stream_open_read(path);
    if (!r) {
        fuzz_refused(path);
    } else {
        int rc;
        for (;;) {
            if (n_kept == cap) kept = xrealloc(kept, (cap *= 2) * sizeof *kept);
            sample_init(&kept[n_kept]);
            if ((rc = stream_read(r, &kept[n_kept])) <= 0) break;
            check_sample(&kept[n_kept++]);
        }
        sample_free(&kept[n_kept]);
        if (rc < 0)
            fuzz_refused(path);
        else
            stream_ok = 1;
        stream_close_read(r);
    }

    clip_clear_error();
    sample s;
    sample_init(&s);
    sample_file *f = sample_file_open(path);
    if (!f) {
        fuzz_refused(path);
    } else {
        size_t count = sample_file_count(f);
        int compare = stream_ok && plain_tar(data, size) && size >= 1024;
        if (compare && count != n_kept)
            fuzz_fail("the stream reader and the random-access index count different samples");
        for (size_t i = 0; i < count; i++) {
            /* it may refuse a sample the stream reader read: it reopens the archive at the
             * sample's header, where libarchive must recognise a tar header without the
             * earlier ones (a mutant's pre-POSIX header, without "ustar", it does not) */
            if (sample_file_read(f, i, &s) < 0) {
                fuzz_refused(path);
                continue;
            }
            check_sample(&s);
            if (strcmp(s.key, sample_file_key(f, i))) fuzz_fail("a sample read under another key");
            if (compare && !same_sample(&s, &kept[i]))
                fuzz_fail("random access reads another sample than the stream reader");
        }
        sample_file_close(f);
    }
    sample_free(&s);
    for (size_t i = 0; i < n_kept; i++) sample_free(&kept[i]);
    free(kept);
    return stream_ok;
}
