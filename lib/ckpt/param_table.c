#include "ckpt/param_table.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

void pt_add(param_table *t, float **ptr, const char *name, int ndim, const int64_t *shape)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->v = xrealloc(t->v, t->cap * sizeof *t->v);
    }
    param_spec *s = &t->v[t->n++];
    s->name = xstrdup(name);
    s->ndim = ndim;
    s->numel = 1;
    for (int i = 0; i < ndim; i++) {
        s->shape[i] = shape[i];
        s->numel *= (size_t)shape[i];
    }
    s->offset = (t->total + 15) & ~(size_t)15;
    s->ptr = ptr;
    t->total = s->offset + s->numel;
}

static void add_weight_bias(param_table *t, float **w, float **b, const char *prefix,
                            const char *module, int w_ndim, const int64_t *w_shape)
{
    char name[256];
    snprintf(name, sizeof name, "%s%s.weight", prefix, module);
    pt_add(t, w, name, w_ndim, w_shape);
    snprintf(name, sizeof name, "%s%s.bias", prefix, module);
    pt_add(t, b, name, 1, w_shape); /* [w_shape[0]] */
}

void pt_add_linear(param_table *t, float **w, float **b, const char *prefix, const char *module,
                   int64_t out, int64_t in)
{
    add_weight_bias(t, w, b, prefix, module, 2, (int64_t[]){out, in});
}

void pt_add_norm(param_table *t, float **w, float **b, const char *prefix, const char *module,
                 int64_t dim)
{
    add_weight_bias(t, w, b, prefix, module, 1, (int64_t[]){dim});
}

void pt_filter(param_table *t, int (*keep)(const char *name, const void *ctx), const void *ctx)
{
    int n = 0;
    t->total = 0;
    for (int i = 0; i < t->n; i++) {
        param_spec s = t->v[i];
        if (!keep(s.name, ctx)) {
            free(s.name);
            continue;
        }
        s.offset = (t->total + 15) & ~(size_t)15;
        t->total = s.offset + s.numel;
        t->v[n++] = s;
    }
    t->n = n;
}

void pt_alloc(param_table *t)
{
    size_t bytes = (t->total ? t->total : 1) * sizeof(float);
    t->data = clip_alloc_big(bytes);
    memset(t->data, 0, bytes);
    for (int i = 0; i < t->n; i++) *t->v[i].ptr = t->data + t->v[i].offset;
}

void pt_free(param_table *t)
{
    if (t->data) clip_free_big(t->data, (t->total ? t->total : 1) * sizeof(float));
    for (int i = 0; i < t->n; i++) free(t->v[i].name);
    free(t->v);
    memset(t, 0, sizeof *t);
}

const param_spec *pt_find(const param_table *t, const char *name)
{
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->v[i].name, name)) return &t->v[i];
    return NULL;
}

int pt_check(const param_table *t, const ckpt *c)
{
    for (int i = 0; i < t->n; i++) {
        const param_spec *s = &t->v[i];
        const ckpt_tensor *ct = ckpt_find(c, s->name);
        int same = ct && ct->ndim == s->ndim;
        for (int d = 0; same && d < s->ndim; d++) same = ct->shape[d] == s->shape[d];
        if (!same) {
            char want[128];
            size_t k = snprintf(want, sizeof want, "[");
            for (int d = 0; d < s->ndim && k < sizeof want; d++)
                k += snprintf(want + k, sizeof want - k, "%s%lld", d ? ", " : "",
                              (long long)s->shape[d]);
            if (k < sizeof want) snprintf(want + k, sizeof want - k, "]");
            if (ct)
                clip_set_error("tensor '%s' is mis-shaped: the configuration needs it as %s",
                               s->name, want);
            else
                clip_set_error("no tensor '%s': the configuration needs it as %s", s->name, want);
            return -1;
        }
    }
    return 0;
}

size_t pt_bytes(const param_table *t)
{
    return t->total > SIZE_MAX / sizeof(float) ? SIZE_MAX
                                               : (t->total ? t->total : 1) * sizeof(float);
}

int pt_load_spec(const param_spec *s, const ckpt *c, const char *ckname)
{
    return ckpt_read_f32(c, ckname, s->ndim, s->shape, *s->ptr);
}

int pt_load(const param_table *t, const ckpt *c, const char *strip, const char *add)
{
    size_t ls = strip ? strlen(strip) : 0;
    for (int i = 0; i < t->n; i++) {
        const char *name = t->v[i].name;
        char buf[256];
        if (ls && !strncmp(name, strip, ls)) {
            snprintf(buf, sizeof buf, "%s%s", add ? add : "", name + ls);
            name = buf;
        }
        if (pt_load_spec(&t->v[i], c, name)) return -1;
    }
    return 0;
}
