// Worker thread that touches pages of a mapping (a guest thread in miniature): posts its
// thread id, then reads or writes each page, then posts the first word it saw in each.
import { parentPort, workerData } from 'node:worker_threads';
import { attachMapping, threadId } from '../../src/kernel/index.js';

export interface ToucherData {
  address: bigint;
  length: number;
  pages: number[];
  pageSize: number;
  /** Write `value` into the first word of each page (else read). */
  write?: boolean;
  value?: number;
  /** Wait for a 'go' message after posting the thread id. */
  waitForGo?: boolean;
}

export interface ToucherResult {
  words: number[];
}

if (parentPort && workerData?.pages) {
  const data = workerData as ToucherData;
  const memory = new Int32Array(attachMapping(data.address, data.length));
  const run = () => {
    const words: number[] = [];
    for (const page of data.pages) {
      const index = (page * data.pageSize) / 4;
      if (data.write) memory[index] = data.value ?? 1;
      words.push(memory[index]);
    }
    parentPort!.postMessage({ done: true, words } satisfies ToucherResult & { done: true });
  };
  parentPort.postMessage({ tid: threadId() });
  if (data.waitForGo) parentPort.once('message', run);
  else run();
}
