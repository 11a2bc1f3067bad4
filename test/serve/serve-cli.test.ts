// `postcopy serve` as a user runs it: a process serving VMM stand-ins from a memory file or from
// this package's snapshot file, its events as JSON lines, Prometheus metrics over HTTP, the
// working set it records, and its last line when SIGTERM stops it.
import test, { after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Mapping } from '../../src/kernel/index.js';
import { BackgroundSnapshot } from '../../src/snapshot/index.js';
import { startService } from '../support/cli.js';
import { patternImage } from '../support/serve.js';
import { STANDIN_EXIT, runStandin, standinSkip } from '../support/vmm-standin.js';
import { featureSkip } from '../support/hugepages.js';
import { tlsArgs, writeTlsCredentials } from '../support/tls.js';

const MiB = 2 ** 20;
const skip = standinSkip();
const dir = mkdtempSync(join(tmpdir(), 'postcopy-serve-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const startServe = (args: string[], env: Record<string, string> = {}) => startService('serve', args, env);

function scrape(address: string): Promise<string> {
  return new Promise((resolve, reject) => {
    get(`http://${address}/metrics`, (response) => {
      let body = '';
      response.on('data', (d) => (body += d));
      response.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

function metric(text: string, name: string): number {
  return [...text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+]+)$`, 'gm'))].reduce((sum, m) => sum + Number(m[1]), 0);
}

test('postcopy serve --mem-file: a VM served, events as JSON lines, a Prometheus scrape, the working set recorded, SIGTERM ends it', { skip, timeout: 90_000 }, async () => {
  const file = join(dir, 'vm.mem');
  writeFileSync(file, patternImage(8 * MiB, 3));
  const socket = join(dir, 'uffd.sock');
  const ws = join(dir, 'vm.ws');
  const serve = startServe(['--socket', socket, '--mem-file', file, '--metrics', '127.0.0.1:0', '--record-working-set', ws, '--prefetch', 'none']);
  try {
    const listening = await serve.waitFor('listening');
    assert.match(listening.metrics, /^127\.0\.0\.1:\d+$/);
    const run = await runStandin(['--socket', socket, '--mem-file', file, '--region', '4M', '--region', '4M', '--threads', '2', '--touches', '300', '--pattern', 'random'], 60_000);
    assert.equal(run.code, STANDIN_EXIT.ok, run.stdout + run.stderr);
    const connected = await serve.waitFor('connected');
    assert.equal(connected.pid, run.mapped!.pid);
    assert.deepEqual(connected.regions.map((r: { size: number }) => r.size), [4 * MiB, 4 * MiB]);
    await serve.waitFor('first-fault');
    const ended = await serve.waitFor('ended');
    assert.equal(ended.outcome, 'exited');
    const saved = await serve.waitFor('working-set-saved');
    assert.ok(saved.pages > 0 && saved.pages <= 600);
    const text = await scrape(listening.metrics);
    assert.ok(metric(text, 'postcopy_serve_faults_total') > 0, text);
    assert.ok(metric(text, 'postcopy_serve_pages_placed_total') > 0);
    assert.ok(metric(text, 'postcopy_serve_fault_latency_seconds_count') > 0);
    assert.equal(metric(text, 'postcopy_serve_vms_ended_total'), 1);
    assert.equal(metric(text, 'postcopy_serve_vms_active'), 0);
    // the next server prefetches that working set first; a stale one is refused, naming why
    serve.child.kill('SIGTERM');
    assert.equal(await serve.exited, 0);
    const last = serve.events[serve.events.length - 1];
    assert.equal(last.event, 'stopped');
    assert.equal(last.vms, 1);
    const reuse = startServe(['--socket', socket, '--mem-file', file, '--working-set', ws]);
    await reuse.waitFor('listening');
    assert.equal(reuse.events.find((e) => e.event === 'working-set-refused'), undefined, 'a working set of this very file is used');
    reuse.child.kill('SIGTERM');
    assert.equal(await reuse.exited, 0);
    writeFileSync(file, patternImage(8 * MiB, 4)); // the memory file changes: the working set is stale
    const again = startServe(['--socket', socket, '--mem-file', file, '--working-set', ws]);
    const refused = await again.waitFor('working-set-refused');
    assert.match(refused.reason, /stale/);
    again.child.kill('SIGTERM');
    assert.equal(await again.exited, 0);
  } finally {
    serve.child.kill('SIGKILL');
  }
});

test('postcopy serve --snapshot: a VM served from this package\'s snapshot file, byte for byte', { skip: skip || featureSkip('PAGEFAULT_FLAG_WP'), timeout: 90_000 }, async () => {
  const image = patternImage(8 * MiB, 9);
  image.fill(0, 2 * MiB, 3 * MiB); // zero pages: holes in the snapshot
  const raw = join(dir, 'snap.raw');
  writeFileSync(raw, image);
  const mapping = new Mapping(8 * MiB);
  mapping.bytes().set(image);
  const path = join(dir, 'vm.snap');
  await BackgroundSnapshot.take({ path, blocks: [{ idstr: 'ram', mapping }], pauseGuest: () => undefined, resumeGuest: () => undefined });
  mapping.unmap();
  const socket = join(dir, 'snap.sock');
  const serve = startServe(['--socket', socket, '--snapshot', path]);
  try {
    await serve.waitFor('listening');
    const run = await runStandin(['--socket', socket, '--mem-file', raw, '--region', '8M', '--threads', '2'], 60_000);
    assert.equal(run.code, STANDIN_EXIT.ok, run.stdout + run.stderr);
    const wrong = await runStandin(['--socket', socket, '--mem-file', raw, '--region', '4M', '--threads', '1', '--timeout', '10'], 20_000);
    assert.equal(wrong.signal, 'SIGKILL', 'a VM whose regions are not the snapshot\'s blocks is refused and ended');
    const refused = await serve.waitFor('refused');
    assert.match(refused.reason, /region 0 is 4194304 bytes of 4096-byte pages, block 'ram' of .* 8388608 of 4096/);
  } finally {
    serve.child.kill('SIGTERM');
    await serve.exited;
  }
  // a snapshot whose page data does not match its checksums is never served
  const damaged = join(dir, 'damaged.snap');
  const bytes = readFileSync(path);
  bytes[bytes.indexOf(image.subarray(0, 64)) + 100] ^= 0xff;
  writeFileSync(damaged, bytes);
  const { runCli } = await import('../support/cli.js');
  const r = await runCli(['serve', '--socket', join(dir, 'damaged.sock'), '--snapshot', damaged, '--json']);
  assert.equal(r.code, 1);
  assert.equal(r.report!.error_code, 'ERR_SNAPSHOT_FORMAT');
  assert.match(r.report!.error, /page data of block ram does not match its checksum/);
});

for (const tls of [false, true]) {
  const how = tls ? 'over TCP with TLS certificates and the token' : 'on Unix sockets';
  test(`postcopy serve --from ${how}: serve-pages on the file's host, a VM served byte for byte, a staged event, both stop on SIGTERM`, { skip, timeout: 90_000 }, async () => {
    const file = join(dir, 'remote.mem');
    writeFileSync(file, patternImage(8 * MiB, 5));
    const credentials = tls ? tlsArgs(writeTlsCredentials(dir).good) : [];
    const env: Record<string, string> = tls ? { POSTCOPY_TOKEN: 'serve-from-token' } : {};
    const origin = startService('serve-pages', ['--mem-file', file, '--listen', tls ? '127.0.0.1:0' : `unix:${join(dir, 'origin.sock')}`, ...credentials], env);
    const listening = await origin.waitFor('listening');
    assert.equal(listening.tls, tls ? 'certificate' : 'none');
    const socket = join(dir, 'remote-uffd.sock');
    const serve = startServe(['--socket', socket, '--from', listening.endpoint, '--channels', '1', ...credentials], env);
    try {
      assert.equal((await serve.waitFor('listening')).source, listening.endpoint);
      const run = await runStandin(['--socket', socket, '--mem-file', file, '--region', '6M', '--region', '2M', '--threads', '2', '--pattern', 'random'], 30_000);
      assert.equal(run.code, STANDIN_EXIT.ok, run.stdout + run.stderr);
      const staged = await serve.waitFor('staged');
      assert.equal(staged.pages.streamed + staged.pages.requested, (8 * MiB) / 4096);
      const served = await origin.waitFor('served');
      assert.match(served.session, /^[0-9a-f-]{36}$/);
    } finally {
      serve.child.kill('SIGTERM');
      origin.child.kill('SIGTERM');
    }
    assert.equal(await serve.exited, 0);
    assert.equal(await origin.exited, 0);
    assert.equal(origin.events.at(-1)!.event, 'stopped');
    assert.equal(origin.events.at(-1)!.served, 1);
    assert.equal(origin.events.at(-1)!.refused, 0);
  });
}

test('postcopy serve and serve-pages: options are checked, naming option and value', { timeout: 30_000 }, async () => {
  const { runCli } = await import('../support/cli.js');
  for (const [args, pattern] of [
    [['serve', '--mem-file', 'x'], /serve needs --socket PATH/],
    [['serve', '--socket', join(dir, 's'), '--mem-file', 'x', '--snapshot', 'y'], /exactly one of --mem-file FILE, --snapshot FILE and --from ADDR/],
    [['serve', '--socket', join(dir, 's'), '--mem-file', 'x', '--channels', '2'], /--channels goes with --from/],
    [['serve', '--socket', join(dir, 's'), '--from', '127.0.0.1:7000'], /serve --from over TCP needs a token/],
    [['serve', '--socket', join(dir, 's'), '--from', 'unix:/x', '--channels', '17'], /--channels '17' must be a whole number from 0 to 16/],
    [['serve-pages', '--listen', 'unix:/x'], /serve-pages needs --mem-file FILE/],
    [['serve-pages', '--mem-file', 'x', '--listen', '127.0.0.1:7000'], /serve-pages over TCP needs a token/],
    [['serve', '--socket', join(dir, 's'), '--mem-file', 'x', '--on-failure', 'maybe'], /--on-failure 'maybe' must be one of kill, leave/],
    [['serve', '--socket', join(dir, 's'), '--mem-file', 'x', '--prefetch', 'all'], /--prefetch 'all' must be one of none, sequential, working-set/],
  ] as [string[], RegExp][]) {
    const r = await runCli([...args, '--json']);
    assert.equal(r.code, 2, args.join(' '));
    assert.match(r.report!.error, pattern);
    assert.equal(r.report!.error_code, 'ERR_POSTCOPY_USAGE');
  }
  const leave = await runCli(['serve', '--socket', join(dir, 's'), '--from', 'unix:/x', '--on-failure', 'leave', '--json'], { POSTCOPY_TOKEN: '' });
  assert.equal(leave.code, 1);
  assert.match(leave.report!.error, /--on-failure leave would leave it reading zeros/);
  const missing = await runCli(['serve', '--socket', join(dir, 's'), '--mem-file', join(dir, 'nope.mem'), '--json']);
  assert.equal(missing.code, 1);
  assert.equal(missing.report!.error_code, 'ENOENT');
});
