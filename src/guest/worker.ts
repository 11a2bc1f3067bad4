// Worker entry of the reference guest (dist/guest/worker.js). One file, several modes:
// 'run' is a guest thread; 'setup' and 'verify' are one-shot tasks that touch guest memory
// so that the main thread never has to (on real guest memory any access may block in a
// userfaultfd fault that only the main thread can serve).

import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import {
  CMD_RUN,
  CMD_STOP,
  C_CMD,
  C_EPOCH,
  F_BAD,
  F_LEDGER_WRITES,
  F_OPS,
  F_READS,
  F_SKIPPED,
  F_TARGET,
  F_WRITES,
  T_FAILED,
  T_PARKED,
  T_RUNNING,
  T_STOPPED,
  controlViews,
  parkEpochWord,
  stateWord,
  statWord,
} from './control.js';
import { GuestMemory, openGuestMemory } from './memory.js';
import { verify, VerifyOptions } from './verify.js';
import { GuestParams, OP_BAD, OP_CORRUPT, OP_SKIPPED, OP_WRITE, ThreadRunner, setupLedger } from './workload.js';
import { readLedgerHeader, readSlot } from './ledger.js';

export type WorkerTask =
  | { postcopyGuest: 1; mode: 'setup'; memory: GuestMemory; params: GuestParams | null }
  | { postcopyGuest: 1; mode: 'verify'; memory: GuestMemory; opts: VerifyOptions }
  | {
      postcopyGuest: 1;
      mode: 'run';
      memory: GuestMemory;
      control: SharedArrayBuffer;
      thread: number;
      readOnly: boolean;
      rate: number;
    };

export type WorkerMessage =
  | { type: 'result'; value: unknown }
  | { type: 'error'; name: string; message: string }
  | { type: 'ready'; thread: number }
  | { type: 'parked'; thread: number; epoch: number }
  | { type: 'stopped'; thread: number; epoch: number }
  | { type: 'bad'; thread: number; page: number; reason: string }
  | { type: 'failed'; thread: number; page: number; reason: string };

function post(m: WorkerMessage): void {
  parentPort!.postMessage(m);
}

/** A guest thread's state: its runner, the control words, its stat words and its own counters. */
interface GuestThread {
  t: number;
  runner: ThreadRunner;
  ctl: Int32Array;
  stats: Float64Array;
  /** The first of this thread's stat words. */
  sw: number;
  /** Each bad page is reported once per thread; all are counted. */
  reported: Set<number>;
  /** This thread's counters (it alone writes their stat words), kept locally. */
  ops: number;
  writes: number;
  reads: number;
}

function runThread(task: Extract<WorkerTask, { mode: 'run' }>): void {
  const thread = attachThread(task);
  const { ctl, stats, sw } = thread;
  const interval = task.rate > 0 ? 1000 / task.rate : 0;
  let next = performance.now();
  for (;;) {
    // Epoch before command: if the command changes after we read it, the epoch we wait on
    // has already moved and the wait returns at once, so a wake-up is never lost.
    const epoch = Atomics.load(ctl, C_EPOCH);
    const cmd = Atomics.load(ctl, C_CMD);
    if (cmd === CMD_RUN && thread.ops < stats[sw + F_TARGET]) {
      if (!stepOnce(thread)) return;
      if (interval > 0) next = pace(ctl, epoch, next + interval);
      continue;
    }
    if (!park(thread, cmd, epoch)) return;
    next = performance.now();
  }
}

