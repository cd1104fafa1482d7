/* Fuzzes the safetensors reader (lib/ckpt/safetensors.c, through ckpt_load_buffer) beyond
 * what fuzz_checkpoint gives it: there it gets one seed of eighteen (tests/fixtures/ckpt/
 * small.safetensors, every dtype) and byte-level mutants, of which 20000 never reached
 * overlapping data_offsets or a shape that is not a list of naturals, and one in six fails
 * the first check alone (the 8-byte header length no longer ends the JSON). Here the seeds
 * add overlaps, misaligned data, scalars, 8-d and empty tensors, metadata and an unknown
 * dtype (make_seeds.py) to small.safetensors,
 * the tokens are the header's keys and values, and half the mutants get their header length
 * fixed to the end of the JSON object. Every input loads, and then each tensor converts to
 * float32, or is refused with an error naming it. Seeds: tests/fuzz/corpus/safetensors/ and
 * small.safetensors (mk/fuzz.mk); the driver: tests/fuzz/fuzz.h. */
#include "ckpt/checkpoint.h"
#include "core/util.h"

#include <stdlib.h>

#define FUZZ_NAME "fuzz_safetensors"
#define NAME "fuzz-input.safetensors"
#define FUZZ_TOKENS                                                                                \
    {                                                                                              \
        "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"__metadata__\"", "\"F32\"", "\"F16\"",    \
            "\"BF16\"", "\"F64\"", "\"I64\"", "\"BOOL\"", "\"U8\"", "[]", "[0,0]", "[1]", "-1",    \
            "0", "4294967296", "9223372036854775807", "18446744073709551616", "1e400", "null",     \
            "{}", "\"\\u0000\"", ",\"x\":1"                                                        \
    }

static int fuzz_one(const unsigned char *data, size_t size);

/* The u64 header length at 0 made to end where the JSON object starting at 8 ends. */
static void fix_header_length(unsigned char *b, size_t n)
{
    if (n < 9 || b[8] != '{') return;
    int depth = 0, in_string = 0;
    for (size_t i = 8; i < n; i++) {
        unsigned char c = b[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if ((c == '}' || c == ']') && --depth == 0) {
            uint64_t len = i + 1 - 8;
            for (int k = 0; k < 8; k++) b[k] = (unsigned char)(len >> (8 * k));
            return;
        }
    }
}
#define FUZZ_FIXUP fix_header_length
#include "fuzz.h"

static int fuzz_one(const unsigned char *data, size_t size)
{
    ckpt *c = ckpt_load_buffer(data, size, NAME);
    if (!c) {
        fuzz_refused(NAME);
        return 0;
    }
    if (!fuzz_no_error()) fuzz_fail("a successful load left an error behind");
    for (size_t i = 0; i < ckpt_count(c); i++) {
        const ckpt_tensor *t = ckpt_tensor_at(c, i);
        /* a tensor's bytes lie in the input, so the input's size bounds its count */
        if (t->numel * dtype_size(t->dtype) > size) fuzz_fail("a tensor larger than its file");
        float *buf = xmalloc((t->numel + 1) * sizeof *buf);
        if (ckpt_read_f32(c, t->name, t->ndim, t->shape, buf) < 0)
            fuzz_fail("a tensor of a loaded checkpoint does not convert");
        free(buf);
    }
    ckpt_metadata(c, "format");
    ckpt_free(c);
    return 1;
}
