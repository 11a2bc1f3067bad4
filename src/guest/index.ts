// The reference guest: a worker-thread workload whose whole state lives in guest memory, and
// the verifier that is the oracle of every end-to-end migration test.
//
// The package root re-exports this module, so only distinctive names live at the top level;
// the page layout, the ledger and the per-thread workload are under the guestLayout,
// guestLedger and guestWorkload namespaces.
export { Guest, GuestCorruptionError } from './guest.js';
export { verifyInWorker, readGuestInfo, WORKER_PATH as GUEST_WORKER_PATH } from './tasks.js';
export type {
  GuestOptions,
  ResumeOptions,
  RunOptions,
  GuestStats,
  ThreadStats,
  BadPageReport,
} from './guest.js';
export { verify, corruptPage, guestPageHeader, readGuestPage, writeGuestPage } from './verify.js';
export type { VerifyOptions, VerifyReport, BadPage, GuestPageHeader, Corruption } from './verify.js';
export { openGuestMemory, guestMemoryLength, checkGuestMemory } from './memory.js';
export type { GuestMemory } from './memory.js';
export { PATTERNS as GUEST_PATTERNS } from './layout.js';
export type { Pattern } from './layout.js';
export type { LedgerInfo, SlotState } from './ledger.js';
export * as guestLayout from './layout.js';
export * as guestLedger from './ledger.js';
export * as guestWorkload from './workload.js';
