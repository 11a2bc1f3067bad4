// The control block: a SharedArrayBuffer owned by the controller, shared with every worker.
// It is control and statistics, not guest state: nothing in it is needed to resume the
// workload (that is all in guest memory), so it is never migrated.
//
// Int32 words (used with Atomics):
//   C_CMD    RUN | PAUSE | STOP, read by workers between operations
//   C_EPOCH  bumped after every command change; workers Atomics.wait on it while parked
//   per thread at C_THREADS + t * 2: state (T_*), epoch at which it parked
// Float64 per thread at byte STATS_OFFSET + t * 64 (written by that worker only):
//   ops, writes, reads, bad pages seen, reads skipped, ledger write count, op target

import { MAX_THREADS } from './layout.js';

export const CMD_RUN = 0;
export const CMD_PAUSE = 1;
export const CMD_STOP = 2;

export const C_CMD = 0;
export const C_EPOCH = 1;
export const C_THREADS = 16;

// a thread's state word is 0 until it runs
export const T_RUNNING = 1;
export const T_PARKED = 2;
export const T_STOPPED = 3;
/** Stopped on its own after finding corruption it must not write over (reported as 'failed'). */
export const T_FAILED = 4;

export const STATS_OFFSET = 1024;
export const STATS_STRIDE = 8; // doubles per thread
export const F_OPS = 0;
export const F_WRITES = 1;
export const F_READS = 2;
export const F_BAD = 3;
export const F_SKIPPED = 4;
export const F_LEDGER_WRITES = 5;
/** The thread parks once its op count reaches this (Infinity = no limit). Set by the controller. */
export const F_TARGET = 6;

export const CONTROL_BYTES = STATS_OFFSET + MAX_THREADS * STATS_STRIDE * 8;

export interface ControlViews {
  ctl: Int32Array;
  stats: Float64Array;
}

export function controlViews(sab: SharedArrayBuffer): ControlViews {
  return { ctl: new Int32Array(sab, 0, STATS_OFFSET / 4), stats: new Float64Array(sab, STATS_OFFSET) };
}

export function stateWord(t: number): number {
  return C_THREADS + t * 2;
}

export function parkEpochWord(t: number): number {
  return C_THREADS + t * 2 + 1;
}

export function statWord(t: number, f: number): number {
  return t * STATS_STRIDE + f;
}
