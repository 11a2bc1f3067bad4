// Every failure comes back as a Node-shaped error (code, errno, syscall, a message naming the
// address and length), and the process lives on.
import test from 'node:test';
import assert from 'node:assert/strict';
import { MADVISE, Mapping, Userfaultfd, argumentError, attachMapping, type Address, type SystemError } from '../../src/kernel/index.js';
import { addon } from '../../src/kernel/addon.js';
import { featureSkip, hugeSkip } from '../support/hugepages.js';
import { startToucher } from '../support/threads.js';
import { EEXIST } from '../../src/base/index.js';

const PAGE = 4096;

function expectSystemError(fn: () => unknown, code: string | string[], syscall: string, mentions?: string) {
  const codes = Array.isArray(code) ? code : [code];
  assert.throws(fn, (error: SystemError) => {
    assert.ok(codes.includes(error.code), `code ${error.code}, wanted ${codes.join('/')}: ${error.message}`);
    assert.ok(error.errno < 0, `errno ${error.errno}`);
    assert.equal(error.syscall, syscall);
    assert.match(error.message, new RegExp(`^${error.code}: `));
    if (mentions) assert.ok(error.message.includes(mentions), `"${error.message}" should name ${mentions}`);
    return true;
  });
}

test('placement errors: EEXIST, unaligned and zero lengths, unregistered range, closed fd', { skip: featureSkip() }, () => {
  const mapping = new Mapping(16 * PAGE);
  const other = new Mapping(4 * PAGE);
  const uffd = Userfaultfd.open();
  const page = new Uint8Array(PAGE).fill(1);
  try {
    uffd.register(mapping.address, mapping.length, 'missing');
    const at = mapping.address + BigInt(PAGE);
    uffd.copy(at, page, PAGE);
    expectSystemError(() => uffd.copy(at, page, PAGE), 'EEXIST', 'ioctl(UFFDIO_COPY)', `0x${at.toString(16)} length 4096`);
    assert.equal(uffd.tryCopy(at, page, PAGE), EEXIST);
    expectSystemError(() => uffd.zeropage(at, PAGE), 'EEXIST', 'ioctl(UFFDIO_ZEROPAGE)');
    expectSystemError(() => uffd.copy(mapping.address + 1n, page, 100), 'EINVAL', 'ioctl(UFFDIO_COPY)');
    expectSystemError(() => uffd.copy(mapping.address + 2n * BigInt(PAGE), page, 0), 'EINVAL', 'ioctl(UFFDIO_COPY)', 'length 0');
    expectSystemError(() => uffd.zeropage(mapping.address + 3n * BigInt(PAGE), 0), 'EINVAL', 'ioctl(UFFDIO_ZEROPAGE)');
    expectSystemError(() => uffd.register(mapping.address + 7n, PAGE, 'missing'), 'EINVAL', 'ioctl(UFFDIO_REGISTER)');
    // refused before the kernel sees it (test/kernel-safety.test.ts has the rest)
    assert.throws(() => uffd.copy(other.address, page, PAGE), { code: 'ERR_POSTCOPY_RANGE' });
    expectSystemError(() => uffd.unregister(mapping.address, PAGE + 1), 'EINVAL', 'ioctl(UFFDIO_UNREGISTER)');
    // the source must hold the length: checked before any ioctl, never read past the buffer
    assert.throws(() => uffd.copy(mapping.address + 4n * BigInt(PAGE), page, 2 * PAGE), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => uffd.copy(mapping.address, page, PAGE, { srcOffset: 1 }), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => uffd.copy(-1, page, PAGE), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => uffd.copy('0x1000' as never, page, PAGE), { code: 'ERR_INVALID_ARG_TYPE' });
    uffd.close();
    assert.equal(uffd.closed, true);
    expectSystemError(() => uffd.copy(mapping.address + 5n * BigInt(PAGE), page, PAGE), 'EBADF', 'ioctl(UFFDIO_COPY)');
    expectSystemError(() => uffd.register(mapping.address, PAGE, 'missing'), 'EBADF', 'ioctl(UFFDIO_REGISTER)');
    assert.equal(uffd.tryWake(mapping.address, PAGE), -9);
  } finally {
    uffd.close();
    mapping.unmap();
    other.unmap();
  }
});

