#include "model/device.h"

#include <string.h>

#include "core/util.h"

static const clip_device cpu_device = {
    "cpu",         vit_forward,       vit_backward,       bert_forward,
    bert_backward, clip_text_forward, clip_text_backward, vit_forward_masked};

const clip_device *device_find(const char *name, const char *what)
{
    if (!strcmp(name, "cpu")) return &cpu_device;
    size_t n = strcspn(name, ":");
    if ((n == 4 && !strncmp(name, "sdaa", 4)) || (n == 4 && !strncmp(name, "cuda", 4)))
        clip_set_error("%s device '%s': this build has no %.*s backend (available: cpu)", what,
                       name, (int)n, name);
    else
        clip_set_error("%s device '%s': unknown (available: cpu)", what, name);
    return NULL;
}
