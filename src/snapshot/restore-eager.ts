// Eager restore: every present page of a snapshot read into fresh memory before the guest
// runs. Positional reads on the libuv thread pool go straight into the target mapping (one
// copy, page cache to guest memory), several in flight; holes are skipped (fresh memory
// already reads as zeros). The main thread folds each run into its block's page checksum while
// the pool reads the next ones, and the sums are checked against the trailer at the end.
// This beat worker threads doing preadSync into an attached view, which pay a worker and addon
// start each (bench/README.md, "Measurements behind the defaults").
import { performance } from 'node:perf_hooks';
import type { Mapping } from '../kernel/index.js';
import { SnapshotFormatError } from '../wire/snapshot-format.js';
import { SnapshotReader, readFullyAsync } from './file.js';
import { checkTargets, runFrom } from './restore-targets.js';
import { hex, round } from '../base/index.js';

/** The largest single read: big enough to cost one syscall per many pages, small enough to spread. */
const READ_BYTES = 8 << 20;
/**
 * Holes up to this size between two present runs are read through and zeroed in memory: a
 * thread-pool round trip per short run costs more than copying the hole.
 */
const READ_THROUGH_HOLE_BYTES = 128 << 10;

export interface EagerRestoreOptions {
  /** Reads in flight (default 4, libuv's thread pool size). */
  reads?: number;
  /**
   * Ask for transparent huge pages on private anonymous targets before reading (default true):
   * first-touch faults of 4 KiB pages otherwise dominate a restore into fresh memory.
   */
  transparentHugePages?: boolean;
}

export interface EagerRestoreReport {
  mode: 'eager';
  /** Memory restored (the blocks' used lengths). */
  bytes: number;
  /** Bytes read from the file: present pages, and short holes read through (zeroed in memory). */
  bytes_read: number;
  seconds: number;
  /** bytes_read per second. */
  gb_per_s: number;
  /** Pages in each block's own page size (a 2 MiB huge page is one). */
  pages_read: number;
  zero_pages: number;
  /** False only when the file has no page checksums; a mismatch throws. */
  checksum_verified: boolean;
}

interface Read {
  block: number;
  page: number;
  end: number;
  /** Present pages in [page, end): the rest are short holes read through. */
  present: number;
}

/**
 * Restores every block of `reader` into its target (same order, same size, same page size;
 * fresh memory, since holes are not written). Throws ERR_RESTORE_TARGET before reading when a
 * target does not fit, a SnapshotFormatError naming the block when a read or a checksum fails.
 */
export async function restoreEager(reader: SnapshotReader, targets: readonly Mapping[], options: EagerRestoreOptions = {}): Promise<EagerRestoreReport> {
  checkTargets(reader, targets);
  const lanes = options.reads ?? 4;
  if (!Number.isInteger(lanes) || lanes < 1 || lanes > 64) throw new RangeError(`restoreEager: reads ${lanes} must be 1..64`);
  const started = performance.now();
  if (options.transparentHugePages ?? true) {
    for (const t of targets) if (t.kind === 'anonymous') t.madvise(0, t.length, 'hugepage');
  }
  const reads = plannedReads(reader);
  const sums = reader.blocks.map(() => 0);
  let next = 0;
  let bytesRead = 0;
  let pagesRead = 0;
  let failed = false;
  const lane = async () => {
    while (next < reads.length && !failed) {
      const { block, page, end, present } = reads[next++];
      const b = reader.blocks[block];
      const into = targets[block].bytes(page * b.pageSize, (end - page) * b.pageSize);
      try {
        await readFullyAsync(reader.fd, into, b.pagesOffset + page * b.pageSize, reader.file, `block ${b.idstr} page ${page}`);
      } catch (error) {
        failed = true; // the other lanes stop at their next read
        throw error;
      }
      settleRead(reader, block, page, end, into, sums);
      bytesRead += into.length;
      pagesRead += present;
    }
  };
  // every read has ended before this returns or throws: none may land after the caller unmaps
  const settled = await Promise.allSettled(Array.from({ length: lanes }, lane));
  const failure = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failure) throw failure.reason;
  if (reader.pageChecksums) {
    reader.blocks.forEach((b, i) => {
      if (sums[i] !== b.pageChecksum) {
        throw new SnapshotFormatError(reader.file, `block ${b.idstr} page data`, b.pagesOffset, `checksum ${hex(sums[i])} of the pages read does not match the trailer (${hex(b.pageChecksum)})`);
      }
    });
  }
  const seconds = (performance.now() - started) / 1000;
  return {
    mode: 'eager',
    bytes: reader.blocks.reduce((s, b) => s + b.usedLength, 0),
    bytes_read: bytesRead,
    seconds: round(seconds, 4),
    gb_per_s: round(bytesRead / seconds / 1e9, 3),
    pages_read: pagesRead,
    zero_pages: reader.blocks.reduce((s, b) => s + b.pages, 0) - pagesRead,
    checksum_verified: reader.pageChecksums,
  };
}

/**
 * After a read of pages [page, end) of `block` into `into`: a hole read through is zeros,
 * whatever the file holds there; each run of present pages is checksummed in one call.
 */
function settleRead(reader: SnapshotReader, block: number, page: number, end: number, into: Uint8Array, sums: number[]): void {
  const b = reader.blocks[block];
  for (let p = page; p < end; ) {
    const present = b.present.get(p);
    const runEnd = Math.min(end, present ? b.present.findNextZero(p) : b.present.findNextSet(p));
    const run = into.subarray((p - page) * b.pageSize, (runEnd - page) * b.pageSize);
    if (!present) run.fill(0);
    else if (reader.pageChecksums) sums[block] = reader.foldPages(sums[block], run, b.pageSize, p);
    p = runEnd;
  }
}

/** Every run of present pages, joined across short holes, cut at READ_BYTES. */
function plannedReads(reader: SnapshotReader): Read[] {
  const reads: Read[] = [];
  reader.blocks.forEach((b, block) => {
    const maxPages = Math.max(1, READ_BYTES / b.pageSize);
    const maxHole = Math.floor(READ_THROUGH_HOLE_BYTES / b.pageSize);
    let read: Read | undefined;
    for (let page = b.present.findNextSet(0); page < b.pages; page = b.present.findNextSet(page)) {
      const { end } = runFrom(b.present, page, b.pages, maxPages);
      if (read && page - read.end <= maxHole && end - read.page <= maxPages) {
        read.end = end;
        read.present += end - page;
      } else {
        read = { block, page, end, present: end - page };
        reads.push(read);
      }
      page = end;
    }
  });
  return reads;
}
