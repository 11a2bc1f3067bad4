// End-to-end migrations between two processes (source and destination), each verified page by
// page on the destination after the resumed guest has run there.
import test from 'node:test';
import assert from 'node:assert/strict';
import { featureSkip, hugeSkip } from '../support/hugepages.js';
import { runCli, startReceiver, verifiedDemo } from '../support/cli.js';
import { probeFeatures } from '../../src/kernel/index.js';
import { dirtyLogKinds } from '../../src/outgoing/index.js';

const canMigrate = featureSkip('PAGEFAULT_FLAG_WP');
const softDirtySkip = () => !probeFeatures().available ? `no userfaultfd: ${probeFeatures().reason}`
  : dirtyLogKinds([{ shared: false, huge: false }]).includes('soft-dirty') ? false : `kernel ${probeFeatures().kernel} has no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY)`;


test('TCP, 4 KiB pages, guest writing during precopy: discards happen, verified', { skip: canMigrate, timeout: 120_000 }, async () => {
  const r = await verifiedDemo(['--size', '32M', '--threads', '2', '--pattern', 'random', '--precopy-seconds', '1']);
  assert.ok(r.pages.precopy > 0);
  assert.ok(r.pages.discarded > 0, 'the guest wrote during precopy, so pages were discarded');
  assert.ok(r.source.rounds >= 1);
});

test('any kernel: the soft-dirty dirty log (the guest held for each sync) catches every write, verified', { skip: softDirtySkip(), timeout: 120_000 }, async () => {
  const r = await verifiedDemo(['--size', '32M', '--threads', '2', '--precopy-seconds', '1', '--dirty-log', 'soft-dirty']);
  assert.equal(r.source.dirty_log, 'soft-dirty');
  assert.ok(r.pages.discarded > 0);
});

test('older kernels: the synchronous write-protect dirty log catches every write, verified', { skip: canMigrate, timeout: 120_000 }, async () => {
  const r = await verifiedDemo(['--size', '32M', '--threads', '2', '--precopy-seconds', '1', '--dirty-log', 'uffd-wp']);
  assert.equal(r.source.dirty_log, 'uffd-wp');
  assert.ok(r.pages.discarded > 0);
});

test('Unix socket, straight to postcopy: every page by request or stream, verified', { skip: canMigrate, timeout: 120_000 }, async () => {
  const r = await verifiedDemo(['--size', '256M', '--threads', '2', '--precopy-seconds', '0', '--transport', 'unix']);
  assert.equal(r.pages.precopy, 0);
  assert.equal(r.pages.discarded, 0);
  assert.ok(r.pages.requested > 0, 'the resumed guest faulted on pages that had not arrived');
  assert.ok(r.latency_us.count > 0 && r.latency_us.avg > 0);
});

test('--postcopy-max-mibs holds the background stream to its rate while requested pages are answered at once, verified', { skip: canMigrate, timeout: 120_000 }, async () => {
  // at 2 MiB/s the stream sleeps 30 ms or more after each batch: a request that waited for
  // the stream would show in the median latency (64 ms when it did; 0.5 ms here)
  const cap = 2;
  const r = await verifiedDemo(['--size', '16M', '--threads', '2', '--precopy-seconds', '0', '--postcopy-max-mibs', String(cap)]);
  const streamed = r.source.pages_sent.postcopy;
  const atCapMs = ((streamed * 4096) / 2 ** 20 / cap) * 1000;
  assert.ok(streamed > 0 && r.source.postcopy_ms >= 0.7 * atCapMs, `${streamed} pages streamed in ${r.source.postcopy_ms} ms; ${Math.round(atCapMs)} ms at the cap`);
  assert.ok(r.pages.requested > 0, 'the resumed guest faulted on pages that had not arrived');
  assert.ok(r.latency_us.p50 < 20_000, `median request latency ${r.latency_us.p50} µs`);
});

test('2 MiB hugetlb blocks, verified', { skip: canMigrate || featureSkip('MISSING_HUGETLBFS') || hugeSkip(34), timeout: 120_000 }, async () => {
  const r = await verifiedDemo(['--size', '32M', '--huge', '--threads', '2', '--precopy-seconds', '0.5']);
  assert.equal(r.bytes_total, 32 << 20);
});

test('several blocks of different sizes, verified', { skip: canMigrate, timeout: 120_000 }, async () => {
  const r = await verifiedDemo(['--size', '48M', '--blocks', '3', '--threads', '3', '--precopy-seconds', '0.5']);
  assert.equal(r.verification.length, 3);
  const sizes = new Set(r.verification.map((v: { pages: number }) => v.pages));
  assert.equal(sizes.size, 3, 'blocks have different sizes');
});

test('eight guest threads faulting at once, straight to postcopy, verified', { skip: canMigrate, timeout: 120_000 }, async () => {
  const r = await verifiedDemo(['--size', '256M', '--threads', '8', '--precopy-seconds', '0']);
  assert.ok(r.pages.requested > 0);
  assert.ok(Object.keys(r.blocktime_per_thread_ms).length >= 2, 'several threads waited on pages');
});

