// What the commands print besides their report: progress on stderr, and the peak RSS for reports.
import { readFileSync } from 'node:fs';
import type { OutgoingProgress } from '../outgoing/index.js';

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
