/* Fuzzes npy_parse (lib/io/npy.c), which reads every tensor field of a stream: each input
 * parses or is refused with an error naming it; a parsed array's count is the product of
 * its shape, its data ends exactly at the input's end (every byte of it is read here, so
 * that ASan sees an overrun), and npy_encode of it parses back to the same array. Seeds:
 * tests/fuzz/corpus/npy/ (tests/fuzz/make_seeds.py); the driver: tests/fuzz/fuzz.h. */
#include "io/npy.h"
#include "core/util.h"

#include <stdlib.h>
#include <string.h>

#define FUZZ_NAME "fuzz_npy"
#define NAME "fuzz-input.npy"
#define FUZZ_TOKENS                                                                                \
    {                                                                                              \
        "'descr'", "'shape'", "'fortran_order'", "False", "True", "'<f4'", "'|u1'", "'<u1'",       \
            "'<i8'", "'<f2'", "'>f4'", "\"<i4\"", "(", ")", ",", "0,", "18446744073709551615",     \
            "9223372036854775807", "4294967296", "\x93NUMPY\x02\x00", "\x93NUMPY\x01\x00"          \
    }

static int fuzz_one(const unsigned char *data, size_t size);
/* the header length (u16 at 8, or u32 at 8 for versions 2 and 3) made to end at the
 * header's '\n', which the mutants move */
static void fix_header_length(unsigned char *b, size_t n)
{
    size_t off = n >= 12 && (b[6] == 2 || b[6] == 3) ? 12 : 10;
    if (n <= off) return;
    const unsigned char *nl = memchr(b + off, '\n', n - off);
    if (!nl) return;
    size_t hl = nl + 1 - (b + off);
    for (size_t i = 0; i < off - 8; i++) b[8 + i] = (unsigned char)(hl >> (8 * i));
}
#define FUZZ_FIXUP fix_header_length
#include "fuzz.h"

static int fuzz_one(const unsigned char *data, size_t size)
{
    npy_array a;
    if (npy_parse(data, size, &a, NAME)) {
        fuzz_refused(NAME);
        return 0;
    }
    if (!fuzz_no_error()) fuzz_fail("a parse that succeeded left an error behind");
    if (a.ndim < 0 || a.ndim > NPY_MAX_DIMS) fuzz_fail("ndim out of range");
    size_t count = 1;
    for (int i = 0; i < a.ndim; i++) {
        if (a.shape[i] < 0) fuzz_fail("a negative dimension");
        count *= (size_t)a.shape[i];
    }
    if (count != a.count) fuzz_fail("count is not the product of the shape");
    size_t bytes = a.count * dtype_size(a.dtype);
    const unsigned char *p = a.data;
    if (p < data || p + bytes != data + size) fuzz_fail("the data does not end at the input's end");
    volatile unsigned char sum = 0;
    for (size_t i = 0; i < bytes; i++) sum ^= p[i];
    (void)sum;

    size_t len;
    unsigned char *enc = npy_encode(a.dtype, a.ndim, a.shape, a.data, &len);
    npy_array b;
    if (npy_parse(enc, len, &b, "re-encoded"))
        fuzz_fail("npy_encode of a parsed array does not parse");
    if (b.dtype != a.dtype || b.ndim != a.ndim ||
        memcmp(b.shape, a.shape, a.ndim * sizeof *a.shape) || b.count != a.count ||
        (bytes && memcmp(b.data, a.data, bytes)))
        fuzz_fail("npy_encode of a parsed array parses to another array");
    free(enc);
    return 1;
}
