// `postcopy snapshot`: runs the reference guest, takes a background snapshot of its memory
// while it keeps writing, and reports. Exits 0 only when the file is complete. The device
// state is what `postcopy restore` needs to resume and verify the guest: per block its
// threads and its ledger's write count at the instant of the snapshot.
import { randomUUID } from 'node:crypto';
import { BackgroundSnapshot, type SnapshotProgress, type SnapshotReport, type UnpopulatedMode } from '../snapshot/index.js';
import { PostcopyError } from '../base/index.js';
import { usage, choiceOption, numberOption, type CommandArgs, type OptionGroup, type Values } from './options.js';
import { progressPrinter, type CommandEnd } from './output.js';
import { deviceStateOf, guestSetupConfig, startReferenceGuests, type DeviceState, type GuestSetup } from './reference-guest.js';

export const SNAPSHOT_OPTIONS: OptionGroup = {
  title: 'snapshot',
  options: {
    out: { type: 'string', value: 'FILE', help: 'the snapshot file (written as FILE.partial, renamed when complete)' },
    shared: { type: 'boolean', help: 'memfd (MAP_SHARED) guest memory instead of private anonymous memory' },
    'warmup-seconds': { type: 'string', value: 'S', help: 'how long the guest runs before the snapshot (default 0.5)' },
    unpopulated: { type: 'string', value: 'MODE', help: 'never-touched pages: kernel (WP_UNPOPULATED) | populate | auto (default)' },
    'no-checksums': { type: 'boolean', help: 'no page-data checksums in the trailer (header, bitmaps and device\nstate are always checked)' },
  },
};

interface SnapshotConfig extends GuestSetup {
  out: string;
  warmupSeconds: number;
  unpopulated: UnpopulatedMode;
  pageChecksums: boolean;
}

function snapshotConfig(o: Values): SnapshotConfig {
  if (typeof o.out !== 'string' || !o.out) throw usage('snapshot needs --out FILE');
  return {
    ...guestSetupConfig(o),
    out: o.out,
    shared: o.shared === true,
    warmupSeconds: numberOption(o['warmup-seconds'], 'warmup-seconds', 0.5, 0, 3600),
    unpopulated: choiceOption(o.unpopulated, 'unpopulated', ['auto', 'kernel', 'populate'] as const, 'auto'),
    pageChecksums: o['no-checksums'] !== true,
  };
}

export function formatSnapshotProgress(p: SnapshotProgress): string {
  const pct = p.pagesTotal ? (100 * p.pagesSaved) / p.pagesTotal : 100;
  return `[snapshot] saved ${p.pagesSaved}/${p.pagesTotal} pages (${pct.toFixed(0)}%), ${(p.bytesWritten / 2 ** 20).toFixed(0)} MiB written, ${p.gbPerS.toFixed(2)} GB/s, ${p.writeFaults} write faults`;
}

export async function snapshotCommand({ values, json }: CommandArgs): Promise<CommandEnd> {
  const config = snapshotConfig(values);
  const { note } = progressPrinter();
  const { blocks, guests, threadsPerBlock } = await startReferenceGuests(config, (p) => note(p.message));
  try {
    if (config.warmupSeconds > 0) await new Promise((r) => setTimeout(r, config.warmupSeconds * 1000));
    let device: DeviceState | undefined;
    const writesAtStart = guests.reduce((n, g) => n + g.stats().ledgerWrites, 0);
    note(`snapshotting ${(config.size / 2 ** 20).toFixed(0)} MiB into ${config.out} while the guest writes`);
    const report: SnapshotReport = await BackgroundSnapshot.take({
      path: config.out,
      blocks: [...blocks].map((b) => ({ idstr: b.idstr, mapping: b.host! })),
      pauseGuest: async () => {
        await Promise.all(guests.map((g) => g.pause()));
      },
      resumeGuest: () => guests.forEach((g) => g.resume()),
      deviceState: () => {
        device = deviceStateOf(randomUUID(), blocks, guests, threadsPerBlock);
        return Buffer.from(JSON.stringify(device));
      },
      unpopulated: config.unpopulated,
      pageChecksums: config.pageChecksums,
    }, (p) => note(formatSnapshotProgress(p)));
    const snapshotWrites = device!.blocks.reduce((n, b) => n + b.writes, 0);
    const writesAfter = guests.reduce((n, g) => n + g.stats().ledgerWrites, 0);
    const bad = guests.flatMap((g) => g.badPages());
    const out = {
      ...report,
      guest: {
        threads: threadsPerBlock * config.blocks,
        pattern: config.pattern,
        writes_at_snapshot: snapshotWrites,
        writes_before: snapshotWrites - writesAtStart,
        writes_during_snapshot: writesAfter - snapshotWrites,
        bad_pages: bad.length,
      },
    };
    if (!json) {
      note(`complete: ${report.file} (${(report.file_size / 2 ** 20).toFixed(0)} MiB file, ${report.pages.written} pages written, ${report.pages.zero} zero pages skipped)`);
      note(`  ${report.gb_per_s} GB/s, ${report.seconds} s; pause ${report.pause_ms} ms; ${report.write_faults.count} write faults p50 ${report.write_faults.p50_us} µs p99 ${report.write_faults.p99_us} µs; the guest wrote ${out.guest.writes_during_snapshot} pages meanwhile`);
    }
    const error = bad.length ? new PostcopyError('ERR_GUEST_CORRUPTION', `the guest found ${bad.length} bad page(s) while it ran: first ${JSON.stringify(bad[0])}`) : undefined;
    return { report: out, error };
  } finally {
    await Promise.all(guests.map((g) => g.terminate()));
    for (const block of blocks) block.host!.unmap();
  }
}
