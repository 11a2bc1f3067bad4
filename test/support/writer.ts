// Guest writes in miniature, from a worker thread: flat out (a counter into every page of a
// mapping, pass after pass, until stopped; `stop()` resolves once it has exited, so nothing is
// written after: a pause at a barrier), or exactly the pages asked for, on demand.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { attachMapping } from '../../src/kernel/index.js';
import type { Mapping } from '../../src/kernel/index.js';

interface WriterData {
  /** flat-out: every page, pass after pass, until stopped; pages: the pages each message lists, once. */
  writer: 'flat-out' | 'pages';
  address: bigint;
  length: number;
  stop?: SharedArrayBuffer;
}

const data = workerData as WriterData | undefined;
if (!isMainThread && parentPort && data?.writer) {
  const port = parentPort;
  const bytes = attachMapping(data.address, data.length);
  if (data.writer === 'pages') {
    const memory = new Uint8Array(bytes);
    port.on('message', (pages: number[]) => {
      for (const page of pages) memory[page * 4096 + 8] += 1;
      port.postMessage('written');
    });
  } else {
    const memory = new Int32Array(bytes);
    const stop = new Int32Array(data.stop!);
    const wordsPerPage = 4096 / 4;
    let value = 1;
    while (Atomics.load(stop, 0) === 0) {
      for (let index = 0; index < memory.length; index += wordsPerPage) memory[index + (value % wordsPerPage)] = value;
      if (value++ === 1) port.postMessage('writing');
    }
  }
}

/** Resolves once the writer has been over every page once. */
export async function startWriter(mapping: Mapping): Promise<{ stop(): Promise<void> }> {
  const stop = new SharedArrayBuffer(4);
  const worker = new Worker(__filename, { workerData: { writer: 'flat-out', address: mapping.address, length: mapping.length, stop } });
  const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    worker.once('message', () => resolve());
    worker.once('error', reject);
  });
  return {
    stop: async () => {
      Atomics.store(new Int32Array(stop), 0, 1);
      await exited;
    },
  };
}

/** A worker thread that writes one byte into each 4 KiB page it is given, on demand. */
export function startPageWriter(mapping: Mapping): { write(pages: number[]): Promise<void>; close(): Promise<number> } {
  const worker = new Worker(__filename, { workerData: { writer: 'pages', address: mapping.address, length: mapping.length } });
  return {
    write: (pages) => new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
      worker.postMessage(pages);
    }),
    close: () => worker.terminate(),
  };
}
