/* The restricted pickle VM. Objects live in blocks owned by the VM; nothing
 * is ever called except the few rebuild functions a state dict needs, which
 * are implemented here as plain data constructors. */
#include "ckpt/pickle.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_OBJECTS (1u << 22)
#define MAX_STACK (1u << 22)
#define MAX_MEMO (1u << 22)
#define BLOCK 1024

typedef struct block {
    struct block *next;
    size_t used;
    pk_obj obj[BLOCK];
} block;

struct pk_vm {
    pk_persistent_fn persistent_load;
    void *ctx;
    block *blocks;
    size_t n_objects;
    pk_obj **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t n_marks, marks_cap;
    pk_obj **memo;
    size_t memo_cap, memo_len;
    pk_obj none;
};

static const char *type_names[] = {
    "None",  "bool", "int",  "float",  "str",     "bytes",  "int",
    "tuple", "list", "dict", "global", "storage", "tensor",
};

const char *pk_type_name(pk_type t) { return (unsigned)t <= PK_TENSOR ? type_names[t] : "?"; }

pk_vm *pk_new(pk_persistent_fn persistent_load, void *ctx)
{
    pk_vm *vm = xcalloc(1, sizeof *vm);
    vm->persistent_load = persistent_load;
    vm->ctx = ctx;
    vm->none.type = PK_NONE;
    return vm;
}

void pk_free(pk_vm *vm)
{
    if (!vm) return;
    for (block *b = vm->blocks, *next; b; b = next) {
        next = b->next;
        for (size_t i = 0; i < b->used; i++) {
            pk_obj *o = &b->obj[i];
            switch (o->type) {
            case PK_STR:
            case PK_BYTES:
            case PK_BIGINT: free(o->str.s); break;
            case PK_TUPLE:
            case PK_LIST:
            case PK_DICT: free(o->seq.items); break;
            case PK_STORAGE:
                free(o->storage.key);
                free(o->storage.view_of);
                break;
            default: break;
            }
        }
        free(b);
    }
    free(vm->stack);
    free(vm->marks);
    free(vm->memo);
    free(vm);
}

static pk_obj *new_obj(pk_vm *vm, pk_type type)
{
    if (vm->n_objects >= MAX_OBJECTS) {
        clip_set_error("too many objects (more than %u)", MAX_OBJECTS);
        return NULL;
    }
    if (!vm->blocks || vm->blocks->used == BLOCK) {
        block *b = xmalloc(sizeof *b);
        b->next = vm->blocks;
        b->used = 0;
        vm->blocks = b;
    }
    pk_obj *o = &vm->blocks->obj[vm->blocks->used++];
    memset(o, 0, sizeof *o);
    o->type = type;
    vm->n_objects++;
    return o;
}

pk_obj *pk_new_storage(pk_vm *vm, clip_dtype dtype, const char *key, int64_t numel)
{
    pk_obj *o = new_obj(vm, PK_STORAGE);
    if (!o) return NULL;
    o->storage.dtype = dtype;
    o->storage.key = xstrdup(key);
    o->storage.numel = numel;
    return o;
}

static void seq_append(pk_obj *s, pk_obj *item)
{
    if (s->seq.n == s->seq.cap) {
        s->seq.cap = s->seq.cap ? 2 * s->seq.cap : 4;
        s->seq.items = xrealloc(s->seq.items, s->seq.cap * sizeof *s->seq.items);
    }
    s->seq.items[s->seq.n++] = item;
}

/* ---- globals ---- */

static const struct {
    const char *module, *name;
    pk_global kind;
    clip_dtype dtype;
} allowed[] = {
    /* and the torch.*Storage classes of core/dtype.c */
    {"collections", "OrderedDict", PKG_ORDERED_DICT, 0},
    {"torch._utils", "_rebuild_tensor_v2", PKG_REBUILD_TENSOR_V2, 0},
    {"torch._utils", "_rebuild_tensor", PKG_REBUILD_TENSOR, 0},
    {"torch._utils", "_rebuild_parameter", PKG_REBUILD_PARAMETER, 0},
    {"torch._utils", "_rebuild_parameter_with_state", PKG_REBUILD_PARAMETER_WITH_STATE, 0},
};

