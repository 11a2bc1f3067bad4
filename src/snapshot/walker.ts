// The background walker of a snapshot, on its own worker thread so that the main thread stays
// free for write faults. Block by block, chunk by chunk, it claims every page still protected
// and unsaved, writes the non-zero ones at their file offsets (one positional write per run),
// and only then un-protects exactly the pages it claimed: a page is never saved after it was
// un-protected, and the fault path and the walker never save the same page.
import { writeSync } from 'node:fs';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { attachMapping } from '../kernel/mapping.js';
import { RangeUnprotector } from '../kernel/userfaultfd.js';
import { addChecksum, pageChecksum } from '../wire/snapshot-format.js';
import { PageState, WalkerCounter, type WalkerBlock, type WalkerMessage, type WalkerTask } from './walker-protocol.js';

const CHUNK_BYTES = 256 << 10;

function writeRun(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}

class Walker {
  private readonly counters: Float64Array;
  private readonly abort: Int32Array;
  private readonly zero: Buffer;
  /** Which pages of the run being saved are zero (a local note: the shared state says WALKER). */
  private readonly zeroInRun = new Uint8Array(CHUNK_BYTES / 4096);

  constructor(private readonly task: WalkerTask) {
    this.counters = new Float64Array(task.counters);
    this.abort = new Int32Array(task.abort);
    this.zero = Buffer.alloc(Math.max(...task.blocks.map((b) => b.pageSize)));
  }

  run(): number[] {
    return this.task.blocks.map((b) => this.walkBlock(b));
  }

  private walkBlock(block: WalkerBlock): number {
    const state = new Uint8Array(block.state);
    const memory = Buffer.from(attachMapping(BigInt(block.address), block.length));
    const unprotector = new RangeUnprotector(this.task.uffd, block.address, block.length);
    const pages = block.length / block.pageSize;
    const chunkPages = Math.max(1, CHUNK_BYTES / block.pageSize);
    let checksum = 0;
    for (let chunk = 0; chunk < pages; chunk += chunkPages) {
      if (Atomics.load(this.abort, 0)) break;
      const end = Math.min(pages, chunk + chunkPages);
      for (let p = chunk; p < end; ) {
        if (Atomics.compareExchange(state, p, PageState.PROTECTED, PageState.WALKER) !== PageState.PROTECTED) {
          p++;
          continue;
        }
        let e = p + 1;
        while (e < end && Atomics.compareExchange(state, e, PageState.PROTECTED, PageState.WALKER) === PageState.PROTECTED) e++;
        checksum = addChecksum(checksum, this.saveRun(block, memory, state, unprotector, p, e));
        p = e;
      }
    }
    return checksum;
  }

  /** Saves claimed pages [first, end), un-protects them, marks them saved; returns their checksum sum. */
  private saveRun(block: WalkerBlock, memory: Buffer, state: Uint8Array, unprotector: RangeUnprotector, first: number, end: number): number {
    const ps = block.pageSize;
    let sum = 0;
    let runStart = -1;
    let written = 0;
    let zeros = 0;
    const flush = (upTo: number): void => {
      if (runStart < 0) return;
      writeRun(this.task.file, memory.subarray(runStart * ps, upTo * ps), block.pagesOffset + runStart * ps);
      written += upTo - runStart;
      runStart = -1;
    };
    for (let p = first; p < end; p++) {
      const at = p * ps;
      if (memory.compare(this.zero, 0, ps, at, at + ps) === 0) {
        flush(p);
        this.zeroInRun[p - first] = 1;
        zeros++;
        continue;
      }
      if (this.task.checksums) sum = addChecksum(sum, pageChecksum(memory.subarray(at, at + ps), p));
      this.zeroInRun[p - first] = 0;
      if (runStart < 0) runStart = p;
    }
    flush(end);
    const status = unprotector.tryUnprotect(first * ps, (end - first) * ps);
    if (status < 0) throw new Error(`un-protecting pages ${first}..${end - 1} of block ${block.idstr}: errno ${-status}`);
    for (let p = first; p < end; p++) Atomics.store(state, p, this.zeroInRun[p - first] ? PageState.SAVED_ZERO : PageState.SAVED_DATA);
    this.counters[WalkerCounter.PAGES] += end - first;
    this.counters[WalkerCounter.ZERO_PAGES] += zeros;
    this.counters[WalkerCounter.BYTES_WRITTEN] += written * ps;
    this.counters[WalkerCounter.BYTES_SAVED] += (end - first) * ps;
    return sum;
  }
}

if (!isMainThread && (workerData as WalkerTask | undefined)?.postcopySnapshotWalker === 1) {
  const task = workerData as WalkerTask;
  let message: WalkerMessage;
  try {
    message = { type: 'done', checksums: new Walker(task).run() };
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    message = { type: 'error', message: e.message, code: e.code };
  }
  parentPort!.postMessage(message);
}
