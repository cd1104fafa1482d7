#include "io/sample_file.h"
#include "io/shards.h"
#include "io/stream.h"
#include "core/util.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char *key;
    size_t shard;
    size_t offset; /* header position of the sample's first member */
    int members;
} file_entry;

typedef struct {
    char *path;
    unsigned char *map;
    size_t size;
} shard;

struct sample_file {
    shard *s;
    size_t n_shards;
    file_entry *e;
    size_t n, cap;
};

static int index_shard(sample_file *f, size_t k)
{
    shard *sh = &f->s[k];
    int fd = open(sh->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        clip_set_error("%s: %s", sh->path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        clip_set_error("%s: not a regular file (random access needs a plain .tar file)", sh->path);
        close(fd);
        return -1;
    }
    sh->size = (size_t)st.st_size;
    sh->map = sh->size ? mmap(NULL, sh->size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    int err = errno;
    close(fd);
    if (sh->size && sh->map == MAP_FAILED) {
        sh->map = NULL;
        clip_set_error("%s: cannot map: %s", sh->path, strerror(err));
        return -1;
    }
    if (sh->size < 512) return 0; /* empty stream */
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    if (archive_read_open_memory(a, sh->map, sh->size) != ARCHIVE_OK) goto bad;
    struct archive_entry *ent;
    int rc;
    while ((rc = archive_read_next_header(a, &ent)) == ARCHIVE_OK || rc == ARCHIVE_WARN) {
        if (archive_entry_filetype(ent) != AE_IFREG) continue;
        const char *field;
        char *key;
        if (sample_split_member_name(archive_entry_pathname(ent), &key, &field)) {
            clip_set_error("%s: member '%s' is not named <key>.<field>", sh->path,
                           archive_entry_pathname(ent));
            archive_read_free(a);
            return -1;
        }
        file_entry *last = f->n ? &f->e[f->n - 1] : NULL;
        if (last && last->shard == k && !strcmp(last->key, key)) {
            last->members++;
            free(key);
        } else {
            if (f->n == f->cap)
                f->e = xrealloc(f->e, (f->cap = f->cap ? 2 * f->cap : 1024) * sizeof *f->e);
            f->e[f->n++] = (file_entry){key, k, (size_t)archive_read_header_position(a), 1};
        }
    }
    if (rc != ARCHIVE_EOF) goto bad;
    archive_read_free(a);
    return 0;
bad:
    clip_set_error("%s: not an uncompressed tar file, or truncated (random access needs a plain "
                   ".tar): %s",
                   sh->path, archive_error_string(a));
    archive_read_free(a);
    return -1;
}

sample_file *sample_file_open(const char *spec)
{
    size_t n;
    char **paths = shards_expand(spec, &n);
    if (!paths) return NULL;
    sample_file *f = xcalloc(1, sizeof *f);
    f->s = xcalloc(n, sizeof *f->s);
    f->n_shards = n;
    for (size_t k = 0; k < n; k++) f->s[k].path = paths[k];
    free(paths);
    for (size_t k = 0; k < n; k++)
        if (index_shard(f, k) < 0) {
            sample_file_close(f);
            return NULL;
        }
    return f;
}

size_t sample_file_count(const sample_file *f) { return f->n; }
size_t sample_file_shards(const sample_file *f) { return f->n_shards; }
const char *sample_file_key(const sample_file *f, size_t i) { return f->e[i].key; }

int sample_file_read(sample_file *f, size_t i, sample *s)
{
    sample_clear(s);
    const file_entry *fe = &f->e[i];
    const shard *sh = &f->s[fe->shard];
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    if (archive_read_open_memory(a, sh->map + fe->offset, sh->size - fe->offset) != ARCHIVE_OK)
        goto bad;
    s->key = xstrdup(fe->key);
    for (int m = 0; m < fe->members;) {
        struct archive_entry *ent;
        int rc = archive_read_next_header(a, &ent);
        if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) goto bad;
        if (archive_entry_filetype(ent) != AE_IFREG) continue;
        const char *path = archive_entry_pathname(ent);
        const char *base = strrchr(path, '/');
        const char *field = strchr(base ? base + 1 : path, '.') + 1;
        int64_t declared = archive_entry_size(ent);
        if (declared < 0 || (uint64_t)declared > STREAM_MAX_MEMBER ||
            (uint64_t)declared > sh->size - fe->offset) {
            clip_set_error("%s: sample %s: member %s claims %lld bytes, more than the file "
                           "holds or the limit of %zu for one field",
                           sh->path, fe->key, path, (long long)declared, STREAM_MAX_MEMBER);
            archive_read_free(a);
            return -1;
        }
        size_t size = (size_t)declared;
        unsigned char *buf = xmalloc(size ? size : 1);
        if (archive_read_data(a, buf, size) != (la_ssize_t)size) {
            free(buf);
            goto bad;
        }
        sample_set(s, field, buf, size);
        m++;
    }
    archive_read_free(a);
    return 0;
bad:
    clip_set_error("%s: sample %s: %s", sh->path, fe->key, archive_error_string(a));
    archive_read_free(a);
    return -1;
}

void sample_file_close(sample_file *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) free(f->e[i].key);
    free(f->e);
    for (size_t k = 0; k < f->n_shards; k++) {
        if (f->s[k].map) munmap(f->s[k].map, f->s[k].size);
        free(f->s[k].path);
    }
    free(f->s);
    free(f);
}
