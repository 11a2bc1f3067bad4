// Migrations over TLS 1.3 as a user runs them: the demo with its throwaway certificate, bulk
// channels and cuts in postcopy (recovery over TLS); send and receive on TCP with a
// pre-shared key; and a source the destination cannot trust, refused with the reason.
import test, { after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { featureSkip } from '../support/hugepages.js';
import { assertJsonFailure, runCli, startReceiver, verifiedDemo } from '../support/cli.js';
import { tlsArgs, writeTlsCredentials } from '../support/tls.js';

const canMigrate = featureSkip('PAGEFAULT_FLAG_WP');
const dir = mkdtempSync(join(tmpdir(), 'postcopy-e2e-tls-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const files = writeTlsCredentials(dir);
const env = { POSTCOPY_TOKEN: 'e2e-tls-token' };

test('demo --tls, 2 bulk channels, both cut in postcopy: recovered over TLS, every page once, verified', { skip: canMigrate, timeout: 120_000 }, async () => {
  const r = await verifiedDemo(['--tls', '--channels', '2', '--size', '64M', '--threads', '3', '--precopy-seconds', '0', '--stall-seconds', '2', '--chaos', '2']);
  assert.equal(r.config.tls, 'certificates');
  assert.ok(r.chaos.faults > 0 && r.recoveries > 0, `chaos ${JSON.stringify(r.chaos)}, recoveries ${r.recoveries}`);
  assert.equal(r.pages.streamed + r.pages.requested, r.bytes_total / 4096);
});

test('send and receive over TCP with a pre-shared key and the token: verified', { skip: canMigrate, timeout: 120_000 }, async () => {
  const receiver = await startReceiver(['--listen', '127.0.0.1:0', '--tls-psk', files.psk, '--run-seconds', '0.3'], env);
  assert.equal(receiver.events[0].tls, 'psk');
  const sent = await runCli(['send', '--json', '--connect', receiver.endpoint, '--tls-psk', files.psk, '--size', '32M', '--threads', '2', '--precopy-seconds', '0.5', '--channels', '1'], env);
  assert.equal(sent.code, 0, sent.stderr.slice(-1500));
  const report = await receiver.waitFor((e) => e.event === 'report');
  assert.equal(report.verified, true, JSON.stringify(report.verification ?? report.error));
  assert.equal(await receiver.exited, 0);
});

test('a source whose certificate the destination cannot trust: send fails with the reason, receive says why it refused', { skip: canMigrate, timeout: 60_000 }, async () => {
  const receiver = await startReceiver(['--listen', '127.0.0.1:0', ...tlsArgs(files.good)], env);
  try {
    const sent = await runCli(['send', '--json', '--connect', receiver.endpoint, ...tlsArgs({ ...files.expired }), '--size', '4M'], env);
    assertJsonFailure(sent, 1, 'ERR_POSTCOPY_REFUSED', /refused the main channel: TLS: the source's certificate has expired \(CERT_HAS_EXPIRED\)/);
    const refused = await receiver.waitFor((e) => e.event === 'refused');
    assert.match(refused.reason, /the source's certificate has expired/);
    const plain = await runCli(['send', '--json', '--connect', receiver.endpoint, '--size', '4M'], env);
    assertJsonFailure(plain, 1, 'ERR_POSTCOPY_REFUSED', /this listener takes TLS only/);
  } finally {
    receiver.child.kill('SIGTERM');
    await receiver.exited;
  }
});

test('TLS options that cannot work fail before anything runs, naming the option', { timeout: 30_000 }, async () => {
  const r = await runCli(['receive', '--json', '--listen', '127.0.0.1:0', '--tls-cert', files.good.cert, '--tls-ca', files.good.ca], env);
  assertJsonFailure(r, 1, 'ERR_POSTCOPY_CONFIG', /needs --tls-cert, --tls-key and --tls-ca: --tls-key missing/);
  const s = await runCli(['serve', '--json', '--socket', join(dir, 's'), '--mem-file', 'x', '--tls-psk', files.psk]);
  assertJsonFailure(s, 2, 'ERR_POSTCOPY_USAGE', /--tls-psk goes with --from/);
});
