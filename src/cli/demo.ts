// `postcopy demo`: the main job. Starts a destination process on loopback, runs the reference
// guest here (the source), migrates it (precopy, then postcopy), lets the destination resume
// the guest, run it a while, and verify every page; prints a report. With --chaos SEED both
// channels go through a fault-injecting proxy that cuts them at seeded points in postcopy.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { exitNow } from '../kernel/index.js';
import { formatEndpoint, loadTls, parseEndpoint, throwawayCredentials, type Endpoint, type TlsFiles } from '../transport/index.js';
import { choiceOption, intOption, type CommandArgs, type OptionGroup } from './options.js';
import { progressPrinter, type CommandEnd } from './output.js';
import { notVerified, runSeconds } from './reference-guest.js';
import { runSource, sourceConfig, type SourceConfig } from './source-runner.js';
import { PostcopyError, errorCode, round } from '../base/index.js';
import { ChaosProxy } from '../testing/index.js';

interface Destination {
  child: ChildProcess;
  endpoint: Endpoint;
  /** The exit code, once the process is gone and its output read. */
  exited: Promise<number>;
  /** Its last 'report' event. */
  report(): Record<string, unknown> | undefined;
  /** Its last state, undefined while no migration has reached it. */
  state(): string | undefined;
  onState(listener: (state: string) => void): void;
}

export const DEMO_OPTIONS: OptionGroup = {
  title: 'demo',
  options: {
    transport: { type: 'string', value: 'tcp|unix', help: 'the channel transport (default tcp)' },
    tls: { type: 'boolean', help: 'every channel over TLS 1.3, with a throwaway authority and certificate\nmade for this run (both sides present and check one)' },
    chaos: { type: 'string', value: 'SEED', help: 'both channels go through a fault-injecting proxy that cuts\nthem at points chosen from SEED during postcopy; the migration must\nrecover and verify (the report counts the recoveries)' },
  },
};

export async function demoCommand(args: CommandArgs): Promise<CommandEnd> {
  const tlsFiles = args.values.tls === true ? writeThrowawayCredentials() : undefined;
  try {
    return await demo(args, tlsFiles);
  } finally {
    if (tlsFiles) rmSync(dirname(tlsFiles.cert), { recursive: true, force: true });
  }
}

type CertificateFiles = Required<Omit<TlsFiles, 'psk'>>;

