// The pure memory model: Bitmap operations and serialisation, RamBlock validation and page
// arithmetic, RamList.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Bitmap, RamBlock, RamList } from '../../src/memory/index.js';
import { TARGET_PAGE_SIZE } from '../../src/base/index.js';

const MiB = 1024 * 1024;
const HUGE = 2 * MiB;

/** A naive reference bitmap for cross-checking. */
function reference(size: number, bits: Iterable<number>): boolean[] {
  const ref = new Array<boolean>(size).fill(false);
  for (const i of bits) ref[i] = true;
  return ref;
}

function refRanges(ref: boolean[], value = true): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i < ref.length; ) {
    if (ref[i] !== value) {
      i++;
      continue;
    }
    let j = i;
    while (j < ref.length && ref[j] === value) j++;
    out.push([i, j - i]);
    i = j;
  }
  return out;
}

test('Bitmap: get/set/clear at the first and last bit of sizes that are not word multiples', () => {
  for (const size of [1, 31, 32, 33, 63, 64, 65, 100, 127, 129]) {
    const map = new Bitmap(size);
    assert.equal(map.size, size);
    assert.equal(map.count(), 0);
    assert.ok(map.isEmpty());
    map.set(0);
    map.set(size - 1);
    assert.ok(map.get(0));
    assert.ok(map.get(size - 1));
    assert.equal(map.count(), size === 1 ? 1 : 2);
    map.set(size - 1); // idempotent
    assert.equal(map.count(), size === 1 ? 1 : 2);
    map.clear(0);
    assert.equal(map.get(0), false);
    assert.equal(map.count(), size === 1 ? 0 : 1);
    map.clear(0); // idempotent
    assert.equal(map.count(), size === 1 ? 0 : 1);
    assert.equal(map.testAndSet(0), false);
    assert.equal(map.testAndSet(0), true);
  }
});

test('Bitmap: out-of-range indices throw RangeError naming the index and size', () => {
  const map = new Bitmap(65);
  for (const bad of [65, 66, -1, 1.5, NaN, 2 ** 40]) {
    assert.throws(() => map.set(bad), { name: 'RangeError', message: `Bitmap index ${bad} is out of range [0, 65)` });
    assert.throws(() => map.get(bad), RangeError);
    assert.throws(() => map.clear(bad), RangeError);
  }
  assert.throws(() => map.setRange(60, 6), { name: 'RangeError', message: 'Bitmap range start 60 count 6 is out of range [0, 65)' });
  assert.throws(() => map.clearRange(-1, 2), RangeError);
  assert.throws(() => map.findNextSet(66), { message: 'Bitmap start 66 is out of range [0, 65]' });
  assert.throws(() => map.findNextZero(-1), RangeError);
  assert.throws(() => new Bitmap(-1), { message: 'Bitmap size -1 must be an integer in [0, 2^32]' });
  assert.throws(() => new Bitmap(2 ** 32 + 1), RangeError);
  assert.equal(map.count(), 0, 'no silent writes');
});

test('Bitmap: setRange/clearRange across word boundaries keep count and bits exact', () => {
  const size = 200;
  const map = new Bitmap(size);
  const ref = new Array<boolean>(size).fill(false);
  const ops: [boolean, number, number][] = [
    [true, 0, 1],
    [true, 30, 5],
    [true, 60, 70],
    [false, 63, 2],
    [true, 190, 10],
    [false, 100, 0],
    [false, 64, 64],
    [true, 5, 27],
    [true, 0, 200],
    [false, 1, 198],
  ];
  for (const [value, start, count] of ops) {
    if (value) map.setRange(start, count);
    else map.clearRange(start, count);
    for (let i = start; i < start + count; i++) ref[i] = value;
    assert.deepEqual(Array.from({ length: size }, (_, i) => map.get(i)), ref, `after ${value ? 'set' : 'clear'} ${start}+${count}`);
    assert.equal(map.count(), ref.filter(Boolean).length);
  }
  assert.deepEqual([...map.ranges()], [[0, 1], [199, 1]]);
});

