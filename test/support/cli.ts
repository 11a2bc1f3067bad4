// Runs the postcopy CLI as separate processes, as a user would.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export const CLI = join(__dirname, '..', '..', 'src', 'cli', 'main.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  /** The last stdout line as JSON (the --json report), if it parses. */
  report?: Record<string, any>;
}

export function runCli(args: string[], env: Record<string, string> = {}, timeoutMs = 120_000): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`postcopy ${args.join(' ')} timed out\n${stderr}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      const last = stdout.trim().split('\n').pop() ?? '';
      let report: Record<string, any> | undefined;
      try {
        report = JSON.parse(last);
      } catch {
        report = undefined;
      }
      resolve({ code: code ?? 1, stdout, stderr, report });
    });
  });
}

/** A destination process; resolves once it listens, with its events as they come. */
export async function startReceiver(args: string[], env: Record<string, string>): Promise<{
  child: ChildProcess; endpoint: string; events: Record<string, any>[]; exited: Promise<number>; waitFor(pred: (e: Record<string, any>) => boolean, ms?: number): Promise<Record<string, any>>;
}> {
  const child = spawn(process.execPath, [CLI, 'receive', '--json', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  const events: Record<string, any>[] = [];
  const waiters: { pred: (e: Record<string, any>) => boolean; resolve: (e: Record<string, any>) => void }[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let event: Record<string, any>;
    try {
      event = JSON.parse(line);
    } catch {
      return;
    }
    events.push(event);
    for (const w of [...waiters]) if (w.pred(event)) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve(event);
    }
  });
  const exited = new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? 1)));
  const waitFor = (pred: (e: Record<string, any>) => boolean, ms = 60_000) => {
    const seen = events.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise<Record<string, any>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`receiver: no matching event in ${ms} ms; saw ${JSON.stringify(events.map((e) => e.event))}`)), ms);
      waiters.push({ pred, resolve: (e) => { clearTimeout(timer); resolve(e); } });
    });
  };
  const listening = await waitFor((e) => e.event === 'listening', 20_000);
  return { child, endpoint: listening.endpoint, events, exited, waitFor };
}
