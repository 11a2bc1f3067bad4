// What the snapshot engine and its walker worker share: page states, counters, messages.

/**
 * One byte per page of a block, in shared memory, changed only with Atomics: a page is
 * claimed (PROTECTED -> WALKER or FAULT) by exactly one side, which saves it, un-protects it,
 * and marks it SAVED_*. SAVED_DATA pages are the file's bitmap.
 */
export const PageState = {
  PROTECTED: 0,
  WALKER: 1,
  FAULT: 2,
  SAVED_DATA: 3,
  SAVED_ZERO: 4,
} as const;

/** Slots of the walker's shared Float64Array of counters. */
export const WalkerCounter = { PAGES: 0, ZERO_PAGES: 1, BYTES_WRITTEN: 2, BYTES_SAVED: 3 } as const;
export const WALKER_COUNTERS = 4;

export interface WalkerBlock {
  idstr: string;
  address: number;
  length: number;
  pageSize: number;
  /** File offset of the block's page 0. */
  pagesOffset: number;
  /** PageState per page. */
  state: SharedArrayBuffer;
}

export interface WalkerTask {
  postcopySnapshotWalker: 1;
  uffd: number;
  file: number;
  checksums: boolean;
  blocks: WalkerBlock[];
  counters: SharedArrayBuffer;
  /** Int32 [0]: non-zero tells the walker to stop at the next chunk. */
  abort: SharedArrayBuffer;
}

export type WalkerMessage =
  | { type: 'done'; checksums: number[] }
  | { type: 'error'; message: string; code?: string };
