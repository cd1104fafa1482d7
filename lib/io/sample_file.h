/* Random access over uncompressed tar files of samples (clip-stream(5)): each
 * file is mapped and indexed once, sample i is read on demand. Several files
 * (shards) are one sequence of samples, in the order they are named. */
#ifndef CLIP_SAMPLE_FILE_H
#define CLIP_SAMPLE_FILE_H

#include <stddef.h>

#include "io/sample.h"

typedef struct sample_file sample_file;

/* spec: one path, or shards in brace notation ("train-{000..015}.tar",
 * "a.tar::b.tar"; io/shards.h). NULL with an error naming the file. */
sample_file *sample_file_open(const char *spec);
/* Samples over all shards. */
size_t sample_file_count(const sample_file *f);
size_t sample_file_shards(const sample_file *f);
const char *sample_file_key(const sample_file *f, size_t i);
/* Sample i into s (cleared first). -1 with an error naming the file and sample. */
int sample_file_read(sample_file *f, size_t i, sample *s);
void sample_file_close(sample_file *f);

#endif