static pk_obj *find_global(pk_vm *vm, const char *module, size_t mlen, const char *name,
                           size_t nlen)
{
    clip_dtype dt;
    if (mlen == 5 && !memcmp(module, "torch", 5) && !dtype_from_torch_storage(name, nlen, &dt)) {
        pk_obj *o = new_obj(vm, PK_GLOBAL);
        if (!o) return NULL;
        o->global.kind = PKG_STORAGE_TYPE;
        o->global.dtype = dt;
        return o;
    }
    for (size_t i = 0; i < sizeof allowed / sizeof *allowed; i++)
        if (strlen(allowed[i].module) == mlen && !memcmp(allowed[i].module, module, mlen) &&
            strlen(allowed[i].name) == nlen && !memcmp(allowed[i].name, name, nlen)) {
            pk_obj *o = new_obj(vm, PK_GLOBAL);
            if (!o) return NULL;
            o->global.kind = allowed[i].kind;
            o->global.dtype = allowed[i].dtype;
            return o;
        }
    clip_set_error("refusing to load global %.*s.%.*s (only tensors are allowed)",
                   (int)(mlen > 200 ? 200 : mlen), module, (int)(nlen > 200 ? 200 : nlen), name);
    return NULL;
}

/* ---- the rebuild functions ---- */

static int get_int(const pk_obj *o, int64_t *v)
{
    if (o->type != PK_INT && o->type != PK_BOOL) return -1;
    *v = o->i;
    return 0;
}

static int get_dims(const pk_obj *o, int64_t *dims, int *n)
{
    if (o->type != PK_TUPLE && o->type != PK_LIST) return -1;
    if (o->seq.n > CKPT_MAX_DIMS) return -1;
    for (size_t i = 0; i < o->seq.n; i++)
        if (get_int(o->seq.items[i], &dims[i]) < 0) return -1;
    *n = o->seq.n;
    return 0;
}

static pk_obj *rebuild_tensor(pk_vm *vm, const pk_obj *args, size_t min_args, size_t max_args)
{
    if (args->seq.n < min_args || args->seq.n > max_args) {
        clip_set_error("_rebuild_tensor with %zu arguments", args->seq.n);
        return NULL;
    }
    pk_obj *storage = args->seq.items[0];
    if (storage->type != PK_STORAGE) {
        clip_set_error("tensor built from a %s, not a storage", pk_type_name(storage->type));
        return NULL;
    }
    pk_tensor t = {.storage = storage};
    int nstride;
    if (get_int(args->seq.items[1], &t.offset) < 0 ||
        get_dims(args->seq.items[2], t.shape, &t.ndim) < 0 ||
        get_dims(args->seq.items[3], t.stride, &nstride) < 0 || nstride != t.ndim) {
        clip_set_error("tensor with a bad offset, size or stride (at most %d dims)", CKPT_MAX_DIMS);
        return NULL;
    }
    pk_obj *o = new_obj(vm, PK_TENSOR);
    if (!o) return NULL;
    o->tensor = t;
    return o;
}

static pk_obj *call(pk_vm *vm, const pk_obj *f, const pk_obj *args)
{
    if (f->type != PK_GLOBAL || args->type != PK_TUPLE) {
        clip_set_error("calling a %s with a %s", pk_type_name(f->type), pk_type_name(args->type));
        return NULL;
    }
    switch (f->global.kind) {
    case PKG_ORDERED_DICT:
        if (args->seq.n) break;
        return new_obj(vm, PK_DICT);
    case PKG_REBUILD_TENSOR_V2: return rebuild_tensor(vm, args, 6, 7);
    case PKG_REBUILD_TENSOR: return rebuild_tensor(vm, args, 4, 4);
    case PKG_REBUILD_PARAMETER:
    case PKG_REBUILD_PARAMETER_WITH_STATE:
        if (args->seq.n != (f->global.kind == PKG_REBUILD_PARAMETER ? 3u : 4u) ||
            args->seq.items[0]->type != PK_TENSOR)
            break;
        return args->seq.items[0];
    case PKG_STORAGE_TYPE: break;
    }
    clip_set_error("unsupported call of a %s global with %zu arguments",
                   f->global.kind == PKG_STORAGE_TYPE ? "storage type" : "torch", args->seq.n);
    return NULL;
}

