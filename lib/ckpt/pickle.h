/* A restricted pickle VM: enough of protocols 2-5 to read a PyTorch state
 * dict, and nothing that could execute code. The only globals accepted are
 * collections.OrderedDict, the torch tensor/parameter rebuild functions and
 * the torch.*Storage types; everything else is refused. */
#ifndef CLIP_PICKLE_H
#define CLIP_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "ckpt/checkpoint.h"

typedef enum {
    PK_NONE,
    PK_BOOL,
    PK_INT,
    PK_FLOAT,
    PK_STR,
    PK_BYTES,
    PK_BIGINT, /* an integer wider than 64 bits: str holds its little-endian bytes */
    PK_TUPLE,
    PK_LIST,
    PK_DICT, /* dict items are key, value, key, value, ... */
    PK_GLOBAL,
    PK_STORAGE,
    PK_TENSOR,
} pk_type;

typedef enum {
    PKG_ORDERED_DICT,
    PKG_REBUILD_TENSOR_V2,
    PKG_REBUILD_TENSOR,
    PKG_REBUILD_PARAMETER,
    PKG_REBUILD_PARAMETER_WITH_STATE,
    PKG_STORAGE_TYPE,
} pk_global;

typedef struct pk_obj pk_obj;

typedef struct {
    clip_dtype dtype;
    char *key;
    int64_t numel;    /* as declared in the persistent id */
    const void *data; /* filled in by the loader: numel elements */
    size_t bytes;     /* bytes available at data */
    /* legacy views: this storage is a window into storage `view_of` */
    char *view_of;
    int64_t view_offset;
} pk_storage;

typedef struct {
    pk_obj *storage;
    int64_t offset;
    int ndim;
    int64_t shape[CKPT_MAX_DIMS];
    int64_t stride[CKPT_MAX_DIMS];
} pk_tensor;

struct pk_obj {
    pk_type type;
    union {
        int64_t i; /* BOOL, INT */
        double f;
        struct {
            char *s;
            size_t len;
        } str; /* STR, BYTES, BIGINT (NUL-terminated) */
        struct {
            pk_obj **items;
            size_t n, cap;
        } seq; /* TUPLE, LIST, DICT */
        struct {
            pk_global kind;
            clip_dtype dtype;
        } global;
        pk_storage storage;
        pk_tensor tensor;
    };
};

typedef struct pk_vm pk_vm;

/* persistent_load: turns a persistent id (a tuple) into a PK_STORAGE object
 * made with pk_new_storage; NULL with the error set. */
typedef pk_obj *(*pk_persistent_fn)(pk_vm *vm, const pk_obj *pid, void *ctx);

pk_vm *pk_new(pk_persistent_fn persistent_load, void *ctx);
/* Frees the VM and every object it made. */
void pk_free(pk_vm *vm);

/* Runs one pickle from buf; returns its result (owned by the VM) and sets
 * *used to the bytes consumed (up to and including STOP). NULL with
 * clip_error() naming the opcode and offset. */
pk_obj *pk_load(pk_vm *vm, const unsigned char *buf, size_t len, size_t *used);

pk_obj *pk_new_storage(pk_vm *vm, clip_dtype dtype, const char *key, int64_t numel);
const char *pk_type_name(pk_type t);

#endif
