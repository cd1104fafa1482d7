/* PyTorch state dicts into the tensor table: shared by the zip (torch_zip.c)
 * and legacy (torch_legacy.c) readers. */
#ifndef CLIP_TORCH_STATE_H
#define CLIP_TORCH_STATE_H

#include "ckpt/ckpt_internal.h"
#include "ckpt/pickle.h"

/* Turns the unpickled root (a dict of tensors, maybe nested: keys joined with
 * '.') into tensors. Storages must have their data resolved. */
int ckpt_add_pickled(ckpt *c, const pk_obj *root);
/* Replaces a big-endian storage's data by an owned little-endian copy. */
void ckpt_swap_storage(ckpt *c, pk_storage *st);

#endif
