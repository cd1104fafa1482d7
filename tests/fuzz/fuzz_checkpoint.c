/* Fuzzes ckpt_load_buffer: every input must load or fail with an error
 * message of its own that names the input ("fuzz-input: ..."), never crash,
 * leak or read out of bounds; a load that succeeds leaves no error behind, and
 * every tensor of a loaded checkpoint converts to float32. Seeds: the
 * checkpoint fixtures, tests/fixtures/ckpt (mk/fuzz.mk); the driver and its two
 * builds: tests/fuzz/fuzz.h. */
#include "tool.h"
#include "ckpt/checkpoint.h"
#include "core/util.h"

#include <stdlib.h>

#define FUZZ_NAME "fuzz_checkpoint"
#define NAME "fuzz-input"
#define FUZZ_TOKENS                                                                                \
    {                                                                                              \
        "(", ")", "t", "R", "Q", ".", "q", "h", "}q", "\x80\x02"                                   \
    }

static int fuzz_one(const unsigned char *data, size_t size);
#include "fuzz.h"

static int fuzz_one(const unsigned char *data, size_t size)
{
    ckpt *c = ckpt_load_buffer(data, size, NAME);
    if (!c) {
        fuzz_refused(NAME);
        return 0;
    }
    if (!fuzz_no_error()) fuzz_fail("a successful load left an error behind");
    size_t most = 0;
    for (size_t i = 0; i < ckpt_count(c); i++)
        if (ckpt_tensor_at(c, i)->numel > most) most = ckpt_tensor_at(c, i)->numel;
    if (most <= (64u << 20)) {
        float *buf = xmalloc((most + 1) * sizeof *buf);
        for (size_t i = 0; i < ckpt_count(c); i++) {
            const ckpt_tensor *t = ckpt_tensor_at(c, i);
            if (ckpt_read_f32(c, t->name, t->ndim, t->shape, buf) < 0)
                fuzz_fail("a tensor of a loaded checkpoint does not convert");
        }
        free(buf);
    }
    ckpt_metadata(c, "format");
    ckpt_free(c);
    return 1;
}
