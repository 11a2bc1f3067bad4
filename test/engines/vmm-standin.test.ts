// The VMM stand-in (test/support/vmm-standin.c) proven honest without the real server: a fake
// handler written apart from it (test/support/fake-uffd-handler.py, python3, since Node drops
// SCM_RIGHTS descriptors) serves it right, wrong, never, or stale after a balloon; the stand-in
// must pass, name the wrong byte, name the address each vCPU waits on, and demand zeros.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { hugeSkip } from '../support/hugepages.js';
import { patternImage } from '../support/serve.js';
import { ROOT, STANDIN_EXIT, runStandin, standinSkip, startStandin, type StandinRun } from '../support/vmm-standin.js';

const HANDLER = join(ROOT, 'test', 'support', 'fake-uffd-handler.py');
const skip = standinSkip() || (spawnSync('python3', ['--version']).error ? 'no python3 for the fake handler' : false);
const dir = mkdtempSync(join(tmpdir(), 'postcopy-vmm-standin-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));
const KiB = 1024;
const MiB = 1024 * KiB;
const MEM = join(dir, 'mem');
const memory = patternImage(8 * MiB); // no zero word: a page of file data never passes for zeros
if (!skip) writeFileSync(MEM, memory);

interface Handshake {
  raw: string;
  regions: Record<string, number>[] | null;
  fds: number;
}

let sockets = 0;

/** Starts the fake handler and waits until it listens; `finished` checks that it exited cleanly. */
async function startHandler(mode: 'good' | 'wrong' | 'never' | 'stale', extra: string[] = []) {
  const socket = join(dir, `handler${++sockets}.sock`);
  const child = spawn('python3', [HANDLER, '--socket', socket, '--mem-file', MEM, '--mode', mode, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const next = async () => {
    const line = await lines.next();
    if (line.done) throw new Error(`the fake handler exited: ${stderr}`);
    return JSON.parse(line.value);
  };
  assert.equal((await next()).event, 'listening');
  const handshake: Promise<Handshake> = next();
  handshake.catch(() => {});
  return {
    args: ['--socket', socket, '--mem-file', MEM],
    handshake,
    finished: async () => {
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000); // it exits on the VMM's EOF
      assert.equal(await exited, 0, `the fake handler failed: ${stderr}`);
      clearTimeout(timer);
    },
  };
}

/** One stand-in run against the fake handler in `mode`. */
async function serve(mode: 'good' | 'wrong' | 'never' | 'stale', args: string[], extra: string[] = []): Promise<{ run: StandinRun; handshake: Handshake }> {
  const handler = await startHandler(mode, extra);
  const run = await runStandin([...handler.args, ...args]);
  await handler.finished();
  return { run, handshake: await handler.handshake };
}

function assertPassed(run: StandinRun) {
  assert.equal(run.code, STANDIN_EXIT.ok, run.stderr);
  assert.equal(run.result?.ok, true);
  assert.equal(run.result.error, null);
  assert.equal(run.result.mismatch_count, 0);
}

const FIELDS = {
  'v1.6': ['base_host_virt_addr', 'offset', 'size'],
  'v1.7': ['base_host_virt_addr', 'offset', 'page_size_kib', 'size'],
  'v1.12': ['base_host_virt_addr', 'offset', 'page_size', 'page_size_kib', 'size'],
};

for (const [fields, keys] of Object.entries(FIELDS)) {
  test(`stand-in: every page of two 4 KiB regions with a gap verifies; ${fields} fields reach the handler`, { skip }, async () => {
    const write = fields === 'v1.12' ? ['--write'] : [];
    const { run, handshake } = await serve('good', ['--region', '1M', '--region', '256K', '--fields', fields, ...write]);
    assertPassed(run);
    const pages = (MiB + 256 * KiB) / 4096;
    assert.equal(run.result!.touches, pages);
    assert.equal(run.result!.first_touches, pages);
    assert.ok(run.result!.touch_us.p50! > 0 && run.result!.touch_us.max! >= run.result!.touch_us.p99!);
    const [a, b] = run.mapped!.regions;
    assert.deepEqual([a.size, a.offset, a.page_size, b.size, b.offset], [MiB, 0, 4096, 256 * KiB, MiB]);
    assert.ok(b.base >= a.base + a.size + 4096, 'an unmapped gap between the regions');
    assert.equal(handshake.fds, 1);
    assert.deepEqual(handshake.regions!.map((r) => Object.keys(r).sort()), [keys, keys]);
    handshake.regions!.forEach((r, i) => {
      const mapped = run.mapped!.regions[i];
      assert.deepEqual([r.base_host_virt_addr, r.size, r.offset], [mapped.base, mapped.size, mapped.offset]);
      if (fields !== 'v1.6') assert.equal(r.page_size_kib, 4096, 'in bytes, despite the name');
      if (fields === 'v1.12') assert.equal(r.page_size, 4096);
    });
  });
}

test('stand-in: one wrong byte from the handler is named by region, page and offset', { skip }, async () => {
  const { run } = await serve('wrong', ['--region', '1M', '--region', '256K'], ['--wrong', '1:3:4095']);
  assert.equal(run.code, STANDIN_EXIT.mismatch, run.stderr);
  assert.equal(run.result!.ok, false);
  assert.equal(run.result!.mismatch_count, 1);
  const expected = memory[MiB + 3 * 4096 + 4095];
  const address = run.mapped!.regions[1].base + 3 * 4096 + 4095;
  assert.deepEqual(run.result!.mismatches, [{ region: 1, page: 3, offset: 4095, address, want: 'file', expected, got: expected ^ 0xff }]);
});

test('stand-in: a handler that never serves times out naming the address each vCPU waits on', { skip }, async () => {
  const handler = await startHandler('never');
  const standin = startStandin([...handler.args, '--region', '1M', '--region', '256K', '--timeout', '3']);
  const { pid, regions } = await standin.mapped;
  await handler.handshake; // connected: the vCPUs fault now and wait
  const end = regions[0].base + regions[0].size;
  const maps = readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter(Boolean);
  const around = maps.find((line) => {
    const [from, to] = line.split(' ')[0].split('-').map((x) => parseInt(x, 16));
    return from <= end && end < to;
  });
  assert.ok(!around || around.split(' ')[1] === '---p', `the gap after region 0 is no guest memory: ${around}`);
  const run = await standin.done;
  await handler.finished();
  assert.equal(run.code, STANDIN_EXIT.timeout, run.stderr);
  const base = regions[0].base;
  assert.deepEqual(run.result!.waiting.filter((w) => w.thread.startsWith('vcpu')), [
    { thread: 'vcpu0', doing: 'touch', address: base, region: 0, page: 0 },
    { thread: 'vcpu1', doing: 'touch', address: base + 4096, region: 0, page: 1 },
  ]);
  assert.match(run.result!.error!, new RegExp(`^timeout after 3 s: vcpu0 waits on 0x${base.toString(16)} \\(region 0 page 0, touch\\)`));
  assert.match(run.stderr, /vmm-standin: timeout after 3 s/);
});

test('stand-in: balloon pages read zeros after inflate; a handler placing file data there is caught', { skip }, async () => {
  const args = ['--region', '1M', '--balloon-inflate', '0:256K:128K'];
  const good = (await serve('good', args)).run;
  assertPassed(good);
  assert.equal(good.result!.removed_pages, 32);
  assert.ok(good.result!.zeros_checked >= 32, `zeros checked: ${good.result!.zeros_checked}`);

  const stale = (await serve('stale', args)).run;
  assert.equal(stale.code, STANDIN_EXIT.mismatch, stale.stderr);
  assert.ok(stale.result!.mismatch_count >= 32, `mismatches: ${stale.result!.mismatch_count}`);
  for (const m of stale.result!.mismatches) {
    assert.equal(m.want, 'zeros');
    assert.ok(m.region === 0 && m.page >= 64 && m.page < 96, `page ${m.page} is in the balloon`);
  }
});

test('stand-in: a remove storm under random touches and writes: removed pages zeros, others file data', { skip }, async () => {
  const { run } = await serve('good', ['--region', '1M', '--region', '256K', '--threads', '3', '--pattern', 'random', '--seconds', '1', '--write', '--remove-storm', '200']);
  assertPassed(run);
  assert.equal(run.result!.removed_pages, 200);
  assert.ok(run.result!.zeros_checked > 0 && run.result!.touches > run.result!.zeros_checked);
});

test('stand-in: a 2 MiB hugetlb region beside a 4 KiB one, with a balloon on a huge page', { skip: skip || hugeSkip(2) }, async () => {
  const { run, handshake } = await serve('good', ['--region', '1M', '--region', '4M:2M', '--balloon-inflate', '1:2M:2M']);
  assertPassed(run);
  assert.equal(run.result!.first_touches, 256 + 2);
  assert.equal(run.result!.removed_pages, 1);
  assert.deepEqual(handshake.regions!.map((r) => r.page_size), [4096, 2 * MiB]);
});

test('stand-in: each --bad handshake reaches the handler as described', { skip }, async () => {
  const cases: [string[], (h: Handshake, regions: { base: number; size: number }[]) => void][] = [
    [['--bad', 'json'], (h) => assert.ok(h.regions === null && h.raw.startsWith('[{"base_host_virt_addr":'), h.raw)],
    [['--bad', 'unaligned'], (h, [r]) => {
      assert.equal(h.regions![0].base_host_virt_addr, r.base + 2048);
      assert.equal(h.regions![0].base_host_virt_addr + h.regions![0].size, r.base + r.size);
    }],
    [['--bad', 'overlap'], (h) => {
      const [a, b] = h.regions!;
      assert.ok(b.base_host_virt_addr > a.base_host_virt_addr && b.base_host_virt_addr < a.base_host_virt_addr + a.size);
    }],
    [['--bad', 'pagesize'], (h) => assert.deepEqual([h.regions![0].page_size, h.regions![0].page_size_kib], [8192, 8192])],
    [['--bad', 'nofd'], (h) => assert.equal(h.fds, 0)],
    [['--extra-fd'], (h) => assert.equal(h.fds, 2)],
  ];
  for (const [bad, check] of cases) {
    const { run, handshake } = await serve('never', ['--region', '1M', '--region', '256K', '--touches', '0', ...bad]);
    assertPassed(run); // no vCPU touches: the stand-in sent and left
    check(handshake, run.mapped!.regions);
  }
});

test('stand-in: a missing socket and one nobody listens on fail as Firecracker does', { skip }, async () => {
  const missing = await runStandin(['--socket', join(dir, 'absent.sock'), '--mem-file', MEM, '--region', '1M']);
  assert.equal(missing.code, STANDIN_EXIT.connect);
  assert.ok(missing.mapped, 'mapped before connecting');
  assert.match(missing.stderr, /Failed to connect to UDS Unix stream: No such file or directory \(os error 2\)/);

  const unbound = join(dir, 'bound-only.sock');
  const bind = spawnSync('python3', ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', unbound]);
  assert.equal(bind.status, 0, String(bind.stderr));
  const refused = await runStandin(['--socket', unbound, '--mem-file', MEM, '--region', '1M']);
  assert.equal(refused.code, STANDIN_EXIT.connect);
  assert.match(refused.result!.error!, /^Failed to connect to UDS Unix stream: Connection refused \(os error 111\)$/);
});
