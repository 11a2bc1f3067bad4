// Test helpers around worker threads and timing.
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import type { Mapping } from '../../src/kernel/index.js';
import type { ToucherResult } from './toucher.js';

export interface Toucher {
  worker: Worker;
  tid: Promise<number>;
  done: Promise<ToucherResult>;
  /** Resolves to true once `done` has settled (so a test can assert a thread is still blocked). */
  settled(): boolean;
  go(): void;
}

export function startToucher(mapping: Mapping, pages: number[], options: { write?: boolean; value?: number; waitForGo?: boolean; pageSize?: number } = {}): Toucher {
  const worker = new Worker(join(__dirname, 'toucher.js'), {
    workerData: { address: mapping.address, length: mapping.length, pages, pageSize: options.pageSize ?? 4096, ...options },
  });
  let isSettled = false;
  let resolveTid!: (tid: number) => void;
  const tid = new Promise<number>((r) => (resolveTid = r));
  const done = new Promise<ToucherResult>((resolve, reject) => {
    worker.on('message', (m: { tid?: number; done?: boolean; words?: number[] }) => {
      if (m.tid !== undefined) resolveTid(m.tid);
      if (m.done) {
        isSettled = true;
        resolve({ words: m.words! });
      }
    });
    worker.on('error', (e) => {
      isSettled = true;
      reject(e);
    });
  });
  return { worker, tid, done, settled: () => isSettled, go: () => worker.postMessage('go') };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `predicate` until true or `ms` elapse. */
export async function waitFor(predicate: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const until = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}
