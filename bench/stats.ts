// Shared by the bench process and its toucher workers: the floor's page order and its
// percentile conventions, so that both sides are summarised the same way.
import { readFileSync } from 'node:fs';
import { round } from '../src/base/index.js';

/**
 * The page order of uffd-floor.c's shuffle(): Fisher–Yates driven by the same xorshift64
 * (seed 88172645463325252), so both sides touch exactly the same pages in the same order.
 * BigInt arithmetic is slow but this runs once, before anything is timed.
 */
export function floorOrder(n: number): Uint32Array {
  const v = new Uint32Array(n);
  for (let i = 0; i < n; i++) v[i] = i;
  let x = 88172645463325252n;
  for (let i = n - 1; i > 0; i--) {
    x = BigInt.asUintN(64, x ^ (x << 13n));
    x ^= x >> 7n;
    x = BigInt.asUintN(64, x ^ (x << 17n));
    const j = Number(x % BigInt(i + 1));
    const tmp = v[i];
    v[i] = v[j];
    v[j] = tmp;
  }
  return v;
}

export interface LatencySummary {
  faults: number;
  p50_us: number;
  p99_us: number;
  max_us: number;
}

/** Sorts `latencyUs` in place; p50 = v[n/2], p99 = v[floor(0.99 n)], as the floor reports them. */
export function summarize(latencyUs: Float64Array): LatencySummary {
  latencyUs.sort();
  const n = latencyUs.length;
  return {
    faults: n,
    p50_us: round(latencyUs[n >>> 1]),
    p99_us: round(latencyUs[Math.floor(n * 0.99)]),
    max_us: round(latencyUs[n - 1]),
  };
}



export interface ThreadStats {
  /** Voluntary context switches: times the thread went idle. */
  sleeps: number;
  cpuNs: number;
}

/** This process's main thread (the fault-serving one): voluntary context switches and CPU time so far. */
export function mainThreadStats(): ThreadStats {
  const dir = `/proc/self/task/${process.pid}`;
  try {
    const status = readFileSync(`${dir}/status`, 'utf8');
    const sleeps = Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1] ?? NaN);
    const cpuNs = Number(readFileSync(`${dir}/schedstat`, 'utf8').split(' ')[0]);
    return { sleeps, cpuNs };
  } catch {
    return { sleeps: NaN, cpuNs: NaN };
  }
}

/** CPU time of every thread of this process so far (user + system), in ms. */
export function processCpuMs(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1000;
}