test('Bitmap: findNextSet/findNextZero return size when there is none', () => {
  const map = new Bitmap(70);
  assert.equal(map.findNextSet(0), 70);
  assert.equal(map.findNextZero(0), 0);
  assert.equal(map.findNextSet(70), 70);
  assert.equal(map.findNextZero(70), 70);
  map.set(69);
  assert.equal(map.findNextSet(0), 69);
  assert.equal(map.findNextSet(69), 69);
  map.fill();
  assert.equal(map.count(), 70);
  assert.ok(map.isFull());
  assert.equal(map.findNextZero(0), 70, 'padding bits past size are never reported as zero');
  assert.equal(map.findNextZero(64), 70);
  map.clear(32);
  assert.equal(map.findNextZero(0), 32);
  assert.equal(map.findNextZero(33), 70);
  map.clearAll();
  assert.equal(map.count(), 0);
  assert.equal(map.findNextSet(0), 70);
});

test('Bitmap: find, ranges and count agree with a naive model on random maps', () => {
  let seed = 12345;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  for (const size of [1, 5, 32, 33, 64, 97, 256, 1000]) {
    for (let round = 0; round < 10; round++) {
      const bits = Array.from({ length: Math.floor(rand() * size) }, () => Math.floor(rand() * size));
      const map = new Bitmap(size);
      for (const i of bits) map.set(i);
      const ref = reference(size, bits);
      assert.equal(map.count(), ref.filter(Boolean).length);
      assert.deepEqual([...map.ranges()], refRanges(ref, true));
      assert.deepEqual([...map.zeroRanges()], refRanges(ref, false));
      for (let from = 0; from <= size; from++) {
        const nextSet = ref.indexOf(true, from);
        const nextZero = ref.indexOf(false, from);
        assert.equal(map.findNextSet(from), nextSet === -1 ? size : nextSet);
        assert.equal(map.findNextZero(from), nextZero === -1 ? size : nextZero);
      }
      const inverted = map.clone();
      inverted.invert();
      assert.equal(inverted.count(), size - map.count());
      assert.deepEqual([...inverted.ranges()], refRanges(ref, false));
      assert.ok(!inverted.equals(map) || size === 0);
      inverted.invert();
      assert.ok(inverted.equals(map));
    }
  }
});

test('Bitmap: isRangeSet / isRangeClear', () => {
  const map = new Bitmap(1024);
  map.setRange(512, 512);
  assert.ok(map.isRangeSet(512, 512));
  assert.ok(!map.isRangeSet(511, 2));
  assert.ok(map.isRangeClear(0, 512));
  assert.ok(!map.isRangeClear(0, 513));
  assert.ok(map.isRangeSet(0, 0));
});

test('Bitmap: little-endian serialisation has the QEMU layout', () => {
  const map = new Bitmap(130);
  map.set(0);
  map.set(63);
  map.set(64);
  map.set(129);
  const bytes = map.toLittleEndianBytes();
  assert.equal(bytes.length, 24, '130 bits pad to three 64-bit words');
  assert.equal(Bitmap.byteLength(130), 24);
  assert.equal(bytes[0], 0x01, 'bit 0 -> byte 0 bit 0');
  assert.equal(bytes[7], 0x80, 'bit 63 -> byte 7 bit 7');
  assert.equal(bytes[8], 0x01, 'bit 64 -> byte 8 bit 0');
  assert.equal(bytes[16], 0x02, 'bit 129 -> byte 16 bit 1');
  assert.equal(bytes.filter((b) => b !== 0).length, 4);
  assert.equal(new Bitmap(0).toLittleEndianBytes().length, 0);
  assert.equal(new Bitmap(1).toLittleEndianBytes().length, 8);
  assert.equal(new Bitmap(64).toLittleEndianBytes().length, 8);
  assert.equal(new Bitmap(65).toLittleEndianBytes().length, 16);
});

