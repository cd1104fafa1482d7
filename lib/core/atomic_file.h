/* Output files that appear whole or not at all, and the cleanup of the
 * unfinished ones when a tool dies (an error, a signal, a full disk).
 *
 * atomic_file_create(PATH) writes to PATH.tmp-PID beside PATH (the same
 * directory, so that the rename is atomic); atomic_file_commit fsyncs it,
 * renames it over PATH and fsyncs the directory, so PATH is the old file or
 * the whole new one, also after a crash; atomic_file_abort removes it.
 * Every stream file (io/stream.h) and checkpoint (ckpt/checkpoint.h) is
 * written this way.
 *
 * A temporary name carries the PID of its writer: creating PATH's output
 * removes the PATH.tmp-PID files of processes that no longer run (a killed
 * earlier run), saying so on stderr. Files of a process still running (on
 * this machine: a shared file system written from two hosts is not told
 * apart) are left alone. */
#ifndef CLIP_ATOMIC_FILE_H
#define CLIP_ATOMIC_FILE_H

#include <stdio.h>

typedef struct atomic_file atomic_file;

/* 1 if an output to PATH is written as an atomic_file: PATH is a regular
 * file, does not exist, cannot be looked at or is a directory (create then
 * says why not); 0 for what is written in place (a device such as
 * /dev/null, a fifo). */
int atomic_file_applies(const char *path);

/* The temporary file PATH.tmp-PID, created (mode 0666 & ~umask) and
 * registered as an unfinished output. NULL with clip_error() set (naming
 * PATH) if it cannot be created. */
atomic_file *atomic_file_create(const char *path);

/* The file descriptor to write to; owned by f (closed by commit/abort). */
int atomic_file_fd(const atomic_file *f);

/* A stdio stream over that descriptor, made on the first call and owned by
 * f: commit flushes it (a failed write or flush fails the commit), abort
 * drops it. Write through either the stream or the descriptor, not both.
 * NULL with clip_error() set if it cannot be made. */
FILE *atomic_file_stream(atomic_file *f);

/* The final path and the temporary one (for messages); owned by f. */
const char *atomic_file_path(const atomic_file *f);
const char *atomic_file_temp_path(const atomic_file *f);

/* Flush, fsync and close the file, rename it over the final path, fsync
 * the directory. 0, or -1 with clip_error() set (naming the path and the
 * cause: "No space left on device", "File too large") and the temporary
 * file removed. Frees f either way. */
int atomic_file_commit(atomic_file *f);

/* Close and remove the temporary file; frees f. NULL is a no-op. */
void atomic_file_abort(atomic_file *f);

/* One call: fn(fd, ctx) writes the content (returning -1 with the error
 * set on failure), then commit. 0 or -1 (clip_error()). */
int atomic_file_write(const char *path, int (*fn)(int fd, void *ctx), void *ctx);

/* The registry of unfinished outputs is process-wide (a fixed table of
 * temporary paths, at most ATOMIC_FILE_MAX_OPEN at once): a signal handler
 * has only globals to find them by. It is lock-free, so safe from any
 * thread; atomic_file_remove_unfinished unlinks each registered temporary
 * file and does nothing else (no malloc, no stdio, no lock): it may be
 * called from a signal handler. It also runs at exit, so a tool that dies()
 * with outputs open leaves none behind. */
#define ATOMIC_FILE_MAX_OPEN 32
void atomic_file_remove_unfinished(void);

/* Tools, first thing in main(): SIGINT, SIGTERM (and SIGHUP and SIGPIPE
 * unless ignored when the program started) remove the unfinished outputs,
 * then end the process by the same signal (exit status 128 + its number);
 * SIGXFSZ is ignored, so that a write past the file size limit (ulimit -f)
 * fails with EFBIG and the tool says so and exits 1. A tool with handlers
 * of its own (clip-train's graceful stop) installs them afterwards. */
void clip_handle_signals(void);

#endif
