// One-off tasks of the reference guest (ledger setup, verification), each in a fresh worker:
// on real guest memory an access may block in a userfaultfd fault that only the main thread
// can serve, so the main thread never touches guest memory itself.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { checkGuestMemory, type GuestMemory } from './memory.js';
import type { VerifyOptions, VerifyReport } from './verify.js';
import type { WorkerMessage, WorkerTask } from './worker.js';
import { type LedgerInfo } from './ledger.js';

// CommonJS output: __dirname is the compiled guest folder (dist/guest).
export const WORKER_PATH = path.join(__dirname, 'worker.js');

// Guest threads keep their state in guest memory and allocate almost nothing: a small young
// generation keeps each worker's own footprint to a few MiB beside the guest's memory.
export const WORKER_LIMITS = { maxYoungGenerationSizeMb: 2, maxOldGenerationSizeMb: 64 };

function taskError(m: { name: string; message: string }): Error {
  const E = m.name === 'RangeError' ? RangeError : m.name === 'TypeError' ? TypeError : Error;
  return new E(m.message);
}

/** Run one setup/verify task in a fresh worker and return its result. */
export function runTask<T>(task: WorkerTask): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const w = new Worker(WORKER_PATH, { workerData: task, resourceLimits: WORKER_LIMITS });
    let settled = false;
    w.on('message', (m: WorkerMessage) => {
      if (settled) return;
      if (m.type === 'result') {
        settled = true;
        resolve(m.value as T);
      } else if (m.type === 'error') {
        settled = true;
        reject(taskError(m));
      }
    });
    w.on('error', (e) => {
      if (!settled) {
        settled = true;
        reject(e);
      }
    });
    w.on('exit', (code) => {
      if (!settled) {
        settled = true;
        reject(new Error(`guest ${task.mode} worker exited with code ${code} before answering`));
      }
    });
  });
}

/**
 * Verify guest memory inside a worker (safe on real guest memory while faults are being
 * served by the main thread). Only meaningful while the guest is paused or stopped.
 */
export function verifyInWorker(memory: GuestMemory, opts: VerifyOptions = {}): Promise<VerifyReport> {
  checkGuestMemory(memory);
  return runTask<VerifyReport>({ postcopyGuest: 1, mode: 'verify', memory, opts });
}

/** Read (and validate) the ledger of a guest memory block, in a worker. Throws if blank. */
export function readGuestInfo(memory: GuestMemory): Promise<LedgerInfo> {
  checkGuestMemory(memory);
  return runTask<LedgerInfo>({ postcopyGuest: 1, mode: 'setup', memory, params: null });
}
