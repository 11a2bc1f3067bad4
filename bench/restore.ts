// The project's restore scenarios, each compared with a floor scenario of another name:
//   restore-eager        restoreEager() of a whole populated snapshot into a fresh Mapping;
//                        GB/s = bytes / seconds of the call. vs copy-64k (UFFDIO_COPY of 64 KiB
//                        runs into fresh anonymous memory, no faults).
//   restore-lazy         LazyRestore.start() with its prefetcher while a toucher worker reads one
//                        byte per page in the floor's order; fault p50/p99 from the toucher's
//                        clock over the loads that faulted (the slowest as many loads as the
//                        restore counted faults: see below), time until every page is present.
//                        vs missing-4k.
//   restore-lazy-faults  the same without the prefetcher (prefetch: false): only faults place
//                        pages, as in missing-4k, which has no background loader. The fairer
//                        comparison of the fault path itself: with the prefetcher a fault can
//                        wait behind a 256 KiB prefetch step on the same event loop.
//
// Which loads faulted: not "slower than 2 µs" as in the snapshot scenario. On this VM the first
// load through a PTE that UFFDIO_COPY installed takes ~7 µs even when the page is present
// (measured: a region filled by 64 KiB UFFDIO_COPYs, then read in the floor's order: every load
// > 2 µs, p50 7.2-7.8 µs; filled by the process's own writes: p50 0.4 µs), so pages placed by the
// prefetcher or by a fault's 16-page run all look faulted. The restore counts the faults it
// served (one per blocked load, with one toucher); those loads are taken as the slowest that
// many, as postcopy-fault-loaded does. The floor's missing-4k pays the same ~7 µs in every load.
//
// The snapshot file (every page present, page i filled with (i|1) & 0xff, page checksums, as
// BackgroundSnapshot writes it) is written and then read once before anything is timed: a
// restore of a recently written snapshot finds it in the page cache, and on this VM the first
// touch of fresh page cache costs far more than the copy out of it, which would measure the VM
// rather than the restore. The target memory is fresh anonymous memory, as the floor's copy-64k
// and missing-4k regions are. The restored memory is compared with the pattern (throws if it
// differs); the file is removed on every path.
import { mkdtempSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { Bitmap } from '../src/memory/bitmap.js';
import { Mapping } from '../src/kernel/index.js';
import { LazyRestore, SnapshotReader, SnapshotWriter, restoreEager, writeFully } from '../src/snapshot/index.js';
import { floorOrder, mainThreadStats, summarize } from './stats.js';
import type { RestoreMode } from './scenarios.js';
import type { ToucherData, ToucherResult } from './toucher.js';
import type { LatencyResult, RestoreEagerDetails, RestoreLazyDetails, ThroughputResult } from './types.js';
import { round } from '../src/base/index.js';

const PAGE = 4096;
/** The pattern repeats every 256 pages: page i holds (i | 1) & 0xff in every byte. */
const PERIOD = 256 * PAGE;

export interface RestoreEagerResult extends ThroughputResult {
  details: RestoreEagerDetails;
}

/** handler_*: the main thread, which serves faults and, in restore-lazy, runs the prefetcher too. */
export interface RestoreLazyResult extends LatencyResult {
  details: RestoreLazyDetails;
}

/** One period of the pattern: 256 pages, page j filled with (j | 1) & 0xff. */
function patternPeriod(): Buffer {
  const period = Buffer.alloc(PERIOD);
  for (let j = 0; j < 256; j++) period.fill((j | 1) & 0xff, j * PAGE, (j + 1) * PAGE);
  return period;
}

/** A complete snapshot of one `length`-byte block, every page present; returns its path. */
function writeBenchSnapshot(path: string, length: number, period: Buffer): void {
  const pages = length / PAGE;
  const writer = SnapshotWriter.create(path, [{ idstr: 'bench', usedLength: length, pageSize: PAGE }], { pageChecksums: true });
  try {
    const present = new Bitmap(pages);
    let sum = 0;
    for (let offset = 0; offset < length; offset += PERIOD) {
      const chunk = period.subarray(0, Math.min(PERIOD, length - offset));
      writeFully(writer.fd, chunk, writer.pageOffset(0, offset / PAGE));
      present.setRange(offset / PAGE, chunk.length / PAGE);
      sum = SnapshotReader.foldPages(sum, chunk, PAGE, offset / PAGE);
    }
    writer.finish([present], [sum]);
  } catch (error) {
    writer.fail((error as Error).message);
    throw error;
  }
}

/** Reads the block's page region once, so that the timed restore finds the page cache warm. */
function warmPageCache(reader: SnapshotReader): void {
  const b = reader.blocks[0];
  const chunk = Buffer.alloc(8 << 20);
  for (let done = 0; done < b.usedLength; ) {
    const n = readSync(reader.fd, chunk, 0, Math.min(chunk.length, b.usedLength - done), b.pagesOffset + done);
    if (n <= 0) throw new Error(`warming the page cache: read returned ${n} at ${done}`);
    done += n;
  }
}

/**
 * Touches and frees `length` bytes (as huge pages where THP allows), so that the target comes
 * from memory the kernel freed a moment ago, as the floor's copy-64k region does (copy-4k
 * freed as much just before it in the floor's process). Memory this VM has not handed out for a
 * while costs ~15 µs per 4 KiB page on first touch (the host backs it again), several times the
 * restore's own work, and on neither side is it the restore.
 */
function recycleMemory(length: number): void {
  const scratch = new Mapping(length);
  try {
    scratch.madvise(0, length, 'hugepage');
    scratch.bytes().fill(1);
  } finally {
    scratch.unmap();
  }
}

/** Throws unless the restored memory is the snapshot's pattern, page for page. */
function verifyRestored(name: string, target: Mapping, period: Buffer): void {
  const bytes = target.bytes();
  for (let offset = 0; offset < target.length; offset += PERIOD) {
    const n = Math.min(PERIOD, target.length - offset);
    if (Buffer.compare(bytes.subarray(offset, offset + n), period.subarray(0, n)) !== 0) {
      const got = bytes.subarray(offset, offset + n);
      const at = got.findIndex((v, i) => v !== period[i]);
      throw new Error(`${name}: restored memory differs from the snapshot at offset 0x${(offset + at).toString(16)} (page ${(offset + at) / PAGE | 0})`);
    }
  }
}

export async function restoreScenario(name: string, length: number, mode: RestoreMode): Promise<RestoreEagerResult | RestoreLazyResult> {
  if (length % PAGE) throw new Error(`${name}: ${length} bytes is not a whole number of pages`);
  const dir = mkdtempSync(join(tmpdir(), 'postcopy-bench-restore-'));
  let reader: SnapshotReader | undefined;
  let target: Mapping | undefined;
  try {
    const period = patternPeriod();
    const path = join(dir, 'bench.snap');
    writeBenchSnapshot(path, length, period);
    reader = SnapshotReader.open(path);
    warmPageCache(reader);
    recycleMemory(length);
    target = new Mapping(length);
    const result = mode === 'eager' ? await eager(name, reader, target) : await lazy(name, reader, target, mode === 'lazy');
    verifyRestored(name, target, period);
    return result;
  } finally {
    reader?.close();
    target?.unmap();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function eager(name: string, reader: SnapshotReader, target: Mapping): Promise<RestoreEagerResult> {
  const t0 = performance.now();
  const report = await restoreEager(reader, [target]);
  const seconds = (performance.now() - t0) / 1000;
  return {
    scenario: name,
    kind: 'throughput',
    bytes: report.bytes,
    gb_per_s: round(report.bytes / seconds / 1e9, 3),
    us_per_4k: round((seconds / (report.bytes / PAGE)) * 1e6, 3),
    details: {
      restore_ms: round(seconds * 1000),
      bytes_read: report.bytes_read,
      report_gb_per_s: report.gb_per_s,
      checksum_verified: report.checksum_verified,
    },
  };
}

async function lazy(name: string, reader: SnapshotReader, target: Mapping, prefetch: boolean): Promise<RestoreLazyResult> {
  const pages = target.length / PAGE;
  const go = new SharedArrayBuffer(4);
  const data: ToucherData = { address: target.address, length: target.length, pageSize: PAGE, order: floorOrder(pages), first: 0, stride: 1, count: pages, write: false, go };
  const worker = new Worker(join(__dirname, 'toucher.js'), { workerData: data });
  const touched = new Promise<ToucherResult>((resolve, reject) => {
    worker.on('message', (m: ToucherResult | 'ready') => m !== 'ready' && resolve(m));
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`${name}: the toucher exited with code ${code} before reporting`)));
  });
  touched.catch(() => {}); // a start-up failure is reported through `ready`
  await new Promise<void>((resolve, reject) => {
    worker.once('message', () => resolve());
    worker.once('error', reject);
  });
  // The toucher is not part of the restore: by default a failed restore ends the process
  // (exitNow), which is what a bench wants rather than a blocked toucher.
  const restore = LazyRestore.start(reader, [target], { guestThreads: 1, prefetch });
  const before = mainThreadStats();
  const flag = new Int32Array(go);
  Atomics.store(flag, 0, 1);
  Atomics.notify(flag, 0);
  const [result, report] = await Promise.all([touched, restore.finished]);
  const after = mainThreadStats();
  const all = Float64Array.from(result.latency);
  const loads = summarize(all); // sorts `all` in place
  const faulted = all.slice(all.length - Math.min(report.faults, all.length));
  const summary = summarize(faulted);
  const toucherMs = result.end - result.start;
  return {
    scenario: name,
    kind: 'latency',
    ...summary,
    faults_per_s: Math.round(summary.faults / (toucherMs / 1000)),
    handler_sleeps_per_fault: round((after.sleeps - before.sleeps) / summary.faults, 3),
    handler_cpu_us_per_fault: round((after.cpuNs - before.cpuNs) / 1e3 / summary.faults, 3),
    details: {
      prefetch,
      loads: loads.faults,
      faulted: summary.faults,
      loads_p50_us: loads.p50_us,
      loads_p99_us: loads.p99_us,
      toucher_ms: round(toucherMs),
      all_present_ms: report.all_present_ms!,
      restore_faults: report.faults,
      pages_by_fault: report.pages.by_fault,
      pages_by_prefetch: report.pages.by_prefetch,
      engine_fault_p50_us: report.latency_us.p50,
      engine_fault_p99_us: report.latency_us.p99,
      blocktime_ms: report.blocktime_ms,
      checksum_verified: report.checksum_verified,
    },
  };
}
