// A fault-injecting proxy for torture tests and `demo --chaos`: each client connection gets its
// own connection to the target and bytes are relayed both ways, optionally delayed and split
// into small writes. Once armed, connections are cut or stalled at byte offsets drawn from a
// seed, so that a failing run reproduces from its seed. It knows nothing of the protocol.
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { EventEmitter } from 'node:events';
import { listenOn, type Endpoint } from '../transport/index.js';
import { seededRandom } from './seeded-random.js';

export type ChaosDirection = 'toTarget' | 'toClient';
export type CutStyle = 'reset' | 'fin';
export type FaultSpread = 'one' | 'all';

export interface ChaosProxyOptions {
  target: Endpoint;
  /** Where clients connect; default TCP on 127.0.0.1, any free port. */
  listen?: Endpoint;
  seed: number;
  /** Faults after arm(), applied one after the other in a seeded order (default 0 each). */
  cuts?: number;
  stalls?: number;
  /**
   * Bytes a fault waits for in its direction, counted from the moment it becomes the next one
   * (arm(), the previous fault, or the connection's accept if later). Drawn log-uniformly, so
   * that 4-8 KiB is as likely as 4-8 MiB. Default 4 KiB .. 8 MiB.
   */
  faultOffset?: { min: number; max: number };
  /** Directions a fault may count in (default both). */
  directions?: readonly ChaosDirection[];
  /** 'one': only the connection that reached the offset; 'all': every eligible connection open then. Default drawn per fault. */
  spread?: FaultSpread | 'mixed';
  /**
   * 'reset': RST (on TCP; a plain close on Unix sockets); 'fin': end() both sides. Default drawn
   * per cut. A Node peer may read a reset that follows data as an EOF (libuv reports the
   * hang-up so); its next write fails.
   */
  cutStyle?: CutStyle | 'mixed';
  /** Whether connections accepted after the first fault can be faulted too (default true). */
  reconnects?: boolean;
  /** Most milliseconds a chunk is held before it is written on (default 0). */
  delayMs?: number;
  /** Largest piece a chunk is split into, each written on its own (default 0: not split). */
  fragmentBytes?: number;
}

type FaultKind = { kind: 'cut'; how: CutStyle } | { kind: 'stall' };

export type PlannedFault = FaultKind & {
  direction: ChaosDirection;
  /** Bytes in `direction` after which it fires (see `faultOffset`). */
  after: number;
  spread: FaultSpread;
};

export type AppliedFault = FaultKind & {
  /** Index in the plan. */
  fault: number;
  /** Index of the connection hit, in accept order from 0. */
  connection: number;
  direction: ChaosDirection;
  /** Bytes forwarded in `direction` on this connection, since it opened, before it was hit. */
  offset: number;
};

export interface ChaosConnection {
  index: number;
  /** Whether faults may hit it (see `reconnects`). */
  eligible: boolean;
}

export interface ClosedConnection {
  index: number;
  toTarget: number;
  toClient: number;
  /** The first socket error seen, e.g. the target refusing the connection. */
  error?: string;
}

export interface ChaosStats {
  connections: number;
  /** Connections not yet closed on both sides (stalled ones stay open until close()). */
  open: number;
  bytesToTarget: number;
  bytesToClient: number;
  faultsFired: number;
  faultsLeft: number;
  /** One entry per connection hit: a fault spread to all connections hits several. */
  applied: AppliedFault[];
}

export interface ChaosProxy extends EventEmitter {
  on(event: 'connection', listener: (connection: ChaosConnection) => void): this;
  on(event: 'fault', listener: (fault: AppliedFault) => void): this;
  on(event: 'closed', listener: (connection: ClosedConnection) => void): this;
}

const KiB = 1024;
// a lane stops reading its source while this much waits to be written, and reads again below LOW
const HIGH_WATER = 256 * KiB;
const LOW_WATER = 64 * KiB;

export class ChaosProxy extends EventEmitter {
  readonly plan: readonly PlannedFault[];
  private readonly listenAt: Endpoint;
  private readonly shaping: Shaping;
  private readonly reconnects: boolean;
  private server: Server | undefined;
  private readonly pairs = new Set<Pair>();
  private accepted = 0;
  private armed = false;
  private closing = false;
  private fired = 0;
  private readonly applied: AppliedFault[] = [];
  private readonly closedBytes = { toTarget: 0, toClient: 0 };