test('read-only guest: zero-page heavy, verified', { skip: canMigrate, timeout: 120_000 }, async () => {
  const r = await verifiedDemo(['--size', '32M', '--threads', '2', '--pattern', 'read', '--precopy-seconds', '0']);
  assert.ok(r.pages.zero > r.bytes_total / 4096 / 2, `zero pages ${r.pages.zero}`);
});

test('a client with a wrong token is refused with a reason before any page is read', { skip: canMigrate, timeout: 60_000 }, async () => {
  const receiver = await startReceiver(['--listen', '127.0.0.1:0'], { POSTCOPY_TOKEN: 'right-token' });
  try {
    const send = await runCli(['send', '--connect', receiver.endpoint, '--size', '8M'], { POSTCOPY_TOKEN: 'wrong-token' });
    assert.equal(send.code, 1);
    assert.match(send.stderr, /refused the main channel: authentication failed/);
    const refused = await receiver.waitFor((e) => e.event === 'refused');
    assert.match(refused.reason, /authentication failed/);
    assert.ok(!receiver.events.some((e) => e.event === 'state'), 'the destination changed state for a refused peer');
  } finally {
    receiver.child.kill('SIGKILL');
  }
});

test('a second migration into a busy destination is refused; the first completes', { skip: canMigrate, timeout: 120_000 }, async () => {
  const env = { POSTCOPY_TOKEN: 'shared' };
  const receiver = await startReceiver(['--listen', '127.0.0.1:0', '--run-seconds', '0.2'], env);
  try {
    const first = runCli(['send', '--connect', receiver.endpoint, '--size', '32M', '--precopy-seconds', '2', '--json'], env);
    await receiver.waitFor((e) => e.event === 'state' && e.state === 'ADVISE');
    const second = await runCli(['send', '--connect', receiver.endpoint, '--size', '8M'], env);
    assert.equal(second.code, 1);
    assert.match(second.stderr, /destination is busy with migration/);
    const done = await first;
    assert.equal(done.code, 0, done.stderr);
    const report = await receiver.waitFor((e) => e.event === 'report');
    assert.equal(report.verified, true);
  } finally {
    receiver.child.kill('SIGKILL');
  }
});

for (const recover of [0, 1]) {
  test(`source killed in postcopy (--recover-seconds ${recover}): the destination, threads blocked in faults, fails and exits within seconds`, { skip: canMigrate, timeout: 120_000 }, async () => {
    const env = { POSTCOPY_TOKEN: 'shared' };
    const receiver = await startReceiver(['--listen', '127.0.0.1:0', '--recover-seconds', String(recover)], env);
    const { spawn } = await import('node:child_process');
    const { CLI } = await import('../support/cli.js');
    const source = spawn(process.execPath, [CLI, 'send', '--connect', receiver.endpoint, '--size', '512M', '--precopy-seconds', '0', '--fill', '0', '--threads', '4'], {
      env: { ...process.env, ...env }, stdio: 'ignore',
    });
    try {
      await receiver.waitFor((e) => e.event === 'state' && e.state === 'RUNNING');
      await new Promise((r) => setTimeout(r, 200)); // the resumed guest is faulting by now
      source.kill('SIGKILL');
      const killed = Date.now();
      const report = await receiver.waitFor((e) => e.event === 'report');
      assert.equal(report.state, 'FAILED');
      assert.equal(report.verified, false);
      if (recover === 0) {
        assert.equal(report.error_code, 'ERR_POSTCOPY_CHANNEL_CLOSED');
        // the peer's death reads the same whether this side saw an EOF or a reset (on read or write)
        assert.match(report.error, /^(main|preempt) channel closed by the peer( \((read|write) E[A-Z]+\))? in state RUNNING/);
      } else {
        assert.equal(report.error_code, 'ERR_POSTCOPY_RECOVERY_TIMEOUT');
        assert.match(report.error, /the source did not come back within 1 s/);
      }
      assert.equal(await receiver.exited, 1);
      const ms = Date.now() - killed;
      assert.ok(ms < recover * 1000 + 4000, `the destination took ${ms} ms to exit`);
    } finally {
      source.kill('SIGKILL');
      receiver.child.kill('SIGKILL');
    }
  });
}

for (const seed of [2, 3]) {
  test(`demo --chaos ${seed}: both channels cut${seed % 4 === 3 ? ' and stalled' : ''} in postcopy, recovered, verified`, { skip: canMigrate, timeout: 120_000 }, async () => {
    const r = await verifiedDemo(['--size', '64M', '--threads', '3', '--precopy-seconds', '0', '--stall-seconds', '2', '--chaos', String(seed)]);
    assert.ok(r.chaos.faults > 0, JSON.stringify(r.chaos));
    assert.ok(r.recoveries > 0 && r.source.recoveries > 0, `recoveries: destination ${r.recoveries}, source ${r.source.recoveries}`);
    assert.ok(r.paused_ms > 0);
    assert.ok(r.source.pages_resent >= 0);
    // every page placed exactly once, whatever was cut in flight
    assert.equal(r.pages.streamed + r.pages.requested, r.bytes_total / 4096);
  });
}
