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
import { type Endpoint } from '../../src/transport/index.js';
import { type AppliedFault, type ChaosDirection, ChaosProxy, type ChaosProxyOptions } from '../../src/testing/index.js';

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
  readonly closed: Promise<void>;

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.bytes += chunk.length;
    });
    socket.on('end', () => (this.ended = true));
    socket.on('error', (error) => (this.error = error));
    // not events.once: that rejects on 'error', and errors are what some of these tests expect
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
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

/** Sends `data` on both ends of a fresh connection through the proxy; returns the two ends. */
async function exchange(endpoint: Endpoint, target: { peers: Peer[] }, data: Record<ChaosDirection, Buffer>): Promise<{ client: Peer; server: Peer }> {
  const accepted = target.peers.length;
  const client = await connectPeer(endpoint);
  await until(() => target.peers.length > accepted, 'the target to accept');
  const server = target.peers[accepted];
  client.socket.write(data.toTarget);
  server.socket.write(data.toClient);
  return { client, server };
}

/** Each end closes its side once the other side's FIN arrives, as most peers do. */
function closeOnEnd(...peers: Peer[]): void {
  for (const peer of peers) peer.socket.on('end', () => peer.socket.end());
}

const otherDirection = (direction: ChaosDirection): ChaosDirection => (direction === 'toTarget' ? 'toClient' : 'toTarget');

for (const [name, listen, targetAt] of [
  ['TCP', loopback, loopback],
  ['Unix socket', unixEndpoint(), unixEndpoint()],
] as const) {
  for (const how of ['fin', 'reset'] as const) {
    for (const direction of ['toTarget', 'toClient'] as const) {
      test(`${name}: a ${how} cut ${direction} forwards exactly the planned bytes, then both peers see the close`, { timeout: 20_000 }, async () => {
        const data = { toTarget: seededBytes('up', MiB), toClient: seededBytes('down', MiB) };
        // offsets within one receive window: a reset may not drop bytes still in flight
        const { proxy, endpoint, target, faults, done } = await setup(
          { listen, seed: 3, cuts: 1, cutStyle: how, directions: [direction], spread: 'one', faultOffset: { min: 4 * KiB, max: 32 * KiB } },
          targetAt,
        );
        try {
          proxy.arm();
          const { client, server } = await exchange(endpoint, target, data);
          if (how === 'fin') closeOnEnd(client, server);
          // A reset that follows data may reach a Node peer as an EOF (libuv reports the hang-up as
          // one), so each peer writes on after EOF: only behind a real reset (or, on a Unix socket,
          // a close) does that write fail. Behind a FIN the proxy takes and drops it.
          else for (const peer of [client, server]) peer.socket.on('end', () => peer.socket.write('probe'));
          await Promise.all([client.closed, server.closed]);
          const [planned] = proxy.plan;
          assert.deepEqual(faults, [{ fault: 0, kind: 'cut', how, connection: 0, direction, offset: planned.after }]);
          const receivers = { toTarget: server, toClient: client };
          const got = receivers[direction].received();
          assert.equal(got.length, planned.after);
          assert.ok(got.equals(data[direction].subarray(0, planned.after)), 'the bytes before the cut are the ones sent');
          const other = receivers[otherDirection(direction)].received();
          assert.ok(other.equals(data[otherDirection(direction)].subarray(0, other.length)), 'the other direction got a clean prefix');
          for (const peer of [client, server]) {
            if (how === 'fin') {
              assert.equal(peer.ended, true, 'FIN seen');
              assert.equal(peer.error, undefined);
            } else {
              assert.ok(['ECONNRESET', 'EPIPE'].includes(peer.error?.code ?? ''), `reset seen: ${peer.error?.code}`);
            }
          }
        } finally {
          await done();
        }
      });
    }
  }
}

