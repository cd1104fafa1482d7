#include "io/stream.h"
#include "core/atomic_file.h"
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
        if (!path || sample_split_member_name(path, &key, &field)) {
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
    size_t cap = r->pending_size, n = 0;
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
    char *name;        /* for messages: the file, the device or <stdout> */
    atomic_file *file; /* a regular file: written under a temporary name, renamed at close */
    time_t mtime;
    int failed;
    void *ctx, *sock;
};

/* "NAME: what: No space left on device": libarchive's errno where it kept one */
static void set_write_error(const stream_writer *w, const char *key, const char *what)
{
    int err = archive_errno(w->aw);
    const char *why = err > 0 ? strerror(err) : archive_error_string(w->aw);
    if (key)
        clip_set_error("%s: sample %s: %s: %s%s", w->name, key, what, why ? why : "I/O error",
                       err == EFBIG ? " (the file size limit: ulimit -f)" : "");
    else
        clip_set_error("%s: %s: %s%s", w->name, what, why ? why : "I/O error",
                       err == EFBIG ? " (the file size limit: ulimit -f)" : "");
}

static void writer_free(stream_writer *w)
{
    if (w->aw) archive_write_free(w->aw);
    atomic_file_abort(w->file);
    free(w->name);
    free(w);
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
    int to_stdout = !endpoint || !strcmp(endpoint, "-");
    w->name = xstrdup(to_stdout ? "<stdout>" : endpoint);
    if (!to_stdout && atomic_file_applies(endpoint) && !(w->file = atomic_file_create(endpoint))) {
        writer_free(w);
        return NULL;
    }
    w->aw = archive_write_new();
    archive_write_set_format_pax_restricted(w->aw);
    archive_write_set_bytes_per_block(w->aw, 64 << 10); /* 10 KB: ~15 writes per image */
    archive_write_set_bytes_in_last_block(w->aw, 1);
    int rc = to_stdout ? archive_write_open_fd(w->aw, 1)
             : w->file ? archive_write_open_fd(w->aw, atomic_file_fd(w->file))
                       : archive_write_open_filename(w->aw, endpoint); /* a device or fifo */
    if (rc != ARCHIVE_OK) {
        set_write_error(w, NULL, "cannot open");
        writer_free(w);
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
            set_write_error(w, s->key, "write failed");
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
    if (w->failed) {
        /* no end-of-archive marker: a reader of a stream cut short sees it truncated */
        archive_write_fail(w->aw);
        rc = -1;
    } else if (archive_write_close(w->aw) != ARCHIVE_OK) {
        set_write_error(w, NULL, "write failed");
        rc = -1;
    }
    if (w->file) {
        atomic_file *f = w->file;
        w->file = NULL;
        if (rc) atomic_file_abort(f);
        else if (atomic_file_commit(f)) rc = -1;
    }
    writer_free(w);
    return rc;
}

void stream_abort_write(stream_writer *w)
{
    w->failed = 1;
    stream_close_write(w);
}
