/* Sample streams: a POSIX tar stream of <key>.<field> members (WebDataset
 * convention) over stdin/stdout ("-"), a file, or ZeroMQ PUSH/PULL
 * (tcp://, ipc://; one sample per multipart message). See clip-stream(5). */
#ifndef CLIP_STREAM_H
#define CLIP_STREAM_H

#include <stddef.h>

#include "io/sample.h"

typedef struct stream_reader stream_reader;
typedef struct stream_writer stream_writer;

int stream_is_zmq(const char *endpoint);

/* The largest member (one field of one sample) a reader accepts: a tar size
 * field is 12 octal digits or base-256, so a 512-byte header can claim 2^62
 * bytes. Larger members are refused before anything is allocated. */
#define STREAM_MAX_MEMBER ((size_t)1 << 30)

/* NULL with clip_error() set on failure. */
stream_reader *stream_open_read(const char *endpoint);
/* 1: a sample was read into s; 0: end of stream; -1: error (clip_error()). */
int stream_read(stream_reader *r, sample *s);
void stream_close_read(stream_reader *r);

stream_writer *stream_open_write(const char *endpoint);
int stream_write(stream_writer *w, const sample *s);
/* A file endpoint is written under a temporary name and renamed at close, so
 * a failed run leaves neither a partial file nor a clobbered old one; devices
 * and fifos (/dev/null, named pipes) are written directly.
 * Close flushes; -1 if anything failed (e.g. disk full). Abort drops the
 * output (removes the temporary file). */
int stream_close_write(stream_writer *w);
void stream_abort_write(stream_writer *w);

#endif