test('a stall forwards the planned bytes, then nothing either way for 500 ms, and closes nothing', { timeout: 20_000 }, async () => {
  const data = { toTarget: seededBytes('up', 2 * MiB), toClient: seededBytes('down', 2 * MiB) };
  const { proxy, endpoint, target, faults, done } = await setup(
    { listen: unixEndpoint(), seed: 5, stalls: 1, spread: 'one', faultOffset: { min: 64 * KiB, max: 512 * KiB } },
    unixEndpoint(),
  );
  try {
    proxy.arm();
    const { client, server } = await exchange(endpoint, target, data);
    await until(() => faults.length === 1, 'the stall');
    const [planned] = proxy.plan;
    assert.deepEqual(faults, [{ fault: 0, kind: 'stall', connection: 0, direction: planned.direction, offset: planned.after }]);
    const receivers = { toTarget: server, toClient: client };
    await until(() => receivers[planned.direction].bytes >= planned.after, 'the bytes before the stall');
    await sleep(50);
    const before = [client.bytes, server.bytes];
    await sleep(500);
    assert.deepEqual([client.bytes, server.bytes], before, 'bytes moved during the stall');
    assert.ok(receivers[planned.direction].received().equals(data[planned.direction].subarray(0, planned.after)));
    for (const peer of [client, server]) {
      assert.equal(peer.ended, false);
      assert.equal(peer.error, undefined);
      assert.equal(peer.socket.destroyed, false);
    }
    assert.equal(proxy.stats().open, 1);
    await proxy.close();
    await Promise.all([client.closed, server.closed]);
  } finally {
    await done();
  }
});

test('the plan follows the seed: the same seed gives the same plan, another seed another', () => {
  const plan = (seed: number) => new ChaosProxy({ target: loopback, seed, cuts: 5, stalls: 3 }).plan;
  assert.deepEqual(plan(1), plan(1));
  assert.notDeepEqual(plan(1), plan(2));
  const plans = Array.from({ length: 50 }, (_, seed) => plan(seed));
  for (const p of plans) {
    assert.deepEqual([p.filter((f) => f.kind === 'cut').length, p.filter((f) => f.kind === 'stall').length], [5, 3]);
    for (const f of p) assert.ok(f.after >= 4 * KiB && f.after <= 8 * MiB, `offset ${f.after}`);
  }
  const all = plans.flat();
  const seen = (values: unknown[]) => [...new Set(values)].sort();
  assert.deepEqual(seen(all.map((f) => f.direction)), ['toClient', 'toTarget']);
  assert.deepEqual(seen(all.map((f) => f.spread)), ['all', 'one']);
  assert.deepEqual(seen(all.flatMap((f) => (f.kind === 'cut' ? [f.how] : []))), ['fin', 'reset']);
  assert.ok(plans.some((p) => p[0].kind === 'stall'), 'stalls are not always last');
  assert.ok(all.some((f) => f.after < 64 * KiB) && all.some((f) => f.after > MiB), 'offsets spread over the range');
  assert.throws(() => new ChaosProxy({ target: loopback, seed: 1, faultOffset: { min: 0, max: 10 } }), /faultOffset/);
  assert.throws(() => new ChaosProxy({ target: loopback, seed: 1.5 }), /seed/);
});

test('nothing happens before arm(), and offsets count from arming', { timeout: 20_000 }, async () => {
  const { proxy, endpoint, target, faults, done } = await setup({ seed: 9, cuts: 2, stalls: 2, cutStyle: 'fin', faultOffset: { min: 1, max: 4 * KiB } });
  try {
    const first = { toTarget: seededBytes('up', MiB), toClient: seededBytes('down', MiB) };
    const { client, server } = await exchange(endpoint, target, first);
    await until(() => client.bytes === MiB && server.bytes === MiB, 'a whole MiB each way');
    assert.deepEqual(faults, []);
    assert.ok(server.received().equals(first.toTarget) && client.received().equals(first.toClient));
    assert.deepEqual([proxy.stats().faultsFired, proxy.stats().faultsLeft], [0, 4]);

    proxy.arm();
    client.socket.write(seededBytes('up again', MiB));
    server.socket.write(seededBytes('down again', MiB));
    await until(() => faults.length > 0, 'the first fault');
    const [planned] = proxy.plan;
    assert.deepEqual(
      faults.map(({ kind, direction, offset }) => ({ kind, direction, offset })),
      [{ kind: planned.kind, direction: planned.direction, offset: MiB + planned.after }],
    );
    const receiver = planned.direction === 'toTarget' ? server : client;
    await until(() => receiver.bytes >= MiB + planned.after, 'the bytes before the fault');
    await sleep(100);
    assert.equal(receiver.bytes, MiB + planned.after);
  } finally {
    await done();
  }
});

