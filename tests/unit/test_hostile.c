/* Hostile inputs to the library (issue 10): crafted, small, made here. Each
 * case once crashed, overflowed or committed unbounded memory; now each is
 * refused with an error naming the input and the limit. Buffers under test
 * end at a PROT_NONE guard page, so a read past their end faults even
 * without ASan. */
#include "tool.h"
#include "io/npy.h"
#include "io/sample.h"
#include "io/stream.h"
#include "unit.h"
#include "core/util.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* A copy of `len` bytes that ends exactly where an unreadable page begins.
 * Free with guarded_free(). */
static void *guarded_copy(const void *data, size_t len, void **base, size_t *maplen)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t body = (len + page - 1) / page * page;
    *maplen = body + page;
    char *m = mmap(NULL, *maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) die("mmap");
    mprotect(m + body, page, PROT_NONE);
    *base = m;
    char *p = m + body - len;
    memcpy(p, data, len);
    return p;
}

static void test_npy_header_ends_in_digits(void)
{
    /* the header's last bytes are the shape's digits: no ')', no data after */
    const char *hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (12";
    size_t hl = strlen(hdr), len = 10 + hl;
    unsigned char *b = xmalloc(len);
    memcpy(b, "\x93NUMPY\x01\x00", 8);
    b[8] = hl & 0xff, b[9] = hl >> 8;
    memcpy(b + 10, hdr, hl);
    void *base;
    size_t maplen;
    void *g = guarded_copy(b, len, &base, &maplen);
    npy_array a;
    CHECK(npy_parse(g, len, &a, "tok.npy") == -1, "accepted a header with no ')'");
    CHECK(strstr(clip_error(), "tok.npy") != NULL, "%s", clip_error());
    /* a shape too large for int64 is refused, not wrapped */
    const char *big =
        "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }";
    hl = strlen(big), len = 10 + hl;
    b = xrealloc(b, len);
    b[8] = hl & 0xff, b[9] = hl >> 8;
    memcpy(b + 10, big, hl);
    CHECK(npy_parse(b, len, &a, "tok.npy") == -1, "accepted a 20-digit dimension");
    munmap(base, maplen);
    free(b);
}

/* npy_parse of a version 1.0 file whose header (and the file) ends with `hdr`, its last
 * byte just before a guard page: -1 expected, with clip_error() set */
static int parse_header_at_end(const char *hdr)
{
    size_t hl = strlen(hdr), len = 10 + hl;
    unsigned char *b = xmalloc(len);
    memcpy(b, "\x93NUMPY\x01\x00", 8);
    b[8] = hl & 0xff, b[9] = hl >> 8;
    memcpy(b + 10, hdr, hl);
    void *base;
    size_t maplen;
    void *g = guarded_copy(b, len, &base, &maplen);
    npy_array a;
    int rc = npy_parse(g, len, &a, "x.npy");
    munmap(base, maplen);
    free(b);
    return rc;
}

/* Found by fuzz_npy (libFuzzer): headers that end where a value should start. */
static void test_npy_header_ends_at_a_value(void)
{
    /* an unknown dtype's quoted name ends it: the message quoted 6 bytes, one past the end */
    CHECK(parse_header_at_end("{'descr': '<x4'") == -1, "accepted dtype <x4");
    CHECK(!strcmp(clip_error(), "x.npy: unsupported dtype '<x4'"), "%s", clip_error());
    /* "'shape':" (and spaces) ends it: the '(' was looked for one past the end */
    CHECK(parse_header_at_end("{'descr': '<f4', 'fortran_order': False, 'shape':  ") == -1,
          "accepted a header without a shape");
    CHECK(!strcmp(clip_error(), "x.npy: malformed .npy header"), "%s", clip_error());
    CHECK(parse_header_at_end("{'descr':") == -1, "accepted a header without a dtype");
    CHECK(parse_header_at_end("{'descr': '<f4', 'fortran_order':") == -1,
          "accepted a header without an order");
}

/* A key of 2000 bytes (a member name past tar's 100 + 155 and past the
 * writer's old 1024-byte buffer) comes back whole, not truncated. */
static void test_long_member_name(void)
{
    char dir[] = "/tmp/test_hostile.XXXXXX", path[64];
    if (!mkdtemp(dir)) die("mkdtemp");
    snprintf(path, sizeof path, "%s/long.tar", dir);
    char key[2001];
    for (int i = 0; i < 2000; i++) key[i] = i % 100 == 50 ? '/' : 'a' + i % 26;
    key[2000] = 0;
    sample s;
    sample_init(&s);
    sample_set_key(&s, key);
    sample_set_copy(&s, "json", "{}", 2);
    stream_writer *w = stream_open_write(path);
    CHECK(w && !stream_write(w, &s) && !stream_close_write(w), "write: %s", clip_error());
    sample_clear(&s);
    stream_reader *r = stream_open_read(path);
    CHECK(r != NULL, "%s", clip_error());
    int got = r ? stream_read(r, &s) : -1;
    CHECK(got == 1, "read: %s", clip_error());
    CHECK(got == 1 && s.key && strlen(s.key) == 2000 && !strcmp(s.key, key), "key of %zu bytes",
          got == 1 && s.key ? strlen(s.key) : 0);
    CHECK(got == 1 && sample_get(&s, "json") != NULL, "no json field");
    if (r) stream_close_read(r);
    sample_free(&s);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    test_npy_header_ends_in_digits();
    test_npy_header_ends_at_a_value();
    test_long_member_name();
    return unit_done();
}