test('Bitmap: fromLittleEndianBytes round trip, padding ignored, lengths checked', () => {
  for (const size of [1, 7, 8, 9, 63, 64, 65, 200, 4096]) {
    const map = new Bitmap(size);
    for (let i = 0; i < size; i += 3) map.set(i);
    map.set(size - 1);
    const back = Bitmap.fromLittleEndianBytes(map.toLittleEndianBytes(), size);
    assert.ok(back.equals(map), `size ${size}`);
    assert.equal(back.count(), map.count());
    // Unaligned input view (byteOffset 1) decodes the same.
    const raw = map.toLittleEndianBytes();
    const shifted = new Uint8Array(raw.length + 1);
    shifted.set(raw, 1);
    assert.ok(Bitmap.fromLittleEndianBytes(shifted.subarray(1), size).equals(map));
  }
  const padded = new Uint8Array(8).fill(0xff);
  const ten = Bitmap.fromLittleEndianBytes(padded, 10);
  assert.equal(ten.count(), 10, 'bits past size are ignored');
  assert.ok(ten.isFull());
  assert.equal(Bitmap.fromLittleEndianBytes(Uint8Array.of(0xff, 0x03), 10).count(), 10, 'unpadded input accepted');
  assert.throws(() => Bitmap.fromLittleEndianBytes(new Uint8Array(1), 10), {
    name: 'RangeError',
    message: 'Bitmap bytes: length 1 does not fit 10 bits (must be 2..8)',
  });
  assert.throws(() => Bitmap.fromLittleEndianBytes(new Uint8Array(16), 10), /length 16 does not fit 10 bits/);
});

test('RamBlock: defaults, page counts and received map size', () => {
  const block = new RamBlock({ idstr: 'pc.ram', usedLength: 64 * MiB });
  assert.equal(block.maxLength, 64 * MiB);
  assert.equal(block.postcopyLength, 64 * MiB);
  assert.equal(block.pageSize, TARGET_PAGE_SIZE);
  assert.equal(TARGET_PAGE_SIZE, 4096);
  assert.equal(block.targetPages, 16384);
  assert.equal(block.hostPages, 16384);
  assert.equal(block.targetPagesPerHostPage, 1);
  assert.equal(block.receivedMap.size, 16384);
  assert.equal(block.host, undefined);
  const withHost = new RamBlock<{ base: bigint }>({ idstr: 'x', usedLength: 4096, host: { base: 1n } });
  assert.equal(withHost.host?.base, 1n);
});

test('RamBlock: constructor validation names the field and value', () => {
  const cases: [object, string][] = [
    [{ idstr: '', usedLength: 4096 }, "RamBlock: idstr '' is 0 bytes as UTF-8 (must be 1..255)"],
    [{ idstr: 'x'.repeat(256), usedLength: 4096 }, `RamBlock: idstr '${'x'.repeat(256)}' is 256 bytes as UTF-8 (must be 1..255)`],
    [{ idstr: 'é'.repeat(128), usedLength: 4096 }, `RamBlock: idstr '${'é'.repeat(128)}' is 256 bytes as UTF-8 (must be 1..255)`],
    [{ idstr: 'a\0b', usedLength: 4096 }, 'RamBlock: idstr "a\\u0000b" contains a NUL character'],
    [{ idstr: 'm', usedLength: 4096, pageSize: 3000 }, "RamBlock 'm': pageSize 3000 must be a power of two from 4096 to 1 GiB"],
    [{ idstr: 'm', usedLength: 4096, pageSize: 2048 }, "RamBlock 'm': pageSize 2048 must be a power of two from 4096 to 1 GiB"],
    [{ idstr: 'm', usedLength: 4096 + 1 }, "RamBlock 'm': usedLength 0x1001 is not a multiple of pageSize 0x1000"],
    [{ idstr: 'm', usedLength: 0 }, "RamBlock 'm': usedLength 0 must be a positive integer"],
    [{ idstr: 'm', usedLength: 4 * MiB, pageSize: HUGE, maxLength: 5 * MiB }, "RamBlock 'm': maxLength 0x500000 is not a multiple of pageSize 0x200000"],
    [{ idstr: 'm', usedLength: 3 * MiB, pageSize: HUGE }, "RamBlock 'm': usedLength 0x300000 is not a multiple of pageSize 0x200000"],
    [{ idstr: 'm', usedLength: 8192, maxLength: 4096 }, "RamBlock 'm': usedLength 0x2000 exceeds maxLength 0x1000"],
    [{ idstr: 'm', usedLength: 4096, maxLength: 8192, postcopyLength: 12288 }, "RamBlock 'm': postcopyLength 0x3000 exceeds maxLength 0x2000"],
    [{ idstr: 'm', usedLength: 4096, postcopyLength: 100 }, "RamBlock 'm': postcopyLength 0x64 is not a multiple of pageSize 0x1000"],
  ];
  for (const [options, message] of cases) {
    assert.throws(() => new RamBlock(options as never), { name: 'RangeError', message });
  }
  assert.equal(new RamBlock({ idstr: 'é'.repeat(127), usedLength: 4096 }).idstr.length, 127, '254 bytes is fine');
});

