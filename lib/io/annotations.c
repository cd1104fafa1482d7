#include "io/annotations.h"
#include "core/util.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static char *dup_path(const char *s)
{
    char *p = xstrdup(s);
    for (char *c = p; *c; c++)
        if (*c == '\\') *c = '/';
    return p;
}

static int add_caption(annotation *a, json_t *c, const char *path, size_t i)
{
    if (!json_is_string(c)) {
        clip_set_error("%s: entry %zu (%s): caption %d is not a string", path, i, a->image,
                       a->n_captions);
        return -1;
    }
    a->captions = xrealloc(a->captions, (a->n_captions + 1) * sizeof *a->captions);
    a->captions[a->n_captions++] = xstrdup(json_string_value(c));
    return 0;
}

annotations *annotations_load(const char *path)
{
    json_error_t je;
    size_t len;
    char *text = read_file_max(path, &len, CLIP_MAX_ANNOTATIONS_FILE, "annotations file");
    if (!text) return NULL;
    json_t *root = json_loadb(text, len, 0, &je);
    free(text);
    if (!root) {
        clip_set_error("%s:%d:%d: malformed JSON: %s", path, je.line, je.column, je.text);
        return NULL;
    }
    annotations *a = xcalloc(1, sizeof *a);
    if (!json_is_array(root)) {
        clip_set_error("%s: expected a JSON list of {\"image\", \"caption\"} entries", path);
        goto fail;
    }
    a->items = xcalloc(json_array_size(root) + 1, sizeof *a->items);
    size_t i;
    json_t *e;
    json_array_foreach(root, i, e) {
        json_t *img = json_object_get(e, "image");
        if (!json_is_object(e) || !json_is_string(img)) {
            clip_set_error("%s: entry %zu: no \"image\" string", path, i);
            goto fail;
        }
        annotation *an = &a->items[a->n++];
        an->image = dup_path(json_string_value(img));
        json_t *cap = json_object_get(e, "caption");
        if (!cap) cap = json_object_get(e, "captions");
        if (json_is_array(cap)) {
            size_t j;
            json_t *c;
            json_array_foreach(cap, j, c) if (add_caption(an, c, path, i)) goto fail;
        } else if (cap && add_caption(an, cap, path, i)) {
            goto fail;
        }
    }
    json_decref(root);
    return a;
fail:
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
