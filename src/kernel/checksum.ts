// CRC32C (Castagnoli), computed by the addon: SSE4.2's crc32 instruction where the CPU has it,
// a table otherwise, the same values either way. The snapshot file's page checksums (format
// version 2) are sums of it over runs of pages: one call per run, not one per page.
import { addon } from './addon.js';

/** CRC32C of `bytes`, continuing from `seed` as zlib's crc32(bytes, seed) does for CRC-32. */
export function crc32c(bytes: Uint8Array, seed = 0): number {
  return addon.crc32c(bytes, seed);
}

/** The same by the table alone (tests compare the two). */
export function crc32cSoftware(bytes: Uint8Array, seed = 0): number {
  return addon.crc32c(bytes, seed, true);
}

/** Whether crc32c runs on the CPU's instruction here. */
export const crc32cHardware: boolean = addon.crc32cHardware;

/**
 * Sum mod 2^32 over the pages of `bytes` (a whole number of `pageSize` pages) of
 * crc32c(page i, firstIndex + i): the snapshot format's page checksum of a run, in one call.
 */
export function checksumPages(bytes: Uint8Array, pageSize: number, firstIndex: number): number {
  return addon.checksumPages(bytes, pageSize, firstIndex);
}
