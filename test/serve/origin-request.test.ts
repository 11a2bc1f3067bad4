// The request exchange between a page server (`serve --from`) and its origin (`serve-pages`):
// lines that share a chunk are each read, and a page server and an origin that disagree on TLS
// are told so within moments on both sides, not after the 5 s request timeout.
import test, { after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PageOrigin } from '../../src/serve/index.js';
import { readJsonLine } from '../../src/serve/origin-request.js';
import { RemoteStaging } from '../../src/serve/remote-staging.js';
import { loadTls, type Endpoint } from '../../src/transport/index.js';
import { writeTlsCredentials } from '../support/tls.js';

const TOKEN = 'origin-request-token';
const dir = mkdtempSync(join(tmpdir(), 'postcopy-origin-request-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const memFile = join(dir, 'memory');
writeFileSync(memFile, Buffer.alloc(1 << 20, 7));
const credentials = writeTlsCredentials(dir);
const tls = loadTls(credentials.good)!;

test('two lines that arrive in one chunk are read one after the other; a partial line waits for its end', async () => {
  const server = createServer((socket) => {
    socket.write('{"a":1}\n{"b":');
    setTimeout(() => socket.end('2}\n'), 50);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const socket: Socket = connect((server.address() as { port: number }).port, '127.0.0.1');
  try {
    const carry = { text: '' };
    assert.deepEqual(await readJsonLine(socket, 'test', 2000, carry), { a: 1 });
    assert.deepEqual(await readJsonLine(socket, 'test', 2000, carry), { b: 2 });
    assert.equal(carry.text, '');
  } finally {
    socket.destroy();
    server.close();
  }
});

async function origin(withTls: boolean) {
  const refused: string[] = [];
  const o = new PageOrigin({ memFile, endpoint: { kind: 'tcp', host: '127.0.0.1', port: 0 }, token: TOKEN, tls: withTls ? tls : undefined });
  o.on('refused', (reason) => refused.push(reason));
  const endpoint = await o.listen();
  return { origin: o, endpoint, refused };
}

async function ask(from: Endpoint, withTls: boolean): Promise<{ error: Error; ms: number }> {
  const staging = new RemoteStaging([{ base: 0, offset: 0, size: 1 << 20, pageSize: 4096 }], { from, token: TOKEN, tls: withTls ? tls : undefined }, async () => undefined);
  const start = performance.now();
  try {
    await staging.start();
  } catch (error) {
    return { error: error as Error, ms: performance.now() - start };
  } finally {
    staging.close('test');
    staging.release();
  }
  assert.fail('the request was accepted');
}

test('a page server without TLS asking a TLS origin is refused at once, both sides naming why', { timeout: 20_000 }, async () => {
  const o = await origin(true);
  try {
    const { error, ms } = await ask(o.endpoint, false);
    assert.match(error.message, /the origin at 127\.0\.0\.1:\d+ refused: this origin takes TLS only: run serve --from with TLS too/);
    assert.ok(ms < 2000, `refused after ${ms.toFixed(0)} ms`);
    await waitUntil(() => o.refused.length > 0);
    assert.match(o.refused[0], /TLS handshake failed: the page server does not speak TLS/);
  } finally {
    o.origin.close();
  }
});

test('a TLS page server asking an origin without TLS is refused at once, naming why', { timeout: 20_000 }, async () => {
  const o = await origin(false);
  try {
    const { error, ms } = await ask(o.endpoint, true);
    assert.match(error.message, /the origin does not speak TLS/);
    assert.ok(ms < 2000, `refused after ${ms.toFixed(0)} ms`);
  } finally {
    o.origin.close();
  }
});

test('a peer that does not open with the page server banner is refused, naming what it sent', { timeout: 20_000 }, async () => {
  const o = await origin(false);
  const socket = connect(o.endpoint.kind === 'tcp' ? o.endpoint.port : 0, '127.0.0.1');
  try {
    const hello = await readJsonLine(socket, 'origin', 2000);
    assert.equal(hello.origin, 'postcopy serve-pages');
    socket.write('{"server":"something else"}\n');
    const answer = await readJsonLine(socket, 'origin', 2000);
    assert.match(String(answer.error), /the peer is not a postcopy page server \(its first line has server "something else"\)/);
    await waitUntil(() => o.refused.length > 0);
    assert.match(o.refused[0], /not a postcopy page server/);
  } finally {
    socket.destroy();
    o.origin.close();
  }
});

async function waitUntil(condition: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > end) assert.fail('not within 2 s');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
