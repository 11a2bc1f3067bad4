// Bench toucher: a worker thread standing in for a guest vCPU. It attaches to the mapping,
// says it is ready, waits on a shared flag (so worker start-up is never timed), then loads
// from (or stores to) one byte per page in the given order, timing each access with its own
// clock, exactly as uffd-floor.c's touch() does. Nothing is allocated inside the loop: the
// latencies go into a Float64Array allocated up front and transferred back at the end.
import { parentPort, workerData } from 'node:worker_threads';
import { attachMapping } from '../src/kernel/index.js';

export interface ToucherData {
  address: bigint;
  length: number;
  pageSize: number;
  /** The whole page order; this toucher takes order[first], order[first + stride], ... */
  order: Uint32Array;
  first: number;
  stride: number;
  count: number;
  write: boolean;
  /** Int32Array over it: [0] becomes 1 (and is notified) to start. */
  go: SharedArrayBuffer;
  /** Int32Array over it: writes stop once [0] is non-zero (the snapshot scenario's end). */
  stop?: SharedArrayBuffer;
}

export interface ToucherResult {
  /** Microseconds per access. */
  latency: Float64Array;
  /** Loop start and end, ms on the shared clock (performance.timeOrigin + now). */
  start: number;
  end: number;
  sink: number;
}

// One function per access kind, so each loop stays monomorphic: one Int8Array access and
// two clock reads per page. `sink` keeps the loads alive.
function readPages(memory: Int8Array, order: Uint32Array, first: number, stride: number, count: number,
                   pageSize: number, latency: Float64Array): number {
  const perf = performance;
  let sink = 0;
  for (let i = 0; i < count; i++) {
    const index = order[first + i * stride] * pageSize;
    const t0 = perf.now();
    sink ^= memory[index];
    latency[i] = perf.now() - t0;
  }
  return sink;
}

function writePages(memory: Int8Array, order: Uint32Array, first: number, stride: number, count: number,
                    pageSize: number, latency: Float64Array): number {
  const perf = performance;
  for (let i = 0; i < count; i++) {
    const index = order[first + i * stride] * pageSize;
    const t0 = perf.now();
    memory[index] = 1;
    latency[i] = perf.now() - t0;
  }
  return 0;
}

/** writePages until `stop` is set, as uffd-floor.c's snapshot writer does; returns pages written. */
function writePagesUntil(memory: Int8Array, order: Uint32Array, first: number, stride: number, count: number,
                         pageSize: number, latency: Float64Array, stop: Int32Array): number {
  const perf = performance;
  let i = 0;
  for (; i < count && Atomics.load(stop, 0) === 0; i++) {
    const index = order[first + i * stride] * pageSize;
    const t0 = perf.now();
    memory[index + 1] = memory[index + 1] + 1;
    latency[i] = perf.now() - t0;
  }
  return i;
}

if (parentPort && workerData?.go) {
  const d = workerData as ToucherData;
  const memory = new Int8Array(attachMapping(d.address, d.length));
  const latency = new Float64Array(d.count);
  const go = new Int32Array(d.go);
  parentPort.postMessage('ready');
  Atomics.wait(go, 0, 0);
  const start = performance.now();
  let sink = 0;
  let done = d.count;
  if (d.stop) done = writePagesUntil(memory, d.order, d.first, d.stride, d.count, d.pageSize, latency, new Int32Array(d.stop));
  else if (d.write) writePages(memory, d.order, d.first, d.stride, d.count, d.pageSize, latency);
  else sink = readPages(memory, d.order, d.first, d.stride, d.count, d.pageSize, latency);
  const end = performance.now();
  for (let i = 0; i < latency.length; i++) latency[i] *= 1000; // ms -> us, after the clock stops
  const result: ToucherResult = {
    latency: done < d.count ? latency.slice(0, done) : latency,
    start: performance.timeOrigin + start,
    end: performance.timeOrigin + end,
    sink,
  };
  parentPort.postMessage(result, [result.latency.buffer as ArrayBuffer]);
}
