// The page checksums of a snapshot file, as its format version defines them: each present
// page's CRC continued from its index, summed mod 2^32 per block. Version 1: zlib's CRC-32, one
// call per page (~3 GB/s here, and it bounded the eager restore). Version 2: CRC32C, a whole run
// of pages per call into the addon (SSE4.2: ~13.5 GB/s here).
import { checksumPages } from '../kernel/index.js';
import { addChecksum, crc32PageChecksum } from '../wire/snapshot-format.js';

/** `sum` with the checksums of the pages of `bytes` (whole pages), the first being page `firstIndex`, added. */
export function foldPageRun(version: number, sum: number, bytes: Uint8Array, pageSize: number, firstIndex: number): number {
  if (version >= 2) return addChecksum(sum, checksumPages(bytes, pageSize, firstIndex));
  for (let at = 0, index = firstIndex; at < bytes.length; at += pageSize, index++) sum = addChecksum(sum, crc32PageChecksum(bytes.subarray(at, at + pageSize), index));
  return sum;
}
