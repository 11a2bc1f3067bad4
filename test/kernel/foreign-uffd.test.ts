// Another process's userfaultfd, adopted (adoptForeign) as a Firecracker page server adopts
// its VMM's: a child (foreign-vmm.c) maps two regions with a gap, registers them, hands the
// descriptor over a Unix socket with the regions in JSON, and touches pages from threads on
// command; this process reads its faults and places the memory file's pages into it.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, fstatSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventBatch, FileMapping, Mapping, Userfaultfd, duplicateDescriptor, peerCredentials, receiveMessage, type ForeignRange } from '../../src/kernel/index.js';
import { addon } from '../../src/kernel/addon.js';
import { featureSkip } from '../support/hugepages.js';
import { patternImage } from '../support/serve.js';
import { waitFor } from '../support/threads.js';
import { LineChild, listenUnix, nextMessage } from '../support/unix-peer.js';

const PAGE = 4096;
const REGION_PAGES = 4; // as foreign-vmm.c lays them out, GAP_PAGES apart
const GAP_PAGES = 2;
const [EFAULT, ESRCH, EAGAIN, EEXIST, ENOENT] = [-14, -3, -11, -17, -2];

const work = mkdtempSync(join(tmpdir(), 'postcopy-foreign-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));

/** The child, compiled once; a skip reason when it cannot be. */
function compileVmm(): { binary: string } | { skip: string } {
  const source = join(__dirname, '..', '..', '..', 'test', 'kernel', 'foreign-vmm.c');
  const binary = join(work, 'foreign-vmm');
  const r = spawnSync('cc', ['-O2', '-Wall', '-pthread', '-o', binary, source], { encoding: 'utf8' });
  if (r.error) return { skip: `needs a C compiler (cc: ${r.error.message})` };
  assert.equal(r.status, 0, r.stderr); // a broken child is a failure, not a skip
  return { binary };
}
const vmmBuild = compileVmm();
const skip = 'skip' in vmmBuild ? vmmBuild.skip : featureSkip('EVENT_REMOVE');

/** The memory file: both regions' pages in order, word k = (k + 1) * 0x9e3779b1 | 1. */
const memoryPath = join(work, 'memory');
const image = patternImage(2 * REGION_PAGES * PAGE, 1);
writeFileSync(memoryPath, image);

interface Region {
  base: number;
  size: number;
  offset: number;
}

/** A page server for the child's memory: each fault gets its page from the file, or zeros once removed. */
class Server {
  readonly faults: number[] = [];
  readonly errors: string[] = [];
  private readonly removed = new Set<number>();

  constructor(readonly uffd: Userfaultfd, readonly regions: Region[], readonly file: FileMapping) {}

  start(): void {
    this.uffd.onEvents((batch) => this.handle(batch));
  }

  handle(batch: EventBatch): void {
    for (let i = 0; i < batch.count; i++) {
      if (batch.kind(i) === 'remove') {
        const { start, end } = batch.range(i);
        for (let a = start; a < end; a += PAGE) this.removed.add(a);
        continue;
      }
      const address = batch.address(i) - (batch.address(i) % PAGE);
      this.faults.push(address);
      const status = this.removed.has(address) ? this.uffd.tryZeropage(address, PAGE) : this.uffd.tryCopyFrom(address, this.file, this.fileOffset(address), PAGE);
      if (status !== PAGE) this.errors.push(`placing ${address.toString(16)}: ${status}`);
    }
  }

  fileOffset(address: number): number {
    const region = this.regions.find((r) => address >= r.base && address < r.base + r.size)!;
    return region.offset + address - region.base;
  }

  /** The address of page `page` of region `region`. */
  page(region: number, page: number): number {
    return this.regions[region].base + page * PAGE;
  }
}

/** Starts the child, takes its one message, adopts its userfaultfd and serves it. */
async function withVmm(body: (vmm: LineChild, server: Server, socket: number) => Promise<void>): Promise<void> {
  const listener = await listenUnix();
  const accepted = listener.accept();
  const vmm = new LineChild(spawn((vmmBuild as { binary: string }).binary, [listener.path], { stdio: ['pipe', 'pipe', 'pipe'] }));
  const file = FileMapping.open(memoryPath);
  let uffd: Userfaultfd | undefined;
  try {
    const { fd } = await accepted.catch((error: Error) => assert.fail(`${error.message}; the child: ${vmm.stderr}`));
    const buffer = new Uint8Array(1024);
    const message = await nextMessage(fd, buffer);
    assert.equal(message.descriptors.length, 1, 'the userfaultfd came with the regions');
    const json = JSON.parse(Buffer.from(buffer.subarray(0, message.bytes)).toString()) as { base_host_virt_addr: number; size: number; offset: number }[];
    const regions = json.map((r) => ({ base: r.base_host_virt_addr, size: r.size, offset: r.offset }));
    uffd = Userfaultfd.adoptForeign(message.descriptors[0], regions.map((r) => ({ start: r.base, length: r.size })));
    const server = new Server(uffd, regions, file);
    server.start();
    assert.equal(peerCredentials(fd).pid, vmm.child.pid, 'the VMM to end if it cannot be served');
    await body(vmm, server, fd);
    assert.deepEqual(server.errors, []);
  } finally {
    vmm.kill();
    uffd?.close();
    file.close();
    listener.close();
  }
}

test('adoptForeign: another process\'s faults, served from a FileMapping, read the file\'s bytes there', { skip }, () => withVmm(async (vmm, server) => {
  const { uffd, regions } = server;
  assert.deepEqual([...uffd.features], ['EVENT_REMOVE'], 'what the owner\'s handshake enabled');
  assert.equal(regions[1].base - regions[0].base, (REGION_PAGES + GAP_PAGES) * PAGE);
  for (const [region, page] of [[0, 0], [0, 3], [1, 0], [1, 2]]) {
    assert.equal(await vmm.ask(`check ${region} ${page}`), 'ok', `region ${region} page ${page}`);
  }
  assert.deepEqual(server.faults, [server.page(0, 0), server.page(0, 3), server.page(1, 0), server.page(1, 2)], 'the owner\'s addresses');
  assert.equal(await vmm.ask('check 1 2'), 'ok', 'placed once, read again without a fault');
  assert.equal(server.faults.length, 4);
  assert.equal(uffd.tryCopyFrom(server.page(1, 2), server.file, 0, PAGE), EEXIST, 'the kernel answers for the owner\'s page');
  assert.equal(uffd.tryWake(server.page(1, 2), PAGE), 0);
  assert.equal(uffd.tryZeropage(server.page(0, 1), PAGE), PAGE, 'zeros, as a REMOVE asks');
  assert.equal(await vmm.ask('zero 0 1'), 'zero');
  assert.equal(server.faults.length, 4);
}));

test('placements outside the declared ranges, the gap between them included, are refused without an ioctl; so are register and move', { skip }, () => withVmm(async (vmm, server) => {
  const { uffd, file } = server;
  const gap = server.page(0, REGION_PAGES);
  const outside: [string, number, number][] = [
    ['the gap between the regions', gap, PAGE],
    ['a run from region 0 into the gap', server.page(0, REGION_PAGES - 1), 2 * PAGE],
    ['a run from region 0 over the gap into region 1', server.page(0, REGION_PAGES - 1), (GAP_PAGES + 2) * PAGE],
    ['past the last region', server.page(1, REGION_PAGES), PAGE],
    ['below the first region', server.page(0, 0) - PAGE, PAGE],
  ];
  for (const [where, at, length] of outside) {
    assert.equal(uffd.tryCopyFrom(at, file, 0, length), EFAULT, where);
    assert.equal(uffd.lastCount, 0);
    assert.equal(uffd.tryCopy(at, new Uint8Array(length), length), EFAULT, where);
    assert.equal(uffd.tryZeropage(at, length), EFAULT, where);
    assert.equal(uffd.tryWake(at, length), EFAULT, where);
    const declared = { code: 'ERR_POSTCOPY_RANGE', message: /is not inside a range declared for this userfaultfd \(adoptForeign\)$/ };
    assert.throws(() => uffd.zeropage(at, length), declared, where);
    assert.throws(() => uffd.wake(BigInt(at), length), declared, where);
    assert.throws(() => uffd.unregister(at, length), declared, where);
  }
  // the kernel would have answered otherwise: nothing is mapped in the owner's gap
  assert.equal(addon.placement.copyFrom(uffd.fd, gap, file.base, PAGE, 0), ENOENT);

  const foreign = /refused: this userfaultfd is another process's \(adoptForeign\)/;
  assert.throws(() => uffd.register(server.page(0, 0), PAGE, 'missing'), { code: 'ERR_POSTCOPY_RANGE', message: foreign });
  const ours = new Mapping(PAGE);
  try {
    // UFFDIO_MOVE would take its source from the owner's memory at that address
    assert.throws(() => uffd.move(server.page(0, 0), ours.address, PAGE), { code: 'ERR_POSTCOPY_RANGE', message: foreign });
  } finally {
    ours.unmap();
  }
  // a source running past the end of the file: the kernel would copy its first page
  assert.equal(uffd.tryCopyFrom(server.page(1, 2), file, file.length - PAGE, 2 * PAGE), EFAULT);
  assert.equal(uffd.lastCount, 0);
  assert.equal(uffd.tryCopyFrom(server.page(0, 0), file, 0, PAGE, 0), PAGE, 'inside: placed');
  assert.equal(await vmm.ask('check 0 0'), 'ok');
  assert.equal(await vmm.ask('check 1 2'), 'ok');
  assert.deepEqual(server.faults, [server.page(1, 2)], 'nothing placed by a refused call');
}));

test('unregister of a declared sub-range acts in the owner\'s memory: its page reads zeros there, and placements into it are refused', { skip }, () => withVmm(async (vmm, server) => {
  const { uffd, file } = server;
  uffd.unregister(server.page(1, 1), PAGE);
  assert.equal(await vmm.ask('zero 1 1'), 'zero', 'the kernel fills it: no fault comes here');
  assert.deepEqual(server.faults, []);
  assert.equal(uffd.tryCopyFrom(server.page(1, 1), file, server.fileOffset(server.page(1, 1)), PAGE), EFAULT);
  assert.throws(() => uffd.wake(server.page(1, 1), PAGE), { code: 'ERR_POSTCOPY_RANGE', message: /is not inside a range registered on this userfaultfd$/ });
  // the kernel would have answered otherwise: that area is no longer registered (ENOENT)
  assert.equal(addon.placement.copyFrom(uffd.fd, server.page(1, 1), file.base, PAGE, 0), ENOENT);
  // its neighbours are still registered, in the owner's split areas
  for (const page of [0, 2]) assert.equal(await vmm.ask(`check 1 ${page}`), 'ok');
  assert.deepEqual(server.faults, [server.page(1, 0), server.page(1, 2)]);
  uffd.unregister(server.page(1, 0), 2 * PAGE); // again over the hole: the kernel does not mind
  assert.equal(await vmm.ask('check 1 0'), 'ok', 'placed before: still there');
  assert.throws(() => uffd.unregister(server.page(0, 3), (GAP_PAGES + 2) * PAGE), { code: 'ERR_POSTCOPY_RANGE' }, 'across the gap');
}));

test('a REMOVE in the owner (MADV_DONTNEED) reaches the batch with its range; until it is read, placements are EAGAIN', { skip }, () => withVmm(async (vmm, server) => {
  const { uffd, file } = server;
  assert.equal(await vmm.ask('check 0 1'), 'ok');
  uffd.stopEvents();
  vmm.send('dontneed 0 1'); // its thread waits in madvise until the event is read
  const other = server.page(1, 3);
  const seen: number[] = [];
  const place = () => {
    seen.push(uffd.tryCopyFrom(other, file, server.fileOffset(other), PAGE));
    return seen[seen.length - 1] === EAGAIN;
  };
  await waitFor(place, 5000, 'EAGAIN while the REMOVE is queued');
  assert.ok(seen.slice(0, -1).every((s) => s === PAGE || s === EEXIST), `before the event: ${seen}`);
  const batch = new EventBatch();
  assert.equal(uffd.readEvents(batch), 1);
  assert.equal(batch.kind(0), 'remove');
  assert.deepEqual(batch.range(0), { start: server.page(0, 1), end: server.page(0, 2) });
  assert.equal(await vmm.answer(), 'done', 'the owner\'s madvise returned once the event was read');
  server.handle(batch);
  server.start();
  assert.equal(await vmm.ask('zero 0 1'), 'zero', 'faults again, served as zeros: never the file\'s old bytes');
  assert.deepEqual(server.faults.slice(-1), [server.page(0, 1)]);
  assert.equal(await vmm.ask('check 1 3'), 'ok');
}));

test('after the owner exits: placements are ESRCH, wake is 0, unregister ENOMEM, no event, and its socket ends', { skip }, () => withVmm(async (vmm, server, socket) => {
  const { uffd, file } = server;
  assert.equal(await vmm.ask('check 0 0'), 'ok');
  vmm.send('exit');
  assert.deepEqual(await vmm.exited, { code: 0, signal: null });
  assert.equal(uffd.tryCopyFrom(server.page(0, 1), file, 0, PAGE), ESRCH);
  assert.equal(uffd.tryCopyFrom(server.page(0, 0), file, 0, PAGE), ESRCH, 'placed before: ESRCH all the same');
  assert.equal(uffd.tryZeropage(server.page(0, 2), PAGE), ESRCH);
  assert.throws(() => uffd.writeProtect(server.page(0, 2), PAGE), { code: 'ESRCH' });
  assert.equal(uffd.tryWake(server.page(0, 2), PAGE), 0, 'WAKE needs no mm: it wakes nobody');
  assert.throws(() => uffd.unregister(server.page(0, 2), PAGE), { code: 'ENOMEM', syscall: 'ioctl(UFFDIO_UNREGISTER)' });
  assert.equal(uffd.readEvents(new EventBatch()), 0, 'no event says so');
  assert.deepEqual(receiveMessage(socket, new Uint8Array(16)), { bytes: 0, descriptors: [], truncated: false }, 'the socket does');
}));

test('adoptForeign refuses ranges that are not page-aligned, empty or disjoint, before it takes the descriptor', { skip: featureSkip() }, () => {
  const own = Userfaultfd.open();
  const fd = duplicateDescriptor(own.fd); // a userfaultfd no Userfaultfd owns
  try {
    const bad: [ForeignRange[], RegExp][] = [
      [[], /at least one range/],
      [[{ start: 0x10000 + 512, length: PAGE }], /ranges\[0\] 0x10200 length 4096 is not a non-empty run of whole 4096-byte pages/],
      [[{ start: 0x10000, length: PAGE + 1 }], /ranges\[0\]/],
      [[{ start: 0x10000, length: 0 }], /ranges\[0\]/],
      [[{ start: 0x20000, length: 4 * PAGE }, { start: 0x10000, length: 0x10000 + PAGE }], /ranges\[0\] at 0x20000 overlaps ranges\[1\] 0x10000\.\.0x21000/],
    ];
    for (const [ranges, why] of bad) {
      assert.throws(() => Userfaultfd.adoptForeign(fd, ranges), (error: Error & { code?: string }) => {
        assert.equal(error.code, 'ERR_POSTCOPY_RANGE', error.message);
        assert.ok(error instanceof RangeError);
        assert.match(error.message, why);
        return true;
      });
    }
    assert.throws(() => Userfaultfd.adoptForeign(fd, [{ start: -PAGE, length: PAGE }]), { code: 'ERR_OUT_OF_RANGE', message: /"ranges\[0\]\.start"/ });
    assert.throws(() => Userfaultfd.adoptForeign(fd, [{ start: 0x10000, length: '4096' as never }]), { code: 'ERR_INVALID_ARG_TYPE', message: /"ranges\[0\]\.length"/ });
    fstatSync(fd); // still open, still nobody's
    const adopted = Userfaultfd.adoptForeign(fd, [{ start: 0x10000, length: PAGE }, { start: 0x11000, length: PAGE }]);
    assert.equal(adopted.fd, fd);
    assert.equal(adopted.tryZeropage(0x10000, 2 * PAGE), EFAULT, 'adjacent declared ranges stay two');
    adopted.close();
    assert.throws(() => fstatSync(fd), { code: 'EBADF' }, 'closed with its Userfaultfd');
    assert.throws(() => Userfaultfd.adoptForeign(own.fd, [{ start: 0x10000, length: PAGE }]), { code: 'ERR_INVALID_ARG_VALUE', message: /already owned/ });
  } finally {
    own.close();
  }
  const notUffd = duplicateDescriptor(1);
  try {
    assert.throws(() => Userfaultfd.adoptForeign(notUffd, [{ start: 0x10000, length: PAGE }]), { code: 'ERR_INVALID_ARG_VALUE', message: /must be a userfaultfd/ });
    fstatSync(notUffd);
  } finally {
    closeSync(notUffd);
  }
});
