// The controller of the reference guest, on the main thread. It never touches guest memory:
// ledger setup, verification and the workload all run in workers, because on real guest
// memory an access may block in a userfaultfd fault that only the main thread can serve.

import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { PostcopyError } from '../base/index.js';
import {
  CMD_PAUSE,
  CMD_RUN,
  CMD_STOP,
  CONTROL_BYTES,
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
  T_STOPPED,
  controlViews,
  parkEpochWord,
  stateWord,
  statWord,
} from './control.js';
import { Pattern } from './layout.js';
import { GuestMemory, checkGuestMemory } from './memory.js';
import { BadPage, VerifyOptions, VerifyReport } from './verify.js';
import { WORKER_LIMITS, WORKER_PATH, readGuestInfo, runTask, verifyInWorker } from './tasks.js';
import type { WorkerMessage, WorkerTask } from './worker.js';
import { GuestParams, checkParams } from './workload.js';
import { LedgerInfo } from './ledger.js';


/** How long stop() on a failed guest waits for its threads to finish their operation. */
const FAILED_STOP_GRACE_MS = 1000;
/** A word nobody notifies: `hold` sleeps on it for a few microseconds at a time. */
const HOLD_SLEEP = new Int32Array(new SharedArrayBuffer(4));

export interface RunOptions {
  /** Per-thread budget: each thread parks after this many operations (default: no limit). */
  ops?: number;
  /** Operations per second per thread; 0 = flat out (default). */
  rate?: number;
  /** Start with every thread parked (call resume/runOps/runFor to go). */
  paused?: boolean;
}

export interface GuestOptions extends RunOptions {
  memory: GuestMemory;
  /** 1..64, default 4. */
  threads?: number;
  /** Default 'random'. */
  pattern?: Pattern;
  /** u32, default 1. */
  seed?: number;
  /** Reader threads among `threads` for a write pattern (default from readerFraction, else 0). */
  readers?: number;
  /** Fraction of reader threads for a write pattern; at least one writer is kept. */
  readerFraction?: number;
  /** Hot set = 1/hotDivisor of a thread's pages (default 16)... */
  hotDivisor?: number;
  /** ...and gets hotPercent of its operations (default 90). */
  hotPercent?: number;
  /** Write every data page this many times at initialisation (default 0: fresh, zero-page heavy). */
  fill?: number;
}

export interface ResumeOptions extends RunOptions {
  memory: GuestMemory;
  /**
   * Every thread reads (over all pages) and nothing at all is written to guest memory, not
   * even the ledger: checks a copy under load without dirtying it.
   */
  readOnly?: boolean;
}

export interface ThreadStats {
  thread: number;
  ops: number;
  writes: number;
  reads: number;
  /** Bad pages seen by this reader (every detection, not distinct pages). */
  errors: number;
  /** Reads given up because a writer kept the page busy. */
  skipped: number;
  /** This thread's write count in the ledger (absolute, across resumes). */
  ledgerWrites: number;
}

export interface GuestStats {
  threads: number;
  /** Operations by this Guest instance (since start/resumeFrom). */
  ops: number;
  writes: number;
  reads: number;
  errors: number;
  skipped: number;
  /** Sum of the ledger's write counts: pass it as verify's expectWrites on a copy. */
  ledgerWrites: number;
  perThread: ThreadStats[];
}

export interface BadPageReport extends BadPage {
  thread: number;
}

/** A writer thread found the page it was about to write already corrupt, and stopped. */
export class GuestCorruptionError extends PostcopyError {
  constructor(
    readonly thread: number,
    /** The corrupt page (0: the thread's ledger slot). */
    readonly page: number,
    reason: string,
  ) {
    super('ERR_GUEST_CORRUPTION', `guest thread ${thread}: page ${page} is corrupt before write: ${reason}`);
    this.name = 'GuestCorruptionError';
  }
}

type GuestState = 'running' | 'paused' | 'stopped' | 'failed';

interface Waiter {
  done: () => boolean;
  resolve: () => void;
  reject: (e: Error) => void;
}

/**
 * The reference guest: worker threads running a workload whose whole state lives in guest
 * memory. Events: 'bad' (BadPageReport) when a reader finds a bad page (once per page per
 * thread), 'threadError' (Error) when a thread dies or a writer finds the page it is about to
 * write already corrupt (GuestCorruptionError).
 *
 * After such a failure every thread is told to stop, so that memory stays as the failure
 * found it, and the guest stays failed: `status` is 'failed' (also after stop()), `errors`
 * holds the thread errors, commands throw the first one. verify() still checks memory on a
 * failed (and stopped) guest, but its report is never ok: the guest's own findings (thread
 * errors, then pages that readers reported bad) come first in `badPages` and count in `bad`.
 */
