#include "io/stream.h"
#include "core/util.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

/* ---- names: "<key>.<field>"; the key ends at the first dot of the basename ---- */

static int split_member_name(const char *path, char **key, const char **field)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strchr(base, '.');
    if (!dot || dot == base || !dot[1]) return -1;
    *key = xstrndup(path, dot - path);
    *field = dot + 1;
    return 0;
}

int stream_is_zmq(const char *endpoint)
{
    const char *e = endpoint;
    if (*e == '@' || *e == '>') e++;
    return !strncmp(e, "tcp://", 6) || !strncmp(e, "ipc://", 6) || !strncmp(e, "inproc://", 9);
}

/* ZeroMQ endpoint: "[@|>]tcp://host:port[?producers=N][&hwm=N]". '@' binds,
 * '>' connects; readers bind and writers connect by default. */
typedef struct {
    char addr[512];
    int bind;
    int producers;
    int hwm;
} zmq_endpoint;

static int parse_zmq_endpoint(const char *endpoint, int bind_default, zmq_endpoint *z)
{
    z->bind = bind_default;
    z->producers = 1;
    z->hwm = 16;
    if (*endpoint == '@') z->bind = 1, endpoint++;
    else if (*endpoint == '>') z->bind = 0, endpoint++;
    snprintf(z->addr, sizeof z->addr, "%s", endpoint);
    char *q = strchr(z->addr, '?');
    if (!q) return 0;
    *q++ = 0;
    for (char *opt = strtok(q, "&"); opt; opt = strtok(NULL, "&")) {
        int v;
        if (sscanf(opt, "producers=%d", &v) == 1 && v > 0) z->producers = v;
        else if (sscanf(opt, "hwm=%d", &v) == 1 && v > 0) z->hwm = v;
        else {
            clip_set_error("%s: unknown endpoint option '%s' (producers=N, hwm=N)", endpoint, opt);
            return -1;
        }
    }
    return 0;
}

/* Each endpoint has its own context: terminating it at close blocks until
 * every queued sample has been handed over, so none is lost. */
static void *zmq_open(const char *endpoint, int type, int bind_default, zmq_endpoint *z, void **ctx)
{
    if (parse_zmq_endpoint(endpoint, bind_default, z)) return NULL;
    *ctx = zmq_ctx_new();
    void *sock = zmq_socket(*ctx, type);
    int linger = -1; /* never drop queued samples at close */
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    /* libzmq drops what is in flight when a writer disconnects while the
     * reader's queue is at its high-water mark (the end-of-stream marker
     * with it), so the reader queue is unbounded and only writers block. */
    int unbounded = 0;
    if (type == ZMQ_PUSH) zmq_setsockopt(sock, ZMQ_SNDHWM, &z->hwm, sizeof z->hwm);
    else zmq_setsockopt(sock, ZMQ_RCVHWM, &unbounded, sizeof unbounded);
    int rc = z->bind ? zmq_bind(sock, z->addr) : zmq_connect(sock, z->addr);
    if (rc) {
        clip_set_error("%s: cannot %s: %s", z->addr, z->bind ? "bind" : "connect",
                       zmq_strerror(zmq_errno()));
        zmq_close(sock);
        zmq_ctx_term(*ctx);
        return NULL;
    }
    return sock;
}

/* ---- reader ---- */

struct stream_reader {
    const char *name;
    struct archive *ar;
    int fd, close_fd, at_eof;
    unsigned char buf[1 << 16];
    /* A tar stream cut at a member boundary looks complete to libarchive;
     * the end-of-archive marker (two zero blocks) tells it apart. */
    unsigned char tail[1024];
    size_t total;
    int have_pending; /* a header of the next sample has been read */
    char *pending_key;
    char *pending_path;
    const char *pending_field; /* points into pending_path */
    size_t pending_size;
    size_t samples;
    char *last_key;
    /* zmq */
    void *ctx, *sock;
    int eos_left;
};

