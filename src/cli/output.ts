// What the commands print: how every command ends (its report, or its failure, the same way for
// all), progress on stderr, and the peak RSS for reports.
import { readFileSync } from 'node:fs';
import { errorCode } from '../base/index.js';
import { exitNow } from '../kernel/index.js';
import type { OutgoingProgress } from '../outgoing/index.js';

/** How a command ended. */
export interface CommandEnd {
  /** With --json: one object on the last stdout line (with error and error_code on a failure). */
  report: Record<string, unknown>;
  /** Without --json: the report as a human reads it, on stdout. */
  human?: string;
  /** A failure: exit 1 (2 for a usage error) and `postcopy: message` on stderr. */
  error?: Error;
}

/**
 * Runs a command and prints how it ended: the one contract of every command's output. A throw,
 * even one from an event handler, is a failure like any other; `base` goes into the JSON
 * object whatever happened (receive: `event: 'report'`). Resolves to the exit code.
 */
export async function runCommand(json: boolean, body: () => CommandEnd | Promise<CommandEnd>, base: Record<string, unknown> = {}): Promise<number> {
  process.on('uncaughtException', (error) => {
    const internal = Object.assign(new Error(`internal error: ${error.stack ?? error.message}`), { code: errorCode(error) ?? 'ERR_POSTCOPY_INTERNAL' });
    exitNow(finish(json, base, { report: {}, error: internal }));
  });
  let end: CommandEnd;
  try {
    end = await body();
  } catch (error) {
    end = { report: {}, error: error as Error };
  }
  return finish(json, base, end);
}

function finish(json: boolean, base: Record<string, unknown>, { report, human, error }: CommandEnd): number {
  // an error without a code is one this package did not foresee
  const code = error && (errorCode(error) ?? 'ERR_POSTCOPY_INTERNAL');
  if (json) console.log(JSON.stringify({ ...base, ...report, ...(error ? { error: error.message, error_code: code } : {}) }));
  else if (human !== undefined) console.log(human);
  if (!error) return 0;
  const isUsage = code === 'ERR_POSTCOPY_USAGE';
  process.stderr.write(`postcopy: ${error.message}\n${isUsage ? '(postcopy --help lists the commands and their options)\n' : ''}`);
  return isUsage ? 2 : 1;
}

/**
 * Progress on stderr: on a terminal one line rewritten in place while the phase lasts, else one
 * line per report (logs and CI keep the whole history). `note` prints any other line.
 */
export function progressPrinter() {
  const tty = process.stderr.isTTY;
  let open = ''; // the phase whose line is being rewritten
  const note = (line: string) => {
    process.stderr.write((open ? '\n' : '') + line + '\n');
    open = '';
  };
  const progress = (p: OutgoingProgress | { phase: 'setup'; message: string }) => {
    const line = formatProgress(p);
    if (!tty || p.phase === 'setup' || p.phase === 'complete' || p.phase === 'paused') return note(line);
    process.stderr.write((open === p.phase ? '\r\x1b[K' : open ? '\n' : '') + line);
    open = p.phase;
  };
  return { progress, note };
}

export function formatProgress(p: OutgoingProgress | { phase: 'setup'; message: string }): string {
  if (p.phase === 'setup') return p.message;
  const mb = p.bytesSent / 2 ** 20;
  const rate = p.elapsedMs > 0 ? mb / (p.elapsedMs / 1000) : 0;
  const recoveries = p.recoveries ? `, ${p.recoveries} recover${p.recoveries === 1 ? 'y' : 'ies'}` : '';
  const reason = p.phase === 'paused' && p.reason ? `: ${p.reason}; reconnecting` : '';
  return `[${p.phase}${p.phase === 'precopy' ? ` round ${p.round}` : ''}] sent ${p.pagesSent} pages (${mb.toFixed(0)} MiB, ${rate.toFixed(0)} MiB/s), ${p.pagesLeft} left${precopyRates(p)}${recoveries}${reason}`;
}

/** Precopy: this round's send rate, and the last round's send and dirty rates (the guest's). */
function precopyRates(p: OutgoingProgress): string {
  if (!p.precopy) return '';
  const last = p.precopy.lastRound;
  const lastPart = last ? `; round ${last.round}: sent ${last.send_mib_s.toFixed(0)} MiB/s, dirtied ${last.dirty_mib_s.toFixed(0)} MiB/s` : '';
  return ` (sending ${p.precopy.sendMiBs.toFixed(0)} MiB/s${lastPart})`;
}

/** The process's peak resident memory (VmHWM), in MiB. */
export function peakRssMiB(): number {
  const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return match ? Math.round(Number(match[1]) / 1024) : 0;
}

/**
 * The next SIGINT or SIGTERM. A long-running command asks for it first thing, before it says
 * it listens: a supervisor may signal at any moment, and Node's default would end the process
 * with no report. The listeners stay (the command ends with exitNow): a signal between two
 * calls is never left to that default either.
 */
export function nextSignal(): Promise<'SIGINT' | 'SIGTERM'> {
  return new Promise((resolve) => process.on('SIGINT', () => resolve('SIGINT')).on('SIGTERM', () => resolve('SIGTERM')));
}