test('hugetlb: a 4 KiB placement and UFFDIO_ZEROPAGE are EINVAL', { skip: featureSkip('MISSING_HUGETLBFS') || hugeSkip(2) }, () => {
  const mapping = new Mapping(2 * 2 * 1024 * 1024, { huge: true });
  const uffd = Userfaultfd.open();
  try {
    const ioctls = uffd.register(mapping.address, mapping.length, 'missing');
    assert.equal(ioctls.has('ZEROPAGE'), false, 'hugetlb ranges do not offer ZEROPAGE');
    expectSystemError(() => uffd.copy(mapping.address, new Uint8Array(PAGE), PAGE), 'EINVAL', 'ioctl(UFFDIO_COPY)', 'length 4096');
    expectSystemError(() => uffd.zeropage(mapping.address, mapping.pageSize), 'EINVAL', 'ioctl(UFFDIO_ZEROPAGE)');
    assert.equal(uffd.copy(mapping.address, new Uint8Array(mapping.pageSize), mapping.pageSize), mapping.pageSize);
  } finally {
    uffd.close();
    mapping.unmap();
  }
});

test('opening with a feature the kernel lacks names it; features asked for are granted', { skip: featureSkip() }, () => {
  const uffd = Userfaultfd.open({ features: ['THREAD_ID', 'EVENT_REMOVE'] });
  try {
    assert.deepEqual([...uffd.features].sort(), ['EVENT_REMOVE', 'THREAD_ID']);
    assert.ok(uffd.ioctls.has('REGISTER') && uffd.ioctls.has('API'));
    assert.ok(uffd.fd >= 0);
  } finally {
    uffd.close();
  }
  assert.throws(() => Userfaultfd.open({ features: ['NO_SUCH' as never] }), /does not grant NO_SUCH/);
});

test('mappings: bad arguments, unmap with live views (also in a worker) never crashes', { skip: featureSkip() }, async () => {
  assert.throws(() => new Mapping(1000), { code: 'ERR_OUT_OF_RANGE' });
  assert.throws(() => new Mapping(0), { code: 'ERR_OUT_OF_RANGE' });
  const mapping = new Mapping(4 * PAGE);
  mapping.bytes().fill(9);
  assert.throws(() => mapping.view(PAGE, 4 * PAGE), { code: 'ERR_OUT_OF_RANGE' });
  assert.throws(() => attachMapping(mapping.address + BigInt(3 * PAGE), 2 * PAGE), /no live mapping holds/);
  assert.throws(() => mapping.madvise(0, 5 * PAGE, 'dontneed'), { code: 'ERR_OUT_OF_RANGE' });
  const view = mapping.bytes();
  const worker = startToucher(mapping, [0, 1, 2, 3], { waitForGo: true });
  await worker.tid;
  mapping.unmap();
  assert.equal(mapping.mapped, false);
  assert.equal(view[0], 0, 'a stale view reads zeros');
  view[3 * PAGE + 100] = 3; // and may even write, harmlessly
  worker.go();
  assert.deepEqual((await worker.done).words, [0, 0, 0, 0]);
  await worker.worker.terminate();
  assert.throws(() => mapping.view(), { code: 'ERR_POSTCOPY_UNMAPPED' });
  assert.throws(() => attachMapping(mapping.address, PAGE), /no live mapping holds/);
  mapping.unmap(); // twice is fine
});