export class Guest extends EventEmitter {
  /** Guests whose workers have not been terminated yet (including ones still starting). */
  private static readonly live = new Set<Guest>();
  private readonly control = new SharedArrayBuffer(CONTROL_BYTES);
  private readonly ctl: Int32Array;
  private readonly st: Float64Array;
  private readonly workers: Worker[] = [];
  private readonly exited: boolean[] = [];
  private waiters: Waiter[] = [];
  private state: GuestState = 'running';
  private stopping = false;
  private readonly bad: BadPageReport[] = [];
  /** Errors of threads that died (the guest is 'failed' after the first). */
  readonly errors: Error[] = [];

  private constructor(
    readonly memory: GuestMemory,
    readonly info: LedgerInfo,
    readonly readOnly: boolean,
  ) {
    super();
    Guest.live.add(this);
    const v = controlViews(this.control);
    this.ctl = v.ctl;
    this.st = v.stats;
  }

  /**
   * Start a guest on `memory`: a blank ledger is initialised (after `fill` passes) from the
   * options, an existing one must match them. Both happen in a worker.
   */
  static async start(o: GuestOptions): Promise<Guest> {
    const dataPages = checkGuestMemory(o.memory) - 1;
    const threads = o.threads ?? 4;
    const pattern = o.pattern ?? 'random';
    let readers = pattern === 'read' ? threads : (o.readers ?? Math.round(threads * (o.readerFraction ?? 0)));
    if (pattern !== 'read' && o.readers === undefined) readers = Math.min(readers, threads - 1);
    const params: GuestParams = {
      pattern,
      threads,
      readers,
      seed: o.seed ?? 1,
      hotDivisor: o.hotDivisor ?? 16,
      hotPercent: o.hotPercent ?? 90,
      fill: o.fill ?? 0,
    };
    checkParams(params, dataPages); // fail fast, before any worker
    const info = await runTask<LedgerInfo>({ postcopyGuest: 1, mode: 'setup', memory: o.memory, params });
    return Guest.launch(o.memory, info, o, false);
  }

  /** Continue the workload recorded in `memory` (e.g. a migrated copy) with fresh threads. */
  static async resumeFrom(o: ResumeOptions): Promise<Guest> {
    const info = await readGuestInfo(o.memory);
    return Guest.launch(o.memory, info, o, o.readOnly ?? false);
  }

  private static async launch(memory: GuestMemory, info: LedgerInfo, o: RunOptions, readOnly: boolean): Promise<Guest> {
    const ops = o.ops ?? Infinity;
    const rate = o.rate ?? 0;
    if (!(ops >= 0)) throw new RangeError(`ops must be >= 0, got ${o.ops}`);
    if (!(rate >= 0) || !Number.isFinite(rate)) throw new RangeError(`rate must be a finite number >= 0, got ${o.rate}`);
    const g = new Guest(memory, info, readOnly);
    for (let t = 0; t < info.threads; t++) g.st[statWord(t, F_TARGET)] = ops;
    g.ctl[C_CMD] = o.paused ? CMD_PAUSE : CMD_RUN;
    if (o.paused) g.state = 'paused';
    let ready = 0;
    for (let t = 0; t < info.threads; t++) {
      const task: WorkerTask = { postcopyGuest: 1, mode: 'run', memory, control: g.control, thread: t, readOnly, rate };
      const w = new Worker(WORKER_PATH, { workerData: task, resourceLimits: WORKER_LIMITS });
      g.workers.push(w);
      g.exited.push(false);
      w.on('message', (m: WorkerMessage) => {
        if (m.type === 'ready') ready++;
        else if (m.type === 'bad') g.onBad(m);
        else if (m.type === 'failed') g.fail(t, new GuestCorruptionError(t, m.page, m.reason));
        g.poke();
      });
      w.on('error', (e) => g.fail(t, e));
      w.on('exit', (code) => {
        g.exited[t] = true;
        if (!g.stopping && !g.leftWorkload(t)) {
          g.fail(t, new Error(`guest thread ${t} exited unexpectedly with code ${code}`));
        }
        g.poke();
      });
    }
    try {
      await g.waitFor(() => ready === info.threads && (!o.paused || g.allParked()));
    } catch (e) {
      await g.terminate();
      throw e;
    }
    return g;
  }

