// The page server against VMM stand-ins (test/support/vmm-standin.c: Firecracker's restore step
// for step, in another process, checking every byte it reads against the memory file): real
// userfaultfds, real faults from real threads of another process, real REMOVE events.
import test, { after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, copyFileSync, mkdtempSync, openSync, readSync, rmSync, truncateSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PageServer, type PageServerOptions, type VmInfo } from '../../src/serve/index.js';
import { patternImage } from '../support/serve.js';
import { hugeSkip } from '../support/hugepages.js';
import { StalledDisk, stallFuseSkip } from '../support/stall-fuse.js';
import { waitFor } from '../support/threads.js';
import { STANDIN_EXIT, runStandin, standinSkip, startStandin } from '../support/vmm-standin.js';

const MiB = 2 ** 20;
const skip = standinSkip();
const dir = mkdtempSync(join(tmpdir(), 'postcopy-serve-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A memory file of `size` bytes with data everywhere but the `holes` (byte ranges), which stay sparse. */
function memoryFile(name: string, size: number, holes: [number, number][] = [], seed = 7): string {
  const path = join(dir, name);
  const fd = openSync(path, 'w');
  try {
    truncateSync(path, size);
    const image = patternImage(size, seed);
    const chunks: [number, number][] = [];
    let at = 0;
    for (const [start, end] of [...holes].sort((a, b) => a[0] - b[0])) {
      if (start > at) chunks.push([at, start]);
      at = end;
    }
    if (at < size) chunks.push([at, size]);
    for (const [start, end] of chunks) writeSync(fd, image, start, end - start, start);
  } finally {
    closeSync(fd);
  }
  return path;
}

async function serving(file: string, options: Partial<PageServerOptions> = {}) {
  const socket = join(dir, `uffd-${Math.random().toString(36).slice(2)}.sock`);
  const server = new PageServer({ socket, source: { kind: 'file', path: file }, ...options });
  const events: { event: string; info?: VmInfo; reason?: string; outcome?: string; pid?: number }[] = [];
  server.on('vm', (info) => events.push({ event: 'vm', info }));
  server.on('all-present', (info) => events.push({ event: 'all-present', info }));
  server.on('first-fault', (info) => events.push({ event: 'first-fault', info }));
  server.on('ended', (info, reason, outcome) => events.push({ event: 'ended', info, reason, outcome }));
  server.on('refused', (pid, reason) => events.push({ event: 'refused', pid, reason }));
  await server.listen();
  return { server, socket, events };
}

test('serve: 4 KiB regions with a gap, each generation of region fields, every byte as in the memory file', { skip, timeout: 120_000 }, async () => {
  const file = memoryFile('plain.mem', 12 * MiB);
  const s = await serving(file);
  try {
    for (const fields of ['v1.6', 'v1.7', 'v1.12']) {
      const run = await runStandin(['--socket', s.socket, '--mem-file', file, '--region', '8M', '--region', '4M', '--fields', fields, '--threads', '3', '--pattern', 'random', '--write'], 60_000);
      assert.equal(run.code, STANDIN_EXIT.ok, `${fields}: ${run.stdout}\n${run.stderr}`);
      assert.ok(run.result!.touches > 0 && run.result!.mismatch_count === 0);
    }
    assert.equal(s.events.filter((e) => e.event === 'vm').length, 3);
  } finally {
    s.server.close();
  }
});

test('serve: holes of a sparse memory file are zeros, placed without reading', { skip, timeout: 60_000 }, async () => {
  const file = memoryFile('sparse.mem', 8 * MiB, [[1 * MiB, 3 * MiB], [6 * MiB, 6 * MiB + 64 * 1024]]);
  const s = await serving(file);
  const bytesRead = async () => (await s.server.metrics.registry.getSingleMetric('postcopy_serve_bytes_read_total')!.get()).values[0]?.value ?? 0;
  try {
    const run = await runStandin(['--socket', s.socket, '--mem-file', file, '--region', '8M', '--threads', '2'], 60_000);
    assert.equal(run.code, STANDIN_EXIT.ok, run.stdout + run.stderr);
    await waitForEvent(s.events, 'all-present');
    // the pager's last counters come a moment after: every data page read once, no hole
    let read = -1;
    for (let last = -2; read !== last; await new Promise((r) => setTimeout(r, 300))) [last, read] = [read, await bytesRead()];
    assert.equal(read, 8 * MiB - 2 * MiB - 64 * 1024);
  } finally {
    s.server.close();
  }
});

test('serve: 2 MiB hugetlb regions beside a 4 KiB one', { skip: skip || hugeSkip(8), timeout: 60_000 }, async () => {
  const file = memoryFile('huge.mem', 8 * MiB);
  const s = await serving(file);
  try {
    const run = await runStandin(['--socket', s.socket, '--mem-file', file, '--region', '4M:2M', '--region', '4M', '--threads', '2', '--write'], 60_000);
    assert.equal(run.code, STANDIN_EXIT.ok, run.stdout + run.stderr);
  } finally {
    s.server.close();
  }
});

test('serve: balloon inflate during the faults, then deflate and touch again: zeros, never the file', { skip, timeout: 60_000 }, async () => {
  const file = memoryFile('balloon.mem', 8 * MiB);
  const s = await serving(file, { prefetch: 'none' });
  try {
    const run = await runStandin(['--socket', s.socket, '--mem-file', file, '--region', '8M', '--threads', '2', '--pattern', 'random', '--seconds', '1',
      '--balloon-inflate', `0:${1 * MiB}:${2 * MiB}`, '--balloon-inflate', `0:${5 * MiB}:${256 * 1024}`, '--balloon-after-ms', '100'], 60_000);
    assert.equal(run.code, STANDIN_EXIT.ok, run.stdout + run.stderr);
    assert.ok(run.result!.zeros_checked > 0, 'removed pages were read back');
  } finally {
    s.server.close();
  }
});

test('serve: a REMOVE storm during a fault storm: no EAGAIN deadlock, every page right', { skip, timeout: 90_000 }, async () => {
  const file = memoryFile('storm.mem', 16 * MiB);
  const s = await serving(file);
  try {
    const run = await runStandin(['--socket', s.socket, '--mem-file', file, '--region', '16M', '--threads', '4', '--pattern', 'random', '--seconds', '2',
      '--remove-storm', '2000', '--write', '--timeout', '60'], 80_000);
    assert.equal(run.code, STANDIN_EXIT.ok, run.stdout + run.stderr);
    assert.ok(run.result!.removed_pages > 0);
  } finally {
    s.server.close();
  }
});

test('serve: eight VMs from one file at once', { skip, timeout: 120_000 }, async () => {
  const file = memoryFile('many.mem', 8 * MiB);
  const s = await serving(file);
  try {
    const runs = await Promise.all(Array.from({ length: 8 }, (_, i) =>
      runStandin(['--socket', s.socket, '--mem-file', file, '--region', '4M', '--region', '4M', '--threads', '2', '--pattern', 'random', '--seed', String(i + 1)], 100_000)));
    runs.forEach((run, i) => assert.equal(run.code, STANDIN_EXIT.ok, `VM ${i}: ${run.stdout}${run.stderr}`));
    assert.equal(s.events.filter((e) => e.event === 'vm').length, 8);
  } finally {
    s.server.close();
  }
});

test('serve: every bad handshake and a short memory file are refused naming why, the VM is killed, the server goes on', { skip, timeout: 120_000 }, async () => {
  const file = memoryFile('short.mem', 4 * MiB);
  const s = await serving(file);
  try {
    const cases: [string[], RegExp][] = [
      [['--bad', 'json'], /malformed JSON/],
      [['--bad', 'unaligned'], /region 0: base_host_virt_addr 0x[0-9a-f]+ is not a multiple of its page size 4096/],
      [['--bad', 'overlap', '--region', '2M', '--region', '2M'], /regions 0 and 1 overlap in memory/],
      [['--bad', 'pagesize'], /page size 8192 is neither 4096 nor 2097152/],
      [['--bad', 'nofd'], /no userfaultfd came with the regions/],
      [['--region', '2M', '--region', '4M'], /the regions need 6291456 bytes of .*short\.mem, which has 4194304/],
    ];
    for (const [args, why] of cases) {
      const region = args.includes('--region') ? [] : ['--region', '2M'];
      const run = await runStandin(['--socket', s.socket, '--mem-file', file, ...region, ...args, '--threads', '1', '--timeout', '20'], 30_000);
      assert.equal(run.signal, 'SIGKILL', `${args.join(' ')}: the refused VM was not ended (${run.code} ${run.stdout})`);
      const refusal = s.events.filter((e) => e.event === 'refused').pop();
      assert.match(refusal?.reason ?? '', why, args.join(' '));
      assert.equal(refusal?.pid, run.mapped?.pid);
    }
    const good = await runStandin(['--socket', s.socket, '--mem-file', file, '--region', '4M', '--threads', '2'], 30_000);
    assert.equal(good.code, STANDIN_EXIT.ok, 'a good VM after the refusals is served');
  } finally {
    s.server.close();
  }
});

test('serve: a memory file that becomes unreadable ends the VM (killed, not frozen, not fed zeros)', { skip, timeout: 60_000 }, async () => {
  const file = memoryFile('vanishing.mem', 16 * MiB);
  const reference = join(dir, 'vanishing.copy');
  copyFileSync(file, reference); // the stand-in checks against this one: only the server's source goes away
  const s = await serving(file, { prefetch: 'none' });
  try {
    const vm = startStandin(['--socket', s.socket, '--mem-file', reference, '--region', '16M', '--threads', '1', '--pattern', 'sequential', '--seconds', '20', '--timeout', '40'], 50_000);
    await vm.mapped;
    await waitForEvent(s.events, 'first-fault');
    truncateSync(file, 1 * MiB); // pages past 1 MiB can no longer be read
    const run = await vm.done;
    assert.equal(run.signal, 'SIGKILL', `${run.code} ${run.stdout}`);
    const ended = await waitForEvent(s.events, 'ended');
    assert.equal(ended.outcome, 'failed');
    assert.match(ended.reason ?? '', /region 0 page \d+/);
  } finally {
    s.server.close();
  }
});

test('serve: a stalled disk: the VM whose page cannot be read is ended within the bound, another VM\'s cached pages are served meanwhile', { skip: skip || stallFuseSkip(), timeout: 90_000 }, async () => {
  const backing = memoryFile('stalled.mem', 8 * MiB);
  const disk = await StalledDisk.mount(join(dir, 'fuse'), backing, false);
  const stallSeconds = 2;
  const s = await serving(disk.path, { prefetch: 'none', stallSeconds });
  try {
    // the first 4 MiB in the page cache (read through the FUSE file), the rest only on the stalled disk
    const fd = openSync(disk.path, 'r');
    readSync(fd, new Uint8Array(4 * MiB), 0, 4 * MiB, 0);
    closeSync(fd);
    disk.stall();
    const cold = startStandin(['--socket', s.socket, '--mem-file', backing, '--region', '4M', '--region', '4M', '--threads', '1', '--timeout', '60'], 70_000);
    await waitFor(() => disk.held.length > 0, 10_000, 'a read held by the stalled disk');
    const heldAt = Date.now();
    const warm = await runStandin(['--socket', s.socket, '--mem-file', backing, '--region', '4M', '--threads', '2'], 30_000);
    assert.equal(warm.code, STANDIN_EXIT.ok, `the cached VM waits behind the other's read: ${warm.stdout}\n${warm.stderr}`);
    const run = await cold.done;
    const endedCold = () => s.events.find((e) => e.event === 'ended' && e.info?.pid === cold.child.pid);
    await waitFor(() => endedCold() !== undefined, 10_000, 'the end of the stalled VM');
    const ended = endedCold()!;
    assert.equal(run.signal, 'SIGKILL', `the VM behind the stalled read is killed, not left frozen: ${run.code} ${run.stdout}`);
    assert.equal(ended.outcome, 'failed');
    // the pager's silence, or its last report of a waiting fault: both say the disk stopped answering
    assert.match(ended.reason ?? '', /held for [\d.]+ s in a read of the page source|the page source stopped answering/);
    assert.ok(Date.now() - heldAt < (stallSeconds + 4) * 1000, `ended ${Date.now() - heldAt} ms after the read was held (bound ${stallSeconds} s)`);
    disk.go();
    const after = await runStandin(['--socket', s.socket, '--mem-file', backing, '--region', '4M', '--region', '4M', '--threads', '2'], 30_000);
    assert.equal(after.code, STANDIN_EXIT.ok, `once the disk answers, a VM is served whole: ${after.stdout}\n${after.stderr}`);
  } finally {
    s.server.close();
    await disk.unmount();
  }
});

async function waitForEvent(events: { event: string }[], name: string, ms = 10_000): Promise<{ event: string; reason?: string; outcome?: string }> {
  const deadline = Date.now() + ms;
  for (;;) {
    const found = events.find((e) => e.event === name);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`no '${name}' event in ${ms} ms: ${JSON.stringify(events.map((e) => e.event))}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
