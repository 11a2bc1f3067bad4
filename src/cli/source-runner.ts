// The source side of a migration of the reference guest, as `send` and `demo` run it: starts
// the guest on fresh blocks, connects to the destination and migrates (precopy, switchover,
// postcopy), then ends the guest and frees its memory.
import { randomUUID } from 'node:crypto';
import { DIRTY_LOG_KINDS, OutgoingMigration, type DirtyLogKind, type OutgoingProgress, type OutgoingReport } from '../outgoing/index.js';
import { connectChannel, type ChannelRole, type Endpoint, type TlsSettings } from '../transport/index.js';
import { Capability, MAX_BULK_CHANNELS } from '../wire/index.js';
import { choiceOption, intOption, livenessConfig, numberOption, type OptionGroup, type Values } from './options.js';
import { deviceStateOf, guestSetupConfig, startReferenceGuests, type DeviceState, type GuestSetup } from './reference-guest.js';
import { type GuestBlock } from '../pager/index.js';

/** How the source migrates (demo and send). */
export const MIGRATION_OPTIONS: OptionGroup = {
  title: 'migration',
  options: {
    'precopy-seconds': { type: 'string', value: 'S', help: 'precopy before switching to postcopy; 0 = straight to postcopy (default 2)' },
    'no-preempt': { type: 'boolean', help: 'no preempt channel: requested pages queue behind the stream' },
    channels: { type: 'string', value: 'N', help: `bulk channels (0-${MAX_BULK_CHANNELS}, default 0): precopy and the background stream\ngo on N more connections, each fed and drained by its own thread` },
    'dirty-log': { type: 'string', value: 'KIND', help: `${DIRTY_LOG_KINDS.join(' | ')} (default: the best the kernel\noffers, in that order; soft-dirty parks the guest for each sync)` },
    'postcopy-max-mibs': { type: 'string', value: 'N', help: 'cap the postcopy background stream at N MiB/s (default: none);\nrequested pages are never held back' },
  },
};

export interface SourceConfig extends GuestSetup {
  precopySeconds: number;
  /** The postcopy background stream's cap in MiB/s (0: none); requested pages are never held back. */
  postcopyMaxMiBs: number;
  preempt: boolean;
  /** Bulk channels (0: pages go on the main channel). */
  channels: number;
  dirtyLog?: DirtyLogKind;
  /** How long a connection broken in postcopy may take to come back (0: fail at once). */
  recoverSeconds: number;
  /** A silent connection is broken after this long. */
  stallSeconds: number;
}

export function sourceConfig(o: Values): SourceConfig {
  return {
    ...guestSetupConfig(o),
    precopySeconds: numberOption(o['precopy-seconds'], 'precopy-seconds', 2, 0, 3600),
    postcopyMaxMiBs: numberOption(o['postcopy-max-mibs'], 'postcopy-max-mibs', 0, 0, 1e6),
    preempt: o['no-preempt'] !== true,
    channels: intOption(o.channels, 'channels', 0, 0, MAX_BULK_CHANNELS),
    dirtyLog: o['dirty-log'] === undefined ? undefined : choiceOption(o['dirty-log'], 'dirty-log', DIRTY_LOG_KINDS, 'pagemap-scan'),
    ...livenessConfig(o),
  };
}

export interface SourceResult {
  report: OutgoingReport;
  sourceWrites: number;
}

/** What the source proves and how its channels are protected: the token, and TLS if any. */
export interface SourceCredentials {
  token: string | undefined;
  tls?: TlsSettings;
}

export async function runSource(config: SourceConfig, endpoint: Endpoint, { token, tls }: SourceCredentials,
  onProgress: (p: OutgoingProgress | { phase: 'setup'; message: string }) => void): Promise<SourceResult> {
  const { blocks, guests, threadsPerBlock } = await startReferenceGuests(config, onProgress);
  const session = randomUUID();
  try {
    const capabilities = (config.preempt ? Capability.PREEMPT : 0) | (config.channels << Capability.BULK_SHIFT);
    const connect = (role: ChannelRole, timeout = 10, index = 0) => connectChannel<GuestBlock>({
      endpoint, sessionId: session, role, index, token, tls, blocks, timeout, capabilities: role === 'main' ? capabilities : 0,
    });
    const main = await connect('main');
    const preempt = config.preempt ? await connect('preempt') : undefined;
    const bulk = [];
    for (let index = 0; index < config.channels; index++) bulk.push(await connect('bulk', 10, index));
    let device: DeviceState | undefined;
    const migration = new OutgoingMigration({
      blocks,
      main,
      preempt,
      bulk,
      reconnect: connect,
      recoverSeconds: config.recoverSeconds,
      stallSeconds: config.stallSeconds,
      precopySeconds: config.precopySeconds,
      postcopyMaxMiBs: config.postcopyMaxMiBs,
      dirtyLog: config.dirtyLog,
      // every guest's threads parked at once (soft-dirty: no write between reading and clearing)
      holdGuest: (critical) => guests.reduceRight((inner, g) => () => g.hold(inner), critical)(),
      onProgress,
      pauseGuest: async () => {
        await Promise.all(guests.map((g) => g.pause()));
        device = deviceStateOf(session, blocks, guests, threadsPerBlock);
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