test('discard drops pages so they fault again: DONTNEED (private), hole punch (memfd)', { skip: featureSkip('MISSING_SHMEM') }, async () => {
  for (const shared of [false, true]) {
    const mapping = new Mapping(8 * PAGE, { shared });
    const uffd = Userfaultfd.open();
    let faults = 0;
    try {
      uffd.register(mapping.address, mapping.length, 'missing');
      uffd.copy(mapping.address, new Uint8Array(8 * PAGE).fill(4), 8 * PAGE);
      mapping.discard(2 * PAGE, 2 * PAGE);
      uffd.onEvents((batch) => {
        for (let i = 0; i < batch.count; i++) {
          faults++;
          uffd.tryZeropage(batch.address(i) - (batch.address(i) % PAGE), PAGE);
        }
      });
      const reader = startToucher(mapping, [1, 2, 3, 4]);
      const { words } = await reader.done;
      assert.deepEqual(words, [0x04040404, 0, 0, 0x04040404], shared ? 'memfd' : 'anonymous');
      assert.equal(faults, 2);
      await reader.worker.terminate();
    } finally {
      uffd.close();
      mapping.unmap();
    }
  }
});

/** `code: message` of what `fn` throws. */
function thrown(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    return `${(error as { code?: string }).code}: ${(error as Error).message}`;
  }
  return assert.fail('nothing was thrown');
}

test('argument errors: one wording, Node\'s, the same from TypeScript (argumentError) and from the addon', { skip: featureSkip() }, () => {
  const mapping = new Mapping(4 * PAGE);
  const uffd = Userfaultfd.open();
  const page = new Uint8Array(PAGE);
  try {
    uffd.register(mapping.address, mapping.length, 'missing');
    // uffd.copy refuses in TypeScript, before the addon; addon.placement.copy refuses natively
    for (const dst of [-1, 3.5, NaN, -0.5, 2 ** 60, -1n, 2n ** 64n, '0x1000', null, undefined, { at: 1 }, [1], Symbol('dst'), () => 1]) {
      const native = thrown(() => addon.placement.copy(uffd.fd, dst as Address, page, PAGE));
      assert.equal(thrown(() => uffd.copy(dst as Address, page, PAGE)), native);
      assert.equal(thrown(() => uffd.tryCopy(dst as Address, page, PAGE)), native);
    }
    for (const length of [-1, 1.5, NaN, Infinity, -0.25, 2 ** 53, 10n, '4096', undefined, [PAGE], new Uint8Array(1), "a string with a ' that is long"]) {
      const native = thrown(() => addon.placement.copy(uffd.fd, mapping.address, page, length as number));
      assert.equal(thrown(() => uffd.copy(mapping.address, page, length as number)), native);
      assert.equal(thrown(() => uffd.tryZeropage(mapping.base, length as number)), native);
      assert.equal(thrown(() => attachMapping(mapping.address, length as number)), native);
    }
    // Node's words, exactly
    assert.equal(thrown(() => addon.placement.copy(uffd.fd, 3.5, page, PAGE)),
      'ERR_OUT_OF_RANGE: The value of "dst" is out of range. It must be a non-negative integer. Received 3.5');
    assert.equal(thrown(() => addon.Mapping.attach(-(2n ** 40n), PAGE)),
      'ERR_OUT_OF_RANGE: The value of "address" is out of range. It must be a non-negative integer. Received -1_099_511_627_776n');
    assert.equal(thrown(() => addon.placement.zeropage(uffd.fd, mapping.address, '3' as never)),
      'ERR_INVALID_ARG_TYPE: The "length" argument must be of type number. Received type string (\'3\')');
    assert.equal(thrown(() => addon.placement.wake(uffd.fd, 'x' as never, PAGE)),
      'ERR_INVALID_ARG_TYPE: The "start" argument must be one of type bigint or number. Received type string (\'x\')');
    assert.equal(argumentError('length', 2 ** 40 + 0.5, false)?.message,
      'The value of "length" is out of range. It must be a non-negative integer. Received 1099511627776.5');
    assert.equal(argumentError('length', PAGE, false), undefined);
    assert.equal(argumentError('start', 2n ** 64n - 1n, true), undefined);
    // the other argument errors of the addon: the same three codes, the same sentences
    assert.equal(thrown(() => addon.placement.copy(uffd.fd, mapping.address, 5 as never, PAGE)),
      'ERR_INVALID_ARG_TYPE: The "src" argument must be an instance of ArrayBuffer, TypedArray, or DataView. Received type number (5)');
    assert.equal(thrown(() => new addon.Mapping('huge' as never, PAGE)),
      'ERR_INVALID_ARG_VALUE: The argument \'kind\' must be one of: \'anonymous\', \'memfd\', \'hugetlb\', \'memfd-hugetlb\'. Received \'huge\'');
    assert.equal(thrown(() => new Mapping(1000)), 'ERR_OUT_OF_RANGE: The value of "length" is out of range. It must be a positive multiple of 4096. Received 1000');
    assert.equal(thrown(() => new addon.Userfaultfd(5 as never)), 'ERR_INVALID_ARG_TYPE: The "options" argument must be of type object. Received type number (5)');
    assert.equal(thrown(() => addon.pagemapScan(2 ** 40, new BigUint64Array(12), new BigUint64Array(3))),
      'ERR_OUT_OF_RANGE: The value of "fd" is out of range. It must be >= 0 && <= 2147483647. Received 1_099_511_627_776');
    const probe = new addon.Userfaultfd({});
    try {
      assert.equal(thrown(() => probe.api(-1n)), 'ERR_OUT_OF_RANGE: The value of "features" is out of range. It must be >= 0n && < 2n ** 64n. Received -1n');
      assert.equal(thrown(() => probe.register(mapping.address, PAGE, 0.5)),
        'ERR_OUT_OF_RANGE: The value of "mode" is out of range. It must be a non-negative integer. Received 0.5');
    } finally {
      probe.close();
    }
  } finally {
    uffd.close();
    mapping.unmap();
  }
});