  private readonly host: PairHost = {
    room: (pair, lane) => {
      const fault = this.armed ? this.plan[this.fired] : undefined;
      if (!fault || !pair.eligible || fault.direction !== lane.direction) return Infinity;
      return fault.after - lane.counted;
    },
    reached: (pair) => this.fire(pair),
    finished: (pair) => {
      this.pairs.delete(pair);
      this.closedBytes.toTarget += pair.toTarget.bytes;
      this.closedBytes.toClient += pair.toClient.bytes;
      const closed: ClosedConnection = { index: pair.index, toTarget: pair.toTarget.bytes, toClient: pair.toClient.bytes };
      if (pair.error) closed.error = pair.error;
      this.emit('closed', closed);
    },
  };

  constructor(private readonly options: ChaosProxyOptions) {
    super();
    this.listenAt = options.listen ?? { kind: 'tcp', host: '127.0.0.1', port: 0 };
    this.shaping = { delayMs: options.delayMs ?? 0, fragmentBytes: options.fragmentBytes ?? 0 };
    this.reconnects = options.reconnects ?? true;
    checkOptions(options);
    this.plan = planFaults(options);
  }

  /** Starts accepting; resolves with the bound endpoint (the real port when asked for port 0). */
  async listen(): Promise<Endpoint> {
    this.server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    return listenOn(this.server, this.listenAt);
  }

  /** Lets faults happen: offsets count from now on the connections open now. Idempotent. */
  arm(): void {
    if (this.armed) return;
    this.armed = true;
    for (const pair of this.pairs) pair.restartCount();
  }

  stats(): ChaosStats {
    let { toTarget, toClient } = this.closedBytes;
    for (const pair of this.pairs) {
      toTarget += pair.toTarget.bytes;
      toClient += pair.toClient.bytes;
    }
    return {
      connections: this.accepted,
      open: this.pairs.size,
      bytesToTarget: toTarget,
      bytesToClient: toClient,
      faultsFired: this.fired,
      faultsLeft: this.plan.length - this.fired,
      applied: [...this.applied],
    };
  }

  /** Destroys every connection (stalled ones too) and the listener; resolves once it is closed. */
  close(): Promise<void> {
    this.closing = true;
    for (const pair of this.pairs) pair.destroy();
    const server = this.server;
    return new Promise((resolve) => (server ? server.close(() => resolve()) : resolve()));
  }

  private accept(client: Socket): void {
    if (this.closing) {
      client.destroy();
      return;
    }
    const index = this.accepted++;
    const eligible = this.reconnects || this.fired === 0;
    const pair = new Pair(index, eligible, client, this.listenAt.kind === 'tcp', this.options.target, this.shaping, this.options.seed, this.host);
    this.pairs.add(pair);
    this.emit('connection', { index, eligible } satisfies ChaosConnection);
  }

  private fire(victim: Pair): void {
    const index = this.fired++;
    const fault = this.plan[index];
    const hit = fault.spread === 'all' ? [...this.pairs].filter((pair) => pair.eligible && pair.state === 'open') : [victim];
    // the next fault counts from here on every connection
    for (const pair of this.pairs) pair.restartCount();
    for (const pair of hit) {
      const where = { fault: index, connection: pair.index, direction: fault.direction, offset: pair.lane(fault.direction).bytes };
      const applied: AppliedFault = fault.kind === 'cut' ? { kind: 'cut', how: fault.how, ...where } : { kind: 'stall', ...where };
      this.applied.push(applied);
      if (fault.kind === 'cut') pair.cut(fault.how);
      else pair.stall();
      this.emit('fault', applied);
    }
  }
}

const DEFAULT_OFFSETS = { min: 4 * KiB, max: 8192 * KiB };
const BOTH_DIRECTIONS: readonly ChaosDirection[] = ['toTarget', 'toClient'];

function checkOptions(options: ChaosProxyOptions): void {
  const { seed, cuts = 0, stalls = 0, delayMs = 0, fragmentBytes = 0 } = options;
  const { min, max } = options.faultOffset ?? DEFAULT_OFFSETS;
  if (!Number.isInteger(seed)) throw new Error(`chaos proxy: seed ${seed} is not an integer`);
  for (const [name, value] of Object.entries({ cuts, stalls, delayMs, fragmentBytes })) {
    if (!Number.isInteger(value) || value < 0) throw new Error(`chaos proxy: ${name} ${value} is not a whole number`);
  }
  if (!(Number.isInteger(min) && Number.isInteger(max) && min >= 1 && min <= max)) {
    throw new Error(`chaos proxy: faultOffset ${min}..${max} is not a range of whole bytes from 1`);
  }
  if (options.directions?.length === 0) throw new Error('chaos proxy: directions is empty');
}

