// The VMM's one message: every generation of Firecracker's region fields reads the same, and
// every bad field is refused naming the region, the field and the value.
import test from 'node:test';
import assert from 'node:assert/strict';
import { memoryFileLength, parseRegions } from '../../src/serve/index.js';

const MiB = 2 ** 20;
const at = 0x7f00_0000_0000;

test('regions: the three generations of fields (page size in bytes; none means 4096)', () => {
  const v16 = [{ base_host_virt_addr: at, size: 8 * MiB, offset: 0 }];
  const v17 = [{ base_host_virt_addr: at, size: 8 * MiB, offset: 0, page_size_kib: 4096 }];
  const v112 = [{ base_host_virt_addr: at, size: 8 * MiB, offset: 0, page_size: 2 * MiB, page_size_kib: 2 * MiB }];
  assert.deepEqual(parseRegions(JSON.stringify(v16)), [{ base: at, size: 8 * MiB, offset: 0, pageSize: 4096 }]);
  assert.deepEqual(parseRegions(JSON.stringify(v17)), [{ base: at, size: 8 * MiB, offset: 0, pageSize: 4096 }]);
  assert.deepEqual(parseRegions(JSON.stringify(v112)), [{ base: at, size: 8 * MiB, offset: 0, pageSize: 2 * MiB }]);
});

test('regions: several, with a gap between them; the memory file they need', () => {
  const regions = parseRegions(JSON.stringify([
    { base_host_virt_addr: at, size: 4 * MiB, offset: 0, page_size: 4096 },
    { base_host_virt_addr: at + 8 * MiB, size: 2 * MiB, offset: 4 * MiB, page_size: 4096 },
  ]));
  assert.equal(regions.length, 2);
  assert.equal(memoryFileLength(regions), 6 * MiB);
});

test('regions: each bad input is refused, naming the region, the field and the value', () => {
  const good = { base_host_virt_addr: at, size: 4 * MiB, offset: 0, page_size: 4096 };
  const cases: [string, RegExp][] = [
    ['{"not json', /malformed JSON/],
    ['{}', /expected a JSON array of regions, got object/],
    ['[]', /0 regions/],
    ['[1]', /region 0 is not an object/],
    [JSON.stringify([{ ...good, size: -4096 }]), /region 0: size -4096 is not an integer/],
    [JSON.stringify([{ ...good, base_host_virt_addr: 'x' }]), /region 0: base_host_virt_addr "x" is not an integer/],
    [JSON.stringify([{ ...good, offset: 1.5 }]), /region 0: offset 1\.5 is not an integer/],
    [JSON.stringify([{ ...good, base_host_virt_addr: at + 100 }]), /region 0: base_host_virt_addr 0x7f0000000064 is not a multiple of its page size 4096/],
    [JSON.stringify([{ ...good, size: 4096 * 3 + 1 }]), /region 0: size 0x3001 is not a multiple/],
    [JSON.stringify([{ ...good, page_size: 8192, page_size_kib: 8192 }]), /region 0: page size 8192 is neither 4096 nor 2097152/],
    [JSON.stringify([{ ...good, page_size: 4096, page_size_kib: 2 * MiB }]), /page_size 4096 and page_size_kib 2097152 differ/],
    [JSON.stringify([{ ...good, size: 0 }]), /region 0: size 0/],
    [JSON.stringify([good, { ...good, base_host_virt_addr: at + 2 * MiB, offset: 4 * MiB }]), /regions 0 and 1 overlap in memory/],
    [JSON.stringify([good, { ...good, base_host_virt_addr: at + 8 * MiB, offset: 2 * MiB }]), /regions 0 and 1 overlap in the memory file/],
    [JSON.stringify([{ ...good, base_host_virt_addr: 2 ** 47 - 4096 }]), /ends past the user address space/],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => parseRegions(text), (e: Error & { code?: string }) => e.code === 'ERR_POSTCOPY_PROTOCOL' && message.test(e.message), text);
  }
});
