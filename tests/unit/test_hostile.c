/* Hostile inputs to the library (issue 10): crafted, small, made here. Each
 * case once crashed, overflowed or committed unbounded memory; now each is
 * refused with an error naming the input and the limit. Buffers under test
 * end at a PROT_NONE guard page, so a read past their end faults even
 * without ASan. */
#include "npy.h"
#include "unit.h"
#include "util.h"

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
    const char *big = "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }";
    hl = strlen(big), len = 10 + hl;
    b = xrealloc(b, len);
    b[8] = hl & 0xff, b[9] = hl >> 8;
    memcpy(b + 10, big, hl);
    CHECK(npy_parse(b, len, &a, "tok.npy") == -1, "accepted a 20-digit dimension");
    munmap(base, maplen);
    free(b);
}

int main(void)
{
    test_npy_header_ends_in_digits();
    return unit_done();
}
