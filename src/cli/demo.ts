// `postcopy demo`: the main job. Starts a destination process on loopback, runs the reference
// guest here (the source), migrates it (precopy, then postcopy), lets the destination resume
// the guest, run it a while, and verify every page; prints a report.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { exitNow } from '../kernel/index.js';
import { parseEndpoint } from '../transport/index.js';
import { UsageError, choiceOption, numberOption, parseOptions } from './options.js';
import { SOURCE_OPTIONS, progressPrinter, runSource, sourceConfig } from './send.js';

export async function demoCommand(args: string[]): Promise<number> {
  const o = parseOptions(args, SOURCE_OPTIONS);
  if (o.connect !== undefined || o['token-file'] !== undefined) throw new UsageError('demo starts its own destination: --connect and --token-file are for send');
  const config = sourceConfig(o);
  const transport = choiceOption(o.transport, 'transport', ['tcp', 'unix'] as const, 'tcp');
  const runSeconds = numberOption(o['run-seconds'], 'run-seconds', 1, 0, 3600);
  const json = o.json === true;
  const token = randomBytes(24).toString('hex');
  const listen = transport === 'unix' ? `unix:${join(tmpdir(), `postcopy-${process.pid}.sock`)}` : '127.0.0.1:0';
  const printer = progressPrinter();
  const status = printer.note;

  // a small young generation: the destination's resident memory is the guest's plus little
  // the destination ends when this process does, however it ends: it watches its stdin
  const child = spawn(process.execPath, ['--max-semi-space-size=1', join(__dirname, 'main.js'), 'receive', '--listen', listen, '--json',
    '--run-seconds', String(runSeconds), '--recover-seconds', String(config.recoverSeconds), '--stall-seconds', String(config.stallSeconds), '--exit-on-stdin-eof'], {
    env: { ...process.env, POSTCOPY_TOKEN: token },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  child.stdin!.on('error', () => undefined);
  const onSignal = () => {
    child.kill('SIGTERM');
    exitNow(130, 'postcopy demo: interrupted');
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const lines = createInterface({ input: child.stdout! });
  const exited = new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? 1)));
  let destinationReport: Record<string, unknown> | undefined;
  const listening = new Promise<string>((resolve, reject) => {
    lines.on('line', (line) => {
      let event: Record<string, unknown>;
      try {
        event = JSON.parse(line);
      } catch {
        return status(`destination: ${line}`);
      }
      if (event.event === 'listening') resolve(event.endpoint as string);
      else if (event.event === 'state') status(`destination: state ${event.state}`);
      else if (event.event === 'paused') status(`destination: paused: ${event.reason}`);
      else if (event.event === 'resumed') status(`destination: resumed (recovery ${event.recoveries})`);
      else if (event.event === 'refused') status(`destination refused a connection: ${event.reason}`);
      else if (event.event === 'report') destinationReport = event;
    });
    exited.then((code) => reject(new Error(`the destination exited (${code}) before listening`)));
  });
  const endpoint = parseEndpoint(await listening);
  status(`destination (pid ${child.pid}) listening on ${await listening}`);
  let source;
  try {
    source = await runSource(config, endpoint, token, printer.progress);
  } catch (error) {
    // the destination's own account of a failure is the more useful one
    const code = await Promise.race([exited, new Promise<number>((r) => setTimeout(() => r(-1), 5000))]);
    child.kill('SIGKILL');
    const reason = destinationReport?.error;
    throw new Error(`${(error as Error).message}${reason ? `; destination: ${reason}` : code >= 0 ? `; destination exited ${code}` : '; the destination did not exit within 5 s'}`);
  }
  const code = await exited;
  if (!destinationReport) throw new Error(`the destination exited (${code}) without a report`);
  const { event: _event, ...dest } = destinationReport;
  const report = {
    ...dest,
    downtime_ms: source.report.downtime_ms,
    source: source.report,
    config: {
      size: config.size, blocks: config.blocks, huge: config.huge, threads: config.threads, pattern: config.pattern, precopy_seconds: config.precopySeconds,
      transport, preempt: config.preempt, recover_seconds: config.recoverSeconds,
    },
  };
  if (json) console.log(JSON.stringify(report));
  else console.log(humanReport(report as never));
  return dest.verified === true && code === 0 ? 0 : 1;
}

function humanReport(r: {
  verified: boolean; state: string; bytes_total: number; total_ms: number; downtime_ms: number; blocktime_ms: number; throughput_gb_per_s: number;
  pages: Record<string, number>; latency_us: { avg: number; p50: number; p99: number; count: number }; peak_rss_mb?: number;
  source: { rounds: number; dirty_log: string; discarded_pages: number }; error?: string;
}): string {
  return [
    '',
    `migration ${r.state}, guest memory ${r.verified ? 'VERIFIED' : 'NOT VERIFIED'}${r.error ? `: ${r.error}` : ''}`,
    `  memory        ${(r.bytes_total / 2 ** 20).toFixed(0)} MiB, dirty log ${r.source.dirty_log}, ${r.source.rounds} precopy round(s)`,
    `  pages         precopy ${r.pages.precopy}, streamed ${r.pages.streamed}, requested ${r.pages.requested}, zero ${r.pages.zero}, discarded ${r.pages.discarded}`,
    `  page requests ${r.latency_us.count}: avg ${r.latency_us.avg} us, p50 <= ${r.latency_us.p50} us, p99 <= ${r.latency_us.p99} us`,
    `  blocktime     ${r.blocktime_ms} ms (all guest threads blocked)`,
    `  downtime      ${r.downtime_ms} ms; total ${r.total_ms} ms; postcopy ${r.throughput_gb_per_s} GB/s${r.peak_rss_mb ? `; destination peak RSS ${r.peak_rss_mb} MiB` : ''}`,
  ].join('\n');
}