async function demo({ values: o, json }: CommandArgs, tlsFiles: CertificateFiles | undefined): Promise<CommandEnd> {
  const config = sourceConfig(o);
  const transport = choiceOption(o.transport, 'transport', ['tcp', 'unix'] as const, 'tcp');
  const chaosSeed = o.chaos === undefined ? undefined : intOption(o.chaos, 'chaos', 0, 0, 2 ** 31 - 1);
  const token = randomBytes(24).toString('hex');
  const printer = progressPrinter();
  const status = printer.note;
  const destination = await startDestination(transport, config, runSeconds(o), token, tlsFiles, status);
  const chaos = chaosSeed === undefined ? undefined : await startChaos(chaosSeed, destination.endpoint, transport, status);
  // faults only once the destination runs the guest: postcopy, where recovery applies
  destination.onState((state) => state === 'RUNNING' && chaos?.proxy.arm());
  const onSignal = () => {
    destination.child.kill('SIGTERM');
    exitNow(130, 'postcopy demo: interrupted');
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  status(`destination (pid ${destination.child.pid}) listening on ${formatEndpoint(destination.endpoint)}${chaos ? `, reached through the chaos proxy on ${formatEndpoint(chaos.endpoint)}` : ''}`);

  let source;
  try {
    source = await runSource(config, chaos?.endpoint ?? destination.endpoint, { token, tls: tlsFiles && loadTls(tlsFiles) }, printer.progress);
  } catch (error) {
    return failed(error as Error, destination, chaos);
  } finally {
    await chaos?.proxy.close();
  }
  const code = await destination.exited;
  const destinationReport = destination.report();
  if (!destinationReport) throw new PostcopyError('ERR_POSTCOPY_PEER_FAILED', `the destination exited (${code}) without a report`);
  const { event: _event, error: destError, error_code: destCode, ...dest } = destinationReport;
  const report = {
    ...dest,
    downtime_ms: source.report.downtime_ms,
    // both processes on this host: from the source's pause to RUN applied here
    downtime_to_run_ms: dest.switchover ? round((dest.switchover as { run_epoch_ms: number }).run_epoch_ms - source.report.pause_epoch_ms) : undefined,
    source: source.report,
    ...(chaos ? { chaos: chaos.summary() } : {}),
    config: {
      size: config.size, blocks: config.blocks, huge: config.huge, threads: config.threads, pattern: config.pattern, precopy_seconds: config.precopySeconds,
      transport, tls: tlsFiles ? 'certificates' : 'none', preempt: config.preempt, channels: config.channels, recover_seconds: config.recoverSeconds,
    },
  };
  const error = destError !== undefined ? codedError(String(destError), destCode) : code !== 0 ? codedError(`the destination exited ${code}`, 'ERR_POSTCOPY_PEER_FAILED') : notVerified(dest);
  return { report, human: json ? undefined : humanReport(report as never), error };
}

/** An error with the code the destination reported (one of ours, or a system error's). */
function codedError(message: string, code: unknown): Error {
  return Object.assign(new Error(message), typeof code === 'string' ? { code } : {});
}

/** The destination process: `receive`, which ends when this process does (it watches its stdin). */
async function startDestination(transport: 'tcp' | 'unix', config: SourceConfig, guestRunSeconds: number, token: string, tlsFiles: CertificateFiles | undefined,
  status: (line: string) => void): Promise<Destination> {
  const listen = transport === 'unix' ? `unix:${join(tmpdir(), `postcopy-${process.pid}.sock`)}` : '127.0.0.1:0';
  // a small young generation: the destination's resident memory is the guest's plus little
  const child = spawn(process.execPath, ['--max-semi-space-size=1', join(__dirname, 'main.js'), 'receive', '--listen', listen, '--json',
    '--run-seconds', String(guestRunSeconds), '--recover-seconds', String(config.recoverSeconds), '--stall-seconds', String(config.stallSeconds), '--exit-on-stdin-eof',
    ...(tlsFiles ? ['--tls-cert', tlsFiles.cert, '--tls-key', tlsFiles.key, '--tls-ca', tlsFiles.ca] : [])], {
    env: { ...process.env, POSTCOPY_TOKEN: token },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  child.stdin!.on('error', () => undefined);
  // 'close': exited, and its stdout read to the end (its report with it)
  const exited = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? 1)));
  let report: Record<string, unknown> | undefined;
  const stateListeners: ((state: string) => void)[] = [];
  let lastState: string | undefined;
  const listening = new Promise<string>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    // its stdout ends when it exits: every line, its failure report included, has been read
    lines.on('close', () => reject(report?.error ? codedError(`destination: ${report.error}`, report.error_code)
      : new PostcopyError('ERR_POSTCOPY_PEER_FAILED', 'the destination exited before listening')));
    lines.on('line', (line) => {
      let event: Record<string, unknown>;
      try {
        event = JSON.parse(line);
      } catch {
        return status(`destination: ${line}`);
      }
      if (event.event === 'listening') resolve(event.endpoint as string);
      else if (event.event === 'state') {
        status(`destination: state ${event.state}`);
        lastState = event.state as string;
        for (const listener of stateListeners) listener(event.state as string);
      }
      else if (event.event === 'paused') status(`destination: paused: ${event.reason}`);
      else if (event.event === 'resumed') status(`destination: resumed (recovery ${event.recoveries})`);
      else if (event.event === 'refused') status(`destination refused a connection: ${event.reason}`);
      else if (event.event === 'report') report = event;
    });
  });
  return { child, endpoint: parseEndpoint(await listening), exited, report: () => report, state: () => lastState, onState: (l) => stateListeners.push(l) };
}

/**
 * demo --tls: a throwaway authority and a loopback certificate it signs, in a private
 * directory; both processes present this one certificate and check the other's against it.
 */
function writeThrowawayCredentials(): CertificateFiles {
  const directory = mkdtempSync(join(tmpdir(), 'postcopy-demo-tls-'));
  const { authority, host } = throwawayCredentials();
  const write = (name: string, text: string) => {
    writeFileSync(join(directory, name), text, { mode: 0o600 });
    return join(directory, name);
  };
  return { cert: write('host.crt', host.cert), key: write('host.key', host.key), ca: write('authority.crt', authority.cert) };
}

/**
 * The chaos proxy between the source and the destination: cuts (and, for one seed in four, a
 * stall) at seeded offsets of the page stream once armed, reconnections included, with seeded
 * delays and fragmented writes throughout.
 */
async function startChaos(seed: number, target: Endpoint, transport: 'tcp' | 'unix', status: (line: string) => void) {
  const proxy = new ChaosProxy({
    target,
    listen: transport === 'unix' ? { kind: 'unix', path: join(tmpdir(), `postcopy-chaos-${process.pid}.sock`) } : undefined,
    seed,
    cuts: 1 + (seed % 3),
    stalls: seed % 4 === 3 ? 1 : 0,
    // counted on the page stream, which always flows in postcopy: the cuts do happen
    directions: ['toTarget'],
    faultOffset: { min: 1024, max: 1 << 20 },
    delayMs: seed % 2,
    fragmentBytes: [0, 16384, 65536][seed % 3],
  });
  proxy.on('fault', (f: { kind: string; how?: string; connection: number; offset: number }) =>
    status(`chaos: ${f.kind}${f.how ? ` (${f.how})` : ''} of connection ${f.connection} after ${f.offset} bytes`));
  const endpoint = await proxy.listen();
  const summary = () => {
    const s = proxy.stats();
    return { seed, faults: s.faultsFired, planned: proxy.plan.length, connections: s.connections, applied: s.applied };
  };
  return { proxy, endpoint, summary };
}

