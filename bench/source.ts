// The source side of the postcopy scenarios, in its own process (spawned by bench/postcopy.ts
// as `node dist-test/bench/main.js postcopy-source ...`), so that the source's and the
// destination's event loops never share a thread, as the floor's remote-4k has a server thread.
//
//   --mode requests   a bench-only source speaking the wire protocol: header/HELLO on main and
//                     preempt (connectChannel), MEM_SIZE, ADVISE, LISTEN, RUN, then nothing but
//                     answers: each REQ_PAGES(_ID) from the return path is answered with its page
//                     on the preempt channel (one corked write per request, as the project's
//                     OutgoingMigration.serveRequests does). No background stream; a PING on
//                     both channels every second, as the project's source sends (a channel
//                     silent for the destination's stallSeconds, 5 s, counts as broken). Once
//                     every page of the block has been sent: EOS/EOF on preempt, COMPLETE/EOF on
//                     main.
//   --mode outgoing   the project's OutgoingMigration with precopySeconds 0 and a preempt
//                     channel: straight to postcopy, the background scan streams every page
//                     while page requests jump the queue on the preempt channel. With
//                     --channels N (N > 0), N bulk channels carry the stream, each fed by a
//                     worker, as `postcopy send --channels N` does (src/cli/source-runner.ts).
//
// The token comes in $POSTCOPY_BENCH_TOKEN, TLS settings (if any) in $POSTCOPY_BENCH_TLS. The process prints one JSON line (what it did, and
// its main thread's CPU time while it served) and exits; it also exits when its stdin closes,
// so that it never outlives the scenario process that spawned it, however that one ends.
import { randomUUID } from 'node:crypto';
import { Mapping } from '../src/kernel/index.js';
import { Bitmap, RamBlock, RamList } from '../src/memory/index.js';
import { OutgoingMigration, type OutgoingReport } from '../src/outgoing/index.js';
import { connectChannel, type ChannelRole, type ConnectedChannel, type Endpoint, type TlsSettings } from '../src/transport/index.js';
import { Capability, MAX_BULK_CHANNELS, type ReturnPathEvent } from '../src/wire/index.js';
import { mainThreadStats, processCpuMs } from './stats.js';
import { TARGET_PAGE_SIZE } from '../src/base/index.js';
import { type GuestBlock } from '../src/pager/index.js';

export const BLOCK_ID = 'bench.ram';
export const PAGE_FILL = 0x5a;
/** The requests-only source's heartbeat, as OutgoingMigration's. */
const HEARTBEAT_MS = 1000;

export interface SourceOutput {
  mode: 'requests' | 'outgoing';
  /** Main-thread CPU time (ms) and wall time (ms) from RUN sent to SHUT received. */
  cpu_ms: number;
  wall_ms: number;
  /** Voluntary context switches of the main thread over the same span (times it went idle). */
  sleeps: number;
  /** CPU time of every thread (main and bulk workers) over the same span, ms. */
  process_cpu_ms: number;
  requests: number;
  pages_sent: number;
  /** OutgoingMigration's report (--mode outgoing). */
  report?: OutgoingReport;
}

export async function sourceMain(args: string[]): Promise<SourceOutput> {
  let mode: string | undefined;
  let port = NaN;
  let host = '127.0.0.1';
  let length = NaN;
  let channels = 0;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--mode') mode = args[++i];
    else if (a === '--port') port = Number(args[++i]);
    else if (a === '--host') host = args[++i];
    else if (a === '--bytes') length = Number(args[++i]);
    else if (a === '--channels') channels = Number(args[++i]);
    else throw new Error(`postcopy-source: unknown argument '${a}'`);
  }
  const channelsOk = Number.isInteger(channels) && channels >= 0 && channels <= MAX_BULK_CHANNELS && (mode === 'outgoing' || channels === 0);
  if ((mode !== 'requests' && mode !== 'outgoing') || !(port > 0) || !(length > 0) || length % TARGET_PAGE_SIZE || !channelsOk) {
    throw new Error(`usage: node dist-test/bench/main.js postcopy-source --mode requests|outgoing --port N --bytes N [--host H] [--channels 0-${MAX_BULK_CHANNELS} (outgoing only)]`);
  }
  // never outlive the scenario process: it holds our stdin open until it is done with us
  process.stdin.on('end', () => process.exit(3));
  process.stdin.on('error', () => process.exit(3));
  process.stdin.resume();

  const token = process.env.POSTCOPY_BENCH_TOKEN;
  tls = benchTls(process.env.POSTCOPY_BENCH_TLS);
  const endpoint: Endpoint = { kind: 'tcp', host, port };
  const sessionId = `bench-${randomUUID()}`;
  return mode === 'requests'
    ? requestsOnly(endpoint, token, sessionId, length)
    : outgoing(endpoint, token, sessionId, length, channels);
}

/** TLS settings the scenario process made for this run (JSON of Buffers), if any. */
let tls: TlsSettings | undefined;
function benchTls(json: string | undefined): TlsSettings | undefined {
  if (!json) return undefined;
  const o = JSON.parse(json, (_key, value) => (value && value.type === 'Buffer' ? Buffer.from(value.data) : value));
  return o as TlsSettings;
}