static void reader_set_last(stream_reader *r, const char *key)
{
    free(r->last_key);
    r->last_key = xstrdup(key);
}

static int where(char *buf, size_t n, stream_reader *r)
{
    if (r->last_key) return snprintf(buf, n, "after sample %s (#%zu)", r->last_key, r->samples);
    return snprintf(buf, n, "before the first sample");
}

static la_ssize_t raw_read(struct archive *a, void *ctx, const void **out);

stream_reader *stream_open_read(const char *endpoint)
{
    stream_reader *r = xcalloc(1, sizeof *r);
    r->name = (!endpoint || !strcmp(endpoint, "-")) ? "<stdin>" : endpoint;
    if (endpoint && stream_is_zmq(endpoint)) {
        zmq_endpoint z;
        r->sock = zmq_open(endpoint, ZMQ_PULL, 1, &z, &r->ctx);
        if (!r->sock) {
            free(r);
            return NULL;
        }
        r->eos_left = z.producers;
        return r;
    }
    if (!endpoint || !strcmp(endpoint, "-")) {
        r->fd = 0;
    } else if ((r->fd = open(endpoint, O_RDONLY)) < 0) {
        clip_set_error("%s: %s", endpoint, strerror(errno));
        free(r);
        return NULL;
    } else {
        r->close_fd = 1;
    }
    r->ar = archive_read_new();
    archive_read_support_format_tar(r->ar);
    archive_read_support_format_empty(r->ar);
    archive_read_support_filter_all(r->ar);
    if (archive_read_open(r->ar, r, NULL, raw_read, NULL) != ARCHIVE_OK) {
        clip_set_error("%s: not a tar stream of samples: %s", r->name, archive_error_string(r->ar));
        stream_close_read(r);
        return NULL;
    }
    return r;
}

static la_ssize_t raw_read(struct archive *a, void *ctx, const void **out)
{
    stream_reader *r = ctx;
    ssize_t n;
    do n = read(r->fd, r->buf, sizeof r->buf);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        archive_set_error(a, errno, "read error: %s", strerror(errno));
        return -1;
    }
    size_t keep = sizeof r->tail;
    if ((size_t)n >= keep) {
        memcpy(r->tail, r->buf + n - keep, keep);
    } else if (n > 0) {
        memmove(r->tail, r->tail + n, keep - n);
        memcpy(r->tail + keep - n, r->buf, n);
    }
    r->total += (size_t)n;
    *out = r->buf;
    return n;
}

static int ends_with_marker(const stream_reader *r)
{
    if (r->total == 0 || archive_filter_code(r->ar, 0) != ARCHIVE_FILTER_NONE) return 1;
    if (r->total < sizeof r->tail) return 0;
    for (size_t i = 0; i < sizeof r->tail; i++)
        if (r->tail[i]) return 0;
    return 1;
}

/* Next regular-file member header: 1, 0 at end, -1 on error. */
static int next_member(stream_reader *r)
{
    if (r->at_eof) return 0;
    for (;;) {
        struct archive_entry *e;
        int rc = archive_read_next_header(r->ar, &e);
        if (rc == ARCHIVE_EOF) {
            r->at_eof = 1;
            if (!ends_with_marker(r)) {
                char w[600];
                where(w, sizeof w, r);
                clip_set_error("%s: truncated tar stream (no end-of-archive marker) %s", r->name, w);
                return -1;
            }
            return 0;
        }
        if (rc < ARCHIVE_WARN) {
            char w[600];
            where(w, sizeof w, r);
            if (r->samples == 0 && !r->pending_key)
                clip_set_error("%s: not a tar stream of samples: %s", r->name, archive_error_string(r->ar));
            else
                clip_set_error("%s: malformed or truncated tar stream %s: %s", r->name, w,
                               archive_error_string(r->ar));
            return -1;
        }
        if (archive_entry_filetype(e) != AE_IFREG) continue; /* directories etc. */
        const char *path = archive_entry_pathname(e);
        const char *field;
        char *key;
        if (!path || split_member_name(path, &key, &field)) {
            clip_set_error("%s: member '%s' is not named <key>.<field>", r->name, path ? path : "");
            return -1;
        }
        free(r->pending_key);
        free(r->pending_path);
        r->pending_key = key;
        r->pending_path = xstrdup(path);
        r->pending_field = r->pending_path + (field - path);
        r->pending_size = archive_entry_size_is_set(e) ? (size_t)archive_entry_size(e) : 0;
        r->have_pending = 1;
        return 1;
    }
}

