/* Image-caption annotations in the seed format: a JSON list of
 * {"image": "flickr8k-images/x.jpg", "caption": ["...", ...]}. */
#ifndef CLIP_ANNOTATIONS_H
#define CLIP_ANNOTATIONS_H

#include <stddef.h>

typedef struct {
    char *image;     /* relative path, '\' separators turned into '/' */
    char **captions; /* UTF-8 */
    int n_captions;
    size_t entry; /* index in the JSON list of the image's first entry */
} annotation;

typedef struct {
    annotation *items; /* one per image, in the order of first appearance */
    size_t n;
    /* entries that named an image already listed: their captions were
     * appended to its item, in list order (a sample holds a list of captions,
     * and two samples with the same key would be rejected by every reader) */
    size_t n_merged;
} annotations;

/* NULL with clip_error() naming the file (and the entry index and image for a
 * bad entry). "caption" may also be a single string; it may be absent (0 captions).
 * One image is one path as the image source looks it up (image_source.h:
 * '\' as '/', leading "./" and "/" dropped), so "./a.jpg" and "a.jpg" merge. */
annotations *annotations_load(const char *path);
/* The same from memory: text (len bytes, no NUL needed) stands for the file
 * `name` in messages. */
annotations *annotations_load_buffer(const char *text, size_t len, const char *name);
void annotations_free(annotations *a);

/* 0 if every image, read from the folder `root` as the image source reads it
 * (root/path, leading "/" and "./" dropped), stays inside that folder: its ".."
 * components never climb above root, and where the image exists its real
 * path (symlinks resolved) lies under root's real path. -1 otherwise, with
 * clip_error() naming `name` (the annotations file), the entry, the image and
 * the folder. A root that is not a folder (an archive, whose members are
 * looked up by name, or NULL) passes: nothing is opened by path there. An
 * image that does not exist is left to the reader to report. */
int annotations_check_root(const annotations *a, const char *root, const char *name);
/* The json field of a sample made from an image and its captions, as clip-prep writes
 * it: {"image": path ('\\' as '/'), "captions": [...]}. malloc'd; NULL with an error
 * naming the image when a string is not valid UTF-8 (JSON holds only UTF-8). */
char *annotation_sample_json(const char *image, char *const *captions, int n_captions);

#endif
