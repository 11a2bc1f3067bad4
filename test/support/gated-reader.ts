// Worker threads that read one word of a page each, all at once when the test opens a gate,
// and report through shared memory: the test can block its own event loop (so that nobody
// serves faults) and still see that no reader got past the page.
import { Worker, isMainThread, workerData } from 'node:worker_threads';
import { attachMapping } from '../../src/kernel/index.js';
import type { Mapping } from '../../src/kernel/index.js';

const READY = 0;
const GATE = 1;
const DONE = 2;
const WORDS = 3;

export interface GatedReaders {
  workers: Worker[];
  /** How many readers have read their word. */
  done(): number;
  /** The word each reader saw. */
  words(): number[];
  waitReady(ms?: number): Promise<void>;
  /** Lets every reader go at once. */
  open(): void;
}

export function startGatedReaders(mapping: Mapping, offsets: number[]): GatedReaders {
  const control = new Int32Array(new SharedArrayBuffer((WORDS + offsets.length) * 4));
  const workers = offsets.map((offset, i) => new Worker(__filename, { workerData: { address: mapping.address, length: mapping.length, offset, slot: WORDS + i, control: control.buffer } }));
  return {
    workers,
    done: () => Atomics.load(control, DONE),
    words: () => offsets.map((_, i) => Atomics.load(control, WORDS + i)),
    async waitReady(ms = 10_000) {
      const until = Date.now() + ms;
      while (Atomics.load(control, READY) < offsets.length) {
        if (Date.now() > until) throw new Error('gated readers did not start');
        await new Promise((r) => setTimeout(r, 5));
      }
    },
    open() {
      Atomics.store(control, GATE, 1);
      Atomics.notify(control, GATE);
    },
  };
}

if (!isMainThread && workerData?.slot !== undefined) {
  const { address, length, offset, slot } = workerData as { address: bigint; length: number; offset: number; slot: number };
  const control = new Int32Array(workerData.control as SharedArrayBuffer);
  const memory = new Int32Array(attachMapping(address, length));
  Atomics.add(control, READY, 1);
  while (Atomics.load(control, GATE) === 0) Atomics.wait(control, GATE, 0, 1000);
  Atomics.store(control, slot, memory[offset / 4]);
  Atomics.add(control, DONE, 1);
}
