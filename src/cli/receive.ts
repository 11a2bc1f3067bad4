// `postcopy receive`: the destination. Listens, takes one migration, resumes the reference
// guest on RUN (its threads fault on pages that have not arrived), and when every page is
// here lets it run a while, stops it and verifies every page. On any failure it prints the
// report and the process ends at once (main.ts: exitNow), taking any guest thread still
// blocked in a fault with it.
import { Mapping } from '../kernel/index.js';
import { RamList } from '../memory/index.js';
import { IncomingMigration } from '../incoming/index.js';
import { IncomingListener, formatEndpoint, type Endpoint, type TlsSettings } from '../transport/index.js';
import type { GuestBlock } from '../pager/index.js';
import { usage, endpointOption, livenessConfig, readTls, readToken, type CommandArgs, type OptionGroup, type Values } from './options.js';
import { peakRssMiB, type CommandEnd } from './output.js';
import { notVerified, runSeconds, verifyGuests, type DeviceState } from './reference-guest.js';
import { PostcopyError, TARGET_PAGE_SIZE } from '../base/index.js';
import { Guest, type GuestMemory } from '../testing/index.js';

export const RECEIVE_OPTIONS: OptionGroup = {
  title: 'receive',
  options: {
    listen: { type: 'string', value: 'ADDR', help: 'where to listen' },
    'exit-on-stdin-eof': { type: 'boolean', help: 'fail and exit when stdin closes (for a supervising process)' },
  },
};

/** How the migration ended: the report, and the failure if it failed. */
type Outcome = Omit<CommandEnd, 'human'>;

interface ReceiveConfig {
  endpoint: Endpoint;
  token: string | undefined;
  tls: TlsSettings | undefined;
  runSeconds: number;
  recoverSeconds: number;
  stallSeconds: number;
  exitOnStdinEof: boolean;
}

/** One line of output: the event as JSON with --json, else the text. */
type Say = (event: Record<string, unknown>, text: string) => void;

/** Its --json output is one event per line; the last, the report, is runCommand's (event: 'report'). */
export async function receiveCommand({ values, json }: CommandArgs): Promise<CommandEnd> {
  const config = receiveConfig(values);
  const say: Say = (event, text) => console.log(json ? JSON.stringify(event) : text);
  const destination = new ReferenceDestination(config, say);
  destination.follow();
  // before 'listening' is said: a supervisor may signal as soon as it reads it
  const outcome = destination.outcome();
  const listener = await destination.listen();
  const { report, error } = await outcome;
  listener.close();
  report.peak_rss_mb = peakRssMiB();
  return { report, human: JSON.stringify(report, null, 2), error };
}

function receiveConfig(o: Values): ReceiveConfig {
  if (typeof o.listen !== 'string') throw usage('receive needs --listen HOST:PORT or --listen unix:PATH');
  const endpoint = endpointOption(o.listen, '--listen');
  const token = readToken(o['token-file']);
  if (endpoint.kind === 'tcp' && !token) throw usage('receive over TCP needs a token: --token-file FILE or POSTCOPY_TOKEN');
  return { endpoint, token, tls: readTls(o), runSeconds: runSeconds(o), ...livenessConfig(o), exitOnStdinEof: o['exit-on-stdin-eof'] === true };
}

/** The destination of one migration of the reference guest: the engine, and the guests it resumes on RUN. */
class ReferenceDestination {
  readonly guests = new Map<string, Guest>();
  /** Each resumed guest, or why it could not resume. */
  readonly resuming: Promise<Guest | Error>[] = [];
  device: DeviceState | undefined;
  readonly migration: IncomingMigration;

  constructor(private readonly config: ReceiveConfig, private readonly say: Say) {
    this.migration = new IncomingMigration({
      blocks: new RamList<Mapping>(),
      allocate: (b) => new Mapping(b.usedLength, { huge: b.pageSize > TARGET_PAGE_SIZE, name: b.idstr }),
      // a thread blocked in a fault cannot be terminated: the CLI ends the process instead
      stopGuest: async () => {
        await Promise.all([...this.guests.values()].map((g) => g.terminate()));
      },
      recoverSeconds: config.recoverSeconds,
      stallSeconds: config.stallSeconds,
    });
  }

