#include "io/image_source.h"
#include "core/strmap.h"
#include "core/util.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    char *name;
    int wants;
    unsigned char *data; /* kept bytes, or NULL */
    size_t len;
} member;

/* In the member maps (name -> member index), AMBIGUOUS marks a name that
 * several members share (only possible for prefix-stripped names). */
#define AMBIGUOUS (-2)
#define MAX_MEMBERS (1L << 30)

struct image_source {
    char *root;
    int is_archive;
    member *m;
    long n, cursor; /* cursor: index of the next member the reader returns */
    strmap full, stripped;
    int hinted;
    struct archive *ar;
    pthread_mutex_t lock;
};

static long map_get(const strmap *m, const char *key)
{
    int32_t v;
    return strmap_get(m, key, strlen(key), &v) ? v : -1;
}

static char *normalize(const char *path)
{
    char *p = path_with_slashes(path);
    char *s = p;
    while (s[0] == '.' && s[1] == '/') s += 2;
    while (*s == '/') s++;
    memmove(p, s, strlen(s) + 1);
    return p;
}

static struct archive *archive_open(const char *path)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_all(a);
    if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK) {
        clip_set_error("%s: cannot read archive: %s", path, archive_error_string(a));
        archive_read_free(a);
        return NULL;
    }
    return a;
}

