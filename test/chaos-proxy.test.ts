// The chaos proxy over real sockets (TCP on loopback and Unix sockets): bytes arrive intact
// through delays and fragments, cuts and stalls land at exactly their planned offsets, the plan
// follows the seed, nothing happens before arm(), and close() leaves nothing behind.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ChaosProxy, type AppliedFault, type ChaosDirection, type ChaosProxyOptions, type Endpoint } from '../src/transport/index.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const loopback: Endpoint = { kind: 'tcp', host: '127.0.0.1', port: 0 };
let socketCount = 0;
const unixEndpoint = (): Endpoint => ({ kind: 'unix', path: join(tmpdir(), `postcopy-chaos-${process.pid}-${socketCount++}.sock`) });

/** Reproducible random bytes: AES-CTR keyed by the label. */
function seededBytes(label: string, length: number): Buffer {
  const key = createHash('sha256').update(label).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** What one end of a connection received, and how the connection ended for it. */
class Peer {
  readonly chunks: Buffer[] = [];
  bytes = 0;
  ended = false;
  error: NodeJS.ErrnoException | undefined;
  readonly closed: Promise<unknown>;

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.bytes += chunk.length;
    });
    socket.on('end', () => (this.ended = true));
    socket.on('error', (error) => (this.error = error));
    this.closed = once(socket, 'close');
  }

  received(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/** A target server: each accepted connection is handed over as a Peer. */
async function startTarget(endpoint: Endpoint, onPeer: (peer: Peer) => void = () => undefined): Promise<{ server: Server; endpoint: Endpoint; peers: Peer[] }> {
  const peers: Peer[] = [];
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    const peer = new Peer(socket);
    peers.push(peer);
    onPeer(peer);
  });
  if (endpoint.kind === 'unix') server.listen(endpoint.path);
  else server.listen(endpoint.port, endpoint.host);
  await once(server, 'listening');
  const address = server.address();
  const bound: Endpoint = endpoint.kind === 'tcp' && address && typeof address === 'object' ? { ...endpoint, port: address.port } : endpoint;
  return { server, endpoint: bound, peers };
}

async function connectPeer(endpoint: Endpoint): Promise<Peer> {
  const socket = endpoint.kind === 'unix'
    ? connect({ path: endpoint.path, allowHalfOpen: true })
    : connect({ host: endpoint.host, port: endpoint.port, allowHalfOpen: true });
  const peer = new Peer(socket);
  await once(socket, 'connect');
  return peer;
}

/** A proxy in front of a fresh target; `done` closes both. */
async function setup(options: Omit<ChaosProxyOptions, 'target'>, targetAt: Endpoint = loopback, onPeer?: (peer: Peer) => void) {
  const target = await startTarget(targetAt, onPeer);
  const proxy = new ChaosProxy({ ...options, target: target.endpoint });
  const endpoint = await proxy.listen();
  const faults: AppliedFault[] = [];
  proxy.on('fault', (fault) => faults.push(fault));
  const done = async () => {
    await proxy.close();
    for (const peer of target.peers) peer.socket.destroy();
    await new Promise((resolve) => target.server.close(resolve));
  };
  return { proxy, endpoint, target, faults, done };
}

async function until(condition: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

for (const [name, listen, targetAt] of [
  ['TCP to TCP', loopback, loopback],
  ['Unix socket to Unix socket', unixEndpoint(), unixEndpoint()],
] as const) {
  test(`${name}: 8 MiB each way arrive intact through delays and fragments, and half-closes pass`, { timeout: 60_000 }, async () => {
    const up = seededBytes('up', 8 * MiB);
    const down = seededBytes('down', 8 * MiB);
    const trailer = Buffer.from('sent after the client half-closed');
    const { proxy, endpoint, target, done } = await setup({ listen, seed: 11, delayMs: 5, fragmentBytes: 4 * KiB }, targetAt, (peer) => {
      peer.socket.write(down);
      // only a forwarded FIN brings this, and the client reads it only if its own FIN left its read side open
      peer.socket.on('end', () => peer.socket.end(trailer));
    });
    try {
      const client = await connectPeer(endpoint);
      client.socket.end(up);
      await client.closed;
      await target.peers[0].closed;
      assert.equal(sha256(target.peers[0].received()), sha256(up));
      assert.equal(target.peers[0].ended, true);
      assert.equal(sha256(client.received()), sha256(Buffer.concat([down, trailer])));
      assert.equal(client.ended, true);
      assert.equal(client.error, undefined);
      await until(() => proxy.stats().open === 0, 'the proxy to see both sockets close');
      const stats = proxy.stats();
      assert.deepEqual([stats.bytesToTarget, stats.bytesToClient, stats.faultsFired, stats.open], [up.length, down.length + trailer.length, 0, 0]);
      // pieces average well under 1 KiB: whole 64 KiB socket reads would come in 128 or so
      for (const peer of [client, target.peers[0]]) assert.ok(peer.chunks.length > 4096, `${peer.chunks.length} reads: not fragmented`);
    } finally {
      await done();
    }
    if (listen.kind === 'unix') assert.equal(existsSync(listen.path), false, 'the listening socket file is removed on close');
  });
}
