// The demo's reference guest, as the commands use it: its options (--size, --blocks, --huge,
// --threads, --pattern, --fill), its blocks and threads, the device state that travels with
// it (the JSON that send and snapshot write and receive and restore read: per block its
// threads and its ledger's write count at the pause), and the check after a resume that every
// guest ran on, stopped cleanly and verifies page by page.
import { Mapping, freeHugePages } from '../kernel/index.js';
import { RamBlock, RamList } from '../memory/index.js';
import type { SnapshotReader } from '../snapshot/index.js';
import { PostcopyError } from '../base/index.js';
import { usage, choiceOption, intOption, numberOption, parseSize, type OptionGroup, type Values } from './options.js';
import { Guest, GUEST_PATTERNS, type Pattern } from '../testing/index.js';

export const GUEST_OPTIONS: OptionGroup = {
  title: 'guest',
  options: {
    size: { type: 'string', value: 'SIZE', help: 'guest memory, e.g. 256M, 2G (default 256M)' },
    blocks: { type: 'string', value: 'N', help: 'split it into N blocks of different sizes (default 1)' },
    huge: { type: 'boolean', help: '2 MiB hugetlb blocks' },
    threads: { type: 'string', value: 'N', help: 'guest threads (default 2)' },
    pattern: { type: 'string', value: 'P', help: `${GUEST_PATTERNS.join(' | ')} (default random)` },
    fill: { type: 'string', value: 'N', help: 'passes writing every page before the guest runs (default 1, 0 for\nread): 0 leaves memory untouched until the guest writes it' },
  },
};

export const RUN_OPTIONS: OptionGroup = {
  title: 'run',
  options: { 'run-seconds': { type: 'string', value: 'S', help: 'how long the resumed guest runs once every page is there, before it\nis stopped and verified (default 1)' } },
};

/** --run-seconds, checked. */
export function runSeconds(o: Values): number {
  return numberOption(o['run-seconds'], 'run-seconds', 1, 0, 3600);
}

/** The device state of the reference guest: what a resumed guest needs to go on and be verified. */
export interface DeviceState {
  session: string;
  blocks: { idstr: string; guest: boolean; writes: number; threads: number }[];
}

export interface GuestSetup {
  size: number;
  blocks: number;
  huge: boolean;
  /** memfd (MAP_SHARED) blocks instead of private anonymous memory. */
  shared?: boolean;
  threads: number;
  pattern: Pattern;
  fill: number;
}

/** The reference guest's options (--size, --blocks, --huge, --threads, --pattern, --fill), checked. */
export function guestSetupConfig(o: Values): GuestSetup {
  const huge = o.huge === true;
  const size = typeof o.size === 'string' ? parseSize(o.size, '--size') : 256 * 2 ** 20;
  const blocks = intOption(o.blocks, 'blocks', 1, 1, 64);
  const unit = huge ? 2 * 2 ** 20 : 4096;
  if (size % unit !== 0) throw usage(`--size ${o.size} is not a multiple of the ${huge ? '2 MiB huge' : '4 KiB'} page size`);
  if (size / unit < blocks * 2) throw usage(`--size ${o.size} is too small for ${blocks} blocks (each needs at least 2 pages)`);
  const pattern = choiceOption(o.pattern, 'pattern', GUEST_PATTERNS, 'random');
  return {
    size,
    blocks,
    huge,
    threads: intOption(o.threads, 'threads', 2, 1, 64),
    pattern,
    fill: intOption(o.fill, 'fill', pattern === 'read' ? 0 : 1, 0, 1000),
  };
}

/** Splits `size` into `count` blocks of different sizes (each a whole number of pages). */
export function blockSizes(size: number, count: number, unit: number): number[] {
  const units = size / unit;
  const weights = Array.from({ length: count }, (_, i) => i + 2);
  const total = weights.reduce((a, b) => a + b, 0);
  const sizes = weights.map((w) => Math.max(2, Math.floor((units * w) / total)));
  sizes[count - 1] += units - sizes.reduce((a, b) => a + b, 0);
  return sizes.map((u) => u * unit);
}

