// The page server with a remote source: `postcopy serve-pages` in another process has the
// memory file and migrates each VM's regions to the server (faults as page requests, the rest
// streamed), the VMM stand-in checks every byte. Breaks are real: a chaos proxy cuts the
// connections, and an origin killed for good must end its VM, never freeze it or feed it zeros.
import test, { after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync, truncateSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PageServer, type PageServerOptions, type RemoteSourceOptions } from '../../src/serve/index.js';
import { ChaosProxy } from '../../src/testing/index.js';
import { parseEndpoint } from '../../src/transport/index.js';
import { startService } from '../support/cli.js';
import { patternImage } from '../support/serve.js';
import { STANDIN_EXIT, runStandin, standinSkip, startStandin } from '../support/vmm-standin.js';
import { waitFor } from '../support/threads.js';

const MiB = 2 ** 20;
const PAGE = 4096;
const TOKEN = 'remote-test-token';
const skip = standinSkip();
const dir = mkdtempSync(join(tmpdir(), 'postcopy-remote-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A memory file of `size` bytes with data everywhere but one sparse hole. */
function memoryFile(name: string, size: number, hole: [number, number]): string {
  const path = join(dir, name);
  truncateSync((closeSync(openSync(path, 'w')), path), size);
  const fd = openSync(path, 'r+');
  const image = patternImage(size, 11);
  writeSync(fd, image, 0, hole[0], 0);
  writeSync(fd, image, hole[1], size - hole[1], hole[1]);
  closeSync(fd);
  return path;
}

/** `postcopy serve-pages` in its own process, over TCP with a token; resolves once it listens. */
async function startOrigin(file: string, args: string[] = []) {
  const origin = startService('serve-pages', ['--mem-file', file, '--listen', '127.0.0.1:0', ...args], { POSTCOPY_TOKEN: TOKEN });
  const listening = await origin.waitFor('listening');
  return { ...origin, endpoint: parseEndpoint(listening.endpoint) };
}

async function serving(remote: RemoteSourceOptions, options: Partial<PageServerOptions> = {}) {
  const socket = join(dir, `uffd-${Math.random().toString(36).slice(2)}.sock`);
  const server = new PageServer({ socket, source: { kind: 'remote', ...remote }, ...options });
  const events: { event: string; pid?: number; reason?: string; outcome?: string; report?: any }[] = [];
  server.on('vm', (info) => events.push({ event: 'vm', pid: info.pid }));
  server.on('staged', (info, report) => events.push({ event: 'staged', pid: info.pid, report }));
  server.on('ended', (info, reason, outcome) => events.push({ event: 'ended', pid: info.pid, reason, outcome }));
  server.on('refused', (pid, reason) => events.push({ event: 'refused', pid, reason }));
  await server.listen();
  return { server, socket, events };
}

/** What `find` returns once it returns something (within `ms`). */
async function found<T>(find: () => T | undefined, what: string, ms = 20_000): Promise<T> {
  await waitFor(() => find() !== undefined, ms, what);
  return find()!;
}

test('serve --from: two VMs at once from another host\'s memory file, byte for byte; faults are page requests, the rest streams, each page once', { skip, timeout: 120_000 }, async () => {
  const file = memoryFile('remote.mem', 32 * MiB, [20 * MiB, 21 * MiB]);
  const origin = await startOrigin(file, ['--postcopy-max-mibs', '12']);
  const s = await serving({ from: origin.endpoint, token: TOKEN, channels: 1 });
  try {
    // each VM lives until its staging is complete (32 MiB at 12 MiB/s: ~2.7 s, or sooner with its requests): else it ends before 'staged'
    const args = ['--socket', s.socket, '--mem-file', file, '--region', '16M', '--region', '16M', '--threads', '2', '--pattern', 'random', '--write', '--seconds', '8'];
    const runs = await Promise.all([runStandin(args, 60_000), runStandin([...args, '--seed', '2'], 60_000)]);
    for (const run of runs) assert.equal(run.code, STANDIN_EXIT.ok, `${run.stdout}\n${run.stderr}`);
    for (const run of runs) {
      const staged = await found(() => s.events.find((e) => e.event === 'staged' && e.pid === run.result!.pid), 'staged event');
      const pages = staged.report.pages;
      assert.equal(pages.missing_at_listen, (32 * MiB) / PAGE, 'every page of the regions came by postcopy');
      assert.equal(pages.streamed + pages.requested, pages.missing_at_listen, JSON.stringify(pages));
      assert.ok(pages.requested > 0, `the VM's faults outran the capped stream: some pages were requested (${JSON.stringify(pages)})`);
    }
    await found(() => (origin.events.filter((e) => e.event === 'served').length === 2 ? true : undefined), 'two served sessions');
  } finally {
    s.server.close();
    origin.child.kill('SIGTERM');
  }
});

test('serve --from through a chaos proxy: the connections are cut mid-restore, recovered, every byte right', { skip, timeout: 120_000 }, async () => {
  const file = memoryFile('chaos.mem', 24 * MiB, [4 * MiB, 5 * MiB]);
  const origin = await startOrigin(file, ['--postcopy-max-mibs', '8', '--stall-seconds', '2', '--recover-seconds', '20']);
  const proxies: ChaosProxy[] = [];
  const advertise = async (listening: ReturnType<typeof parseEndpoint>) => {
    const proxy = new ChaosProxy({ target: listening, seed: 20261203, cuts: 2, directions: ['toTarget'], faultOffset: { min: 256 << 10, max: 4 * MiB }, spread: 'all' });
    proxies.push(proxy);
    const at = await proxy.listen();
    proxy.arm();
    return at;
  };
  const s = await serving({ from: origin.endpoint, token: TOKEN, stallSeconds: 2, recoverSeconds: 20, advertise });
  try {
    const run = await runStandin(['--socket', s.socket, '--mem-file', file, '--region', '24M', '--threads', '2', '--pattern', 'random', '--seconds', '15'], 90_000);
    assert.equal(run.code, STANDIN_EXIT.ok, `${run.stdout}\n${run.stderr}`);
    const staged = await found(() => s.events.find((e) => e.event === 'staged'), 'staged event', 60_000);
    assert.ok(proxies[0].stats().faultsFired > 0, 'the proxy cut a connection');
    assert.ok(staged.report.recoveries >= 1, `recovered: ${JSON.stringify(staged.report)}`);
    assert.equal(staged.report.pages.streamed + staged.report.pages.requested, staged.report.pages.missing_at_listen);
  } finally {
    s.server.close();
    origin.child.kill('SIGTERM');
    await Promise.all(proxies.map((p) => p.close()));
  }
});

test('serve --from: an origin that dies for good ends its VM (killed, not frozen) once the recovery bound is out', { skip, timeout: 60_000 }, async () => {
  const file = memoryFile('dies.mem', 32 * MiB, [1 * MiB, 2 * MiB]);
  const origin = await startOrigin(file, ['--postcopy-max-mibs', '2']);
  const recoverSeconds = 2;
  const s = await serving({ from: origin.endpoint, token: TOKEN, stallSeconds: 1, recoverSeconds });
  try {
    const vm = startStandin(['--socket', s.socket, '--mem-file', file, '--region', '32M', '--threads', '2', '--pattern', 'random', '--seconds', '30', '--timeout', '50'], 55_000);
    await origin.waitFor('session');
    await new Promise((r) => setTimeout(r, 500)); // the VM is faulting, most pages still at the origin
    origin.child.kill('SIGKILL');
    const killedAt = Date.now();
    const run = await vm.done;
    assert.equal(run.signal, 'SIGKILL', `the VM is ended, not left frozen: ${run.code} ${run.stdout}`);
    const ended = await found(() => s.events.find((e) => e.event === 'ended'), 'ended event');
    assert.equal(ended.outcome, 'failed');
    assert.match(ended.reason ?? '', /its pages stopped coming from the origin/);
    assert.ok(Date.now() - killedAt < (recoverSeconds + 5) * 1000, `ended ${Date.now() - killedAt} ms after the origin died (recovery bound ${recoverSeconds} s)`);
  } finally {
    s.server.close();
  }
});

test('serve --from: a wrong token is refused by the origin, an unreachable origin too, each naming why; the VM is ended, the origin serves on', { skip, timeout: 60_000 }, async () => {
  const file = memoryFile('token.mem', 8 * MiB, [0, 1 * MiB]);
  const origin = await startOrigin(file);
  const wrong = await serving({ from: origin.endpoint, token: 'not-the-token' });
  const right = await serving({ from: origin.endpoint, token: TOKEN });
  const unreachable = await serving({ from: { kind: 'tcp', host: '127.0.0.1', port: 1 }, token: TOKEN });
  try {
    const refused = await runStandin(['--socket', wrong.socket, '--mem-file', file, '--region', '8M', '--timeout', '20'], 30_000);
    assert.equal(refused.signal, 'SIGKILL', `${refused.code} ${refused.stdout}`);
    const event = await found(() => wrong.events.find((e) => e.event === 'refused'), 'refused event');
    assert.match(event.reason ?? '', /refused: request: wrong token/);
    assert.match((await origin.waitFor('refused')).reason, /wrong token/);
    const served = await runStandin(['--socket', right.socket, '--mem-file', file, '--region', '8M'], 30_000);
    assert.equal(served.code, STANDIN_EXIT.ok, `${served.stdout}\n${served.stderr}`);
    // nobody listens at the origin's address: refused, naming it
    const nowhere = await runStandin(['--socket', unreachable.socket, '--mem-file', file, '--region', '8M', '--timeout', '20'], 30_000);
    assert.equal(nowhere.signal, 'SIGKILL', `${nowhere.code} ${nowhere.stdout}`);
    const why = await found(() => unreachable.events.find((e) => e.event === 'refused'), 'refused event');
    assert.match(why.reason ?? '', /the origin at 127\.0\.0\.1:1: connect ECONNREFUSED/);
  } finally {
    wrong.server.close();
    right.server.close();
    unreachable.server.close();
    origin.child.kill('SIGTERM');
  }
});

test("serve --from: a VM that ends before its pages all arrived ends its origin session at once, as 'ended' (its VM's doing), not as a failure", { skip, timeout: 60_000 }, async () => {
  const file = memoryFile('short.mem', 32 * MiB, [1 * MiB, 2 * MiB]);
  const origin = await startOrigin(file, ['--postcopy-max-mibs', '2']);
  const s = await serving({ from: origin.endpoint, token: TOKEN });
  try {
    // 32 MiB at 2 MiB/s would take 16 s: the VM is gone long before
    const run = await runStandin(['--socket', s.socket, '--mem-file', file, '--region', '32M', '--threads', '2', '--pattern', 'random', '--seconds', '1'], 30_000);
    assert.equal(run.code, STANDIN_EXIT.ok, `${run.stdout}\n${run.stderr}`);
    const vmEndedAt = Date.now();
    const ended = await origin.waitFor('ended', 10_000);
    assert.match(ended.reason, /the destination's guest ended during postcopy, with [1-9]\d* page\(s\) not yet sent: nothing more is wanted/);
    // SHUT said so: no recovery attempted (30 s), no stall (5 s)
    assert.ok(Date.now() - vmEndedAt < 4000, `${Date.now() - vmEndedAt} ms after the VM ended`);
    assert.deepEqual(origin.events.filter((e) => e.event === 'failed'), []);
  } finally {
    s.server.close();
    origin.child.kill('SIGTERM');
  }
});

test('serve-pages on SIGTERM takes no more requests and lets the session under way finish; its report counts it served', { skip, timeout: 60_000 }, async () => {
  const file = memoryFile('drain.mem', 16 * MiB, [1 * MiB, 2 * MiB]);
  const origin = await startOrigin(file, ['--postcopy-max-mibs', '8']);
  const s = await serving({ from: origin.endpoint, token: TOKEN });
  try {
    const vm = startStandin(['--socket', s.socket, '--mem-file', file, '--region', '16M', '--threads', '2', '--pattern', 'random', '--seconds', '6'], 30_000);
    await origin.waitFor('session');
    origin.child.kill('SIGTERM');
    assert.equal((await origin.waitFor('draining')).sessions, 1);
    const run = await vm.done;
    assert.equal(run.code, STANDIN_EXIT.ok, `${run.stdout}\n${run.stderr}`);
    assert.equal(await origin.exited, 0);
    const stopped = origin.events.find((e) => e.event === 'stopped');
    assert.ok(stopped, JSON.stringify(origin.events));
    assert.deepEqual([stopped.signal, stopped.served, stopped.failed, stopped.cut], ['SIGTERM', 1, 0, 0]);
    assert.equal((await found(() => s.events.find((e) => e.event === 'staged'), 'staged event')).report.pages.missing_at_listen, (16 * MiB) / PAGE);
  } finally {
    s.server.close();
  }
});
