// The postcopy scenarios: a real migration over loopback TCP, the destination in this (the
// scenario) process and the source in a child process (bench/source.ts), so that the two event
// loops never share a thread, as the floor's remote-4k has its own server thread.
//
//   postcopy-fault         no background stream: the source only answers page requests (on the
//                          preempt channel). A toucher worker reads every page of a
//                          <mib>/4 block (the floor's remote-4k size) in the floor's order; each
//                          load faults, becomes a REQ_PAGES on the return path, and waits for the
//                          page to be placed. Compared with the floor's remote-4k.
//   postcopy-fault-loaded  the same kind of toucher over a random subset of the pages of a large
//                          block, while the project's OutgoingMigration streams every page flat
//                          out (precopySeconds 0, preempt channel). Target p99 < 2 ms absolute.
//   postcopy-throughput    GB/s placed during the postcopy phase of a migration straight to
//                          postcopy, nobody touching the memory, with the table's number of bulk
//                          channels (postcopy-throughput-channels: 2). Compared with the floor's
//                          stream-4k (one sender thread, one receiver thread, one connection).
//   postcopy-throughput-tls the same over TLS 1.3 (certificates made for the run), compared with
//                          our plaintext postcopy-throughput run alternately with it.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { Mapping } from '../src/kernel/index.js';
import { RamBlock, RamList } from '../src/memory/index.js';
import { IncomingMigration, type IncomingReport } from '../src/incoming/index.js';
import { IncomingListener, throwawayCredentials, type TlsSettings } from '../src/transport/index.js';
import { killOnExit } from './children.js';
import type { PostcopySpec } from './scenarios.js';
import { BLOCK_ID, type SourceOutput } from './source.js';
import { floorOrder, mainThreadStats, processCpuMs, summarize, type ThreadStats } from './stats.js';
import type { ToucherData, ToucherResult } from './toucher.js';
import type {
  LatencyResult,
  PostcopyFaultDetails,
  PostcopyLoadedDetails,
  PostcopyThroughputDetails,
  ThroughputResult,
} from './types.js';
import { round, TARGET_PAGE_SIZE } from '../src/base/index.js';
import { type GuestBlock } from '../src/pager/index.js';

const PAGE = TARGET_PAGE_SIZE;
const GIB = 1 << 30;
/** Pages the loaded scenario's toucher reads (fewer if the block is small). */
const LOADED_LOADS = 4096;
/** Whole-scenario guard: a hang fails the scenario instead of the bench. */
const SCENARIO_TIMEOUT_MS = 120_000;

export interface PostcopyLatencyResult<D extends PostcopyFaultDetails | PostcopyLoadedDetails> extends LatencyResult {
  details: D;
}
export interface PostcopyThroughputResult extends ThroughputResult {
  details: PostcopyThroughputDetails;
}

/** Size of the loaded scenario's block: 4 x --mib (1 GiB by default), at most 1 GiB. */
export function streamLength(length: number): number {
  return Math.min(4 * length, GIB);
}

export async function postcopyScenario(name: string, length: number, spec: PostcopySpec): Promise<PostcopyLatencyResult<PostcopyFaultDetails | PostcopyLoadedDetails> | PostcopyThroughputResult> {
  if (spec.mode === 'fault') {
    if (spec.channels) throw new Error(`${name}: the requests-only source has no bulk channels`);
    return faultOnly(name, Math.max(PAGE * 64, Math.floor(length / 4 / PAGE) * PAGE));
  }
  if (spec.mode === 'loaded') return faultLoaded(name, streamLength(length), spec.channels);
  return throughput(name, length, spec.channels, spec.tls ? benchTls() : undefined); // the size of the floor's stream-4k: like with like
}

// ---- the source child ------------------------------------------------------------------------

interface Source {
  child: ChildProcess;
  output: Promise<SourceOutput>;
}

/** TLS for both sides of a run: a throwaway authority and a loopback certificate it signs. */
function benchTls(): TlsSettings {
  const { authority, host } = throwawayCredentials();
  return { kind: 'certificate', cert: Buffer.from(host.cert), key: Buffer.from(host.key), ca: Buffer.from(authority.cert) };
}

