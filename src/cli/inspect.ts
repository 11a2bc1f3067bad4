// `postcopy inspect FILE [--json]`: what a snapshot file holds, and whether it is complete and
// intact (every checksum, page data included when the file has page checksums). Exits 0 only
// for a complete, intact file; otherwise 1 with a one-line reason on stderr.
import { existsSync } from 'node:fs';
import { errorCode } from '../base/index.js';
import { PARTIAL_SUFFIX, SnapshotReader, type SnapshotStatus } from '../snapshot/index.js';
import { SnapshotFlag } from '../wire/snapshot-format.js';
import { oneFile, type CommandArgs } from './options.js';
import type { CommandEnd } from './output.js';

export function inspectCommand({ positionals }: CommandArgs): CommandEnd {
  const { report, code } = inspectFile(oneFile('inspect', positionals));
  const error = report.complete ? undefined : Object.assign(new Error(`${report.file}: ${report.reason}`), { code });
  return { report: { ...report }, human: humanReport(report), error };
}

interface BlockReport {
  idstr: string;
  usedLength: number;
  pageSize: number;
  pages: number;
  /** Only known from a complete file's bitmaps. */
  present: number | null;
  zeroPages: number | null;
}

interface Report {
  file: string;
  /** null when the file cannot be read at all. */
  fileSize: number | null;
  complete: boolean;
  reason?: string;
  /** The rest is there whenever the header is intact. */
  version?: number;
  flags?: string[];
  targetPageSize?: number;
  headerLength?: number;
  deviceStateOffset?: number;
  deviceStateLength?: number;
  trailerOffset?: number;
  /** The length of the complete file this header lays out. */
  fileLength?: number;
  blocks?: BlockReport[];
  /** What was verified; null when the file has no valid trailer to verify against. */
  checksums: { header: boolean; bitmaps: boolean; deviceState: boolean; pageData: Record<string, boolean> | 'not in file' } | null;
}

/** The report, and the code of why the file is refused (a system error's for one it cannot read). */
function inspectFile(file: string): { report: Report; code?: string } {
  let status: SnapshotStatus;
  try {
    status = SnapshotReader.inspect(file);
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    let reason = `cannot read it: ${e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'it is a directory' : e.message}`;
    if (e.code === 'ENOENT' && existsSync(file + PARTIAL_SUFFIX)) reason += ` (${file}${PARTIAL_SUFFIX} exists: the snapshot did not finish)`;
    return { report: { file, fileSize: null, complete: false, reason, checksums: null }, code: errorCode(error) };
  }
  const report = statusReport(status);
  return { report, code: status.complete ? undefined : refusalCode(status) };
}

/**
 * Damaged (ERR_SNAPSHOT_FORMAT) or not complete (ERR_SNAPSHOT_INCOMPLETE): the status does not
 * say, SnapshotReader.open's error does (header, trailer and bitmaps read once more). It opens
 * a refused file only when its page data is damaged.
 */
function refusalCode(status: SnapshotStatus): string {
  try {
    SnapshotReader.open(status.file).close();
    return 'ERR_SNAPSHOT_FORMAT';
  } catch (error) {
    return errorCode(error) ?? 'ERR_SNAPSHOT_FORMAT';
  }
}

function statusReport(status: SnapshotStatus): Report {
  const { file, layout, trailer } = status;
  const report: Report = { file, fileSize: status.fileSize, complete: status.complete, reason: status.reason, checksums: null };
  if (!layout) return report;
  Object.assign(report, {
    version: layout.version,
    flags: Object.entries(SnapshotFlag).filter(([, bit]) => layout.flags & bit).map(([name]) => name),
    targetPageSize: layout.targetPageSize,
    headerLength: layout.headerLength,
    deviceStateOffset: layout.deviceStateOffset,
    deviceStateLength: layout.deviceStateLength,
    trailerOffset: layout.trailerOffset,
    fileLength: layout.fileLength,
  });
  report.blocks = layout.blocks.map((b, i) => {
    const present = trailer ? trailer.blocks[i].present : null;
    return { idstr: b.idstr, usedLength: b.usedLength, pageSize: b.pageSize, pages: b.pages, present, zeroPages: present === null ? null : b.pages - present };
  });
  // A trailer in the status means header, bitmaps and device state matched their checksums.
  if (trailer) {
    const pageData = status.pageData ? Object.fromEntries(status.pageData.map((b) => [b.idstr, b.ok])) : 'not in file';
    report.checksums = { header: true, bitmaps: true, deviceState: true, pageData };
  }
  return report;
}

function humanReport(r: Report): string {
  const lines = [`${r.file}: ${r.complete ? 'complete' : 'NOT COMPLETE'}`];
  if (r.fileSize === null) return lines.join('\n');
  lines.push(`  file size     ${r.fileSize} bytes`);
  if (!r.blocks) return lines.join('\n');
  lines.push(`  format        version ${r.version}, target page ${r.targetPageSize}, flags ${r.flags!.join(' ') || 'none'}`);
  lines.push(`  layout        header ${r.headerLength} bytes, device state ${r.deviceStateLength} bytes at ${r.deviceStateOffset}, trailer at ${r.trailerOffset}, complete length ${r.fileLength}`);
  const rows = [['block', 'used length', 'page size', 'pages', 'present', 'zero pages'], ...r.blocks.map((b) => [b.idstr, b.usedLength, b.pageSize, b.pages, b.present ?? '?', b.zeroPages ?? '?'].map(String))];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  for (const row of rows) lines.push(`  ${row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ')}`);
  const c = r.checksums;
  if (!c) lines.push('  checksums     not verified: no valid trailer');
  else {
    const pages = typeof c.pageData === 'string' ? c.pageData : Object.entries(c.pageData).map(([id, ok]) => `${id} ${ok ? 'ok' : 'MISMATCH'}`).join(', ');
    lines.push(`  checksums     header ok, bitmaps ok, device state ok; page data: ${pages}`);
  }
  return lines.join('\n');
}