  /** Listens where told, admitting one migration (and its reconnections) into the engine. */
  async listen(): Promise<IncomingListener<GuestBlock>> {
    const { endpoint, token, tls } = this.config;
    const migration = this.migration;
    const listener = new IncomingListener<GuestBlock>({ endpoint, token, tls, allowNoToken: endpoint.kind === 'unix', blocks: migration.blocks });
    listener.admit = (hello) => migration.admit(hello);
    listener.on('channel', (accepted) => migration.attach(accepted));
    listener.on('refused', (reason) => this.say({ event: 'refused', reason }, `refused a connection: ${reason}`));
    const bound = await listener.listen();
    this.say({ event: 'listening', endpoint: formatEndpoint(bound), tls: tls?.kind ?? 'none' }, `listening on ${formatEndpoint(bound)}${tls ? ` (TLS 1.3, ${tls.kind === 'psk' ? 'pre-shared key' : 'certificates'})` : ''}`);
    return listener;
  }

  /** Says what the migration does, and takes the device state when it arrives. */
  follow(): void {
    const { migration, say } = this;
    migration.on('state', (state) => say({ event: 'state', state }, `state ${state}`));
    migration.on('paused', (error) => say({ event: 'paused', reason: error.message }, `paused: ${error.message}; waiting up to ${this.config.recoverSeconds} s for the source`));
    migration.on('resumed', () => say({ event: 'resumed', recoveries: migration.recovery.count }, `resumed (recovery ${migration.recovery.count})`));
    migration.on('device-state', (data) => {
      this.device = JSON.parse(Buffer.from(data).toString('utf8')) as DeviceState;
      migration.guestThreads = this.device.blocks.reduce((sum, b) => sum + (b.guest ? b.threads : 0), 0);
    });
  }

  /** How the migration ends: failed or interrupted, or complete and the guests verified (or not). */
  outcome(): Promise<Outcome> {
    const migration = this.migration;
    return new Promise<Outcome>((resolve) => {
      const interrupt = (why: string) => {
        const error = new PostcopyError('ERR_POSTCOPY_INTERRUPTED', why);
        migration.fail(error);
        resolve({ report: { ...migration.report(), verified: false }, error });
      };
      process.once('SIGINT', () => interrupt('interrupted (SIGINT)'));
      process.once('SIGTERM', () => interrupt('interrupted (SIGTERM)'));
      if (this.config.exitOnStdinEof) {
        process.stdin.on('end', () => interrupt('the supervising process went away (stdin closed)'));
        process.stdin.on('error', () => interrupt('the supervising process went away (stdin error)'));
        process.stdin.resume();
      }
      migration.on('run', () => this.resumeGuests());
      migration.on('failed', (error) => resolve({ report: { ...migration.report(), verified: false }, error }));
      migration.on('end', (report) => {
        verifyGuests(this.device, this.guests, this.resuming, this.config.runSeconds).then(
          (verification) => resolve({ report: { ...report, ...verification }, error: notVerified(verification) }),
          (error: Error) => resolve({ report: { ...report, verified: false }, error }),
        );
      });
    });
  }

  /** On RUN: fresh guest threads resume the workload from memory alone (they fault on missing pages). */
  private resumeGuests(): void {
    for (const b of this.device?.blocks ?? []) {
      if (!b.guest || this.guests.has(b.idstr)) continue;
      this.resuming.push(Guest.resumeFrom({ memory: this.guestMemory(b.idstr) }).then((g) => {
        this.guests.set(b.idstr, g);
        return g;
      }, (error: Error) => {
        const failure = new PostcopyError('ERR_POSTCOPY_GUEST', `resuming the guest on block '${b.idstr}' failed: ${error.message}`);
        this.migration.fail(failure);
        return failure;
      }));
    }
  }

  private guestMemory(idstr: string): GuestMemory {
    const block = this.migration.blocks.byId(idstr)!;
    return { kind: 'mapping', ...block.host!.descriptor };
  }
}
