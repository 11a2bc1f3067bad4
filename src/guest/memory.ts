import { PAGE_SIZE } from './layout.js';

/** Where the guest's memory lives. Both kinds can be posted to worker threads. */
export type GuestMemory =
  | { kind: 'shared'; buffer: SharedArrayBuffer } // tests without the kernel
  | { kind: 'mapping'; address: bigint; length: number }; // real guest memory (mmap'd by the addon)

export function guestMemoryLength(m: GuestMemory): number {
  return m.kind === 'shared' ? m.buffer.byteLength : m.length;
}

/** Throws unless the block is a whole number of 4 KiB pages and has at least one data page. */
export function checkGuestMemory(m: GuestMemory): number {
  if (m.kind !== 'shared' && m.kind !== 'mapping') {
    throw new TypeError(`guest memory: unknown kind ${JSON.stringify((m as { kind: unknown }).kind)}`);
  }
  const len = guestMemoryLength(m);
  if (!Number.isSafeInteger(len) || len % PAGE_SIZE !== 0 || len < 2 * PAGE_SIZE) {
    throw new RangeError(`guest memory: length ${len} is not a multiple of ${PAGE_SIZE} of at least 2 pages`);
  }
  return len / PAGE_SIZE;
}

/**
 * An ArrayBuffer over the guest memory, for use INSIDE a worker. On a 'mapping' any access
 * may block in a userfaultfd page fault until the main thread serves it, so never call this
 * on the main thread while a migration may be in progress.
 */
export function openGuestMemory(m: GuestMemory): ArrayBuffer | SharedArrayBuffer {
  checkGuestMemory(m);
  if (m.kind === 'shared') return m.buffer;
  // Loaded lazily so that shared-memory guests never load the native addon.
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const mapping: typeof import('../kernel/mapping.js') = require('../kernel/mapping.js');
  const ab = mapping.attachMapping(m.address, m.length);
  if (ab.byteLength !== m.length) {
    throw new Error(`attachMapping(${m.address}, ${m.length}) returned ${ab.byteLength} bytes`);
  }
  return ab;
}
