// Worker entry of one VM's pager (vm-pager.ts); the main thread's side is vm.ts.
import { parentPort, workerData } from 'node:worker_threads';
import { errorCode } from '../base/index.js';
import type { FromVm, ToVm, VmTask } from './protocol.js';
import { VmPager } from './vm-pager.js';

const post = (message: FromVm) => parentPort!.postMessage(message);
let pager: VmPager | undefined;
try {
  pager = new VmPager(workerData as VmTask, post);
} catch (error) {
  post({ type: 'failed', message: (error as Error).message, code: errorCode(error) ?? 'ERR_POSTCOPY_INTERNAL' });
}
parentPort!.on('message', (m: ToVm) => {
  if (m.type === 'prefetch') return pager?.prefetch(m.mode);
  if (pager) pager.stop();
  else post({ type: 'stopped' });
  parentPort!.close();
});
