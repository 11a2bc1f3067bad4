// A VM's pages from another host (`serve --from`): the origin (`serve-pages`) migrates the
// memory file's regions into staging memory of this process with the incoming engine, straight
// to postcopy. The VM's pager copies from staging into the VM: a page that has not arrived yet
// is a fault on staging, which the engine turns into a page request on the preempt channel,
// while the rest streams behind. A broken connection pauses the engine and the origin
// reconnects, as in any migration; if it never does, the engine fails and stops the VM (the
// VMM is killed) before staging's userfaultfd closes, so no zero ever reaches a running VM.
// Staging costs the size of the VM's regions in this process, freed when its pager has exited.
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProtocolError } from '../base/index.js';
import { Mapping, type MappingDescriptor } from '../kernel/index.js';
import { RamBlock, RamList } from '../memory/index.js';
import { IncomingMigration, type IncomingReport } from '../incoming/index.js';
import type { GuestBlock } from '../pager/index.js';
import { IncomingListener, connectSocket, explainTlsError, formatEndpoint, type Endpoint, type TlsSettings } from '../transport/index.js';
import { ORIGIN_BANNER, SERVER_BANNER, readJsonLine, regionBlockName, requestAuth, type OriginRequest } from './origin-request.js';
import type { GuestRegion } from './regions.js';

const REQUEST_TIMEOUT_MS = 5000;

export interface RemoteSourceOptions {
  /** The origin: `postcopy serve-pages --listen` there. */
  from: Endpoint;
  token?: string;
  /** TLS 1.3 on the request and on every channel (the origin must use it too). */
  tls?: TlsSettings;
  /** Bulk channels the origin opens (0: the stream shares the main channel). */
  channels?: number;
  /** How long a broken connection may take to come back (default 30 s). */
  recoverSeconds?: number;
  /** A silent channel is broken after this long (default 5 s). */
  stallSeconds?: number;
  /**
   * The address the origin is told to reach this server's listener at. Default: the address
   * this host reached the origin from, or a Unix socket beside the others when `from` is one.
   */
  advertise?: (listening: Endpoint) => Endpoint | Promise<Endpoint>;
}

export interface RemoteStaging {
  on(event: 'complete', listener: (report: IncomingReport) => void): this;
  on(event: 'failed', listener: (error: Error) => void): this;
}

export class RemoteStaging extends EventEmitter {
  readonly session = randomUUID();
  readonly blocks = new RamList<Mapping>();
  readonly migration: IncomingMigration;
  private listener: IncomingListener<GuestBlock> | undefined;
  private finished = false;

  /** `stopVm` ends the VM for sure (its VMM killed and gone) before staging's userfaultfd closes. */
  constructor(private readonly regions: GuestRegion[], private readonly options: RemoteSourceOptions, stopVm: () => Promise<void>) {
    super();
    regions.forEach((r, i) => this.blocks.add(new RamBlock<Mapping>({ idstr: regionBlockName(i), usedLength: r.size, host: new Mapping(r.size, { name: regionBlockName(i) }) })));
    this.migration = new IncomingMigration({
      blocks: this.blocks,
      stopGuest: stopVm,
      recoverSeconds: options.recoverSeconds ?? 30,
      stallSeconds: options.stallSeconds ?? 5,
    });
    this.migration.on('end', (report) => this.finish(() => this.emit('complete', report)));
    this.migration.on('failed', (error) => this.finish(() => this.emit('failed', error)));
  }

  /** Where the VM's pager reads: staging, region by region. */
  get descriptors(): MappingDescriptor[] {
    return [...this.blocks].map((b) => b.host!.descriptor);
  }

