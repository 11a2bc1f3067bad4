// The destination's listener against peers without the token: each is told why and closed,
// silent ones time out, floods are cut short, and only a few may be in their handshake at
// once, so nobody without the token can exhaust descriptors or memory.
import test from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { readdirSync } from 'node:fs';
import { Mapping, RamBlock, RamList } from '../../src/index.js';
import { IncomingListener, connectChannel, type Endpoint } from '../../src/transport/index.js';
import { ReturnPathDecoder, Role, StreamEncoder } from '../../src/wire/index.js';
import { waitFor } from '../support/threads.js';
import { type GuestBlock } from '../../src/pager/index.js';

const blocks = new RamList<Mapping>([new RamBlock<Mapping>({ idstr: 'ram0', usedLength: 1 << 20 })]);
const openDescriptors = () => readdirSync('/proc/self/fd').length;

async function listen(options: { helloTimeout?: number; maxPending?: number } = {}) {
  const listener = new IncomingListener<GuestBlock>({ endpoint: { kind: 'tcp', host: '127.0.0.1', port: 0 }, token: 'right', blocks, ...options });
  const refused: string[] = [];
  listener.on('refused', (reason) => refused.push(reason));
  const endpoint = (await listener.listen()) as Extract<Endpoint, { kind: 'tcp' }>;
  return { listener, endpoint, refused };
}

/**
 * A raw peer: resolves with what it received once its connection is gone. It never closes
 * its own end (allowHalfOpen) and keeps writing after the listener's FIN, so only a listener
 * that really closes the connection (not just half-closes it) ends it.
 */
function peer(endpoint: Extract<Endpoint, { kind: 'tcp' }>, send?: Buffer): { socket: Socket; closed: Promise<Buffer> } {
  const socket = connect({ port: endpoint.port, host: endpoint.host, allowHalfOpen: true });
  const chunks: Buffer[] = [];
  socket.on('data', (d) => chunks.push(d));
  socket.on('error', () => undefined);
  let nagging: NodeJS.Timeout | undefined;
  socket.on('end', () => (nagging = setInterval(() => socket.write('more'), 50)));
  if (send) socket.write(send);
  return {
    socket,
    closed: new Promise((resolve) => socket.on('close', () => {
      clearInterval(nagging);
      resolve(Buffer.concat(chunks));
    })),
  };
}

test('40 peers with a wrong token are told why and closed by the listener, though they never close; descriptors come back', { timeout: 30_000 }, async () => {
  const l = await listen();
  try {
    const before = openDescriptors();
    // a HELLO with a made-up proof, from peers that would keep their end open for ever
    const e = new StreamEncoder();
    const hello = Buffer.concat([e.header(), e.hello({ sessionId: 'intruder', role: Role.MAIN, index: 0, capabilities: 0, auth: new Uint8Array(32).fill(1) })]);
    const peers = Array.from({ length: 40 }, () => peer(l.endpoint, hello));
    for (const p of peers) {
      const got = await p.closed;
      const rp = new ReturnPathDecoder({ blocks });
      rp.push(got);
      const events = [...rp.events()];
      assert.equal(events[0].type, 'challenge');
      assert.match((events[1] as { reason: string }).reason, /authentication failed for migration 'intruder'/);
    }
    await waitFor(() => openDescriptors() <= before + 1, 5000, 'the refused connections to be closed');
    assert.equal(l.refused.length, 40);
  } finally {
    l.listener.close();
  }
});

test('a source with the wrong token gets ERR_POSTCOPY_REFUSED with the reason', { timeout: 10_000 }, async () => {
  const l = await listen();
  try {
    await assert.rejects(connectChannel<GuestBlock>({ endpoint: l.endpoint, sessionId: 's', role: 'main', token: 'wrong', blocks }), (error: Error & { code: string }) => {
      assert.equal(error.code, 'ERR_POSTCOPY_REFUSED');
      assert.match(error.message, /refused the main channel: authentication failed for migration 's'/);
      return true;
    });
  } finally {
    l.listener.close();
  }
});

test('a peer that never says HELLO is refused and closed after the HELLO timeout', { timeout: 10_000 }, async () => {
  const l = await listen({ helloTimeout: 0.3 });
  try {
    const start = Date.now();
    const { closed } = peer(l.endpoint);
    await closed;
    const ms = Date.now() - start;
    assert.ok(ms >= 250 && ms < 2500, `closed after ${ms} ms`);
    assert.match(l.refused[0], /no HELLO within 0\.3 s/);
  } finally {
    l.listener.close();
  }
});

test('a peer that floods bytes without a complete HELLO is cut off at a few KiB', { timeout: 10_000 }, async () => {
  const l = await listen();
  try {
    // a valid header, then a HELLO command that claims a long payload and never ends
    const head = Buffer.from([0x50, 0x43, 0x50, 0x59, 0, 0, 0, 1, 0x08, 0x00, 0x20, 0xff, 0xff]);
    const { socket, closed } = peer(l.endpoint, Buffer.concat([head, Buffer.alloc(64 * 1024, 7)]));
    await closed;
    assert.equal(socket.bytesWritten > 0, true);
    assert.ok(l.refused.some((r) => /without a complete HELLO|HELLO/.test(r)), l.refused.join('; '));
  } finally {
    l.listener.close();
  }
});

test('at most maxPending connections may be in their handshake: more are closed at once', { timeout: 10_000 }, async () => {
  const l = await listen({ maxPending: 4, helloTimeout: 5 });
  try {
    const silent = Array.from({ length: 4 }, () => peer(l.endpoint));
    await waitFor(() => silent.every((p) => p.socket.readyState === 'open'), 2000, 'the first four');
    await new Promise((r) => setTimeout(r, 100));
    const start = Date.now();
    const extra = peer(l.endpoint);
    const got = await extra.closed;
    assert.ok(Date.now() - start < 1000, 'closed at once');
    assert.equal(got.length, 0, 'not even a challenge was spent on it');
    assert.match(l.refused.at(-1)!, /too many connections in their handshake \(4\)/);
    for (const p of silent) p.socket.destroy();
  } finally {
    l.listener.close();
  }
});