test('RamBlock: host page arithmetic for a 2 MiB block', () => {
  const block = new RamBlock({ idstr: 'huge', usedLength: 8 * MiB, pageSize: HUGE });
  assert.equal(block.targetPagesPerHostPage, 512);
  assert.equal(block.hostPages, 4);
  assert.equal(block.targetPages, 2048);
  assert.equal(block.hostPageOf(0), 0);
  assert.equal(block.hostPageOf(HUGE - 4096), 0);
  assert.equal(block.hostPageOf(HUGE), HUGE);
  assert.equal(block.hostPageOf(3 * HUGE + 12345), 3 * HUGE);
  assert.equal(block.targetPageIndex(HUGE + 8192), 514);
  assert.throws(() => block.hostPageOf(8 * MiB), { name: 'RangeError', message: "RamBlock 'huge': offset 0x800000 is outside postcopy length 0x800000" });
  assert.ok(block.offsetInBlock(8 * MiB - 1));
  assert.ok(!block.offsetInBlock(8 * MiB));
  assert.ok(!block.offsetInBlock(-1));

  assert.ok(!block.isHostPageReceived(HUGE));
  block.markReceived(HUGE, HUGE - 4096);
  assert.ok(!block.isHostPageReceived(HUGE + 4096), 'one target page still missing');
  assert.ok(block.isReceived(HUGE));
  assert.ok(!block.isReceived(2 * HUGE - 4096));
  block.markReceived(2 * HUGE - 4096, 4096);
  assert.ok(block.isHostPageReceived(HUGE));
  assert.ok(block.isHostPageReceived(2 * HUGE - 1));
  assert.ok(!block.isHostPageReceived(0));
  assert.equal(block.receivedMap.count(), 512);
  block.clearReceived(HUGE, HUGE);
  assert.equal(block.receivedMap.count(), 0);

  assert.throws(() => block.markReceived(100, 4096), {
    message: "RamBlock 'huge' markReceived: offset 0x64 length 0x1000 must be multiples of 4096",
  });
  assert.throws(() => block.markReceived(8 * MiB - 4096, 8192), {
    message: "RamBlock 'huge' markReceived: range 0x7ff000+0x2000 exceeds postcopy length 0x800000",
  });
  assert.equal(block.receivedMap.count(), 0, 'rejected calls write nothing');
});

test('RamBlock: 4 KiB block host pages are target pages', () => {
  const block = new RamBlock({ idstr: 'small', usedLength: 16 * 4096 });
  assert.equal(block.hostPageOf(5 * 4096 + 7), 5 * 4096);
  block.markReceived(5 * 4096, 4096);
  assert.ok(block.isHostPageReceived(5 * 4096 + 100));
  assert.ok(!block.isHostPageReceived(4 * 4096));
});

test('RamList: order, lookup, totals, duplicates rejected', () => {
  const a = new RamBlock({ idstr: 'pc.ram', usedLength: 8 * MiB, maxLength: 16 * MiB });
  const b = new RamBlock({ idstr: 'huge', usedLength: 4 * MiB, pageSize: HUGE });
  const list = new RamList([a]).add(b);
  assert.deepEqual([...list].map((x) => x.idstr), ['pc.ram', 'huge']);
  assert.equal(list.byId('huge'), b);
  assert.equal(list.byId('nope'), undefined);
  assert.ok(list.has('pc.ram'));
  assert.equal(list.size, 2);
  assert.equal(list.totalBytes, 12 * MiB, 'used lengths, not max lengths');
  assert.equal(list.pageSizeSummary, 4096 | HUGE);
  assert.throws(() => list.add(new RamBlock({ idstr: 'huge', usedLength: 4096 })), {
    name: 'RangeError',
    message: "RamList: a block named 'huge' is already listed",
  });
  assert.equal(list.size, 2);
});