static int index_archive(image_source *s)
{
    struct archive *a = archive_open(s->root);
    if (!a) return -1;
    struct archive_entry *e;
    long cap = 0;
    int rc;
    while ((rc = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        if (s->n == MAX_MEMBERS) {
            clip_set_error("%s: more than %ld members", s->root, MAX_MEMBERS);
            archive_read_free(a);
            return -1;
        }
        if (s->n == cap) s->m = xrealloc(s->m, (cap = cap ? 2 * cap : 1024) * sizeof *s->m);
        const char *name = archive_entry_pathname(e);
        s->m[s->n++] = (member){normalize(name ? name : ""), 0, NULL, 0};
    }
    if (rc != ARCHIVE_EOF) {
        clip_set_error("%s: %s", s->root, archive_error_string(a));
        archive_read_free(a);
        return -1;
    }
    archive_read_free(a);
    if (s->n == 0) {
        clip_set_error("%s: not an archive, or an empty one", s->root);
        return -1;
    }
    for (long i = 0; i < s->n; i++) {
        strmap_put(&s->full, s->m[i].name, strlen(s->m[i].name), (int32_t)i);
        const char *slash = strchr(s->m[i].name, '/');
        if (slash && slash[1]) {
            long seen = map_get(&s->stripped, slash + 1);
            strmap_put(&s->stripped, slash + 1, strlen(slash + 1),
                       seen == -1 ? (int32_t)i : AMBIGUOUS);
        }
    }
    return 0;
}

image_source *image_source_open(const char *root)
{
    image_source *s = xcalloc(1, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    strmap_init(&s->full);
    strmap_init(&s->stripped);
    if (!root) return s;
    s->root = xstrdup(root);
    struct stat st;
    if (stat(root, &st)) {
        clip_set_error("%s: %s", root, strerror(errno));
        image_source_close(s);
        return NULL;
    }
    if (!S_ISDIR(st.st_mode)) {
        s->is_archive = 1;
        if (index_archive(s)) {
            image_source_close(s);
            return NULL;
        }
    }
    return s;
}

/* Member index for path, or -1 with the error set. */
static long lookup(image_source *s, const char *path)
{
    char *p = normalize(path);
    long i = map_get(&s->full, p);
    if (i < 0) i = map_get(&s->stripped, p);
    if (i == AMBIGUOUS)
        clip_set_error("%s: ambiguous in %s (under several top-level folders)", path, s->root);
    else if (i < 0)
        clip_set_error("%s: not found in %s", path, s->root);
    free(p);
    return i < 0 ? -1 : i;
}

void image_source_want(image_source *s, const char *path)
{
    if (!s->is_archive) return;
    pthread_mutex_lock(&s->lock);
    long i = lookup(s, path);
    if (i >= 0) {
        s->m[i].wants++;
        s->hinted = 1;
    }
    pthread_mutex_unlock(&s->lock);
}

/* A member's bytes, at most CLIP_MAX_IMAGE_FILE of them: a member whose
 * declared size is larger is refused before anything is inflated, one that
 * inflates past the limit (a lying or absent size) as soon as it does. */
static unsigned char *read_data(struct archive *a, struct archive_entry *e, size_t *len,
                                const char *archive, const char *what)
{
    const size_t limit = CLIP_MAX_IMAGE_FILE;
    if (archive_entry_size_is_set(e) &&
        (archive_entry_size(e) < 0 || (uint64_t)archive_entry_size(e) > limit)) {
        clip_set_error("%s in %s: declares %lld bytes, more than the limit of %zu for an image",
                       what, archive, (long long)archive_entry_size(e), limit);
        return NULL;
    }
    size_t cap = archive_entry_size_is_set(e) ? (size_t)archive_entry_size(e) + 1 : 1 << 16;
    size_t n = 0;
    unsigned char *buf = xmalloc(cap);
    for (;;) {
        if (n == cap) {
            if (n > limit) {
                clip_set_error("%s in %s: inflates to more than the limit of %zu bytes for an "
                               "image",
                               what, archive, limit);
                free(buf);
                return NULL;
            }
            cap = 2 * cap > limit + 1 ? limit + 1 : 2 * cap; /* limit + 1: to see it pass */
            buf = xrealloc(buf, cap);
        }
        la_ssize_t got = archive_read_data(a, buf + n, cap - n);
        if (got < 0) {
            clip_set_error("%s: %s", what, archive_error_string(a));
            free(buf);
            return NULL;
        }
        if (got == 0) break;
        n += got;
    }
    *len = n;
    return buf;
}

/* Read forward until member `want` has been read; keeps wanted members passed over. */
static unsigned char *read_forward(image_source *s, long want, size_t *len)
{
    if (!s->ar || want < s->cursor) {
        if (s->ar) archive_read_free(s->ar);
        s->cursor = 0;
        if (!(s->ar = archive_open(s->root))) return NULL;
    }
    struct archive_entry *e;
    while (s->cursor <= want) {
        long i = s->cursor;
        int rc = archive_read_next_header(s->ar, &e);
        if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) {
            clip_set_error("%s: %s", s->root,
                           rc == ARCHIVE_EOF ? "archive changed while reading"
                                             : archive_error_string(s->ar));
            archive_read_free(s->ar);
            s->ar = NULL;
            return NULL;
        }
        s->cursor++;
        member *m = &s->m[i];
        if (i != want && (m->data || !(m->wants > 0 || !s->hinted))) continue;
        size_t n;
        unsigned char *d = read_data(s->ar, e, &n, s->root, m->name);
        if (!d) {
            archive_read_free(s->ar);
            s->ar = NULL;
            return NULL;
        }
        if (i == want) {
            *len = n;
            return d;
        }
        m->data = d;
        m->len = n;
    }
    return NULL; /* not reached */
}

unsigned char *image_source_read(image_source *s, const char *path, size_t *len)
{
    if (!s->is_archive) {
        char *full = NULL;
        if (s->root) {
            char *p = normalize(path);
            size_t n = strlen(s->root) + strlen(p) + 2;
            full = xmalloc(n);
            snprintf(full, n, "%s/%s", s->root, p);
            free(p);
        }
        unsigned char *d =
            (unsigned char *)read_file_max(full ? full : path, len, CLIP_MAX_IMAGE_FILE, "image");
        free(full);
        return d;
    }
    pthread_mutex_lock(&s->lock);
    unsigned char *d = NULL;
    long i = lookup(s, path);
    if (i >= 0) {
        member *m = &s->m[i];
        if (m->data) {
            *len = m->len;
            if (m->wants > 1) {
                d = xmalloc(m->len ? m->len : 1);
                memcpy(d, m->data, m->len);
            } else {
                d = m->data;
                m->data = NULL;
            }
        } else {
            d = read_forward(s, i, len);
        }
        if (d && m->wants > 0) m->wants--;
    }
    pthread_mutex_unlock(&s->lock);
    return d;
}

void image_source_close(image_source *s)
{
    if (!s) return;
    for (long i = 0; i < s->n; i++) {
        free(s->m[i].name);
        free(s->m[i].data);
    }
    free(s->m);
    strmap_free(&s->full);
    strmap_free(&s->stripped);
    if (s->ar) archive_read_free(s->ar);
    pthread_mutex_destroy(&s->lock);
    free(s->root);
    free(s);
}
