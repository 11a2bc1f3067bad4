// Pages between memory and a socket, one native call per packet: a bulk channel's worker
// classifies a packet's pages and writes them straight from guest memory, so no page's bytes
// pass through JavaScript. Offsets and runs are checked against the view of memory they index.
import { addon } from './addon.js';

/**
 * For each `i` where `zero[i]` is 0, sets it to 1 when the `pageSize` bytes of `memory` at
 * `offsets[i]` are all zero (a 1 already there is kept, that page not read). Returns how many
 * are 1. An offset whose page is not wholly inside `memory` throws ERR_OUT_OF_RANGE naming it.
 */
export function markZeroPages(memory: Uint8Array, offsets: Float64Array, pageSize: number, zero: Uint8Array): number {
  return addon.markZeroPages(memory, offsets, pageSize, zero);
}

/**
 * Writes `header`, then the runs of `memory` (`runs`: offset, length pairs) in order, with no
 * copy, and returns the bytes written: all of them, or it throws. On a full non-blocking socket
 * this thread waits (it is meant for a worker's own descriptor); `timeoutMs` without progress
 * throws ETIMEDOUT, and a closed peer Node's error (EPIPE, ECONNRESET; syscall 'sendmsg').
 */
export function writeRuns(fd: number, header: Uint8Array, memory: Uint8Array, runs: Float64Array, timeoutMs: number): number {
  return addon.writeRuns(fd, header, memory, runs, timeoutMs);
}
