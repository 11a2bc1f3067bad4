// A guest writing flat out, in miniature: a worker thread that writes a counter into every page
// of a mapping, pass after pass, until stopped. `stop()` resolves once it has exited, so nothing
// is written after (a pause at a barrier).
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { attachMapping } from '../../src/kernel/index.js';
import type { Mapping } from '../../src/kernel/index.js';

interface WriterData {
  writer: true;
  address: bigint;
  length: number;
  stop: SharedArrayBuffer;
}

if (!isMainThread && parentPort && (workerData as WriterData | undefined)?.writer) {
  const data = workerData as WriterData;
  const memory = new Int32Array(attachMapping(data.address, data.length));
  const stop = new Int32Array(data.stop);
  const wordsPerPage = 4096 / 4;
  let value = 1;
  while (Atomics.load(stop, 0) === 0) {
    for (let index = 0; index < memory.length; index += wordsPerPage) memory[index + (value % wordsPerPage)] = value;
    if (value++ === 1) parentPort.postMessage('writing');
  }
}

/** Resolves once the writer has been over every page once. */
export async function startWriter(mapping: Mapping): Promise<{ stop(): Promise<void> }> {
  const stop = new SharedArrayBuffer(4);
  const worker = new Worker(__filename, { workerData: { writer: true, address: mapping.address, length: mapping.length, stop } });
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
