// Ending the process for sure. Node's process.exit() joins every worker thread before the
// process ends, and a worker blocked in a userfaultfd fault never returns: after a failed
// migration that would hang for ever. exitNow() ends every thread at once (exit_group), so a
// guest thread blocked on a page that will never arrive dies in the kernel and never reads
// a zero page.
import { writeSync } from 'node:fs';
import { addon } from './addon.js';

/**
 * Writes `message` (if any) to stderr, then ends the process with `code` at once: no
 * 'exit' handlers, no joining of worker threads. Output already written to stdout/stderr
 * is kept (on Linux, Node writes pipes and files synchronously).
 */
export function exitNow(code: number, message?: string): never {
  if (message) {
    try {
      writeSync(2, message.endsWith('\n') ? message : message + '\n');
    } catch {
      // stderr is gone (the parent died): nothing left to tell
    }
  }
  return addon.exitNow(code);
}

/**
 * A second descriptor (close-on-exec) of the same open socket or userfaultfd: a worker thread
 * takes one and closes it when done, independently of the thread that opened the first.
 */
export function duplicateDescriptor(fd: number): number {
  return addon.duplicateDescriptor(fd);
}
