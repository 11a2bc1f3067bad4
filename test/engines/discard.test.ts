// Discards as compact ranges: the source's discard set (sent and dirty pages, coalesced into
// runs, widened to host pages), the wire record carrying it, and the destination dropping
// exactly those pages with a batch of madvise calls.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Mapping } from '../../src/kernel/index.js';
import { Bitmap } from '../../src/memory/index.js';
import { Command, StreamDecoder, StreamEncoder } from '../../src/wire/index.js';
import { discardRanges } from '../../src/outgoing/page-map.js';

/** A deterministic pseudo-random generator (xorshift32). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

function randomBitmap(size: number, density: number, next: () => number): Bitmap {
  const map = new Bitmap(size);
  // runs of set bits of random lengths, so that whole words and word edges both occur
  for (let i = 0; i < size; ) {
    const run = 1 + Math.floor(next() * 70);
    if (next() < density) map.setRange(i, Math.min(run, size - i));
    i += run;
  }
  return map;
}

/** The same answer, one bit at a time. */
function naiveDiscard(sent: Bitmap, dirty: Bitmap, perHost: number): [number, number][] {
  const ranges: [number, number][] = [];
  for (let host = 0; host * perHost < sent.size; host++) {
    let any = false;
    for (let p = host * perHost; p < Math.min((host + 1) * perHost, sent.size); p++) any ||= sent.get(p) && dirty.get(p);
    if (!any) continue;
    const start = host * perHost;
    const last = ranges[ranges.length - 1];
    if (last && last[0] + last[1] === start) last[1] += perHost;
    else ranges.push([start, perHost]);
  }
  return ranges;
}

test('Bitmap.andRanges: runs set in both, at every word edge', () => {
  const next = rng(7);
  for (const size of [1, 31, 32, 33, 63, 64, 65, 1000, 4096, 4099]) {
    for (let round = 0; round < 20; round++) {
      const a = randomBitmap(size, 0.3 + 0.6 * next(), next);
      const b = randomBitmap(size, 0.3 + 0.6 * next(), next);
      const both = new Bitmap(size);
      for (let i = 0; i < size; i++) if (a.get(i) && b.get(i)) both.set(i);
      assert.deepEqual([...a.andRanges(b)], [...both.ranges()], `size ${size} round ${round}`);
    }
  }
  const full = new Bitmap(96);
  full.fill();
  assert.deepEqual([...full.andRanges(full)], [[0, 96]]);
  assert.deepEqual([...full.andRanges(new Bitmap(96))], []);
  assert.throws(() => [...full.andRanges(new Bitmap(95))], RangeError);
});

test('discardRanges: sent and dirty pages, coalesced, widened to whole host pages', () => {
  const next = rng(11);
  for (const perHost of [1, 4, 512]) {
    for (let round = 0; round < 20; round++) {
      const size = perHost * (8 + Math.floor(next() * 64));
      const sent = randomBitmap(size, 0.7, next);
      const dirty = randomBitmap(size, 0.2, next);
      const ranges = discardRanges(sent, dirty, perHost);
      assert.deepEqual(ranges, naiveDiscard(sent, dirty, perHost), `perHost ${perHost} round ${round}`);
      for (let i = 1; i < ranges.length; i++) assert.ok(ranges[i][0] > ranges[i - 1][0] + ranges[i - 1][1], 'runs are merged and apart');
    }
  }
  // a dirty page never sent is not stale there: nothing to discard
  const sent = new Bitmap(64);
  const dirty = new Bitmap(64);
  dirty.setRange(0, 64);
  assert.deepEqual(discardRanges(sent, dirty, 1), []);
  sent.setRange(3, 2);
  sent.set(5);
  sent.set(40);
  assert.deepEqual(discardRanges(sent, dirty, 1), [[3, 3], [40, 1]]);
  assert.deepEqual(discardRanges(sent, dirty, 8), [[0, 8], [40, 8]]);
});

test('a discard record carries the coalesced ranges exactly, split over commands when long', () => {
  const block = { idstr: 'ram0', pageSize: 4096, postcopyLength: 1 << 30, usedLength: 1 << 30 };
  // 10,000 ranges: more than one command holds (4,095 pairs each)
  const ranges: [number, number][] = [];
  for (let i = 0; i < 10_000; i++) ranges.push([i * 3 * 4096, (1 + (i % 2)) * 4096]);
  const encoder = new StreamEncoder();
  const bytes = encoder.discard(block, ranges);
  const decoder = new StreamDecoder({ blocks: (idstr: string) => (idstr === 'ram0' ? block : undefined), header: false });
  decoder.push(bytes);
  const decoded: [number, number][] = [];
  let commands = 0;
  for (let event = decoder.next(); event; event = decoder.next()) {
    if (event.type !== 'command') continue;
    commands++;
    if (event.cmd === Command.POSTCOPY_RAM_DISCARD) decoded.push(...event.ranges);
  }
  assert.equal(commands, 3);
  assert.deepEqual(decoded, ranges);
});

for (const shared of [false, true]) {
  test(`Mapping.discardRanges (${shared ? 'shared memfd: hole punch' : 'private: batched madvise'}) drops exactly the ranges' pages`, () => {
    const pages = 4000;
    const mapping = new Mapping(pages * 4096, { shared });
    const view = mapping.bytes();
    for (let p = 0; p < pages; p++) view.fill((p % 251) + 1, p * 4096, (p + 1) * 4096);
    // more than 1024 ranges: several process_madvise batches; runs of 1 to 3 pages
    const ranges: [number, number][] = [];
    const dropped = new Set<number>();
    for (let p = 1; p < pages; p += 2 + (p % 3)) {
      const length = 1 + (p % 3 === 0 ? 2 : 0);
      if (p + length > pages) break;
      ranges.push([p * 4096, length * 4096]);
      for (let q = p; q < p + length; q++) dropped.add(q);
    }
    assert.ok(ranges.length > 1024, `${ranges.length} ranges`);
    const calls = mapping.discardRanges(ranges);
    assert.ok(calls >= 1);
    for (let p = 0; p < pages; p++) {
      const expected = dropped.has(p) ? 0 : (p % 251) + 1;
      if (view[p * 4096] !== expected || view[p * 4096 + 4095] !== expected) assert.fail(`page ${p}: ${view[p * 4096]}, expected ${expected}`);
    }
    assert.throws(() => mapping.discardRanges([[0, 4096], [pages * 4096, 4096]]), RangeError);
    mapping.unmap();
  });
}
