// TLS on the channels: every way a handshake can go wrong is refused quickly, with the reason
// on both sides; a channel handed to a worker keeps its TLS session here and relays every
// byte both ways, ends included; bad settings are refused before anything connects.
import test, { after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Mapping, RamBlock, RamList } from '../../src/index.js';
import { IncomingListener, connectChannel, loadTls, type AcceptedChannel, type TlsFiles, type TlsSettings } from '../../src/transport/index.js';
import type { GuestBlock } from '../../src/pager/index.js';
import { writeTlsCredentials } from '../support/tls.js';

const dir = mkdtempSync(join(tmpdir(), 'postcopy-tls-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const files = writeTlsCredentials(dir);
const blocks = new RamList<Mapping>([new RamBlock<Mapping>({ idstr: 'ram0', usedLength: 1 << 20 })]);
const tls = (f: TlsFiles) => loadTls(f);

async function attempt(serverTls: TlsSettings | undefined, clientTls: TlsSettings | undefined) {
  const listener = new IncomingListener<GuestBlock>({ endpoint: { kind: 'tcp', host: '127.0.0.1', port: 0 }, token: 'right', blocks, tls: serverTls });
  const refused: string[] = [];
  const accepted: AcceptedChannel<GuestBlock>[] = [];
  listener.on('refused', (reason) => refused.push(reason));
  listener.on('channel', (channel) => accepted.push(channel));
  const endpoint = await listener.listen();
  const started = Date.now();
  try {
    const connected = await connectChannel({ endpoint, sessionId: 'm', role: 'main', token: 'right', blocks, tls: clientTls, timeout: 4 });
    return { connected, accepted, refused, ms: Date.now() - started, listener };
  } catch (error) {
    // the listener's side of a failed handshake may come a moment after the source's
    for (let i = 0; i < 40 && refused.length === 0; i++) await new Promise((r) => setTimeout(r, 25));
    listener.close();
    return { error: error as Error & { code: string }, accepted, refused, ms: Date.now() - started, listener };
  }
}

test('certificates or a pre-shared key: the channel is TLS 1.3 on both sides and passes the handshake', { timeout: 20_000 }, async () => {
  for (const [label, settings] of [['certificates', tls(files.good)], ['pre-shared key', tls({ psk: files.psk })]] as const) {
    const r = await attempt(settings, settings);
    assert.ok(r.connected, `${label}: ${r.error?.message}`);
    assert.equal((r.connected.channel.socket as import('node:tls').TLSSocket).getProtocol(), 'TLSv1.3', label);
    assert.equal(r.accepted.length, 1, label);
    assert.equal((r.accepted[0].channel.socket as import('node:tls').TLSSocket).getProtocol(), 'TLSv1.3', label);
    assert.deepEqual(r.refused, [], label);
    r.connected.channel.destroy();
    r.accepted[0].channel.destroy();
    r.listener.close();
  }
});

const refusals: { label: string; server?: TlsFiles; client?: TlsFiles; code: string; source: RegExp; listener: RegExp }[] = [
  { label: 'the source does not trust the authority that signed the destination', server: files.good, client: { ...files.good, ca: files.foreign.ca },
    code: 'ERR_POSTCOPY_TLS', source: /main channel: the destination 127\.0\.0\.1:\d+'s certificate is not signed by an authority in --tls-ca/, listener: /hung up during the TLS handshake/ },
  { label: "the source's certificate is from a foreign authority", server: files.good, client: { ...files.foreign, ca: files.good.ca },
    code: 'ERR_POSTCOPY_REFUSED', source: /refused the main channel: TLS: the source's certificate is not signed by an authority in --tls-ca \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\)/,
    listener: /^TLS: the source's certificate is not signed/ },
  { label: "the destination's certificate has expired", server: files.expired, client: files.good,
    code: 'ERR_POSTCOPY_TLS', source: /the destination 127\.0\.0\.1:\d+'s certificate has expired \(CERT_HAS_EXPIRED\)/, listener: /hung up/ },
  { label: "the source's certificate has expired", server: files.good, client: files.expired,
    code: 'ERR_POSTCOPY_REFUSED', source: /refused the main channel: TLS: the source's certificate has expired \(CERT_HAS_EXPIRED\)/, listener: /the source's certificate has expired/ },
  { label: 'a plaintext source at a TLS listener', server: files.good, client: undefined,
    code: 'ERR_POSTCOPY_REFUSED', source: /refused the main channel: this listener takes TLS only/, listener: /TLS handshake failed: the source does not speak TLS/ },
  { label: 'a TLS source at a plaintext listener', server: undefined, client: files.good,
    code: 'ERR_POSTCOPY_TLS', source: /the destination 127\.0\.0\.1:\d+ does not speak TLS/, listener: /the source speaks TLS and this listener does not/ },
  { label: 'another pre-shared key', server: { psk: files.psk }, client: { psk: files.otherPsk },
    code: 'ERR_POSTCOPY_TLS', source: /holds another pre-shared key/, listener: /the source holds another pre-shared key/ },
  { label: 'a key on one side, certificates on the other', server: { psk: files.psk }, client: files.good,
    code: 'ERR_POSTCOPY_TLS', source: /no TLS settings in common/, listener: /no TLS settings in common/ },
];

for (const r of refusals) {
  test(`TLS refused with the reason on both sides: ${r.label}`, { timeout: 20_000 }, async () => {
    const outcome = await attempt(r.server && tls(r.server), r.client && tls(r.client));
    assert.ok(outcome.error, 'the channel was accepted');
    assert.equal(outcome.error.code, r.code, outcome.error.message);
    assert.match(outcome.error.message, r.source);
    assert.equal(outcome.accepted.length, 0);
    assert.equal(outcome.refused.length, 1, JSON.stringify(outcome.refused));
    assert.match(outcome.refused[0], r.listener);
    // refused at once, not by a timeout
    assert.ok(outcome.ms < 2000, `${outcome.ms} ms`);
  });
}

test('TLS settings that cannot work are refused before anything connects, naming the option and file', () => {
  const missing = join(dir, 'nope.crt');
  for (const [given, pattern] of [
    [{ cert: files.good.cert, ca: files.good.ca }, /needs --tls-cert, --tls-key and --tls-ca: --tls-key missing/],
    [{ ...files.good, key: files.foreign.key }, /--tls-key .*foreign\.key is not the key of --tls-cert .*host\.crt/],
    [{ ...files.good, ca: missing }, /cannot read --tls-ca .*nope\.crt: ENOENT/],
    [{ psk: files.psk, ca: files.good.ca }, /--tls-psk and --tls-ca do not go together/],
    [{ psk: files.good.key }, /--tls-psk .*host\.key: the key must be hex digits/],
  ] as [TlsFiles, RegExp][]) {
    assert.throws(() => loadTls(given), (error: Error & { code: string }) => error.code === 'ERR_POSTCOPY_CONFIG' && pattern.test(error.message), JSON.stringify(given));
  }
  assert.equal(loadTls({}), undefined);
});

/** Reads a socket to its end. */
function readAll(socket: Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  socket.on('data', (d) => chunks.push(d));
  return new Promise((resolve, reject) => {
    socket.on('end', () => resolve(Buffer.concat(chunks)));
    socket.on('error', reject);
  });
}

test("a TLS channel handed to a worker: its descriptor carries every byte both ways, and each side's end of stream", { timeout: 20_000 }, async () => {
  const settings = tls(files.good)!;
  const r = await attempt(settings, settings);
  assert.ok(r.connected, r.error?.message);
  // what a bulk worker gets: a plain descriptor, the session staying in this thread
  const worker = new Socket({ fd: r.accepted[0].channel.takeDescriptor(), readable: true, writable: true, allowHalfOpen: true });
  const source = r.connected.channel.socket;
  source.resume();
  const toWorker = randomBytes(3 << 20);
  const fromWorker = randomBytes(1 << 20);
  const sourceGot = readAll(source);
  const workerGot = readAll(worker);
  worker.write(fromWorker);
  source.end(toWorker);
  assert.ok((await workerGot).equals(toWorker), "the worker read what the source sent, then the source's end");
  worker.end();
  assert.ok((await sourceGot).equals(fromWorker), "the source read what the worker sent, then the worker's end");
  r.listener.close();
});

test('a TLS channel handed to a worker: a source that vanishes mid-stream ends the worker\'s descriptor too', { timeout: 20_000 }, async () => {
  const settings = tls({ psk: files.psk })!;
  const r = await attempt(settings, settings);
  assert.ok(r.connected, r.error?.message);
  const worker = new Socket({ fd: r.accepted[0].channel.takeDescriptor(), readable: true, writable: true });
  let received = 0;
  worker.on('data', (d) => (received += d.length));
  worker.on('error', () => undefined);
  const closed = new Promise((resolve) => worker.on('close', resolve));
  r.connected.channel.socket.write(randomBytes(256 << 10), () => r.connected!.channel.socket.destroy());
  await closed;
  assert.ok(received <= 256 << 10, `${received}`);
  r.listener.close();
});
