// The project's side of uffd-floor.c's plain scenarios, with the same sizes and access
// pattern: fault service (missing-4k, missing-4k-2t, wp-4k, huge-2m) and placement throughput
// without faults (copy-*, zeropage-4k). Fault scenarios serve faults on this (the main)
// thread's event loop through the kernel layer's onEvents/try* hot path, as the project does;
// touchers are worker threads.
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import {
  Mapping,
  Userfaultfd,
  type EventBatch,
  type Feature,
} from '../src/kernel/index.js';
import type { FaultSpec, PlaceSpec } from './scenarios.js';
import { floorOrder, mainThreadStats, summarize } from './stats.js';
import type { ToucherData, ToucherResult } from './toucher.js';
import type { Result } from './types.js';
import { round } from '../src/base/index.js';

const PAGE = 4096;
const EEXIST = 17;

// ---- fault service -------------------------------------------------------------------

export async function faultScenario(name: string, length: number, spec: FaultSpec): Promise<Result> {
  let mapping: Mapping;
  try {
    mapping = new Mapping(length, { huge: spec.huge });
  } catch (error) {
    return { scenario: name, skipped: `mmap: ${(error as Error).message}` };
  }
  const { base, pageSize } = mapping;
  const features: Feature[] = spec.wp ? ['PAGEFAULT_FLAG_WP'] : [];
  const uffd = Userfaultfd.open({ features });
  const src = new Uint8Array(pageSize).fill(0x5a);
  const save = new Uint8Array(pageSize);
  const pages = length / pageSize;
  let failed = 0;
  let lastError = 0;

  if (spec.wp) {
    mapping.bytes().fill(1); // populate: write-protect skips empty PTEs
    uffd.register(base, length, 'wp');
    uffd.writeProtect(base, length);
  } else {
    uffd.register(base, length, 'missing');
  }

  let handler: (batch: EventBatch) => void;
  if (spec.wp) {
    // One view per page made now, so that saving a page at fault time allocates nothing
    // (subarray() would allocate a view per fault). set() between same-typed arrays is a memmove.
    const whole = mapping.bytes();
    const views: Uint8Array[] = new Array(pages);
    for (let p = 0; p < pages; p++) views[p] = whole.subarray(p * pageSize, (p + 1) * pageSize);
    handler = (batch) => {
      for (let i = 0; i < batch.count; i++) {
        if (!batch.isPagefault(i)) continue;
        const address = batch.address(i);
        save.set(views[(address - base) / pageSize]);
        const status = uffd.tryWriteProtect(address, pageSize, 0);
        if (status < 0) {
          failed++;
          lastError = status;
        }
      }
    };
  } else if (spec.huge) {
    handler = (batch) => {
      for (let i = 0; i < batch.count; i++) {
        if (!batch.isPagefault(i)) continue;
        const offset = batch.address(i) - base;
        const status = uffd.tryCopy(base + (offset - (offset % pageSize)), src, pageSize);
        if (status < 0 && status !== -EEXIST) {
          failed++;
          lastError = status;
        }
      }
    };
  } else {
    // 4 KiB MISSING: the kernel reports page-aligned addresses (no EXACT_ADDRESS asked).
    handler = (batch) => {
      for (let i = 0; i < batch.count; i++) {
        if (!batch.isPagefault(i)) continue;
        const status = uffd.tryCopy(batch.address(i), src, pageSize);
        if (status < 0 && status !== -EEXIST) {
          failed++;
          lastError = status;
        }
      }
    };
  }

  const order = floorOrder(pages);
  const perThread = Math.floor(pages / spec.threads);
  const go = new SharedArrayBuffer(4);
  const results: Promise<ToucherResult>[] = [];
  const ready: Promise<void>[] = [];
  for (let t = 0; t < spec.threads; t++) {
    const data: ToucherData = {
      address: mapping.address,
      length,
      pageSize,
      order,
      first: t,
      stride: spec.threads,
      count: perThread,
      write: spec.wp,
      go,
    };
    const worker = new Worker(join(__dirname, 'toucher.js'), { workerData: data });
    ready.push(new Promise((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
    }));
    results.push(new Promise((resolve, reject) => {
      worker.on('message', (m: ToucherResult | 'ready') => {
        if (m !== 'ready') resolve(m);
      });
      worker.on('error', reject);
      worker.on('exit', (code) => reject(new Error(`toucher ${t} exited with code ${code} before reporting`)));
    }));
  }
  const finished = Promise.all(results);
  finished.catch(() => {}); // a start-up failure is reported through `ready`
  await Promise.all(ready);

  uffd.onEvents(handler);
  const before = mainThreadStats();
  const flag = new Int32Array(go);
  Atomics.store(flag, 0, 1);
  Atomics.notify(flag, 0);
  const done = await finished;
  const after = mainThreadStats();

  uffd.stopEvents();
  uffd.close();
  mapping.unmap();
  if (failed) throw new Error(`${name}: ${failed} faults failed to resolve (last status ${lastError})`);

  const latency = new Float64Array(perThread * spec.threads);
  done.forEach((r, t) => latency.set(r.latency, t * perThread));
  const seconds = (Math.max(...done.map((r) => r.end)) - Math.min(...done.map((r) => r.start))) / 1000;
  return {
    scenario: name,
    kind: 'latency',
    ...summarize(latency),
    faults_per_s: Math.round(latency.length / seconds),
    handler_sleeps_per_fault: round((after.sleeps - before.sleeps) / latency.length, 3),
    handler_cpu_us_per_fault: round((after.cpuNs - before.cpuNs) / 1e3 / latency.length, 3),
  };
}

// ---- placement throughput, no faults ---------------------------------------------------

export function placeScenario(name: string, length: number, spec: PlaceSpec): Result {
  const uffd = Userfaultfd.open();
  const mapping = new Mapping(length);
  const src = new Uint8Array(spec.run).fill(0x33);
  const base = mapping.base;
  const run = spec.run;
  uffd.register(base, length, 'missing');
  let status = 0;
  let offset = 0;
  const t0 = performance.now();
  if (spec.zero) {
    for (; offset < length; offset += run) if ((status = uffd.tryZeropage(base + offset, run)) < 0) break;
  } else {
    for (; offset < length; offset += run) if ((status = uffd.tryCopy(base + offset, src, run)) < 0) break;
  }
  const seconds = (performance.now() - t0) / 1000;
  uffd.close();
  mapping.unmap();
  if (status < 0) throw new Error(`${name}: placement at offset ${offset} failed with status ${status}`);
  return {
    scenario: name,
    kind: 'throughput',
    bytes: length,
    gb_per_s: round(length / seconds / 1e9, 3),
    us_per_4k: round((seconds / (length / PAGE)) * 1e6, 3),
  };
}