static int read_member_data(stream_reader *r, sample *s)
{
    const size_t limit = STREAM_MAX_MEMBER;
    if (r->pending_size > limit) {
        clip_set_error("%s: sample %s: member %s claims %zu bytes, more than the limit of %zu "
                       "for one field", r->name, r->pending_key, r->pending_path,
                       r->pending_size, limit);
        return -1;
    }
    /* memory follows the bytes that arrive, up to the declared size, not the size alone: a
     * 1 KB stream claiming a 1 GB member is refused as truncated, not out of memory */
    const size_t first = 1 << 20;
    size_t declared = r->pending_size, cap = declared < first ? declared : first, n = 0;
    unsigned char *buf = xmalloc(cap ? cap : 1);
    for (;;) {
        if (n == cap) {
            if (n > limit) {
                free(buf);
                clip_set_error("%s: sample %s: member %s has more than the limit of %zu bytes "
                               "for one field", r->name, r->pending_key, r->pending_path, limit);
                return -1;
            }
            cap = cap ? 2 * cap : 4096;
            if (n < declared && cap > declared) cap = declared;
            if (cap > limit + 1) cap = limit + 1;
            buf = xrealloc(buf, cap);
        }
        la_ssize_t got = archive_read_data(r->ar, buf + n, cap - n);
        if (got < 0) {
            free(buf);
            clip_set_error("%s: sample %s: member %s truncated or unreadable: %s", r->name,
                           r->pending_key, r->pending_path, archive_error_string(r->ar));
            return -1;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    const char *field = r->pending_field;
    if (sample_get(s, field)) {
        free(buf);
        clip_set_error("%s: sample %s: field %s appears twice", r->name, s->key, field);
        return -1;
    }
    sample_set(s, field, buf, n);
    return 0;
}

/* One sample per single-part message (multipart messages deadlock libzmq's
 * high-water-mark accounting): u32 key length, key, u32 field count, then per
 * field u32 name length, name, u64 size, data; little-endian. An empty
 * message marks the end of one producer's stream. */
static int take(const unsigned char **p, const unsigned char *end, void *dst, size_t n)
{
    if ((size_t)(end - *p) < n) return -1;
    memcpy(dst, *p, n);
    *p += n;
    return 0;
}

static int decode_sample(const unsigned char *p, size_t len, sample *s)
{
    const unsigned char *end = p + len;
    uint32_t kl, nf;
    if (take(&p, end, &kl, 4) || kl > (size_t)(end - p)) return -1;
    s->key = xstrndup((const char *)p, kl);
    p += kl;
    if (take(&p, end, &nf, 4)) return -1;
    for (uint32_t i = 0; i < nf; i++) {
        uint32_t nl;
        uint64_t size;
        if (take(&p, end, &nl, 4) || nl > (size_t)(end - p)) return -1;
        char *name = xstrndup((const char *)p, nl);
        p += nl;
        if (take(&p, end, &size, 8) || size > (uint64_t)(end - p)) {
            free(name);
            return -1;
        }
        sample_set_copy(s, name, p, size);
        free(name);
        p += size;
    }
    return p == end ? 0 : -1;
}

static int stream_read_zmq(stream_reader *r, sample *s)
{
    while (r->eos_left > 0) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        int rc;
        do rc = zmq_msg_recv(&m, r->sock, 0);
        while (rc < 0 && zmq_errno() == EINTR);
        if (rc < 0) {
            clip_set_error("%s: receive failed: %s", r->name, zmq_strerror(zmq_errno()));
            return -1;
        }
        if (zmq_msg_size(&m) == 0) {
            zmq_msg_close(&m);
            r->eos_left--;
            continue;
        }
        rc = decode_sample(zmq_msg_data(&m), zmq_msg_size(&m), s);
        zmq_msg_close(&m);
        if (rc) {
            char w[600];
            where(w, sizeof w, r);
            clip_set_error("%s: malformed sample message %s", r->name, w);
            return -1;
        }
        r->samples++;
        reader_set_last(r, s->key);
        return 1;
    }
    return 0;
}

int stream_read(stream_reader *r, sample *s)
{
    sample_clear(s);
    if (r->sock) return stream_read_zmq(r, s);
    if (!r->have_pending) {
        int rc = next_member(r);
        if (rc <= 0) return rc;
    }
    s->key = xstrdup(r->pending_key);
    for (;;) {
        if (read_member_data(r, s)) return -1;
        r->have_pending = 0;
        int rc = next_member(r);
        if (rc < 0) return -1;
        if (rc == 0 || strcmp(r->pending_key, s->key)) break;
    }
    r->samples++;
    reader_set_last(r, s->key);
    return 1;
}

void stream_close_read(stream_reader *r)
{
    if (!r) return;
    if (r->ar) archive_read_free(r->ar);
    if (r->close_fd) close(r->fd);
    if (r->sock) {
        int linger = 0;
        zmq_setsockopt(r->sock, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(r->sock);
        zmq_ctx_term(r->ctx);
    }
    free(r->pending_key);
    free(r->pending_path);
    free(r->last_key);
    free(r);
}

/* ---- writer ---- */

struct stream_writer {
    struct archive *aw;
    char *path, *tmp_path; /* file output goes to tmp_path, renamed at close */
    time_t mtime;
    int failed;
    void *ctx, *sock;
    stream_writer *next_open;
};

/* Temporary files of writers still open when the program exits (die() on
 * bad input) are removed, so no partial output is left behind. */
static stream_writer *open_writers;

static void remove_unfinished_outputs(void)
{
    for (stream_writer *w = open_writers; w; w = w->next_open) unlink(w->tmp_path);
}

static void track_writer(stream_writer *w)
{
    static int registered;
    if (!registered) atexit(remove_unfinished_outputs), registered = 1;
    w->next_open = open_writers;
    open_writers = w;
}

static void untrack_writer(stream_writer *w)
{
    for (stream_writer **p = &open_writers; *p; p = &(*p)->next_open)
        if (*p == w) {
            *p = w->next_open;
            return;
        }
}

stream_writer *stream_open_write(const char *endpoint)
{
    stream_writer *w = xcalloc(1, sizeof *w);
    if (endpoint && stream_is_zmq(endpoint)) {
        zmq_endpoint z;
        w->sock = zmq_open(endpoint, ZMQ_PUSH, 0, &z, &w->ctx);
        if (!w->sock) {
            free(w);
            return NULL;
        }
        return w;
    }
    const char *sde = getenv("SOURCE_DATE_EPOCH");
    w->mtime = sde ? (time_t)strtoll(sde, NULL, 10) : time(NULL);
    w->aw = archive_write_new();
    archive_write_set_format_pax_restricted(w->aw);
    archive_write_set_bytes_per_block(w->aw, 64 << 10); /* 10 KB: ~15 writes per image */
    archive_write_set_bytes_in_last_block(w->aw, 1);
    int rc;
    struct stat st;
    if (!endpoint || !strcmp(endpoint, "-")) {
        rc = archive_write_open_fd(w->aw, 1);
    } else if (!stat(endpoint, &st) && !S_ISREG(st.st_mode)) {
        rc = archive_write_open_filename(w->aw, endpoint);
    } else {
        w->path = xstrdup(endpoint);
        size_t n = strlen(endpoint) + 32;
        w->tmp_path = xmalloc(n);
        snprintf(w->tmp_path, n, "%s.tmp-%ld", endpoint, (long)getpid());
        rc = archive_write_open_filename(w->aw, w->tmp_path);
        if (rc == ARCHIVE_OK) track_writer(w);
    }
    if (rc != ARCHIVE_OK) {
        clip_set_error("%s: %s", endpoint, archive_error_string(w->aw));
        archive_write_free(w->aw);
        free(w->path);
        free(w->tmp_path);
        free(w);
        return NULL;
    }
    return w;
}

static void put(unsigned char **p, const void *src, size_t n)
{
    memcpy(*p, src, n);
    *p += n;
}

static int stream_write_zmq(stream_writer *w, const sample *s)
{
    size_t len = 8 + strlen(s->key);
    for (int i = 0; i < s->n; i++) len += 12 + strlen(s->fields[i].name) + s->fields[i].size;
    zmq_msg_t m;
    zmq_msg_init_size(&m, len);
    unsigned char *p = zmq_msg_data(&m);
    uint32_t kl = (uint32_t)strlen(s->key), nf = (uint32_t)s->n;
    put(&p, &kl, 4);
    put(&p, s->key, kl);
    put(&p, &nf, 4);
    for (int i = 0; i < s->n; i++) {
        uint32_t nl = (uint32_t)strlen(s->fields[i].name);
        uint64_t size = s->fields[i].size;
        put(&p, &nl, 4);
        put(&p, s->fields[i].name, nl);
        put(&p, &size, 8);
        if (size) put(&p, s->fields[i].data, size);
    }
    int rc;
    do rc = zmq_msg_send(&m, w->sock, 0);
    while (rc < 0 && zmq_errno() == EINTR);
    if (rc < 0) {
        zmq_msg_close(&m);
        clip_set_error("sample %s: send failed: %s", s->key, zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

int stream_write(stream_writer *w, const sample *s)
{
    if (!s->key || !*s->key || strchr(s->key, '.') != NULL) {
        clip_set_error("sample key '%s' is empty or contains a dot", s->key ? s->key : "");
        return -1;
    }
    if (w->sock) return stream_write_zmq(w, s);
    struct archive_entry *e = archive_entry_new();
    for (int i = 0; i < s->n; i++) {
        const sample_field *f = &s->fields[i];
        /* any length: pax headers carry names past ustar's 100 (+155) bytes */
        size_t plen = strlen(s->key) + strlen(f->name) + 2;
        char *path = xmalloc(plen);
        snprintf(path, plen, "%s.%s", s->key, f->name);
        archive_entry_clear(e);
        archive_entry_set_pathname(e, path);
        free(path);
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        archive_entry_set_size(e, (la_int64_t)f->size);
        archive_entry_set_mtime(e, w->mtime, 0);
        if (archive_write_header(w->aw, e) != ARCHIVE_OK ||
            (f->size && archive_write_data(w->aw, f->data, f->size) != (la_ssize_t)f->size)) {
            clip_set_error("sample %s: write failed: %s", s->key, archive_error_string(w->aw));
            archive_entry_free(e);
            w->failed = 1;
            return -1;
        }
    }
    archive_entry_free(e);
    return 0;
}

int stream_close_write(stream_writer *w)
{
    int rc = 0;
    if (w->sock) {
        if (zmq_send(w->sock, "", 0, 0) < 0) {
            clip_set_error("end-of-stream send failed: %s", zmq_strerror(zmq_errno()));
            rc = -1;
        }
        zmq_close(w->sock);
        zmq_ctx_term(w->ctx); /* linger -1: returns once every queued sample is delivered */
        free(w);
        return rc;
    }
    if (archive_write_close(w->aw) != ARCHIVE_OK) {
        clip_set_error("%s: %s", w->path ? w->path : "<stdout>", archive_error_string(w->aw));
        rc = -1;
    }
    archive_write_free(w->aw);
    if (w->tmp_path) {
        untrack_writer(w);
        if (rc || w->failed) {
            unlink(w->tmp_path);
            rc = -1;
        } else if (rename(w->tmp_path, w->path)) {
            clip_set_error("%s: %s", w->path, strerror(errno));
            unlink(w->tmp_path);
            rc = -1;
        }
    }
    free(w->path);
    free(w->tmp_path);
    free(w);
    return rc;
}

void stream_abort_write(stream_writer *w)
{
    w->failed = 1;
    stream_close_write(w);
}

/* ---- random access over an uncompressed tar file ---- */

typedef struct {
    char *key;
    size_t offset; /* header position of the sample's first member */
    int members;
} file_entry;

struct sample_file {
    char *path;
    unsigned char *map;
    size_t size;
    file_entry *e;
    size_t n, cap;
};

sample_file *sample_file_open(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        clip_set_error("%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    fstat(fd, &st);
    sample_file *f = xcalloc(1, sizeof *f);
    f->path = xstrdup(path);
    f->size = (size_t)st.st_size;
    f->map = f->size ? mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (f->size && f->map == MAP_FAILED) {
        clip_set_error("%s: cannot map: %s", path, strerror(errno));
        free(f->path);
        free(f);
        return NULL;
    }
    if (f->size < 512) return f; /* empty stream */
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    if (archive_read_open_memory(a, f->map, f->size) != ARCHIVE_OK) goto bad;
    struct archive_entry *ent;
    int rc;
    while ((rc = archive_read_next_header(a, &ent)) == ARCHIVE_OK || rc == ARCHIVE_WARN) {
        if (archive_entry_filetype(ent) != AE_IFREG) continue;
        const char *field;
        char *key;
        if (split_member_name(archive_entry_pathname(ent), &key, &field)) {
            clip_set_error("%s: member '%s' is not named <key>.<field>", path,
                           archive_entry_pathname(ent));
            goto fail;
        }
        if (f->n && !strcmp(f->e[f->n - 1].key, key)) {
            f->e[f->n - 1].members++;
            free(key);
        } else {
            if (f->n == f->cap) f->e = xrealloc(f->e, (f->cap = f->cap ? 2 * f->cap : 1024) * sizeof *f->e);
            f->e[f->n++] = (file_entry){key, (size_t)archive_read_header_position(a), 1};
        }
    }
    if (rc != ARCHIVE_EOF) goto bad;
    archive_read_free(a);
    return f;
bad:
    clip_set_error("%s: not an uncompressed tar file, or truncated (random access needs a plain "
                   ".tar): %s", path, archive_error_string(a));
fail:
    archive_read_free(a);
    sample_file_close(f);
    return NULL;
}

size_t sample_file_count(const sample_file *f) { return f->n; }
const char *sample_file_key(const sample_file *f, size_t i) { return f->e[i].key; }

int sample_file_read(sample_file *f, size_t i, sample *s)
{
    sample_clear(s);
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    const file_entry *fe = &f->e[i];
    if (archive_read_open_memory(a, f->map + fe->offset, f->size - fe->offset) != ARCHIVE_OK)
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
            (uint64_t)declared > f->size - fe->offset) {
            clip_set_error("%s: sample %s: member %s claims %lld bytes, more than the file "
                           "holds or the limit of %zu for one field", f->path, fe->key, path,
                           (long long)declared, STREAM_MAX_MEMBER);
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
    clip_set_error("%s: sample %s: %s", f->path, fe->key, archive_error_string(a));
    archive_read_free(a);
    return -1;
}

void sample_file_close(sample_file *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) free(f->e[i].key);
    free(f->e);
    if (f->map && f->map != MAP_FAILED) munmap(f->map, f->size);
    free(f->path);
    free(f);
}
