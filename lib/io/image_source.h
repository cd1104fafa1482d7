/* Where image bytes come from: a directory, a .zip / .tar / .tar.gz (any
 * archive libarchive reads), or plain paths.
 *
 * Archive lookup rule: a request for P (with '/' separators; '\' and a
 * leading "./" are normalised away) matches the member named P; failing that,
 * the member named T/P for one top-level folder T, so an archive of the
 * folder itself (flickr8k-cn/flickr8k-images/x.jpg) serves flickr8k-images/x.jpg.
 * If several top-level folders hold P the lookup is an error (ambiguous).
 *
 * Archives are indexed once (member names, one pass over the headers) and
 * then read forward: members the caller announced with image_source_want()
 * that are passed over on the way to a requested one are kept in memory until
 * requested; a request behind the read position re-opens the archive. So an
 * archive is read about once whatever order the annotations list it in. */
#ifndef CLIP_IMAGE_SOURCE_H
#define CLIP_IMAGE_SOURCE_H

#include <stddef.h>

typedef struct image_source image_source;

/* root: a directory, an archive file, or NULL (paths are used as given). */
image_source *image_source_open(const char *root);
/* Announce that path will be read (once per call). Without any announcement
 * every member passed over is kept until read. */
void image_source_want(image_source *s, const char *path);
/* The file's bytes (malloc'd, *len set), or NULL with clip_error() naming the
 * file. Thread-safe. */
unsigned char *image_source_read(image_source *s, const char *path, size_t *len);
void image_source_close(image_source *s);

#endif