function planFaults(options: ChaosProxyOptions): PlannedFault[] {
  const { seed, cuts = 0, stalls = 0 } = options;
  const { min, max } = options.faultOffset ?? DEFAULT_OFFSETS;
  const directions = options.directions ?? BOTH_DIRECTIONS;
  const random = seededRandom(seed);
  const kinds: FaultKind['kind'][] = [...Array<'cut'>(cuts).fill('cut'), ...Array<'stall'>(stalls).fill('stall')];
  // Fisher–Yates, so that cuts and stalls interleave by seed
  for (let i = kinds.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [kinds[i], kinds[j]] = [kinds[j], kinds[i]];
  }
  return kinds.map((kind) => {
    const direction = directions[Math.floor(random() * directions.length)];
    const after = Math.floor(min * (max / min) ** random());
    const spread = !options.spread || options.spread === 'mixed' ? (random() < 0.5 ? 'one' : 'all') : options.spread;
    if (kind === 'stall') return { kind, direction, after, spread };
    const how = !options.cutStyle || options.cutStyle === 'mixed' ? (random() < 0.5 ? 'reset' : 'fin') : options.cutStyle;
    return { kind, how, direction, after, spread };
  });
}

interface Shaping {
  delayMs: number;
  fragmentBytes: number;
}

interface PairHost {
  /** Bytes `lane` may still forward before the next fault fires on it (Infinity: none due). */
  room(pair: Pair, lane: Lane): number;
  /** `pair` forwarded exactly up to the next fault's offset. */
  reached(pair: Pair): void;
  /** Both sockets of `pair` have closed. */
  finished(pair: Pair): void;
}

type PairState = 'connecting' | 'open' | 'closing' | 'cut' | 'stalled';

/** A client connection and its own connection to the target. */
class Pair {
  state: PairState = 'connecting';
  error: string | undefined;
  readonly toTarget: Lane;
  readonly toClient: Lane;
  private readonly target: Socket;
  private closedSockets = 0;

  constructor(
    readonly index: number,
    readonly eligible: boolean,
    private readonly client: Socket,
    private readonly clientIsTcp: boolean,
    private readonly targetAt: Endpoint,
    shaping: Shaping,
    seed: number,
    private readonly host: PairHost,
  ) {
    this.target = targetAt.kind === 'unix'
      ? netConnect({ path: targetAt.path, allowHalfOpen: true })
      : netConnect({ host: targetAt.host, port: targetAt.port, allowHalfOpen: true });
    // each lane draws its delays and piece sizes from its own stream, apart from the plan's
    const laneSeed = (direction: number) => seed ^ Math.imul(index + 1, 0x9e3779b1) ^ direction;
    const reading = () => this.state === 'open';
    this.toTarget = new Lane('toTarget', client, this.target, shaping, seededRandom(laneSeed(0x1b873593)), reading);
    this.toClient = new Lane('toClient', this.target, client, shaping, seededRandom(laneSeed(0x2c1b3c6d)), reading);
    for (const [socket, side] of [[client, 'client'], [this.target, 'target']] as const) {
      socket.on('error', (error) => (this.error ??= `${side}: ${error.message}`));
      socket.on('close', (hadError) => this.onClose(socket, hadError));
    }
    this.target.once('connect', () => this.start());
  }

  lane(direction: ChaosDirection): Lane {
    return direction === 'toTarget' ? this.toTarget : this.toClient;
  }

  restartCount(): void {
    this.toTarget.counted = 0;
    this.toClient.counted = 0;
  }

  /** Forwards what was read before this instant, then closes both sides. */
  cut(how: CutStyle): void {
    this.state = 'cut';
    this.stopReading();
    const close = () => {
      if (how === 'reset') {
        this.abort(this.client);
        this.abort(this.target);
        return;
      }
      for (const socket of [this.client, this.target]) {
        if (socket.destroyed) continue;
        socket.end();
        // read on and drop what the peer still sends, so that it sees our FIN and closes in turn
        socket.resume();
      }
    };
    this.toTarget.whenDrained(() => this.toClient.whenDrained(close));
  }

  /** Forwards what was read before this instant, then nothing more either way; closes nothing. */
  stall(): void {
    this.state = 'stalled';
    this.stopReading();
  }

  /** For close(): the sockets' close events stop the lanes and their timers. */
  destroy(): void {
    this.state = 'closing';
    this.client.destroy();
    this.target.destroy();
  }

  private start(): void {
    this.state = 'open';
    for (const lane of [this.toTarget, this.toClient]) {
      lane.from.setNoDelay(true);
      lane.from.on('data', (chunk: Buffer) => this.onData(lane, chunk));
      // a half-close goes on once everything before it has
      lane.from.on('end', () =>
        lane.whenDrained(() => {
          if (this.state === 'open') lane.to.end();
        }),
      );
    }
    // accepted paused (pauseOnConnect), so that nothing was read before the target answered
    this.client.resume();
  }