test('madviseRanges: a refusal has its code, and nothing of the batch is discarded', () => {
  const mapping = new Mapping(4 * PAGE);
  mapping.bytes().fill(6);
  for (const ranges of [[[PAGE + 0.5, PAGE]], [[-PAGE, PAGE]], [[0, -PAGE]], [[0, NaN]], [[2 ** 53, PAGE]], [[0, 5 * PAGE]], [[4 * PAGE, 1]]]) {
    const all: [number, number][] = [[0, PAGE], ...(ranges as [number, number][])];
    assert.throws(() => mapping.discardRanges(all), (error: RangeError & { code?: string }) => {
      assert.equal(error.code, 'ERR_OUT_OF_RANGE', error.message);
      assert.match(error.message, /^The value of "ranges\[[23]\]" is out of range\. It must be /);
      return true;
    });
  }
  assert.equal(mapping.bytes(0, PAGE).every((b) => b === 6), true, 'the good range before a bad one stayed');
  assert.equal(thrown(() => mapping.discardRanges([[0, 1.5]])),
    'ERR_OUT_OF_RANGE: The value of "ranges[1]" is out of range. It must be a non-negative integer. Received 1.5');
  mapping.unmap();

  const native = new addon.Mapping('anonymous', 4 * PAGE);
  try {
    const advice = MADVISE.dontneed;
    assert.equal(thrown(() => native.madviseRanges([0, PAGE] as never, advice)),
      'ERR_INVALID_ARG_TYPE: The "ranges" argument must be an instance of Float64Array. Received an instance of Array');
    assert.throws(() => native.madviseRanges(new Float32Array([0, PAGE]) as never, advice), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => native.madviseRanges(undefined as never, advice), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => native.madviseRanges(new Float64Array([0, PAGE, 0]), advice), { code: 'ERR_OUT_OF_RANGE', message: /"ranges.length"/ });
    assert.throws(() => native.madviseRanges(new Float64Array([0, PAGE]), 1.5), { code: 'ERR_OUT_OF_RANGE', message: /"advice"/ });
    assert.throws(() => native.madviseRanges(new Float64Array([0, PAGE]), -1), { code: 'ERR_OUT_OF_RANGE', message: /"advice"/ });
    assert.throws(() => native.madviseRanges(new Float64Array([0, PAGE]), '4' as never), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.equal(native.madviseRanges(new Float64Array([0, PAGE, 2 * PAGE, PAGE]), advice) >= 1, true);
    native.unmap();
    assert.throws(() => native.madviseRanges(new Float64Array([0, PAGE]), advice), { code: 'ERR_POSTCOPY_UNMAPPED' });
  } finally {
    native.unmap();
  }
});
