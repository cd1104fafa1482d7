#include "io/annotations.h"
#include "core/strmap.h"
#include "core/util.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* the part of a path ('/' separators) that the image source looks up: no
 * leading "./" or "/" (as image_source.c's normalize) */
static const char *lookup_part(const char *p)
{
    while (p[0] == '.' && p[1] == '/') p += 2;
    while (*p == '/') p++;
    return p;
}

/* caption j of entry i, appended to a's list */
static int add_caption(annotation *a, json_t *c, const char *path, size_t i, size_t j)
{
    if (!json_is_string(c)) {
        clip_set_error("%s: entry %zu (%s): caption %zu is not a string", path, i, a->image, j);
        return -1;
    }
    /* the list doubles at 1, 2, 4, ...: merged lists grow in linear time */
    size_t n = a->n_captions;
    if (!(n & (n - 1))) a->captions = xrealloc(a->captions, (n ? 2 * n : 1) * sizeof *a->captions);
    a->captions[a->n_captions++] = xstrdup(json_string_value(c));
    return 0;
}

annotations *annotations_load(const char *path)
{
    size_t len;
    char *text = read_file_max(path, &len, CLIP_MAX_ANNOTATIONS_FILE, "annotations file");
    if (!text) return NULL;
    annotations *a = annotations_load_buffer(text, len, path);
    free(text);
    return a;
}

annotations *annotations_load_buffer(const char *text, size_t len, const char *path)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root) {
        clip_set_error("%s:%d:%d: malformed JSON: %s", path, je.line, je.column, je.text);
        return NULL;
    }
    annotations *a = xcalloc(1, sizeof *a);
    strmap seen; /* lookup path -> item index */
    strmap_init(&seen);
    if (!json_is_array(root)) {
        clip_set_error("%s: expected a JSON list of {\"image\", \"caption\"} entries", path);
        goto fail;
    }
    /* an entry is at least {"image":""} (12 bytes) and the file at most 4 GiB: the
     * indexes fit strmap's int32 values */
    a->items = xcalloc(json_array_size(root) + 1, sizeof *a->items);
    size_t i;
    json_t *e;
    json_array_foreach(root, i, e)
    {
        json_t *img = json_object_get(e, "image");
        if (!json_is_object(e) || !json_is_string(img)) {
            clip_set_error("%s: entry %zu: no \"image\" string", path, i);
            goto fail;
        }
        char *image = path_with_slashes(json_string_value(img));
        const char *key = lookup_part(image);
        int32_t at;
        annotation *an;
        if (strmap_get(&seen, key, strlen(key), &at)) {
            an = &a->items[at];
            a->n_merged++;
            free(image);
        } else {
            strmap_put(&seen, key, strlen(key), (int32_t)a->n);
            an = &a->items[a->n++];
            an->image = image;
            an->entry = i;
        }
        json_t *cap = json_object_get(e, "caption");
        if (!cap) cap = json_object_get(e, "captions");
        if (json_is_array(cap)) {
            size_t j;
            json_t *c;
            json_array_foreach(cap, j, c) if (add_caption(an, c, path, i, j)) goto fail;
        } else if (cap && add_caption(an, cap, path, i, 0)) {
            goto fail;
        }
    }
    strmap_free(&seen);
    json_decref(root);
    return a;
fail:
    strmap_free(&seen);
    json_decref(root);
    annotations_free(a);
    return NULL;
}

void annotations_free(annotations *a)
{
    if (!a) return;
    for (size_t i = 0; i < a->n; i++) {
        for (int j = 0; j < a->items[i].n_captions; j++) free(a->items[i].captions[j]);
        free(a->items[i].captions);
        free(a->items[i].image);
    }
    free(a->items);
    free(a);
}

/* 1 if the relative path p ('/' separators) climbs above its start with "..". */
static int climbs_out(const char *p)
{
    long depth = 0;
    while (*p) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            if (--depth < 0) return 1;
        } else if (n && !(n == 1 && p[0] == '.')) {
            depth++;
        }
        p += n;
        if (*p) p++;
    }
    return 0;
}

/* is the real path `real` the folder `dir` (a real path) or under it? */
static int is_under(const char *real, const char *dir)
{
    size_t n = strlen(dir);
    if (n == 1 && dir[0] == '/') return 1;
    return !strncmp(real, dir, n) && (real[n] == '/' || !real[n]);
}

int annotations_check_root(const annotations *a, const char *root, const char *name)
{
    struct stat st;
    if (!root || stat(root, &st) || !S_ISDIR(st.st_mode)) return 0;
    char *real_root = realpath(root, NULL);
    if (!real_root) {
        clip_set_error("%s: %s", root, strerror(errno));
        return -1;
    }
    int rc = 0;
    char *full = NULL;
    size_t full_cap = 0;
    for (size_t i = 0; i < a->n && !rc; i++) {
        const annotation *an = &a->items[i];
        const char *rel = lookup_part(an->image);
        if (climbs_out(rel)) {
            clip_set_error("%s: entry %zu (%s): its \"..\" leads out of the root folder %s", name,
                           an->entry, an->image, root);
            rc = -1;
            break;
        }
        size_t need = strlen(root) + strlen(rel) + 2;
        if (need > full_cap) full = xrealloc(full, full_cap = 2 * need);
        snprintf(full, full_cap, "%s/%s", root, rel);
        char *real = realpath(full, NULL); /* NULL (missing, unreadable): the read reports it */
        if (real && !is_under(real, real_root)) {
            clip_set_error("%s: entry %zu (%s): resolves to %s, outside the root folder %s (a "
                           "symbolic link?)",
                           name, an->entry, an->image, real, root);
            rc = -1;
        }
        free(real);
    }
    free(full);
    free(real_root);
    return rc;
}

char *annotation_sample_json(const char *image, char *const *captions, int n_captions)
{
    json_t *caps = json_array();
    for (int i = 0; i < n_captions; i++) json_array_append_new(caps, json_string(captions[i]));
    char *path = path_with_slashes(image);
    json_t *o = json_pack("{s:s, s:o}", "image", path, "captions", caps);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s) clip_set_error("%s: the image path or a caption is not valid UTF-8", path);
    free(path);
    return s;
}
