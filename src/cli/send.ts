// `postcopy send`: the source. Allocates guest blocks, runs the reference guest on them,
// connects to the destination and migrates: precopy, switchover, postcopy.
import { randomUUID } from 'node:crypto';
import { Guest, GUEST_PATTERNS, Mapping, RamBlock, RamList, freeHugePages, type Pattern } from '../index.js';
import { OutgoingMigration, type OutgoingProgress, type OutgoingReport, type SourceBlock } from '../outgoing/index.js';
import { connectChannel, type ChannelRole, type Endpoint } from '../transport/index.js';
import { Capability } from '../wire/index.js';
import { UsageError, choiceOption, endpointOption, intOption, numberOption, parseOptions, parseSize, type Spec } from './options.js';
import { readToken, type DeviceState } from './receive.js';

export const SOURCE_OPTIONS: Spec = {
  size: 'string', blocks: 'string', huge: 'boolean', threads: 'string', pattern: 'string',
  'precopy-seconds': 'string', 'no-preempt': 'boolean', fill: 'string', json: 'boolean',
  'dirty-log': 'string', transport: 'string', 'run-seconds': 'string', 'token-file': 'string', connect: 'string',
  'recover-seconds': 'string', 'stall-seconds': 'string',
};

export interface SourceConfig extends GuestSetup {
  precopySeconds: number;
  preempt: boolean;
  dirtyLog?: 'pagemap-scan' | 'uffd-wp';
  /** How long a connection broken in postcopy may take to come back (0: fail at once). */
  recoverSeconds: number;
  /** A silent connection is broken after this long. */
  stallSeconds: number;
}

/** The reference guest's options (--size, --blocks, --huge, --threads, --pattern, --fill), checked. */
export function guestSetupConfig(o: Record<string, string | boolean | undefined>): GuestSetup {
  const huge = o.huge === true;
  const size = typeof o.size === 'string' ? parseSize(o.size, '--size') : 256 * 2 ** 20;
  const blocks = intOption(o.blocks, 'blocks', 1, 1, 64);
  const unit = huge ? 2 * 2 ** 20 : 4096;
  if (size % unit !== 0) throw new UsageError(`--size ${o.size} is not a multiple of the ${huge ? '2 MiB huge' : '4 KiB'} page size`);
  if (size / unit < blocks * 2) throw new UsageError(`--size ${o.size} is too small for ${blocks} blocks (each needs at least 2 pages)`);
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

export function sourceConfig(o: Record<string, string | boolean | undefined>): SourceConfig {
  return {
    ...guestSetupConfig(o),
    precopySeconds: numberOption(o['precopy-seconds'], 'precopy-seconds', 2, 0, 3600),
    preempt: o['no-preempt'] !== true,
    dirtyLog: o['dirty-log'] === undefined ? undefined : choiceOption(o['dirty-log'], 'dirty-log', ['pagemap-scan', 'uffd-wp'] as const, 'pagemap-scan'),
    ...livenessConfig(o),
  };
}

/** --recover-seconds and --stall-seconds, shared by demo, send and receive. */
export function livenessConfig(o: Record<string, string | boolean | undefined>): { recoverSeconds: number; stallSeconds: number } {
  return {
    recoverSeconds: numberOption(o['recover-seconds'], 'recover-seconds', 30, 0, 3600),
    stallSeconds: numberOption(o['stall-seconds'], 'stall-seconds', 5, 0.5, 3600),
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

export interface SourceResult {
  report: OutgoingReport;
  sourceWrites: number;
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

/** Allocates the guest's blocks (guest.ram0, guest.ram1, ...) and starts a reference guest on each. */
export async function startReferenceGuests(config: GuestSetup, onProgress: (p: { phase: 'setup'; message: string }) => void): Promise<{
  blocks: RamList<Mapping>;
  guests: Guest[];
  threadsPerBlock: number;
}> {
  if (config.huge && freeHugePages() < config.size / (2 * 2 ** 20)) {
    throw new UsageError(`--huge needs ${config.size / (2 * 2 ** 20)} free 2 MiB huge pages, the kernel has ${freeHugePages()}`);
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

export async function runSource(config: SourceConfig, endpoint: Endpoint, token: string | undefined,
  onProgress: (p: OutgoingProgress | { phase: 'setup'; message: string }) => void): Promise<SourceResult> {
  const { blocks, guests, threadsPerBlock } = await startReferenceGuests(config, onProgress);
  const session = randomUUID();
  try {
    const connect = (role: ChannelRole, timeout = 10) => connectChannel<SourceBlock>({
      endpoint, sessionId: session, role, token, blocks, timeout, capabilities: role === 'main' && config.preempt ? Capability.PREEMPT : 0,
    });
    const main = await connect('main');
    const preempt = config.preempt ? await connect('preempt') : undefined;
    let device: DeviceState | undefined;
    const migration = new OutgoingMigration({
      blocks,
      main,
      preempt,
      reconnect: connect,
      recoverSeconds: config.recoverSeconds,
      stallSeconds: config.stallSeconds,
      precopySeconds: config.precopySeconds,
      dirtyLog: config.dirtyLog,
      onProgress,
      pauseGuest: async () => {
        await Promise.all(guests.map((g) => g.pause()));
        device = {
          session,
          blocks: [...blocks].map((b, i) => ({ idstr: b.idstr, guest: true, writes: guests[i].stats().ledgerWrites, threads: threadsPerBlock })),
        };
      },
      deviceState: () => Buffer.from(JSON.stringify(device)),
    });
    const report = await migration.run();
    return { report, sourceWrites: device!.blocks.reduce((a, b) => a + b.writes, 0) };
  } finally {
    await Promise.all(guests.map((g) => g.terminate()));
    for (const block of blocks) block.host!.unmap();
  }
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
  return `[${p.phase}${p.phase === 'precopy' ? ` round ${p.round}` : ''}] sent ${p.pagesSent} pages (${mb.toFixed(0)} MiB, ${rate.toFixed(0)} MiB/s), ${p.pagesLeft} left${recoveries}${reason}`;
}

export async function sendCommand(args: string[]): Promise<number> {
  const o = parseOptions(args, SOURCE_OPTIONS);
  if (typeof o.connect !== 'string') throw new UsageError('send needs --connect HOST:PORT or --connect unix:PATH');
  const endpoint = endpointOption(o.connect, '--connect');
  const token = readToken(o['token-file']);
  if (endpoint.kind === 'tcp' && !token) throw new UsageError('send over TCP needs a token: --token-file FILE or POSTCOPY_TOKEN');
  const config = sourceConfig(o);
  const json = o.json === true;
  const { report, sourceWrites } = await runSource(config, endpoint, token, progressPrinter().progress);
  console.log(json ? JSON.stringify({ ...report, source_writes: sourceWrites }) : JSON.stringify({ ...report, source_writes: sourceWrites }, null, 2));
  return 0;
}
