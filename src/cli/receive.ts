// `postcopy receive`: the destination. Listens, takes one migration, resumes the reference
// guest on RUN (its threads fault on pages that have not arrived), and when every page is
// here lets it run a while, stops it and verifies every page.
import { readFileSync } from 'node:fs';
import { Guest, Mapping, RamList, type GuestMemory } from '../index.js';
import { IncomingMigration } from '../postcopy/index.js';
import { IncomingListener, formatEndpoint } from '../transport/index.js';
import type { GuestBlock } from '../postcopy/index.js';
import { UsageError, endpointOption, numberOption, parseOptions } from './options.js';

export interface DeviceState {
  session: string;
  blocks: { idstr: string; guest: boolean; writes: number; threads: number }[];
}

export function readToken(tokenFile: string | boolean | undefined): string | undefined {
  if (typeof tokenFile === 'string') {
    const token = readFileSync(tokenFile, 'utf8').trim();
    if (!token) throw new UsageError(`--token-file ${tokenFile} is empty`);
    return token;
  }
  return process.env.POSTCOPY_TOKEN || undefined;
}

export async function receiveCommand(args: string[]): Promise<number> {
  const o = parseOptions(args, { listen: 'string', 'token-file': 'string', 'run-seconds': 'string', json: 'boolean' });
  if (typeof o.listen !== 'string') throw new UsageError('receive needs --listen HOST:PORT or --listen unix:PATH');
  const endpoint = endpointOption(o.listen, '--listen');
  const token = readToken(o['token-file']);
  if (endpoint.kind === 'tcp' && !token) throw new UsageError('receive over TCP needs a token: --token-file FILE or POSTCOPY_TOKEN');
  const runSeconds = numberOption(o['run-seconds'], 'run-seconds', 1, 0, 3600);
  const json = o.json === true;
  const say = (event: Record<string, unknown>, text: string) => console.log(json ? JSON.stringify(event) : text);

  const guests = new Map<string, Guest>();
  let device: DeviceState | undefined;
  const stopGuests = async () => {
    await Promise.all([...guests.values()].map((g) => g.terminate()));
  };
  const migration = new IncomingMigration({
    blocks: new RamList<Mapping>(),
    allocate: (b) => new Mapping(b.usedLength, { huge: b.pageSize > 4096, name: b.idstr }),
    stopGuest: stopGuests,
  });
  const listener = new IncomingListener<GuestBlock>({ endpoint, token, allowNoToken: endpoint.kind === 'unix', blocks: migration.blocks });
  let session: string | undefined;
  let mainBound = false;
  listener.admit = (hello) => {
    if (session && hello.sessionId !== session) return `destination is busy with migration '${session}'`;
    if (hello.role === 0 && mainBound) return `migration '${hello.sessionId}' already has a main channel`;
    if (hello.role !== 0 && !mainBound) return 'the main channel must connect first';
    session = hello.sessionId;
    if (hello.role === 0) mainBound = true;
    return undefined;
  };
  listener.on('channel', (accepted) => migration.attach(accepted));
  listener.on('refused', (reason) => say({ event: 'refused', reason }, `refused a connection: ${reason}`));
  const bound = await listener.listen();
  say({ event: 'listening', endpoint: formatEndpoint(bound) }, `listening on ${formatEndpoint(bound)}`);

  const guestMemory = (idstr: string): GuestMemory => {
    const block = migration.blocks.byId(idstr)!;
    return { kind: 'mapping', ...block.host!.descriptor };
  };
  migration.on('state', (state) => say({ event: 'state', state }, `state ${state}`));
  migration.on('device-state', (data) => {
    device = JSON.parse(Buffer.from(data).toString('utf8')) as DeviceState;
    migration.guestThreads = device.blocks.reduce((sum, b) => sum + (b.guest ? b.threads : 0), 0);
  });

  const result = await new Promise<{ code: number; report: Record<string, unknown> }>((resolve) => {
    const onSignal = () => migration.fail(new Error('interrupted'));
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    migration.on('run', () => {
      // fresh guest threads resume the workload from memory alone: they fault on missing pages
      for (const b of device?.blocks ?? []) {
        if (!b.guest) continue;
        Guest.resumeFrom({ memory: guestMemory(b.idstr) }).then((g) => guests.set(b.idstr, g), (error) => migration.fail(error));
      }
    });
    migration.on('failed', (error) => {
      resolve({ code: 1, report: { ...migration.report(), verified: false, error: error.message } });
    });
    migration.on('end', async (report) => {
      try {
        await new Promise((r) => setTimeout(r, runSeconds * 1000));
        await Promise.all([...guests.values()].map((g) => g.stop()));
        const verification = [];
        let verified = true;
        for (const b of device?.blocks ?? []) {
          const guest = guests.get(b.idstr);
          const writes = guest?.stats().ledgerWrites;
          const v = guest ? await guest.verify({ expectWrites: writes }) : undefined;
          const ok = !!v?.ok && (writes ?? 0) >= b.writes;
          verified &&= ok;
          verification.push({ block: b.idstr, ok, pages: v?.pages, bad: v?.bad, first_bad: v?.firstBad?.reason, source_writes: b.writes, writes });
        }
        if (!device) verified = false;
        resolve({ code: verified ? 0 : 1, report: { ...report, verified, verification } });
      } catch (error) {
        resolve({ code: 1, report: { ...report, verified: false, error: (error as Error).message } });
      }
    });
  });
  listener.close();
  result.report.peak_rss_mb = peakRssMiB();
  say({ event: 'report', ...result.report }, JSON.stringify(result.report, null, 2));
  return result.code;
}

/** The process's peak resident memory (VmHWM), in MiB. */
function peakRssMiB(): number {
  const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return match ? Math.round(Number(match[1]) / 1024) : 0;
}