  /**
   * Terminate the workers of every guest of this process, including guests still starting
   * or stuck (e.g. a thread blocked forever in a fault after a failed migration). For test
   * harnesses: live workers keep the process alive.
   */
  static async terminateAll(): Promise<void> {
    await Promise.all([...Guest.live].map((g) => g.terminate()));
  }

  get threads(): number {
    return this.info.threads;
  }

  get status(): GuestState {
    return this.state;
  }

  /** Park every thread between two operations; resolves when all are parked. */
  async pause(): Promise<void> {
    this.command(CMD_PAUSE);
    await this.waitFor(() => this.allParked());
  }

  /** Let every thread run without an op limit. */
  resume(): void {
    for (let t = 0; t < this.threads; t++) this.st[statWord(t, F_TARGET)] = Infinity;
    this.command(CMD_RUN);
  }

  /**
   * Every thread performs `n` more operations, then parks; resolves when all are parked.
   * Meant from a paused guest (from a running one, "more" counts from the moment of the call).
   */
  async runOps(n: number): Promise<void> {
    if (!Number.isInteger(n) || n < 0) throw new RangeError(`runOps: n must be an integer >= 0, got ${n}`);
    for (let t = 0; t < this.threads; t++) this.st[statWord(t, F_TARGET)] = this.st[statWord(t, F_OPS)] + n;
    this.command(CMD_RUN);
    await this.waitFor(() => this.allParked());
  }

  /** Run for about `ms` milliseconds, then pause. */
  async runFor(ms: number): Promise<void> {
    this.resume();
    await new Promise((r) => setTimeout(r, ms));
    await this.pause();
  }

  /**
   * Runs `critical` with every thread parked between two operations, then lets them run on:
   * synchronous (this thread waits for the others in Atomics.wait, at most `timeoutMs`), for
   * the instant a dirty log must read and re-arm with no write in between. A guest that is not
   * running is still already.
   */
  hold(critical: () => void, timeoutMs = 5000): void {
    if (this.state !== 'running') return critical();
    this.broadcast(CMD_PAUSE);
    try {
      const deadline = performance.now() + timeoutMs;
      while (!this.allParked()) {
        if (performance.now() > deadline) throw new Error(`guest.hold: the threads did not park within ${timeoutMs} ms`);
        Atomics.wait(HOLD_SLEEP, 0, 0, 0.05);
      }
      critical();
    } finally {
      this.broadcast(CMD_RUN);
    }
  }

  /** Resolves when every thread is parked (e.g. after its `ops` budget), without commanding anything. */
  async whenParked(): Promise<void> {
    await this.waitFor(() => this.allParked());
  }

  /** True when every thread is parked at the current command (safe to verify or copy memory). */
  allParked(): boolean {
    const epoch = Atomics.load(this.ctl, C_EPOCH);
    for (let t = 0; t < this.threads; t++) {
      const s = Atomics.load(this.ctl, stateWord(t));
      if ((s !== T_PARKED && s !== T_STOPPED) || Atomics.load(this.ctl, parkEpochWord(t)) !== epoch) return false;
    }
    return true;
  }

  stats(): GuestStats {
    const perThread: ThreadStats[] = [];
    const sum: GuestStats = { threads: this.threads, ops: 0, writes: 0, reads: 0, errors: 0, skipped: 0, ledgerWrites: 0, perThread };
    for (let t = 0; t < this.threads; t++) {
      const f = (k: number): number => this.st[statWord(t, k)];
      const s: ThreadStats = {
        thread: t,
        ops: f(F_OPS),
        writes: f(F_WRITES),
        reads: f(F_READS),
        errors: f(F_BAD),
        skipped: f(F_SKIPPED),
        ledgerWrites: f(F_LEDGER_WRITES),
      };
      perThread.push(s);
      sum.ops += s.ops;
      sum.writes += s.writes;
      sum.reads += s.reads;
      sum.errors += s.errors;
      sum.skipped += s.skipped;
      sum.ledgerWrites += s.ledgerWrites;
    }
    return sum;
  }

  /** Bad pages reported by readers (first 1000). */
  badPages(): BadPageReport[] {
    return this.bad.slice();
  }

  /**
   * Verify this guest's memory in a worker. The guest must be parked or stopped. The report
   * of a guest that saw corruption itself (a failed thread, a bad page seen by a reader) is
   * never ok, whatever memory looks like now.
   */
  async verify(opts: VerifyOptions = {}): Promise<VerifyReport> {
    const quiet = this.stopping || this.allParked() || (this.state === 'failed' && this.allThreadsDone());
    if (!quiet) throw new Error('guest.verify: pause or stop the guest first (threads are running)');
    return this.withOwnFindings(await verifyInWorker(this.memory, opts), opts.maxReport ?? 16);
  }

