/* Several stream files named by one argument, as WebDataset and open_clip's
 * --train-data write them: brace ranges and lists, and "::" between specs.
 *   "shards/train-{000..015}.tar"   16 names, zero-padded like the bounds
 *   "{a,b}/x-{0..2}.tar"            6 names, the cartesian product in order
 *   "a.tar::b/c-{1..3}.tar"         4 names
 * A spec without braces or "::" is one name, unchanged. ZeroMQ endpoints are
 * not specs (an IPv6 address holds "::"): callers do not expand them. */
#ifndef CLIP_SHARDS_H
#define CLIP_SHARDS_H

#include <stddef.h>

#define SHARDS_MAX_NAMES (1u << 20)

/* The names, in order: a malloc'd array of malloc'd strings, *n of them;
 * free with shards_free. NULL with an error naming the spec (unbalanced or
 * empty braces, a bad range, more than SHARDS_MAX_NAMES names). */
char **shards_expand(const char *spec, size_t *n);
void shards_free(char **names, size_t n);

#endif