  private onData(lane: Lane, chunk: Buffer): void {
    if (this.state !== 'open') return;
    const room = this.host.room(this, lane);
    if (chunk.length < room) {
      lane.push(chunk);
      return;
    }
    lane.push(chunk.subarray(0, room));
    this.host.reached(this);
  }

  /** What was read already still goes on: the lanes drain by themselves. */
  private stopReading(): void {
    this.client.pause();
    this.target.pause();
  }

  private onClose(socket: Socket, hadError: boolean): void {
    const [into, other, towardOther] = socket === this.client
      ? [this.toClient, this.target, this.toTarget]
      : [this.toTarget, this.client, this.toClient];
    into.stop();
    // an abrupt end (or a failed connect) is passed on abruptly, after what was already read;
    // a clean close needs nothing: the other side got our FIN already and is closing too
    if (this.state === 'connecting' || (this.state === 'open' && hadError)) {
      this.state = 'closing';
      towardOther.whenDrained(() => this.abort(other));
    }
    if (++this.closedSockets === 2) this.host.finished(this);
  }

  private abort(socket: Socket): void {
    if (socket.destroyed) return;
    const tcp = socket === this.client ? this.clientIsTcp : this.targetAt.kind === 'tcp';
    if (tcp && !socket.connecting) socket.resetAndDestroy();
    else socket.destroy();
  }
}

/** One direction of a pair: chunks read from `from`, held and split as shaped, written in order to `to`. */
class Lane {
  /** Bytes taken for forwarding since the connection opened. */
  bytes = 0;
  /** Bytes taken since the next fault started counting. */
  counted = 0;
  private readonly pieces: { data: Buffer; due: number }[] = [];
  /** Bytes taken and not yet written: queued or being written. */
  private pending = 0;
  private writing = false;
  private stopped = false;
  /** Cancels the timer or immediate that will pump next. */
  private scheduled: (() => void) | undefined;
  private readonly onDrained: (() => void)[] = [];

  constructor(
    readonly direction: ChaosDirection,
    readonly from: Socket,
    readonly to: Socket,
    private readonly shaping: Shaping,
    private readonly random: () => number,
    private readonly reading: () => boolean,
  ) {}

  push(chunk: Buffer): void {
    if (!chunk.length || this.stopped) return;
    this.bytes += chunk.length;
    this.counted += chunk.length;
    this.pending += chunk.length;
    const { delayMs, fragmentBytes } = this.shaping;
    const due = delayMs ? Date.now() + Math.round(this.random() * delayMs) : 0;
    for (let at = 0; at < chunk.length; ) {
      // log-uniform sizes: single bytes as likely as whole KiBs
      const size = fragmentBytes ? Math.ceil(fragmentBytes ** this.random()) : chunk.length;
      this.pieces.push({ data: chunk.subarray(at, at + size), due });
      at += size;
    }
    if (this.pending >= HIGH_WATER) this.from.pause();
    this.pump();
  }

  /** Runs `then` once everything taken has been written (at once if nothing waits). */
  whenDrained(then: () => void): void {
    if (this.stopped || (!this.writing && !this.pieces.length)) then();
    else this.onDrained.push(then);
  }

  /** The destination is gone: drop what waits, leave no timer. */
  stop(): void {
    this.stopped = true;
    this.scheduled?.();
    this.scheduled = undefined;
    this.pieces.length = 0;
    this.pending = 0;
    this.settle();
  }

  private pump(): void {
    if (this.writing || this.scheduled || this.stopped) return;
    const next = this.pieces[0];
    if (!next) {
      this.settle();
      return;
    }
    const wait = next.due - Date.now();
    if (wait > 0) {
      this.schedule(wait);
      return;
    }
    this.pieces.shift();
    this.writing = true;
    // one write at a time: each piece leaves in its own write, and the lane's queue is the
    // only buffer, so that the high-water mark bounds it
    this.to.write(next.data, (error) => {
      this.writing = false;
      if (error || this.stopped) return;
      this.pending -= next.data.length;
      if (this.pending < LOW_WATER && this.reading()) this.from.resume();
      // between pieces, a turn of the event loop: a receiver (even in this process) may then
      // read each piece on its own rather than all of them at once
      if (this.shaping.fragmentBytes) this.schedule(0);
      else this.pump();
    });
  }

  private schedule(ms: number): void {
    const run = () => {
      this.scheduled = undefined;
      this.pump();
    };
    if (ms > 0) {
      const timer = setTimeout(run, ms);
      this.scheduled = () => clearTimeout(timer);
    } else {
      const immediate = setImmediate(run);
      this.scheduled = () => clearImmediate(immediate);
    }
  }

  private settle(): void {
    for (const then of this.onDrained.splice(0)) then();
  }
}
