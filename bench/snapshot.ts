// The project's side of uffd-floor.c's snapshot-wp: a populated region, one writer thread
// writing one byte per page in the floor's random order (timing each write with its own
// clock; a write slower than 2 µs faulted), and a BackgroundSnapshot of the region into a
// file. GB/s = region size / time from protection until every page is saved; the file is
// checked against the memory at the instant of protection. `snapshot` runs with the engine's
// defaults (a write fault saves the unsaved pages around it too); `snapshot-1page` saves only
// the faulting page, as QEMU and the floor do.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { Mapping } from '../src/kernel/index.js';
import { BackgroundSnapshot, SnapshotReader } from '../src/snapshot/index.js';
import { floorOrder, summarize } from './stats.js';
import type { ToucherData, ToucherResult } from './toucher.js';
import type { SnapshotDetails, ThroughputResult } from './types.js';
import { round } from '../src/base/index.js';

const PAGE = 4096;
const FAULTED_US = 2;

export interface SnapshotResult extends ThroughputResult {
  details: SnapshotDetails;
}

export async function snapshotScenario(name: string, length: number, claimPages?: number): Promise<SnapshotResult> {
  const dir = mkdtempSync(join(tmpdir(), 'postcopy-bench-snapshot-'));
  const mapping = new Mapping(length);
  try {
    const bytes = mapping.bytes();
    for (let o = 0; o < length; o += PAGE) bytes.fill((o / PAGE) | 1, o, o + PAGE);
    const pages = length / PAGE;
    const go = new SharedArrayBuffer(4);
    const stop = new SharedArrayBuffer(4);
    const data: ToucherData = { address: mapping.address, length, pageSize: PAGE, order: floorOrder(pages), first: 0, stride: 1, count: pages, write: true, go, stop };
    const worker = new Worker(join(__dirname, 'toucher.js'), { workerData: data });
    const result = new Promise<ToucherResult>((resolve, reject) => {
      worker.on('message', (m: ToucherResult | 'ready') => m !== 'ready' && resolve(m));
      worker.once('error', reject);
    });
    await new Promise((resolve) => worker.once('message', resolve));
    let before: Buffer | undefined;
    const path = join(dir, 'bench.snap');
    const report = await BackgroundSnapshot.take({
      path,
      blocks: [{ idstr: 'bench', mapping }],
      claimPages,
      pauseGuest: () => {},
      resumeGuest: () => {
        const flag = new Int32Array(go);
        Atomics.store(flag, 0, 1);
        Atomics.notify(flag, 0);
      },
      // The reference copy for the check below; not part of the timed snapshot.
      atProtection: () => void (before = Buffer.from(bytes.slice())),
    });
    Atomics.store(new Int32Array(stop), 0, 1);
    const touched = await result;
    const reader = SnapshotReader.open(path);
    const image = Buffer.alloc(length);
    reader.readPages(0, 0, pages, image);
    reader.close();
    if (!image.equals(before!)) throw new Error(`${name}: the snapshot differs from memory at the instant of protection`);
    const faulted = touched.latency.filter((us) => us > FAULTED_US);
    const summary = summarize(faulted);
    return {
      scenario: name,
      kind: 'throughput',
      bytes: length,
      gb_per_s: report.gb_per_s,
      us_per_4k: round((report.seconds / pages) * 1e6, 3),
      details: {
        write_faults: summary.faults,
        write_fault_p50_us: summary.p50_us,
        write_fault_p99_us: summary.p99_us,
        pause_ms: report.pause_ms,
        engine_fault_p50_us: report.write_faults.p50_us,
        pages_by_fault: report.pages.by_fault,
      },
    };
  } finally {
    mapping.unmap();
    rmSync(dir, { recursive: true, force: true });
  }
}
