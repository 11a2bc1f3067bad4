import { TARGET_PAGE_SIZE } from './ramblock.js';

/** Whether the 4 KiB page at `offset` of `bytes` is all zero (word by word: this runs per page). */
export function isZeroPage(bytes: Uint8Array, offset = 0): boolean {
  const words = new Int32Array(bytes.buffer, bytes.byteOffset + offset, TARGET_PAGE_SIZE / 4);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  return true;
}