/** Allocates the guest's blocks (guest.ram0, guest.ram1, ...) and starts a reference guest on each. */
export async function startReferenceGuests(config: GuestSetup, onProgress: (p: { phase: 'setup'; message: string }) => void): Promise<{
  blocks: RamList<Mapping>;
  guests: Guest[];
  threadsPerBlock: number;
}> {
  if (config.huge && freeHugePages() < config.size / (2 * 2 ** 20)) {
    throw usage(`--huge needs ${config.size / (2 * 2 ** 20)} free 2 MiB huge pages, the kernel has ${freeHugePages()}`);
  }
  const unit = config.huge ? 2 * 2 ** 20 : 4096;
  const blocks = new RamList<Mapping>();
  blockSizes(config.size, config.blocks, unit).forEach((length, i) => {
    const idstr = `guest.ram${i}`;
    blocks.add(new RamBlock<Mapping>({ idstr, usedLength: length, pageSize: unit, host: new Mapping(length, { huge: config.huge, shared: config.shared, name: idstr }) }));
  });
  const threadsPerBlock = Math.max(1, Math.round(config.threads / config.blocks));
  onProgress({ phase: 'setup', message: `starting the guest: ${config.blocks} block(s), ${threadsPerBlock} thread(s) each, pattern ${config.pattern}${config.fill ? `, filling every page ${config.fill}x` : ''}` });
  try {
    const guests = await Promise.all([...blocks].map((block, i) => Guest.start({
      memory: { kind: 'mapping', ...block.host!.descriptor },
      threads: threadsPerBlock,
      pattern: config.pattern,
      seed: i + 1,
      fill: config.fill,
    })));
    return { blocks, guests, threadsPerBlock };
  } catch (error) {
    for (const block of blocks) block.host!.unmap();
    throw error;
  }
}

/** The device state of paused reference guests, one per block (as startReferenceGuests made them). */
export function deviceStateOf(session: string, blocks: RamList<Mapping>, guests: Guest[], threadsPerBlock: number): DeviceState {
  return {
    session,
    blocks: [...blocks].map((b, i) => ({ idstr: b.idstr, guest: true, writes: guests[i].stats().ledgerWrites, threads: threadsPerBlock })),
  };
}

/** The device state the snapshot tool writes for the reference guest (as `send` does), checked against the file. */
export function parseDeviceState(reader: SnapshotReader): DeviceState {
  let parsed: unknown;
  try {
    parsed = JSON.parse(reader.deviceState.toString('utf8'));
  } catch (error) {
    throw new PostcopyError('ERR_SNAPSHOT_FORMAT', `${reader.file}: the device state is not the reference guest's JSON (${(error as Error).message})`);
  }
  const blocks = (parsed as { blocks?: unknown }).blocks;
  if (!Array.isArray(blocks) || !blocks.every((b) => typeof b?.idstr === 'string' && typeof b.writes === 'number' && typeof b.threads === 'number')) {
    throw new PostcopyError('ERR_SNAPSHOT_FORMAT', `${reader.file}: the device state names no guest blocks ({blocks:[{idstr, guest, writes, threads}]})`);
  }
  for (const b of blocks as DeviceState['blocks']) {
    if (b.guest && !reader.blocks.some((r) => r.idstr === b.idstr)) throw new PostcopyError('ERR_SNAPSHOT_FORMAT', `${reader.file}: the device state names block '${b.idstr}', which the file does not hold`);
  }
  return { session: reader.file, blocks };
}

/**
 * After the last page: every resumed guest must have started, run `runSeconds`, stop cleanly,
 * and verify page by page with no thread failure and no bad page seen by a reader; its write
 * count must have gone on from the source's. `verified: false` always comes with a reason.
 */
export async function verifyGuests(device: DeviceState | undefined, guests: Map<string, Guest>, resuming: Promise<Guest | Error>[], runSeconds: number) {
  if (!device) return { verified: false, reason: 'no device state arrived, so no guest was resumed' };
  const notStarted = (await Promise.all(resuming)).find((g): g is Error => g instanceof Error);
  if (notStarted) return { verified: false, reason: notStarted.message };
  await new Promise((r) => setTimeout(r, runSeconds * 1000));
  await Promise.all([...guests.values()].map((g) => g.stop()));
  const verification = [];
  const reasons: string[] = [];
  for (const b of device.blocks.filter((b) => b.guest)) {
    const guest = guests.get(b.idstr);
    if (!guest) {
      reasons.push(`block '${b.idstr}': no guest was resumed`);
      continue;
    }
    const stats = guest.stats();
    const v = await guest.verify({ expectWrites: stats.ledgerWrites });
    const problems = [
      ...guest.errors.map((e) => e.message),
      ...guest.badPages().slice(0, 3).map((p) => `reader thread ${p.thread} saw ${p.reason}`),
      ...(v.ok ? [] : [v.firstBad?.reason ?? 'verification failed']),
      ...(stats.ledgerWrites < b.writes ? [`${stats.ledgerWrites} writes in the ledger, fewer than the source's ${b.writes}`] : []),
    ];
    reasons.push(...problems.map((p) => `block '${b.idstr}': ${p}`));
    verification.push({ block: b.idstr, ok: problems.length === 0, pages: v.pages, bad: v.bad, first_bad: v.firstBad?.reason, source_writes: b.writes, writes: stats.ledgerWrites });
  }
  return reasons.length ? { verified: false, reason: reasons.join('; '), verification } : { verified: true, verification };
}

/** A report with `verified: false` as the command's failure (no code in ERROR_CODES says "not verified" better). */
export function notVerified(report: Record<string, unknown>): PostcopyError | undefined {
  return report.verified === true ? undefined : new PostcopyError('ERR_GUEST_NOT_VERIFIED', `guest memory NOT verified: ${String(report.reason)}`);
}