/** Opens the guest's memory and ledger for thread `task.thread` and says it is ready. */
function attachThread(task: Extract<WorkerTask, { mode: 'run' }>): GuestThread {
  const i32 = new Int32Array(openGuestMemory(task.memory));
  // The header only: the other threads may be rewriting their slots already.
  const head = readLedgerHeader(i32);
  if (head.kind !== 'ok') throw new Error(head.kind === 'bad' ? head.reason : 'guest ledger is blank');
  const t = task.thread;
  const runner = new ThreadRunner(i32, head.info, t, task.readOnly);
  const { ctl, stats } = controlViews(task.control);
  const sw = statWord(t, 0);
  // The ledger's count, also for a read-only thread (whose runner has its own reader slot).
  stats[sw + F_LEDGER_WRITES] = readSlot(i32, t).writes;
  post({ type: 'ready', thread: t });
  return { t, runner, ctl, stats, sw, reported: new Set<number>(), ops: stats[sw + F_OPS], writes: stats[sw + F_WRITES], reads: stats[sw + F_READS] };
}

/** One operation of the workload, counted; false if the thread found corruption and has failed. */
function stepOnce(thread: GuestThread): boolean {
  const { runner, stats, sw } = thread;
  const r = runner.step();
  if (r === OP_CORRUPT) {
    failThread(thread.ctl, thread.t, runner.badPage, runner.badReason);
    return false;
  }
  stats[sw + F_OPS] = ++thread.ops;
  if (r === OP_WRITE) {
    stats[sw + F_WRITES] = ++thread.writes;
    stats[sw + F_LEDGER_WRITES] = runner.writes;
    return true;
  }
  stats[sw + F_READS] = ++thread.reads;
  if (r === OP_SKIPPED) stats[sw + F_SKIPPED]++;
  else if (r === OP_BAD) {
    stats[sw + F_BAD]++;
    if (!thread.reported.has(runner.badPage)) {
      thread.reported.add(runner.badPage);
      post({ type: 'bad', thread: thread.t, page: runner.badPage, reason: runner.badReason });
    }
  }
  return true;
}

/** Waits until `next` (the time of the next operation at the set rate); returns it, or now after a long stall. */
function pace(ctl: Int32Array, epoch: number, next: number): number {
  const now = performance.now();
  // Sleep on the epoch word so that a pause or stop interrupts the sleep.
  if (next > now) Atomics.wait(ctl, C_EPOCH, epoch, next - now);
  else if (now - next > 1000) return now; // long stall (e.g. a page fault): no burst to catch up
  return next;
}

/**
 * Parks between operations (nothing is half-written here) until the epoch moves; false if the
 * command was stop, or if the thread's slot was damaged while it was parked (it has failed).
 */
function park(thread: GuestThread, cmd: number, epoch: number): boolean {
  const { ctl, t, runner } = thread;
  runner.save();
  Atomics.store(ctl, parkEpochWord(t), epoch);
  Atomics.store(ctl, stateWord(t), cmd === CMD_STOP ? T_STOPPED : T_PARKED);
  post({ type: cmd === CMD_STOP ? 'stopped' : 'parked', thread: t, epoch });
  if (cmd === CMD_STOP) return false;
  // No timeout: a parked thread waits as long as it takes.
  while (Atomics.load(ctl, C_EPOCH) === epoch) Atomics.wait(ctl, C_EPOCH, epoch);
  const damage = runner.slotDamage();
  if (damage !== null) {
    failThread(ctl, t, 0, damage);
    return false;
  }
  Atomics.store(ctl, stateWord(t), T_RUNNING);
  return true;
}

/** Stop on corruption this thread must not write over, leaving it as found: the controller fails the guest. */
function failThread(ctl: Int32Array, t: number, page: number, reason: string): void {
  Atomics.store(ctl, stateWord(t), T_FAILED);
  post({ type: 'failed', thread: t, page, reason });
}

function main(task: WorkerTask): void {
  if (task.mode === 'run') return runThread(task);
  try {
    let value: unknown;
    if (task.mode === 'setup') value = setupLedger(new Int32Array(openGuestMemory(task.memory)), task.params);
    else value = verify(openGuestMemory(task.memory), task.opts);
    post({ type: 'result', value });
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    post({ type: 'error', name: err.name, message: err.message });
  }
}

const data = workerData as WorkerTask | undefined;
if (!isMainThread && parentPort && data && data.postcopyGuest === 1) main(data);