  /** Park every thread, then end the workers. The memory is left consistent. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    if (this.state === 'failed') return this.stopAfterFailure();
    this.command(CMD_STOP);
    try {
      await this.waitFor(() => this.allThreadsDone());
    } finally {
      await this.terminate();
    }
  }

  /**
   * End the workers now, without parking: a thread may be mid-write (its page left busy and
   * the ledger one write behind). For failure tests and cleanup only.
   */
  async terminate(): Promise<void> {
    Guest.live.delete(this);
    this.stopping = true;
    if (this.state !== 'failed') this.state = 'stopped';
    await Promise.all(this.workers.map((w) => w.terminate()));
    // Threads blocked in a wait will never answer now.
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w.resolve();
  }

  private command(cmd: number): void {
    if (this.state === 'stopped') throw new Error('guest is stopped');
    if (this.state === 'failed') throw this.errors[0];
    this.broadcast(cmd);
    this.state = cmd === CMD_RUN ? 'running' : cmd === CMD_PAUSE ? 'paused' : this.state;
    // A newer command supersedes older waits: they resolve (not reject, so that an
    // unawaited pause() followed by stop() cannot raise an unhandled rejection).
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w.resolve();
  }

  /** Tell every thread: they read the command between operations, and parked ones wake. */
  private broadcast(cmd: number): void {
    Atomics.store(this.ctl, C_CMD, cmd);
    Atomics.add(this.ctl, C_EPOCH, 1);
    Atomics.notify(this.ctl, C_EPOCH);
  }

  private waitFor(done: () => boolean): Promise<void> {
    if (this.state === 'failed') return Promise.reject(this.errors[0]);
    if (done()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => this.waiters.push({ done, resolve, reject }));
  }

  private poke(): void {
    if (this.waiters.length === 0) return;
    const keep: Waiter[] = [];
    for (const w of this.waiters) {
      if (w.done()) w.resolve();
      else keep.push(w);
    }
    this.waiters = keep;
  }

  private onBad(m: { thread: number; page: number; reason: string }): void {
    const r: BadPageReport = { thread: m.thread, page: m.page, reason: m.reason };
    if (this.bad.length < 1000) this.bad.push(r);
    this.emit('bad', r);
  }

  private fail(t: number, e: Error): void {
    if (this.stopping) return;
    const err = e.message.startsWith('guest thread') ? e : Object.assign(new Error(`guest thread ${t}: ${e.message}`), { cause: e });
    this.errors.push(err);
    // The other threads stop too: nothing more is written over what the failure found.
    if (this.state !== 'failed') this.broadcast(CMD_STOP);
    this.state = 'failed';
    if (this.listenerCount('threadError') > 0) this.emit('threadError', err);
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w.reject(err);
  }

  /** Thread t left its loop on its own: told to stop, or stopped by the corruption it found. */
  private leftWorkload(t: number): boolean {
    const s = Atomics.load(this.ctl, stateWord(t));
    return s === T_STOPPED || s === T_FAILED;
  }

  /** Every thread will touch guest memory no more (stopped, failed, or its worker is gone). */
  private allThreadsDone(): boolean {
    return this.workers.every((_, t) => this.exited[t] || this.leftWorkload(t));
  }

  /**
   * The threads were told to stop when the guest failed: give them a moment to finish their
   * operation (so memory is left consistent), but do not wait for one that may be blocked
   * forever (e.g. in a fault of a failed migration).
   */
  private async stopAfterFailure(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    if (!this.allThreadsDone()) {
      await new Promise<void>((resolve) => {
        timer = setTimeout(resolve, FAILED_STOP_GRACE_MS);
        this.waiters.push({ done: () => this.allThreadsDone(), resolve, reject: () => resolve() });
      });
    }
    clearTimeout(timer);
    await this.terminate();
  }

  /** The report, made not ok by what this guest's threads saw themselves (listed first). */
  private withOwnFindings(report: VerifyReport, maxReport: number): VerifyReport {
    const own: BadPage[] = [
      ...this.errors.map((e) => ({ page: e instanceof GuestCorruptionError ? e.page : 0, reason: e.message })),
      ...this.bad.map((b) => ({ page: b.page, reason: `guest thread ${b.thread} read ${b.reason}` })),
    ];
    if (own.length === 0) return report;
    const badPages = [...own, ...report.badPages].slice(0, maxReport);
    return { ...report, ok: false, bad: report.bad + own.length, firstBad: badPages[0], badPages };
  }
}