function spawnSource(mode: 'requests' | 'outgoing', port: number, token: string, bytes: number, channels = 0, tls?: TlsSettings): Source {
  // our own node flags go along (e.g. --cpu-prof, to profile both sides of one run)
  const args = ['postcopy-source', '--mode', mode, '--port', String(port), '--bytes', String(bytes), '--channels', String(channels)];
  const child = spawn(process.execPath, [...process.execArgv, join(__dirname, 'main.js'), ...args], {
    // stdin stays open for as long as we live: the child exits when it closes (bench/source.ts)
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, POSTCOPY_BENCH_TOKEN: token, ...(tls ? { POSTCOPY_BENCH_TLS: JSON.stringify(tls) } : {}) },
  });
  killOnExit(child);
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  const output = new Promise<SourceOutput>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code !== 0) return reject(new Error(`postcopy-source --mode ${mode}: ${signal ? `killed by ${signal}` : `exit ${code}`}`));
      try {
        resolve(JSON.parse(out.trim().split('\n').pop() ?? ''));
      } catch {
        reject(new Error(`postcopy-source --mode ${mode} printed no result: ${JSON.stringify(out.slice(-200))}`));
      }
    });
  });
  output.catch(() => undefined); // observed through the race below
  return { child, output };
}

// ---- the destination -------------------------------------------------------------------------

interface Destination {
  mapping: Mapping;
  migration: IncomingMigration;
  listener: IncomingListener<GuestBlock>;
  port: number;
  token: string;
  run: Promise<void>;
  end: Promise<IncomingReport>;
  /**
   * performance.timeOrigin-based ms of RUN received and of the end, and the main thread's stats
   * and the whole process's CPU ms then.
   */
  at: { run: number; end: number; runStats?: ThreadStats; endStats?: ThreadStats; runCpuMs?: number; endCpuMs?: number };
}

async function destination(length: number, guestThreads: number, tls?: TlsSettings): Promise<Destination> {
  const mapping = new Mapping(length, { name: BLOCK_ID });
  const blocks = new RamList<Mapping>([new RamBlock<Mapping>({ idstr: BLOCK_ID, usedLength: length, host: mapping })]);
  // After a failure the migration closes its userfaultfd once the guest is stopped: the toucher
  // only reads, so "stopped" is immediate, and a toucher blocked on a page is released.
  const migration = new IncomingMigration({ blocks, guestThreads, stopGuest: async () => undefined });
  const token = randomBytes(16).toString('hex');
  const listener = new IncomingListener<GuestBlock>({ endpoint: { kind: 'tcp', host: '127.0.0.1', port: 0 }, token, blocks, tls });
  listener.on('channel', (accepted) => migration.attach(accepted));
  const endpoint = await listener.listen();
  const at: Destination['at'] = { run: 0, end: 0 };
  const run = new Promise<void>((resolve) => migration.once('run', () => {
    at.run = performance.timeOrigin + performance.now();
    at.runStats = mainThreadStats();
    at.runCpuMs = processCpuMs();
    resolve();
  }));
  const end = new Promise<IncomingReport>((resolve, reject) => {
    migration.once('end', (report: IncomingReport) => {
      at.end = performance.timeOrigin + performance.now();
      at.endStats = mainThreadStats();
      at.endCpuMs = processCpuMs();
      resolve(report);
    });
    migration.once('failed', reject);
  });
  end.catch(() => undefined);
  return { mapping, migration, listener, port: endpoint.kind === 'tcp' ? endpoint.port : 0, token, run, end, at };
}

interface Toucher {
  worker: Worker;
  ready: Promise<void>;
  result: Promise<ToucherResult>;
  go(): void;
}

/** bench/toucher.ts reading order[0..count) of the mapping, started by go(). */
function startToucher(mapping: Mapping, order: Uint32Array, count: number): Toucher {
  const go = new SharedArrayBuffer(4);
  const data: ToucherData = { address: mapping.address, length: mapping.length, pageSize: PAGE, order, first: 0, stride: 1, count, write: false, go };
  const worker = new Worker(join(__dirname, 'toucher.js'), { workerData: data });
  const ready = new Promise<void>((resolve, reject) => {
    worker.once('message', () => resolve());
    worker.once('error', reject);
  });
  const result = new Promise<ToucherResult>((resolve, reject) => {
    worker.on('message', (m: ToucherResult | 'ready') => {
      if (m !== 'ready') resolve(m);
    });
    worker.on('error', reject);
    worker.on('exit', (code) => reject(new Error(`toucher exited with code ${code} before reporting`)));
  });
  ready.catch(() => undefined);
  result.catch(() => undefined);
  return {
    worker,
    ready,
    result,
    go: () => {
      const flag = new Int32Array(go);
      Atomics.store(flag, 0, 1);
      Atomics.notify(flag, 0);
    },
  };
}

/**
 * Runs `body` with the destination and source wired so that any failure (the migration's, the
 * source child's, the toucher's, the timeout) rejects at once and everything is torn down: the
 * source child killed, the migration failed (which releases a blocked toucher), the worker
 * terminated. The mapping is unmapped only after a clean end.
 */