/* ---- the machine ---- */

static int push(pk_vm *vm, pk_obj *o)
{
    if (!o) return -1;
    if (vm->sp == vm->stack_cap) {
        if (vm->stack_cap >= MAX_STACK) {
            clip_set_error("stack deeper than %u", MAX_STACK);
            return -1;
        }
        vm->stack_cap = vm->stack_cap ? 2 * vm->stack_cap : 64;
        vm->stack = xrealloc(vm->stack, vm->stack_cap * sizeof *vm->stack);
    }
    vm->stack[vm->sp++] = o;
    return 0;
}

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static pk_obj *new_string(pk_vm *vm, pk_type type, const unsigned char *s, size_t len)
{
    pk_obj *o = new_obj(vm, type);
    if (!o) return NULL;
    o->str.s = xstrndup((const char *)s, len);
    o->str.len = len;
    return o;
}

static pk_obj *new_long(pk_vm *vm, const unsigned char *p, size_t n)
{
    if (n > 8) return new_string(vm, PK_BIGINT, p, n);
    pk_obj *o = new_obj(vm, PK_INT);
    if (!o) return NULL;
    uint64_t v = n ? le(p, n) : 0;
    if (n && n < 8 && (p[n - 1] & 0x80)) v |= ~(uint64_t)0 << (8 * n); /* sign-extend */
    o->i = (int64_t)v;
    return o;
}

pk_obj *pk_load(pk_vm *vm, const unsigned char *buf, size_t len, size_t *used)
{
    size_t pos = 0, op_pos = 0;
    unsigned op = 0;
    vm->sp = 0;
    vm->n_marks = 0;
    if (vm->memo) memset(vm->memo, 0, vm->memo_cap * sizeof *vm->memo);
    vm->memo_len = 0;
    char why[512];

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(why, sizeof why, __VA_ARGS__);                                                    \
        goto fail_msg;                                                                             \
    } while (0)
#define NEED(n)                                                                                    \
    do {                                                                                           \
        if ((n) > len - pos) FAIL("truncated");                                                    \
    } while (0)
#define POP(var)                                                                                   \
    do {                                                                                           \
        if (vm->sp == 0 || (vm->n_marks && vm->sp <= vm->marks[vm->n_marks - 1]))                  \
            FAIL("stack underflow");                                                               \
        var = vm->stack[--vm->sp];                                                                 \
    } while (0)
#define TOP(var)                                                                                   \
    do {                                                                                           \
        if (vm->sp == 0 || (vm->n_marks && vm->sp <= vm->marks[vm->n_marks - 1]))                  \
            FAIL("stack underflow");                                                               \
        var = vm->stack[vm->sp - 1];                                                               \
    } while (0)