  /** Listens for the migration's channels, then asks the origin for the regions; throws its refusal. */
  async start(): Promise<void> {
    const { from, token, tls } = this.options;
    const origin = connectSocket(from, tls);
    try {
      await new Promise<void>((resolve, reject) => origin.once(tls ? 'secureConnect' : 'connect', resolve).once('error', (error) =>
        reject(new ProtocolError(`the origin at ${formatEndpoint(from)}: ${(tls && explainTlsError(error, 'the origin')) || error.message}`))));
      origin.write(`${JSON.stringify({ server: SERVER_BANNER })}\n`);
      const hello = await readJsonLine(origin, `the origin at ${formatEndpoint(from)}`, REQUEST_TIMEOUT_MS);
      if (typeof hello.error === 'string') throw new ProtocolError(`the origin at ${formatEndpoint(from)} refused: ${hello.error}`);
      if (hello.origin !== ORIGIN_BANNER || typeof hello.nonce !== 'string') throw new ProtocolError(`${formatEndpoint(from)} is not a postcopy serve-pages origin`);
      const listening = await this.listen(origin);
      const request: OriginRequest = {
        regions: this.regions.map(({ offset, size, pageSize }) => ({ offset, size, pageSize })),
        endpoint: formatEndpoint(await (this.options.advertise?.(listening) ?? listening)),
        session: this.session,
        channels: this.options.channels ?? 0,
      };
      origin.write(`${JSON.stringify({ request, auth: requestAuth(token, hello.nonce, request) })}\n`);
      const answer = await readJsonLine(origin, `the origin at ${formatEndpoint(from)}`, REQUEST_TIMEOUT_MS);
      if (answer.ok !== true) throw new ProtocolError(`the origin at ${formatEndpoint(from)} refused: ${String(answer.error)}`);
    } finally {
      origin.destroy();
    }
    await this.listening(`the origin at ${formatEndpoint(from)}`);
  }

  /**
   * Resolves once staging is registered for faults (LISTEN): before that a read of a page not
   * there yet would see zeros, so the VM's pager must not start. Bounded by REQUEST_TIMEOUT_MS.
   */
  private listening(origin: string): Promise<void> {
    const registered = () => !['NONE', 'ADVISE', 'DISCARD'].includes(this.migration.state);
    if (registered()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onState = () => {
        if (this.migration.state === 'FAILED') return done(this.migration.machine.failure ?? new ProtocolError(`${origin}: the migration failed before LISTEN`));
        if (registered()) done();
      };
      const done = (error?: Error) => {
        clearTimeout(timer);
        this.migration.off('state', onState);
        if (error) reject(error);
        else resolve();
      };
      const timer = setTimeout(() => done(new ProtocolError(`${origin} accepted the request but its migration did not reach LISTEN within ${REQUEST_TIMEOUT_MS} ms`)), REQUEST_TIMEOUT_MS);
      this.migration.on('state', onState);
    });
  }

  private async listen(origin: Socket): Promise<Endpoint> {
    const { from, token, tls } = this.options;
    const endpoint: Endpoint = from.kind === 'unix'
      ? { kind: 'unix', path: join(tmpdir(), `postcopy-staging-${this.session}.sock`) }
      : { kind: 'tcp', host: origin.localAddress!, port: 0 };
    const listener = new IncomingListener<GuestBlock>({ endpoint, token, tls, allowNoToken: endpoint.kind === 'unix', blocks: this.migration.blocks });
    listener.admit = (hello) => this.migration.admit(hello);
    listener.on('channel', (accepted) => this.migration.attach(accepted));
    this.listener = listener;
    return listener.listen();
  }

  /** The VM ended: a migration still under way fails (its VMM is gone: stopping it is immediate). */
  close(reason: string): void {
    if (!this.finished) this.migration.guestEnded(`its VM ended (${reason})`);
    this.listener?.close();
  }

  /** Frees staging: only once nothing reads it any more (the VM's pager has exited). */
  release(): void {
    for (const block of this.blocks) if (block.host!.mapped) block.host!.unmap();
  }

  private finish(emit: () => void): void {
    if (this.finished) return;
    this.finished = true;
    this.listener?.close();
    emit();
  }
}
