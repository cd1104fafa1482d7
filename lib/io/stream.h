/* Sample streams: a POSIX tar stream of <key>.<field> members (WebDataset
 * convention) over stdin/stdout ("-"), a file, or ZeroMQ (tcp://, ipc://;
 * producers' DEALER sockets to one reader's ROUTER, one sample per message,
 * each acknowledged once passed on, credit-based flow control; options
 * ?producers=N&credit=N&timeout=SECONDS&heartbeat=SECONDS). See clip-stream(5). */
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

/* endpoint: "-" (stdin), a file, a ZeroMQ address, or shards in brace
 * notation ("train-{000..015}.tar", "a.tar::b.tar"; io/shards.h), read one
 * after the other as one stream. NULL with clip_error() set on failure. */
stream_reader *stream_open_read(const char *endpoint);
/* 1: a sample was read into s; 0: end of stream; -1: error (clip_error()).
 * ZeroMQ: asking for the next sample acknowledges the one before (passed on);
 * 0 once `producers` streams have ended, each with all its samples; -1 naming
 * the producer and the counts when one disconnects, aborts or loses samples,
 * or when nothing arrives for the timeout. Once -1, always -1. */
int stream_read(stream_reader *r, sample *s);
/* ZeroMQ: acknowledges the sample read last, then waits up to 2 s for the
 * acknowledgements to leave. */
void stream_close_read(stream_reader *r);

stream_writer *stream_open_write(const char *endpoint);
/* ZeroMQ: write blocks while `credit` samples are unacknowledged (and before
 * the reader's first answer); -1 once the reader is lost, refuses the stream
 * or is silent for the timeout, the message ending "(N samples sent, M not
 * acknowledged)", and -1 from then on. Close sends the end of stream with the
 * count of samples and returns 0 once the reader has passed every sample on
 * and confirmed the end. Abort tells the reader the stream failed. */
int stream_write(stream_writer *w, const sample *s);
/* A regular file endpoint is written as an atomic_file (core/atomic_file.h):
 * under FILE.tmp-PID, fsynced and renamed at close, so a failed or killed run
 * leaves neither a partial file nor a clobbered old one (the temporary file
 * is removed at exit, on the signals of clip_handle_signals, or by the next
 * run writing FILE); devices and fifos (/dev/null, named pipes) are written
 * directly. Errors name the output and the cause ("No space left on device").
 * Close flushes; -1 if anything failed (e.g. disk full), the file then
 * removed. Abort drops the output: the temporary file is removed, and a
 * stream on stdout or a fifo is left without its end-of-archive marker, so
 * that its reader sees it truncated rather than complete. After a failed
 * stream_write, close does the same and returns -1. */
int stream_close_write(stream_writer *w);
void stream_abort_write(stream_writer *w);

#endif