async function session<T>(name: string, d: Destination, body: (fail: Promise<never>, track: (source: Source) => void, trackWorker: (w: Worker) => void) => Promise<T>): Promise<T> {
  let source: Source | undefined;
  const workers: Worker[] = [];
  let timer: NodeJS.Timeout | undefined;
  let rejectFail: (error: Error) => void = () => undefined;
  const fail = new Promise<never>((_, reject) => (rejectFail = reject));
  fail.catch(() => undefined);
  d.end.catch((error: Error) => rejectFail(new Error(`${name}: the destination failed: ${error.message}`)));
  timer = setTimeout(() => rejectFail(new Error(`${name}: no result within ${SCENARIO_TIMEOUT_MS / 1000} s`)), SCENARIO_TIMEOUT_MS);
  let clean = false;
  try {
    const result = await body(fail, (s) => {
      source = s;
      s.output.catch((error: Error) => rejectFail(error));
    }, (w) => workers.push(w));
    clean = true;
    return result;
  } finally {
    clearTimeout(timer);
    if (!clean) {
      d.migration.fail(new Error(`${name}: aborted`));
      if (source && source.child.exitCode === null && source.child.signalCode === null) source.child.kill('SIGKILL');
    }
    source?.child.stdin?.end();
    d.listener.close();
    await Promise.race([Promise.all(workers.map((w) => w.terminate())), new Promise((r) => setTimeout(r, 2000))]);
    if (clean) d.mapping.unmap();
  }
}

// ---- postcopy-fault --------------------------------------------------------------------------

async function faultOnly(name: string, length: number): Promise<PostcopyLatencyResult<PostcopyFaultDetails>> {
  const pages = length / PAGE;
  const order = floorOrder(pages); // the floor's order, as missing-4k and remote-4k use it
  const d = await destination(length, 1);
  return session(name, d, async (fail, track, trackWorker) => {
    const toucher = startToucher(d.mapping, order, pages);
    trackWorker(toucher.worker);
    await Promise.race([toucher.ready, fail]);
    const source = spawnSource('requests', d.port, d.token, length);
    track(source);
    await Promise.race([d.run, fail]); // LISTEN registered the block; RUN: the guest may run
    const before = mainThreadStats();
    toucher.go();
    const touched = await Promise.race([toucher.result, fail]);
    const after = mainThreadStats();
    const report = await Promise.race([d.end, fail]);
    const src = await Promise.race([source.output, fail]);
    const seconds = (touched.end - touched.start) / 1000;
    const n = touched.latency.length;
    return {
      scenario: name,
      kind: 'latency',
      ...summarize(touched.latency),
      faults_per_s: Math.round(n / seconds),
      handler_sleeps_per_fault: round((after.sleeps - before.sleeps) / n, 3),
      handler_cpu_us_per_fault: round((after.cpuNs - before.cpuNs) / 1e3 / n, 3),
      details: {
        bytes: length,
        requested: report.pages.requested,
        streamed: report.pages.streamed,
        // the destination's own clock: fault read -> page placed (power-of-two bucket bounds)
        dest_request_avg_us: report.latency_us.avg,
        dest_request_p50_bound_us: report.latency_us.p50,
        dest_request_p99_bound_us: report.latency_us.p99,
        source_requests: src.requests,
        source_cpu_us_per_request: src.requests ? round((src.cpu_ms * 1000) / src.requests, 3) : null,
        source_sleeps_per_request: src.requests ? round(src.sleeps / src.requests, 3) : null,
        postcopy_ms: report.postcopy_ms,
      },
    };
  });
}

// ---- postcopy-fault-loaded -------------------------------------------------------------------

/** `count` distinct pages of `pages`, in random order (a partial Fisher–Yates, fixed seed). */
function samplePages(pages: number, count: number): Uint32Array {
  const v = new Uint32Array(pages);
  for (let i = 0; i < pages; i++) v[i] = i;
  let x = 2463534242;
  for (let i = 0; i < count; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const j = i + ((x >>> 0) % (pages - i));
    const t = v[i];
    v[i] = v[j];
    v[j] = t;
  }
  return v.slice(0, count);
}

