// Every failure comes back as a Node-shaped error (code, errno, syscall, a message naming the
// address and length), and the process lives on.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Mapping, Userfaultfd, attachMapping, type SystemError } from '../src/kernel/index.js';
import { featureSkip, hugeSkip } from './support/hugepages.js';
import { startToucher } from './support/threads.js';
import { EEXIST } from '../src/base/index.js';

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
