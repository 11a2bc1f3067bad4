// CRC32C in the addon: the standard check values, the CPU's instruction against the table, a
// run of pages against page by page, bad arguments refused as Node refuses them; and the
// snapshot format's page checksums of both versions, against their definitions.
import test from 'node:test';
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { checksumPages, crc32c, crc32cHardware, crc32cSoftware } from '../../src/kernel/index.js';
import { foldPageRun } from '../../src/snapshot/page-checksums.js';

const PAGE = 4096;

test('crc32c: the standard check values, and a CRC continued from a seed is the CRC of the whole', () => {
  const check = Buffer.from('123456789');
  assert.equal(crc32c(check), 0xe3069283);
  assert.equal(crc32cSoftware(check), 0xe3069283);
  assert.equal(crc32c(new Uint8Array(0)), 0);
  assert.equal(crc32c(new Uint8Array(32)), 0x8a9136aa); // 32 zero bytes (RFC 3720, B.4)
  assert.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43);
  const whole = randomFillSync(Buffer.alloc(10_000));
  assert.equal(crc32c(whole.subarray(3333), crc32c(whole.subarray(0, 3333))), crc32c(whole));
});

test(`crc32c: the ${crc32cHardware ? 'CPU instruction (SSE4.2)' : 'table (no SSE4.2 here)'} and the table agree on every length and alignment`, () => {
  const bytes = randomFillSync(Buffer.alloc(3 * PAGE + 17));
  for (const [start, length] of [[0, 0], [1, 7], [3, 8], [5, 9], [0, 4096], [7, 3 * PAGE], [1, 3 * PAGE + 16]]) {
    const slice = bytes.subarray(start, start + length);
    assert.equal(crc32c(slice, 12345), crc32cSoftware(slice, 12345), `${length} bytes at ${start}`);
  }
});

test('checksumPages: one call over a run equals the sum of each page\'s crc32c seeded with its index (runs of 1 to 7 pages, 4 KiB and 2 MiB)', () => {
  for (const pageSize of [PAGE, 2 << 20]) {
    const pages = pageSize === PAGE ? 7 : 3;
    const bytes = randomFillSync(Buffer.alloc(pages * pageSize));
    for (let count = 1; count <= pages; count++) {
      const first = 1000 + count;
      let sum = 0;
      for (let i = 0; i < count; i++) sum = (sum + crc32cSoftware(bytes.subarray(i * pageSize, (i + 1) * pageSize), first + i)) >>> 0;
      assert.equal(checksumPages(bytes.subarray(0, count * pageSize), pageSize, first), sum, `${count} pages of ${pageSize}`);
    }
  }
});

test('checksumPages refuses what is not a run of whole pages, as Node words it', () => {
  const bytes = new Uint8Array(2 * PAGE);
  assert.throws(() => checksumPages(bytes.subarray(1), PAGE, 0), { code: 'ERR_OUT_OF_RANGE', message: /"bytes\.length" is out of range\. It must be a multiple of pageSize \(4096\)\. Received 8191/ });
  assert.throws(() => checksumPages(bytes, 0, 0), { code: 'ERR_OUT_OF_RANGE', message: /"pageSize"/ });
  assert.throws(() => checksumPages(new Uint16Array(4) as unknown as Uint8Array, 2, 0), { code: 'ERR_INVALID_ARG_TYPE', message: /"bytes" argument must be an instance of Uint8Array/ });
  assert.throws(() => checksumPages(bytes, PAGE, 2 ** 32), { code: 'ERR_OUT_OF_RANGE', message: /"firstIndex"/ });
  assert.throws(() => crc32c(bytes, -1), { code: 'ERR_OUT_OF_RANGE', message: /"seed"/ });
});

test('snapshot page checksums: version 1 sums zlib CRC-32 seeded with the page index, version 2 CRC32C the same way', () => {
  const bytes = randomFillSync(Buffer.alloc(5 * PAGE));
  let v1 = 7;
  let v2 = 7;
  for (let i = 0; i < 5; i++) {
    const page = bytes.subarray(i * PAGE, (i + 1) * PAGE);
    v1 = (v1 + crc32(page, 40 + i)) >>> 0;
    v2 = (v2 + crc32cSoftware(page, 40 + i)) >>> 0;
  }
  assert.equal(foldPageRun(1, 7, bytes, PAGE, 40), v1);
  assert.equal(foldPageRun(2, 7, bytes, PAGE, 40), v2);
  assert.notEqual(v1, v2);
});