/**
 * The source failed: the destination's account too, and whether it exited (it must, on its own,
 * once a migration has reached it). When the source failed because the destination did (SHUT
 * with a failure status), the destination's error is the cause and leads the one line.
 */
async function failed(error: Error, destination: Destination, chaos: Awaited<ReturnType<typeof startChaos>> | undefined): Promise<CommandEnd> {
  // no migration reached it (the source failed before one began): it would listen for ever
  const unreached = destination.state() === undefined;
  if (unreached) destination.child.kill('SIGTERM');
  const code = await Promise.race([destination.exited, new Promise<number>((r) => setTimeout(() => r(-1), 10_000))]);
  destination.child.kill('SIGKILL');
  const dest = unreached ? undefined : destination.report();
  const exitNote = unreached ? 'the destination, which no migration had reached, was ended' : code >= 0 ? `destination exited ${code}` : 'the destination did not exit within 10 s';
  const sourceCode = errorCode(error);
  const causedByDestination = sourceCode === 'ERR_POSTCOPY_PEER_FAILED' && typeof dest?.error === 'string';
  const message = causedByDestination ? `destination: ${dest!.error} (source: ${error.message})`
    : `${error.message}${dest?.error ? `; destination: ${dest.error}` : ''}`;
  return {
    report: {
      state: 'FAILED',
      verified: false,
      source: { error: error.message, error_code: sourceCode },
      destination: dest ? { state: dest.state, error: dest.error, error_code: dest.error_code } : undefined,
      destination_exit: code >= 0 ? code : null,
      ...(chaos ? { chaos: chaos.summary() } : {}),
    },
    error: codedError(`${message}; ${exitNote}`, causedByDestination ? dest!.error_code : sourceCode),
  };
}

function humanReport(r: {
  verified: boolean; state: string; bytes_total: number; total_ms: number; downtime_ms: number; blocktime_ms: number; throughput_gb_per_s: number;
  pages: Record<string, number>; latency_us: { avg: number; p50: number; p99: number; count: number }; peak_rss_mb?: number;
  source: {
    rounds: number; dirty_log: string; discarded_pages: number; pages_resent: number; precopy_ms: number; precopy_end: string;
    pages_sent: { untouched: number };
    precopy_totals: { send_mib_s: number; dirty_mib_s: number };
  }; error?: string; reason?: string;
  recoveries: number; paused_ms: number; chaos?: { faults: number };
}): string {
  return [
    '',
    `migration ${r.state}, guest memory ${r.verified ? 'VERIFIED' : 'NOT VERIFIED'}${r.error || r.reason ? `: ${r.error ?? r.reason}` : ''}`,
    `  memory        ${(r.bytes_total / 2 ** 20).toFixed(0)} MiB, dirty log ${r.source.dirty_log}, ${r.source.rounds} precopy round(s)`,
    ...(r.source.rounds ? [`  precopy       ${r.source.precopy_ms} ms, ended ${r.source.precopy_end}; sent ${r.source.precopy_totals.send_mib_s.toFixed(0)} MiB/s, guest dirtied ${r.source.precopy_totals.dirty_mib_s.toFixed(0)} MiB/s`] : []),
    `  pages         precopy ${r.pages.precopy}, streamed ${r.pages.streamed}, requested ${r.pages.requested}, zero ${r.pages.zero}${r.source.pages_sent.untouched ? ` (${r.source.pages_sent.untouched} never touched on the source: sent unread)` : ''}, discarded ${r.pages.discarded}`,
    `  page requests ${r.latency_us.count}: avg ${r.latency_us.avg} us, p50 <= ${r.latency_us.p50} us, p99 <= ${r.latency_us.p99} us`,
    `  blocktime     ${r.blocktime_ms} ms (all guest threads blocked)`,
    `  downtime      ${r.downtime_ms} ms; total ${r.total_ms} ms; postcopy ${r.throughput_gb_per_s} GB/s${r.peak_rss_mb ? `; destination peak RSS ${r.peak_rss_mb} MiB` : ''}`,
    ...(r.recoveries || r.chaos ? [`  recoveries    ${r.recoveries} (${r.paused_ms} ms paused, ${r.source.pages_resent} pages sent again)${r.chaos ? `; chaos faults ${r.chaos.faults}` : ''}`] : []),
  ].join('\n');
}
