#include "io/sample.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sample_init(sample *s) { memset(s, 0, sizeof *s); }

void sample_clear(sample *s)
{
    for (int i = 0; i < s->n; i++) {
        free(s->fields[i].name);
        free(s->fields[i].data);
    }
    s->n = 0;
    free(s->key);
    s->key = NULL;
}

void sample_free(sample *s)
{
    sample_clear(s);
    free(s->fields);
    sample_init(s);
}

void sample_set_key(sample *s, const char *key)
{
    free(s->key);
    s->key = xstrdup(key);
}

const sample_field *sample_get(const sample *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->fields[i].name, name)) return &s->fields[i];
    return NULL;
}

void sample_set(sample *s, const char *name, void *data, size_t size)
{
    for (int i = 0; i < s->n; i++) {
        if (!strcmp(s->fields[i].name, name)) {
            free(s->fields[i].data);
            s->fields[i].data = data;
            s->fields[i].size = size;
            return;
        }
    }
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 8;
        s->fields = xrealloc(s->fields, s->cap * sizeof *s->fields);
    }
    s->fields[s->n++] = (sample_field){xstrdup(name), data, size};
}

void sample_set_copy(sample *s, const char *name, const void *data, size_t size)
{
    void *d = xmalloc(size);
    if (size) memcpy(d, data, size);
    sample_set(s, name, d, size);
}

void sample_set_npy(sample *s, const char *name, npy_dtype t, int ndim, const int64_t *shape,
                    const void *data)
{
    size_t len;
    unsigned char *buf = npy_encode(t, ndim, shape, data, &len);
    sample_set(s, name, buf, len);
}

int sample_get_npy(const sample *s, const char *name, npy_array *out)
{
    const char *key = s->key ? s->key : "?";
    const sample_field *f = sample_get(s, name);
    if (!f) {
        clip_set_error("sample %s: no %s field", key, name);
        return -1;
    }
    char what[512];
    snprintf(what, sizeof what, "sample %s: %s", key, name);
    return npy_parse(f->data, f->size, out, what);
}

int sample_split_member_name(const char *path, char **key, const char **field)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strchr(base, '.');
    if (!dot || dot == base || !dot[1]) return -1;
    *key = xstrndup(path, dot - path);
    *field = dot + 1;
    return 0;
}

char *sample_key_for_path(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char *key = xstrdup(base);
    char *dot = strrchr(key, '.');
    if (dot && dot != key) *dot = 0;
    for (char *c = key; *c; c++)
        if (*c == '.') *c = '_';
    if (!*key) {
        free(key);
        key = xstrdup("_");
    }
    return key;
}