/**
 * A client that uploads `up` and half-closes, against a target that answers `down` only to a
 * whole upload; the client reconnects until it gets the whole answer. Returns the attempts.
 */
async function uploadUntilDone(options: Omit<ChaosProxyOptions, 'target'>) {
  const up = seededBytes('up', MiB);
  const down = seededBytes('down', MiB);
  const { proxy, endpoint, faults, done } = await setup(options, loopback, (peer) => {
    peer.socket.on('end', () => peer.socket.end(peer.received().equals(up) ? down : Buffer.alloc(0)));
  });
  const eligible: boolean[] = [];
  proxy.on('connection', (connection) => eligible.push(connection.eligible));
  proxy.arm();
  try {
    for (let attempts = 1; attempts <= 10; attempts++) {
      const client = await connectPeer(endpoint);
      client.socket.end(up);
      closeOnEnd(client);
      await client.closed;
      if (!client.error && client.received().equals(down)) return { attempts, faults, eligible, plan: proxy.plan, stats: proxy.stats() };
    }
    throw new Error(`never got through: ${JSON.stringify(faults)}`);
  } finally {
    await done();
  }
}

test('several cuts across reconnections: each new connection is cut until the budget is spent', { timeout: 30_000 }, async () => {
  const options = { seed: 21, cuts: 3, spread: 'one', faultOffset: { min: 16 * KiB, max: 256 * KiB } } as const;
  const run = await uploadUntilDone(options);
  assert.equal(run.attempts, 4);
  assert.deepEqual(run.faults.map((f) => f.connection), [0, 1, 2]);
  // each reconnection counts from its accept
  assert.deepEqual(run.faults.map((f) => [f.direction, f.offset]), run.plan.map((p) => [p.direction, p.after]));
  assert.deepEqual([run.stats.connections, run.stats.faultsFired, run.stats.faultsLeft], [4, 3, 0]);
  assert.deepEqual(run.eligible, [true, true, true, true]);

  assert.deepEqual((await uploadUntilDone(options)).faults, run.faults, 'the same seed and traffic give the same faults');
  assert.notDeepEqual((await uploadUntilDone({ ...options, seed: 22 })).faults, run.faults, 'another seed gives other faults');
});

test('reconnects: false: connections accepted after the first fault are spared', { timeout: 30_000 }, async () => {
  const run = await uploadUntilDone({ seed: 21, cuts: 3, spread: 'one', reconnects: false, faultOffset: { min: 16 * KiB, max: 256 * KiB } });
  assert.equal(run.attempts, 2);
  assert.deepEqual(run.eligible, [true, false]);
  assert.deepEqual([run.faults.length, run.stats.faultsLeft], [1, 2]);
});

for (const spread of ['one', 'all'] as const) {
  test(`spread ${spread}: a fault on one of two channels ${spread === 'all' ? 'cuts both' : 'leaves the other working'}`, { timeout: 20_000 }, async () => {
    const { proxy, endpoint, target, faults, done } = await setup({ seed: 4, cuts: 1, spread, cutStyle: 'fin', directions: ['toTarget'], faultOffset: { min: 64 * KiB, max: 64 * KiB } });
    try {
      const main = await exchange(endpoint, target, { toTarget: Buffer.alloc(0), toClient: Buffer.alloc(0) });
      const preempt = await exchange(endpoint, target, { toTarget: Buffer.alloc(0), toClient: Buffer.alloc(0) });
      closeOnEnd(main.client, main.server, preempt.client, preempt.server);
      proxy.arm();
      main.client.socket.write(seededBytes('main', 256 * KiB));
      await main.client.closed;
      if (spread === 'all') {
        await preempt.client.closed;
        assert.deepEqual(faults, [
          { fault: 0, kind: 'cut', how: 'fin', connection: 0, direction: 'toTarget', offset: 64 * KiB },
          { fault: 0, kind: 'cut', how: 'fin', connection: 1, direction: 'toTarget', offset: 0 },
        ]);
        assert.equal(preempt.client.ended, true);
      } else {
        assert.deepEqual(faults, [{ fault: 0, kind: 'cut', how: 'fin', connection: 0, direction: 'toTarget', offset: 64 * KiB }]);
        preempt.client.socket.write('still here');
        await until(() => preempt.server.received().toString() === 'still here', 'the other channel to carry bytes');
        assert.equal(preempt.client.ended, false);
      }
    } finally {
      await done();
    }
  });
}