async function faultLoaded(name: string, length: number, channels: number): Promise<PostcopyLatencyResult<PostcopyLoadedDetails>> {
  const pages = length / PAGE;
  const loads = Math.min(LOADED_LOADS, Math.floor(pages / 8));
  const order = samplePages(pages, loads);
  const d = await destination(length, 1);
  return session(name, d, async (fail, track, trackWorker) => {
    const toucher = startToucher(d.mapping, order, loads);
    trackWorker(toucher.worker);
    await Promise.race([toucher.ready, fail]);
    const source = spawnSource('outgoing', d.port, d.token, length, channels);
    track(source);
    await Promise.race([d.run, fail]);
    const before = mainThreadStats();
    toucher.go(); // races the background stream, which starts right after RUN
    const touched = await Promise.race([toucher.result, fail]);
    const after = mainThreadStats();
    const report = await Promise.race([d.end, fail]);
    const src = await Promise.race([source.output, fail]);
    // Which loads faulted: the destination counts the fault events it read (only the toucher
    // touches this memory). Faulted loads are the slow ones (a fault costs tens of µs at least,
    // a load of a placed page well under one), so they are the `faulted` slowest.
    // (report.latency_us.count is not the same figure: it misses faults on pages placed
    // between the fault and its read.)
    const faulted = Math.min(loads, d.migration.faultsRead);
    const all = summarize(touched.latency); // sorts in place
    const slow = touched.latency.subarray(loads - faulted);
    const f = faulted > 0 ? summarize(slow) : { faults: 0, p50_us: 0, p99_us: 0, max_us: 0 };
    const seconds = (touched.end - touched.start) / 1000;
    return {
      scenario: name,
      kind: 'latency',
      faults: faulted,
      p50_us: f.p50_us,
      p99_us: f.p99_us,
      max_us: all.max_us,
      faults_per_s: Math.round(faulted / seconds),
      handler_sleeps_per_fault: faulted ? round((after.sleeps - before.sleeps) / faulted, 3) : 0,
      handler_cpu_us_per_fault: faulted ? round((after.cpuNs - before.cpuNs) / 1e3 / faulted, 3) : 0,
      details: {
        bytes: length,
        loads,
        faulted,
        already_streamed: loads - faulted,
        // p50/p99 over all the toucher's loads, faulted or not
        loads_p50_us: all.p50_us,
        loads_p99_us: all.p99_us,
        requested: report.pages.requested,
        requests_skipped_by_source: src.report?.requests.skipped ?? null,
        streamed: report.pages.streamed,
        dest_request_avg_us: report.latency_us.avg,
        dest_request_p99_bound_us: report.latency_us.p99,
        toucher_ms: round(touched.end - touched.start),
        // the toucher ran while the stream was still going (it must, for the figure to mean "loaded")
        toucher_done_before_end_ms: round(d.at.end - touched.end),
        stream_gb_per_s: report.throughput_gb_per_s,
        postcopy_ms: report.postcopy_ms,
      },
    };
  });
}

// ---- postcopy-throughput ---------------------------------------------------------------------

async function throughput(name: string, length: number, channels: number, tls?: TlsSettings): Promise<PostcopyThroughputResult> {
  const d = await destination(length, 0, tls);
  return session(name, d, async (fail, track) => {
    const source = spawnSource('outgoing', d.port, d.token, length, channels, tls);
    track(source);
    const report = await Promise.race([d.end, fail]);
    const src = await Promise.race([source.output, fail]);
    if (report.bulk_channels !== channels) throw new Error(`${name}: the destination saw ${report.bulk_channels} bulk channel(s), not ${channels}`);
    const pages = report.pages.streamed + report.pages.requested;
    const dest = d.at.runStats && d.at.endStats ? { cpuMs: (d.at.endStats.cpuNs - d.at.runStats.cpuNs) / 1e6, sleeps: d.at.endStats.sleeps - d.at.runStats.sleeps } : undefined;
    const destProcessMs = d.at.runCpuMs !== undefined && d.at.endCpuMs !== undefined ? d.at.endCpuMs - d.at.runCpuMs : undefined;
    const wallMs = d.at.end - d.at.run;
    return {
      scenario: name,
      kind: 'throughput',
      bytes: pages * PAGE,
      gb_per_s: report.throughput_gb_per_s,
      us_per_4k: round((report.postcopy_ms * 1000) / pages, 3),
      details: {
        bytes: length,
        postcopy_ms: report.postcopy_ms,
        pages_streamed: report.pages.streamed,
        pages_requested: report.pages.requested,
        pages_zero: report.pages.zero,
        send_cpu_us_per_4k: round((src.process_cpu_ms * 1000) / pages, 3),
        recv_cpu_us_per_4k: destProcessMs !== undefined ? round((destProcessMs * 1000) / pages, 3) : null,
        // share of the postcopy phase each side's main thread spent on a CPU (1 = never idle)
        dest_main_busy: dest ? round(dest.cpuMs / wallMs, 3) : null,
        dest_main_sleeps_per_ms: dest ? round(dest.sleeps / wallMs, 3) : null,
        source_main_busy: round(src.cpu_ms / src.wall_ms, 3),
        source_main_sleeps_per_ms: round(src.sleeps / src.wall_ms, 3),
        dest_process_busy: destProcessMs !== undefined ? round(destProcessMs / wallMs, 3) : null,
        source_process_busy: round(src.process_cpu_ms / src.wall_ms, 3),
        bulk_channels: report.bulk_channels,
        source_postcopy_ms: src.report?.postcopy_ms ?? null,
      },
    };
  });
}
