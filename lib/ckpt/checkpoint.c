/* Checkpoint files: the format of a file is sniffed from its first bytes
 * and loaded by its reader (safetensors.c, torch_zip.c, torch_legacy.c) into
 * the tensor table (tensors.c); saving goes to the writer of the format the
 * path names. Writes are atomic. */
#include "ckpt/ckpt_internal.h"
#include "core/atomic_file.h"
#include "core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int map_file(ckpt *c)
{
    int fd = open(c->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        clip_set_error("%s: %s", c->path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        clip_set_error("%s: %s", c->path,
                       S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
        close(fd);
        return -1;
    }
    if (st.st_size == 0) {
        close(fd);
        clip_set_error("%s: empty file, not a checkpoint", c->path);
        return -1;
    }
    void *p = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (p == MAP_FAILED) {
        clip_set_error("%s: mmap: %s", c->path, strerror(err));
        return -1;
    }
    madvise(p, st.st_size, MADV_WILLNEED); /* start reading ahead now */
    c->map = p;
    c->map_len = st.st_size;
    return 0;
}

static int is_torch_zip(const unsigned char *b, size_t n)
{
    return n >= 4 && b[0] == 'P' && b[1] == 'K' &&
           ((b[2] == 3 && b[3] == 4) || (b[2] == 5 && b[3] == 6));
}
static int is_torch_legacy(const unsigned char *b, size_t n) { return n >= 1 && b[0] == 0x80; }
static int is_torch_tar(const unsigned char *b, size_t n)
{
    return n >= 262 && !memcmp(b + 257, "ustar", 5);
}
static int is_safetensors(const unsigned char *b, size_t n) { return n >= 9 && b[8] == '{'; }

static int refuse_torch_tar(ckpt *c)
{
    clip_set_error("%s: a tar-based torch checkpoint (PyTorch < 0.4); re-save it with a newer "
                   "PyTorch",
                   c->path);
    return -1;
}

/* The formats, in the order they are sniffed. save: NULL where we only read;
 * suffixes: the file names a save picks the format by. */
static const struct {
    const char *name;
    int (*sniff)(const unsigned char *b, size_t n);
    int (*load)(ckpt *c);
    int (*save)(const char *path, const ckpt_out_tensor *t, size_t n, const char *const *metadata);
    const char *suffixes[4];
} formats[] = {
    {"PyTorch zip", is_torch_zip, ckpt_load_torch_zip, ckpt_save_pth, {".pth", ".pt", ".bin"}},
    {"legacy PyTorch pickle", is_torch_legacy, ckpt_load_torch_legacy, NULL, {NULL}},
    {"tar PyTorch", is_torch_tar, refuse_torch_tar, NULL, {NULL}},
    {"safetensors", is_safetensors, ckpt_load_safetensors, ckpt_save_safetensors, {".safetensors"}},
};
#define N_FORMATS (sizeof formats / sizeof formats[0])

static ckpt *load(ckpt *c)
{
    size_t i = 0;
    while (i < N_FORMATS && !formats[i].sniff(c->map, c->map_len)) i++;
    if (i == N_FORMATS)
        clip_set_error("%s: not a checkpoint (expected a PyTorch zip or pickle, or safetensors)",
                       c->path);
    else if (formats[i].load(c) == 0)
        return c;
    ckpt_free(c);
    return NULL;
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

int ckpt_save(const char *path, const ckpt_out_tensor *t, size_t n, const char *const *metadata)
{
    for (size_t i = 0; i < N_FORMATS; i++)
        for (int k = 0; formats[i].save && formats[i].suffixes[k]; k++)
            if (has_suffix(path, formats[i].suffixes[k]))
                return formats[i].save(path, t, n, metadata);
    clip_set_error("%s: unknown checkpoint format: name it .safetensors or .pth (.pt, .bin: "
                   "PyTorch zip)",
                   path);
    return -1;
}

ckpt *ckpt_load(const char *path)
{
    ckpt *c = ckpt_new(path);
    if (map_file(c) < 0) {
        ckpt_free(c);
        return NULL;
    }
    return load(c);
}

ckpt *ckpt_load_buffer(const void *buf, size_t len, const char *name)
{
    ckpt *c = ckpt_new(name);
    if (!len) {
        clip_set_error("%s: empty file, not a checkpoint", name);
        ckpt_free(c);
        return NULL;
    }
    void *copy = xmalloc(len);
    memcpy(copy, buf, len);
    c->map = copy;
    c->map_len = len;
    c->map_is_malloc = 1;
    return load(c);
}

/* ---- conversion to float32 ---- */

int ckpt_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t k = write(fd, p, n < (1u << 30) ? n : (1u << 30));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            if (k == 0) errno = EIO;
            return -1;
        }
        p += k;
        n -= k;
    }
    return 0;
}

int ckpt_check_out(const char *path, const ckpt_out_tensor *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!t[i].name || !*t[i].name) {
            clip_set_error("%s: tensor %zu has no name", path, i);
            return -1;
        }
        if ((unsigned)t[i].dtype > DT_BOOL || t[i].ndim < 0 || t[i].ndim > CKPT_MAX_DIMS ||
            ckpt_shape_numel(t[i].ndim, t[i].shape, dtype_size(t[i].dtype)) < 0) {
            clip_set_error("%s: tensor '%s' has an invalid dtype or shape", path, t[i].name);
            return -1;
        }
        if (!t[i].data && ckpt_shape_numel(t[i].ndim, t[i].shape, 1) > 0) {
            clip_set_error("%s: tensor '%s' has no data", path, t[i].name);
            return -1;
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(t[i].name, t[j].name)) {
                clip_set_error("%s: duplicate tensor name '%s'", path, t[i].name);
                return -1;
            }
    }
    return 0;
}

int ckpt_write_atomic(const char *path, int (*fn)(int fd, void *ctx), void *ctx)
{
    return atomic_file_write(path, fn, ctx);
}