test('a target that refuses: the client sees the connection reset, and the proxy says why', { timeout: 20_000 }, async () => {
  // a port that was just free: nothing listens there
  const { server, endpoint: nowhere } = await startTarget(loopback);
  await new Promise((resolve) => server.close(resolve));
  const proxy = new ChaosProxy({ target: nowhere, seed: 1 });
  const endpoint = await proxy.listen();
  try {
    const closed = once(proxy, 'closed');
    const client = await connectPeer(endpoint);
    await client.closed;
    assert.equal(client.error?.code, 'ECONNRESET');
    const [info] = await closed;
    assert.match(info.error, /^target: connect ECONNREFUSED/);
    assert.deepEqual([info.toTarget, info.toClient], [0, 0]);
  } finally {
    await proxy.close();
  }
});

test('close() leaves nothing behind: a process using the proxy exits by itself', { timeout: 20_000 }, async () => {
  const testing = join(__dirname, '..', '..', 'src', 'testing', 'index.js');
  // a stalled connection and one with delayed chunks in flight when close() comes
  const script = `
    const net = require('node:net');
    const { once } = require('node:events');
    const { ChaosProxy } = require(${JSON.stringify(testing)});
    (async () => {
      const target = net.createServer((socket) => {
        socket.on('error', () => {});
        socket.resume();
        socket.write(Buffer.alloc(4 << 20));
      });
      target.listen(0, '127.0.0.1');
      await once(target, 'listening');
      const proxy = new ChaosProxy({
        target: { kind: 'tcp', host: '127.0.0.1', port: target.address().port },
        seed: 1, stalls: 1, spread: 'one', directions: ['toClient'], faultOffset: { min: 1024, max: 4096 },
        delayMs: 2000, fragmentBytes: 512,
      });
      const endpoint = await proxy.listen();
      proxy.arm();
      const open = () => {
        const socket = net.connect(endpoint.port, endpoint.host);
        socket.on('error', () => {});
        socket.resume();
        return socket;
      };
      const stalled = open();
      await once(proxy, 'fault');
      const busy = open();
      busy.write(Buffer.alloc(4 << 20));
      await once(proxy, 'connection');
      await new Promise((resolve) => setTimeout(resolve, 100));
      const closed = Promise.all([stalled, busy].map((socket) => new Promise((resolve) => socket.once('close', resolve))));
      await proxy.close();
      await closed;
      await new Promise((resolve) => target.close(resolve));
      // handles finish closing on a later turn of the loop
      await new Promise((resolve) => setTimeout(resolve, 50));
      console.log(JSON.stringify({ stats: proxy.stats(), resources: process.getActiveResourcesInfo() }));
    })();
  `;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let stdout = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  const exited = once(child, 'exit');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  const [code, signal] = await exited;
  clearTimeout(timer);
  assert.equal(signal, null, `the process did not exit by itself\n${stdout}`);
  assert.equal(code, 0);
  const { stats, resources } = JSON.parse(stdout);
  assert.deepEqual(resources.filter((r: string) => /TCP|Pipe|Timeout|Immediate/.test(r) && r !== 'PipeWrap'), [], `still active: ${resources}`);
  assert.deepEqual([stats.connections, stats.open, stats.faultsFired], [2, 0, 1]);
});