#define PUSH(o)                                                                                    \
    do {                                                                                           \
        if (push(vm, (o)) < 0) goto fail;                                                          \
    } while (0)

    for (;;) {
        op_pos = pos;
        NEED(1);
        op = buf[pos++];
        pk_obj *a, *b, *c;
        uint64_t n;
        switch (op) {
        case 0x80: /* PROTO */
            NEED(1);
            if (buf[pos] < 2 || buf[pos] > 5) FAIL("unsupported protocol %d", buf[pos]);
            pos++;
            break;
        case 0x95: /* FRAME: a length hint only */
            NEED(8);
            pos += 8;
            break;
        case '}': PUSH(new_obj(vm, PK_DICT)); break;
        case ']': PUSH(new_obj(vm, PK_LIST)); break;
        case ')': PUSH(new_obj(vm, PK_TUPLE)); break;
        case 'N': PUSH(&vm->none); break;
        case 0x88:
        case 0x89: /* NEWTRUE, NEWFALSE */
            a = new_obj(vm, PK_BOOL);
            if (a) a->i = op == 0x88;
            PUSH(a);
            break;
        case '(': /* MARK */
            if (vm->n_marks == vm->marks_cap) {
                if (vm->marks_cap >= MAX_STACK) FAIL("too many marks");
                vm->marks_cap = vm->marks_cap ? 2 * vm->marks_cap : 16;
                vm->marks = xrealloc(vm->marks, vm->marks_cap * sizeof *vm->marks);
            }
            vm->marks[vm->n_marks++] = vm->sp;
            break;
        case 'X':
        case 0x8c:
        case 0x8d: /* BINUNICODE, SHORT_BINUNICODE, BINUNICODE8 */
        case 'T':
        case 'U': /* BINSTRING, SHORT_BINSTRING (Python 2 str) */
        case 'B':
        case 'C':
        case 0x8e:
        case 0x96: { /* BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8 */
            int w = (op == 0x8c || op == 'U' || op == 'C')  ? 1
                    : (op == 'X' || op == 'T' || op == 'B') ? 4
                                                            : 8;
            NEED(w);
            n = le(buf + pos, w);
            pos += w;
            NEED(n);
            int is_str = op == 'X' || op == 0x8c || op == 0x8d || op == 'T' || op == 'U';
            PUSH(new_string(vm, is_str ? PK_STR : PK_BYTES, buf + pos, n));
            pos += n;
            break;
        }
        case 'J':
        case 'K':
        case 'M': { /* BININT, BININT1, BININT2 */
            int w = op == 'J' ? 4 : op == 'K' ? 1 : 2;
            NEED(w);
            a = new_obj(vm, PK_INT);
            if (a)
                a->i = op == 'J' ? (int64_t)(int32_t)le(buf + pos, 4) : (int64_t)le(buf + pos, w);
            pos += w;
            PUSH(a);
            break;
        }
        case 0x8a:
        case 0x8b: { /* LONG1, LONG4 */
            int w = op == 0x8a ? 1 : 4;
            NEED(w);
            n = le(buf + pos, w);
            pos += w;
            if (op == 0x8b && (n & 0x80000000u)) FAIL("negative length");
            NEED(n);
            PUSH(new_long(vm, buf + pos, n));
            pos += n;
            break;
        }
        case 'G': { /* BINFLOAT, big-endian */
            NEED(8);
            uint64_t bits = 0;
            for (int i = 0; i < 8; i++) bits = bits << 8 | buf[pos + i];
            pos += 8;
            a = new_obj(vm, PK_FLOAT);
            if (a) memcpy(&a->f, &bits, 8);
            PUSH(a);
            break;
        }
        case 't':
        case 'l':
        case 'd': { /* TUPLE, LIST, DICT from the mark */
            if (!vm->n_marks) FAIL("no mark");
            size_t m = vm->marks[--vm->n_marks];
            if (op == 'd' && (vm->sp - m) % 2) FAIL("odd number of dict items");
            a = new_obj(vm, op == 't' ? PK_TUPLE : op == 'l' ? PK_LIST : PK_DICT);
            if (!a) goto fail;
            for (size_t i = m; i < vm->sp; i++) seq_append(a, vm->stack[i]);
            vm->sp = m;
            PUSH(a);
            break;
        }
        case 0x85:
        case 0x86:
        case 0x87: { /* TUPLE1..3 */
            size_t k = op - 0x84;
            if (vm->sp < k || (vm->n_marks && vm->sp - k < vm->marks[vm->n_marks - 1]))
                FAIL("stack underflow");
            a = new_obj(vm, PK_TUPLE);
            if (!a) goto fail;
            for (size_t i = vm->sp - k; i < vm->sp; i++) seq_append(a, vm->stack[i]);
            vm->sp -= k;
            PUSH(a);
            break;
        }
        case 's': /* SETITEM */
            POP(c);
            POP(b);
            TOP(a);
            if (a->type != PK_DICT) FAIL("SETITEM on a %s", pk_type_name(a->type));
            seq_append(a, b);
            seq_append(a, c);
            break;
        case 'a': /* APPEND */
            POP(b);
            TOP(a);
            if (a->type != PK_LIST) FAIL("APPEND to a %s", pk_type_name(a->type));
            seq_append(a, b);
            break;
        case 'u':
        case 'e': { /* SETITEMS, APPENDS */
            if (!vm->n_marks) FAIL("no mark");
            size_t m = vm->marks[--vm->n_marks];
            if (m == 0) FAIL("stack underflow");
            a = vm->stack[m - 1];
            if (a->type != (op == 'u' ? PK_DICT : PK_LIST))
                FAIL("%s on a %s", op == 'u' ? "SETITEMS" : "APPENDS", pk_type_name(a->type));
            if (op == 'u' && (vm->sp - m) % 2) FAIL("odd number of dict items");
            for (size_t i = m; i < vm->sp; i++) seq_append(a, vm->stack[i]);
            vm->sp = m;
            break;
        }
        case 'q':
        case 'r':
        case 0x94: {          /* BINPUT, LONG_BINPUT, MEMOIZE */
            if (op == 0x94) { /* Python's memo is a dict: MEMOIZE stores at len(memo) */
                n = vm->memo_len;
            } else {
                int w = op == 'q' ? 1 : 4;
                NEED(w);
                n = le(buf + pos, w);
                pos += w;
            }
            if (n >= MAX_MEMO) FAIL("memo index %llu too large", (unsigned long long)n);
            TOP(a);
            if (n >= vm->memo_cap) {
                size_t cap = vm->memo_cap ? vm->memo_cap : 64;
                while (cap <= n) cap *= 2;
                vm->memo = xrealloc(vm->memo, cap * sizeof *vm->memo);
                memset(vm->memo + vm->memo_cap, 0, (cap - vm->memo_cap) * sizeof *vm->memo);
                vm->memo_cap = cap;
            }
            if (!vm->memo[n]) vm->memo_len++;
            vm->memo[n] = a;
            break;
        }
        case 'h':
        case 'j': { /* BINGET, LONG_BINGET */
            int w = op == 'h' ? 1 : 4;
            NEED(w);
            n = le(buf + pos, w);
            pos += w;
            if (n >= vm->memo_cap || !vm->memo[n])
                FAIL("memo index %llu not set", (unsigned long long)n);
            PUSH(vm->memo[n]);
            break;
        }
        case 'c': { /* GLOBAL "module\nname\n" */
            const unsigned char *m = buf + pos, *e1 = memchr(m, '\n', len - pos);
            if (!e1) FAIL("truncated");
            const unsigned char *nm = e1 + 1, *e2 = memchr(nm, '\n', buf + len - nm);
            if (!e2) FAIL("truncated");
            pos = e2 + 1 - buf;
            PUSH(find_global(vm, (const char *)m, e1 - m, (const char *)nm, e2 - nm));
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            POP(b);
            POP(a);
            if (a->type != PK_STR || b->type != PK_STR) FAIL("STACK_GLOBAL needs two strings");
            PUSH(find_global(vm, a->str.s, a->str.len, b->str.s, b->str.len));
            break;
        case 'R':  /* REDUCE */
        case 0x81: /* NEWOBJ */
            POP(b);
            POP(a);
            if (op == 0x81 && !(a->type == PK_GLOBAL && a->global.kind == PKG_ORDERED_DICT))
                FAIL("NEWOBJ of a %s", pk_type_name(a->type));
            PUSH(call(vm, a, b));
            break;
        case 'b': /* BUILD: a dict's attributes (OrderedDict._metadata) or a tensor's state */
            POP(b);
            TOP(a);
            if (a->type != PK_DICT && a->type != PK_TENSOR)
                FAIL("BUILD on a %s", pk_type_name(a->type));
            break;
        case 'Q': /* BINPERSID */
            POP(a);
            if (!vm->persistent_load) FAIL("persistent id outside a torch checkpoint");
            PUSH(vm->persistent_load(vm, a, vm->ctx));
            break;
        case '0': POP(a); break;
        case '1': /* POP_MARK */
            if (!vm->n_marks) FAIL("no mark");
            vm->sp = vm->marks[--vm->n_marks];
            break;
        case '2': /* DUP */
            TOP(a);
            PUSH(a);
            break;
        case '.': /* STOP */
            if (vm->sp != 1 || vm->n_marks) FAIL("%zu objects left on the stack", vm->sp);
            *used = pos;
            return vm->stack[0];
        default:
            if (op >= 0x20 && op < 0x7f) FAIL("unsupported opcode '%c'", op);
            FAIL("unsupported opcode 0x%02x", op);
        }
    }
fail:
    snprintf(why, sizeof why, "%s", clip_error());
fail_msg:
    clip_set_error("pickle opcode 0x%02x at byte %zu: %s", op, op_pos, why);
    return NULL;
#undef FAIL
#undef NEED
#undef POP
#undef TOP
#undef PUSH
}