async function requestsOnly(endpoint: Endpoint, token: string | undefined, sessionId: string, length: number): Promise<SourceOutput> {
  const block = new RamBlock<undefined>({ idstr: BLOCK_ID, usedLength: length });
  const blocks = new RamList([block]);
  const main = await connectChannel({ endpoint, sessionId, role: 'main', token, blocks, capabilities: Capability.PREEMPT });
  const preempt = await connectChannel({ endpoint, sessionId, role: 'preempt', token, blocks });
  const page = new Uint8Array(TARGET_PAGE_SIZE).fill(PAGE_FILL);
  const sent = new Bitmap(block.targetPages);
  let pagesSent = 0;
  let requests = 0;

  const m = main.encoder;
  main.channel.send(m.openReturnPath());
  main.channel.send(m.memSize([{ idstr: BLOCK_ID, usedLength: length, pageSize: TARGET_PAGE_SIZE }]));
  main.channel.send(m.endRam());
  main.channel.send(m.advise(blocks.pageSizeSummary));
  main.channel.send(m.listen());
  main.channel.send(m.run());
  const before = mainThreadStats();
  const cpuBefore = processCpuMs();
  const t0 = performance.now();

  // the destination sees the source alive while no page is asked for (a PING goes outside RAM frames)
  let pings = 0;
  const heartbeat = setInterval(() => {
    pings++;
    for (const c of [main, preempt]) {
      if (c.encoder.ramOpen) c.channel.send(c.encoder.endRam());
      c.channel.send(c.encoder.ping(pings));
    }
  }, HEARTBEAT_MS);

  const finish = () => {
    clearInterval(heartbeat);
    const p = preempt.encoder;
    if (p.ramOpen) preempt.channel.send(p.endRam());
    preempt.channel.send(p.eof());
    main.channel.send(m.complete());
    main.channel.send(m.eof());
  };

  // one corked write per request: the page record's header and the page, as serveRequests does
  const serve = (event: Extract<ReturnPathEvent<typeof block>, { type: 'req-pages' }>) => {
    requests++;
    const socket = preempt.channel.socket;
    socket.cork();
    for (let offset = event.start; offset < event.start + event.length; offset += TARGET_PAGE_SIZE) {
      if (sent.testAndSet(offset / TARGET_PAGE_SIZE)) continue;
      const [head, body] = preempt.encoder.ramPageParts(block, offset, page);
      preempt.channel.send(head);
      preempt.channel.send(body);
      pagesSent++;
    }
    socket.uncork();
    if (pagesSent === block.targetPages) finish();
  };

  const status = await returnPath(main, (event) => {
    if (event.type === 'req-pages') serve(event);
  }).finally(() => clearInterval(heartbeat));
  const after = mainThreadStats();
  const wall = performance.now() - t0;
  main.channel.close();
  preempt.channel.close();
  if (status !== 0) throw new Error(`postcopy-source: the destination ended with status ${status}`);
  return {
    mode: 'requests',
    cpu_ms: (after.cpuNs - before.cpuNs) / 1e6,
    wall_ms: wall,
    sleeps: after.sleeps - before.sleeps,
    process_cpu_ms: processCpuMs() - cpuBefore,
    requests,
    pages_sent: pagesSent,
  };
}

/** Feeds the main channel's return path to `handle` until SHUT; resolves to its status. */
function returnPath<B extends RamBlock<unknown>>(main: ConnectedChannel<B>, handle: (event: ReturnPathEvent<B>) => void): Promise<number> {
  const { channel, returnPath: decoder } = main;
  return new Promise<number>((resolve, reject) => {
    const pump = () => {
      try {
        for (let event = decoder.next(); event; event = decoder.next()) {
          if (event.type === 'shut') return resolve(event.status);
          handle(event);
        }
      } catch (error) {
        reject(error);
      }
    };
    channel.socket.on('data', (chunk: Buffer) => {
      decoder.push(chunk);
      pump();
    });
    channel.socket.on('close', () => reject(new Error('postcopy-source: the destination closed the main channel before SHUT')));
    channel.socket.resume();
    pump();
  });
}

async function outgoing(endpoint: Endpoint, token: string | undefined, sessionId: string, length: number, channels: number): Promise<SourceOutput> {
  const mapping = new Mapping(length, { name: BLOCK_ID });
  try {
    // every page non-zero: each goes as a 4 KiB PAGE record and is placed with UFFDIO_COPY
    mapping.bytes().fill(PAGE_FILL);
    const blocks = new RamList<Mapping>([new RamBlock<Mapping>({ idstr: BLOCK_ID, usedLength: length, host: mapping })]);
    // main announces preempt and the bulk channels, which connect after it (as the CLI does)
    const capabilities = Capability.PREEMPT | (channels << Capability.BULK_SHIFT);
    const connect = (role: ChannelRole, index = 0) =>
      connectChannel<GuestBlock>({ endpoint, sessionId, role, index, token, tls, blocks, capabilities: role === 'main' ? capabilities : 0 });
    const main = await connect('main');
    const preempt = await connect('preempt');
    const bulk: ConnectedChannel<GuestBlock>[] = [];
    for (let index = 0; index < channels; index++) bulk.push(await connect('bulk', index));
    let before = mainThreadStats();
    let cpuBefore = processCpuMs();
    let t0 = performance.now();
    const migration = new OutgoingMigration({
      blocks,
      main,
      preempt,
      bulk,
      precopySeconds: 0,
      pauseGuest: async () => undefined,
      onProgress: (p) => {
        // reported once, right after RUN has been sent: start the clocks there
        if (p.phase === 'switchover') {
          before = mainThreadStats();
          cpuBefore = processCpuMs();
          t0 = performance.now();
        }
      },
    });
    const report = await migration.run();
    const after = mainThreadStats();
    return {
      mode: 'outgoing',
      cpu_ms: (after.cpuNs - before.cpuNs) / 1e6,
      wall_ms: performance.now() - t0,
      sleeps: after.sleeps - before.sleeps,
      process_cpu_ms: processCpuMs() - cpuBefore,
      requests: report.requests.received,
      pages_sent: report.pages_sent.postcopy + report.pages_sent.requested,
      report,
    };
  } finally {
    mapping.unmap();
  }
}
