// One VM as the page server's main thread sees it: its pager worker, its connection (the VMM
// closing it means the VM is gone), the watchdog that notices a pager that stopped placing
// pages while faults wait (a stalled disk), and the end: a VM whose pages can no longer be
// served is killed (its pid from SO_PEERCRED), never left frozen and never fed zeros.
import { EventEmitter } from 'node:events';
import { closeSync, readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import type { Handshake } from './handshake.js';
import type { FromVm, PrefetchMode, ToVm, VmCounters, VmTask } from './protocol.js';

const WORKER_PATH = join(__dirname, 'vm-worker.js');
/** How long a stopping worker may take before it is terminated. */
const STOP_GRACE_MS = 1000;

export type OnFailure = 'kill' | 'leave';

/** What the pager worker gets (VmTask), and what the main thread keeps for itself. */
export interface VmOptions extends VmTask {
  connection: Handshake;
  onFailure: OnFailure;
  /** Faults waiting and no page placed for this long: the VM's pages cannot be served. */
  stallSeconds: number;
}

export interface VmEvents {
  on(event: 'first-fault' | 'all-present', listener: (ms: number) => void): this;
  on(event: 'counters', listener: (counters: VmCounters) => void): this;
  on(event: 'working-set', listener: (pages: number[]) => void): this;
  on(event: 'ended', listener: (reason: string, outcome: 'exited' | 'failed' | 'stopped') => void): this;
}

export class Vm extends EventEmitter implements VmEvents {
  readonly id: number;
  readonly pid: number;
  placedPages = 0;
  totalPages = 0;
  private readonly worker: Worker;
  private readonly socket: Socket;
  private readonly watchdog: NodeJS.Timeout;
  private pending = 0;
  private lastPlacedAt = performance.now();
  /** When the worker last said anything: it reports every 200 ms unless a read holds it in the kernel. */
  private lastHeardAt = performance.now();
  private endedWith: string | undefined;
  /** Resolves once the pager worker has exited: nothing reads the page source any more. */
  readonly exited: Promise<void>;

  constructor(private readonly options: VmOptions) {
    super();
    this.id = options.vm;
    this.pid = options.connection.pid;
    const { connection: _connection, onFailure: _onFailure, stallSeconds: _stallSeconds, ...task } = options;
    this.worker = new Worker(WORKER_PATH, { workerData: task satisfies VmTask });
    this.worker.on('message', (m: FromVm) => this.message(m));
    this.worker.on('error', (error) => this.end('failed', `its pager crashed: ${error.message}`));
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.on('exit', () => this.endedWith === undefined && this.end('failed', 'its pager exited'));
    // the VMM sends nothing after its message: an end of this connection means it is gone
    this.socket = new Socket({ fd: options.connection.fd, readable: true, writable: false });
    this.socket.on('data', () => undefined);
    this.socket.on('end', () => this.end('exited', 'the VMM closed its connection'));
    this.socket.on('error', () => this.end('exited', 'the VMM closed its connection'));
    this.watchdog = setInterval(() => this.checkStall(), Math.min(1000, options.stallSeconds * 250)).unref();
  }

  /** Ends serving this VM; with `kill`, the VM too (a VM left unserved would freeze). */
  stop(reason = 'the server stopped'): void {
    this.end('stopped', reason);
  }

  /** Its pages can no longer be served: ended as after any failure (killed by default). */
  fail(reason: string): void {
    this.end('failed', reason);
  }

  /** Prefetch behind the faults from now on (a remote source: once staging is complete). */
  prefetch(mode: PrefetchMode): void {
    this.send({ type: 'prefetch', mode });
  }

  private message(m: FromVm): void {
    this.lastHeardAt = performance.now();
    switch (m.type) {
      case 'progress':
        if (m.placedPages !== this.placedPages) this.lastPlacedAt = performance.now();
        this.placedPages = m.placedPages;
        this.totalPages = m.totalPages;
        this.pending = m.pending;
        return void this.emit('counters', m.counters);
      case 'first-fault':
      case 'all-present':
        return void this.emit(m.type, m.ms);
      case 'working-set':
        return void this.emit('working-set', m.pages); // the pager's last words: also after 'ended'
      case 'gone':
        return this.end('exited', m.reason);
      case 'failed':
        return this.end('failed', `${m.message} (${m.code})`);
      default:
        return;
    }
  }

  /**
   * Faults wait and nothing was placed for `stallSeconds`: the source stopped answering. Or the
   * worker fell silent that long: a read of the page source never returned (a stalled disk), so
   * its last word on waiting faults is stale and a vCPU may wait behind that read.
   */
  private checkStall(): void {
    const now = performance.now();
    const boundMs = this.options.stallSeconds * 1000;
    const silentMs = now - this.lastPlacedAt;
    if (this.pending > 0 && silentMs > boundMs) {
      return this.end('failed', `no page placed for ${(silentMs / 1000).toFixed(1)} s while ${this.pending} fault(s) wait: the page source stopped answering`);
    }
    const deafMs = now - this.lastHeardAt;
    if (deafMs > boundMs) {
      this.end('failed', `its pager has been held for ${(deafMs / 1000).toFixed(1)} s in a read of the page source that does not return (a stalled disk?)`);
    }
  }

  private end(outcome: 'exited' | 'failed' | 'stopped', reason: string): void {
    if (this.endedWith !== undefined) return;
    this.endedWith = reason;
    clearInterval(this.watchdog);
    // a VM whose pages cannot be served any more is ended, not left frozen
    if (outcome !== 'exited' && this.options.onFailure === 'kill') killQuietly(this.pid);
    this.send({ type: 'stop' });
    const timer = setTimeout(() => void this.worker.terminate(), STOP_GRACE_MS);
    timer.unref();
    this.worker.once('exit', () => clearTimeout(timer));
    this.socket.destroy();
    this.emit('ended', reason, outcome);
  }

  private send(message: ToVm): void {
    try {
      this.worker.postMessage(message);
    } catch {
      // the worker is gone already
    }
  }
}

/** SIGKILL to a VMM whose pages cannot be served. */
export function killQuietly(pid: number): void {
  if (pid === process.pid) return; // a VMM in this very process (a test): never end ourselves
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone already
  }
}

/**
 * SIGKILL, then waits until `pid` has no address space any more (gone, or a zombie): from then
 * on nothing placed there can be read. Rejects if it still runs after `timeoutMs`.
 */
export async function endProcess(pid: number, timeoutMs = 2000): Promise<void> {
  killQuietly(pid);
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    let state: string;
    try {
      state = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '')[0];
    } catch {
      return; // gone
    }
    if (state === 'Z' || state === 'X') return;
    if (performance.now() > deadline) throw new Error(`process ${pid} still runs ${timeoutMs} ms after SIGKILL (state ${state})`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Closes a descriptor we were handed and will not use (a refused VM's userfaultfd). */
export function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // closed already
  }
}
