// Helpers for tests of the reference guest on SharedArrayBuffer memory (no kernel needed).
import { Guest, GuestMemory, Pattern } from '../../src/guest/index.js';

/** A hang (a thread that never parks) must fail the test, not stall the suite. */
export const T = { timeout: 20_000 };

export const MiB = 1 << 20;

export function shared(bytes = 2 * MiB): { memory: GuestMemory; buffer: SharedArrayBuffer } {
  const buffer = new SharedArrayBuffer(bytes);
  return { memory: { kind: 'shared', buffer }, buffer };
}

export function copyOf(buffer: SharedArrayBuffer): SharedArrayBuffer {
  const c = new SharedArrayBuffer(buffer.byteLength);
  new Uint8Array(c).set(new Uint8Array(buffer));
  return c;
}

export function snapshot(buffer: SharedArrayBuffer): Buffer {
  return Buffer.from(new Uint8Array(buffer).slice());
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Poll until cond() holds: no fixed sleeps that a loaded machine breaks. Gives up before the
 * test timeout, so that a failed test does not leave a poll loop keeping the process alive.
 */
export async function until(cond: () => boolean, what = 'condition'): Promise<void> {
  const deadline = performance.now() + T.timeout - 5000;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`until: ${what} still false after ${T.timeout - 5000} ms`);
    await sleep(5);
  }
}

/** Run a guest to a stopped, known state and return its memory. */
export async function stoppedGuest(pattern: Pattern, threads: number, ops: number, more: { readers?: number; fill?: number } = {}) {
  const { memory, buffer } = shared();
  const g = await Guest.start({ memory, threads, pattern, seed: 3, ...more, paused: true });
  await g.runOps(ops);
  await g.stop();
  return { buffer, memory, g };
}
