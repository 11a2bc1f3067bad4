import { TARGET_PAGE_SIZE } from '../base/index.js';

/** A page of zeros to write from (never written to). */
export const ZERO_PAGE: Uint8Array = new Uint8Array(TARGET_PAGE_SIZE);

/** Zeros to compare with; grows to the largest length asked for (a huge page at most). */
let zeros = Buffer.alloc(TARGET_PAGE_SIZE);

/**
 * Whether `length` bytes of `bytes` from `offset` are all zero: one memcmp against a zero
 * buffer, no allocation once that buffer is large enough (this runs per page).
 */
export function isZero(bytes: Uint8Array, offset: number, length: number): boolean {
  if (zeros.length < length) zeros = Buffer.alloc(length);
  return zeros.compare(bytes, offset, offset + length, 0, length) === 0;
}

/** Whether the 4 KiB page at `offset` of `bytes` is all zero. */
export function isZeroPage(bytes: Uint8Array, offset = 0): boolean {
  return isZero(bytes, offset, TARGET_PAGE_SIZE);
}
