// `serve-pages`: the host that has a memory file serves it to page servers on other hosts. Each
// request (origin-request.ts) starts one migration whose source is the outgoing engine with the
// file's regions in place of a running guest: straight to postcopy, the page server's faults
// arrive as page requests on the preempt channel, the rest streams (on bulk channels if asked),
// and a broken connection is recovered as in any migration (the origin reconnects).
import { EventEmitter } from 'node:events';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import type { Server, Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { PostcopyError, ProtocolError } from '../base/index.js';
import { FileMapping, Mapping } from '../kernel/index.js';
import { RamBlock, RamList } from '../memory/index.js';
import { OutgoingMigration, type OutgoingReport } from '../outgoing/index.js';
import type { GuestBlock } from '../pager/index.js';
import { answerPlaintext, connectChannel, createServerFor, explainTlsError, isPlaintextPeer, listenOn, parseEndpoint, peerRefusal, type ChannelRole, type Endpoint, type TlsSettings } from '../transport/index.js';
import { Capability } from '../wire/index.js';
import { ORIGIN_BANNER, SERVER_BANNER, authMatches, checkRequest, newNonce, readJsonLine, regionBlockName, type FileRegion, type OriginRequest } from './origin-request.js';

const REQUEST_TIMEOUT_MS = 5000;
/** How much of the file one read brings into a session's memory. */
const LOAD_CHUNK_BYTES = 4 << 20;

export interface PageOriginOptions {
  memFile: string;
  /** Where page servers connect to ask for pages. */
  endpoint: Endpoint;
  /** Required on TCP: requests and migration channels prove they know it. */
  token?: string;
  /** How long a broken connection may take to come back (default 30 s). */
  recoverSeconds?: number;
  /** A silent connection is broken after this long (default 5 s). */
  stallSeconds?: number;
  /** Caps each session's background stream (MiB/s; default none); requested pages are never held back. */
  postcopyMaxMiBs?: number;
  /** TLS 1.3 on requests and on every migration channel (page servers must use it too). */
  tls?: TlsSettings;
}

export interface PageOrigin {
  on(event: 'session', listener: (session: string, request: OriginRequest) => void): this;
  on(event: 'refused', listener: (reason: string) => void): this;
  on(event: 'served', listener: (session: string, report: OutgoingReport) => void): this;
  on(event: 'failed', listener: (session: string, error: Error) => void): this;
  /** The page server's VM ended before every page was sent: nothing more is wanted (no failure). */
  on(event: 'ended', listener: (session: string, error: Error) => void): this;
}

export class PageOrigin extends EventEmitter {
  private server: Server | undefined;
  private readonly fileLength: number;
  /** The file's byte ranges that hold data (holes stay unpopulated: sent as zeros, unread). */
  private readonly dataRanges: [number, number][];
  /** Sessions whose migration runs, each resolved when it ends however it ends. */
  private readonly sessions = new Set<Promise<void>>();

  constructor(private readonly options: PageOriginOptions) {
    super();
    if (options.endpoint.kind === 'tcp' && !options.token) throw new PostcopyError('ERR_POSTCOPY_CONFIG', 'serve-pages on TCP needs a token (page servers must prove they know it)');
    const file = FileMapping.open(options.memFile);
    try {
      this.fileLength = file.length;
      this.dataRanges = file.dataRanges();
    } finally {
      file.close();
    }
  }

  async listen(): Promise<Endpoint> {
    this.server = createServerFor(this.options.tls, REQUEST_TIMEOUT_MS / 1000, (socket) => void this.answer(socket), (error, socket) => {
      // a page server without TLS has sent its banner and reads plaintext: it is told why
      if (isPlaintextPeer(error)) answerPlaintext(socket, `${JSON.stringify({ error: 'this origin takes TLS only: run serve --from with TLS too (--tls-cert, --tls-key, --tls-ca or --tls-psk)' })}\n`);
      this.emit('refused', `TLS handshake failed: ${explainTlsError(error, 'the page server') ?? error.message}`);
    });
    return listenOn(this.server, this.options.endpoint);
  }

  /** Takes no more requests; sessions under way go on (see `drained`). */
  close(): void {
    this.server?.close();
  }

  /** How many sessions are under way. */
  get active(): number {
    return this.sessions.size;
  }

  /** Resolves once no session is under way. */
  async drained(): Promise<void> {
    while (this.sessions.size) await Promise.all(this.sessions);
  }

  /** One request: checked, answered, then its migration runs. */
  private async answer(socket: Socket): Promise<void> {
    socket.on('error', () => undefined);
    let request: OriginRequest;
    try {
      const tlsRefusal = this.options.tls && peerRefusal(this.options.tls, socket as TLSSocket);
      if (tlsRefusal) throw new PostcopyError('ERR_POSTCOPY_REFUSED', tlsRefusal);
      const nonce = newNonce();
      socket.write(`${JSON.stringify({ origin: ORIGIN_BANNER, nonce })}\n`);
      const carry = { text: '' };
      const banner = await readJsonLine(socket, 'serve-pages request', REQUEST_TIMEOUT_MS, carry);
      if (banner.server !== SERVER_BANNER) throw new ProtocolError(`serve-pages request: the peer is not a postcopy page server (its first line has server ${JSON.stringify(banner.server)})`);
      const message = await readJsonLine(socket, 'serve-pages request', REQUEST_TIMEOUT_MS, carry);
      request = checkRequest(message.request, this.fileLength);
      if (!authMatches(this.options.token, nonce, request, message.auth)) throw new PostcopyError('ERR_POSTCOPY_REFUSED', 'request: wrong token');
    } catch (error) {
      const reason = (error as Error).message;
      socket.end(`${JSON.stringify({ error: reason })}\n`);
      this.emit('refused', reason);
      return;
    }
    socket.end(`${JSON.stringify({ ok: true })}\n`);
    this.emit('session', request.session, request);
    const session = this.migrate(request).then(
      (report) => void this.emit('served', request.session, report),
      (error: PostcopyError) => void this.emit(error.code === 'ERR_POSTCOPY_GUEST_ENDED' ? 'ended' : 'failed', request.session, error),
    );
    this.sessions.add(session);
    try {
      await session;
    } finally {
      this.sessions.delete(session);
    }
  }

  private async migrate(request: OriginRequest): Promise<OutgoingReport> {
    const blocks = this.load(request.regions);
    try {
      const endpoint = parseEndpoint(request.endpoint, 'request endpoint');
      const capabilities = Capability.PREEMPT | (request.channels << Capability.BULK_SHIFT);
      const connect = (role: ChannelRole, timeout = 10, index = 0) => connectChannel<GuestBlock>({
        endpoint, sessionId: request.session, role, index, token: this.options.token, tls: this.options.tls, blocks, timeout, capabilities: role === 'main' ? capabilities : 0,
      });
      const main = await connect('main');
      const preempt = await connect('preempt');
      const bulk = [];
      for (let index = 0; index < request.channels; index++) bulk.push(await connect('bulk', 10, index));
      const migration = new OutgoingMigration({
        blocks, main, preempt, bulk, reconnect: connect,
        recoverSeconds: this.options.recoverSeconds ?? 30,
        stallSeconds: this.options.stallSeconds ?? 5,
        postcopyMaxMiBs: this.options.postcopyMaxMiBs,
        // a file, not a running guest: nothing to pause, nothing writes
        precopySeconds: 0,
        pauseGuest: async () => undefined,
        holdGuest: (critical) => critical(),
      });
      return await migration.run();
    } finally {
      for (const block of blocks) block.host!.unmap();
    }
  }

  /** The regions' bytes in memory of this session's own (the dirty log arms per mapping). */
  private load(regions: FileRegion[]): RamList<Mapping> {
    const blocks = new RamList<Mapping>();
    const fd = openSync(this.options.memFile, 'r');
    try {
      const length = fstatSync(fd).size;
      regions.forEach((region, i) => {
        if (region.offset + region.size > length) {
          throw new PostcopyError('ERR_RESTORE_FAILED', `${this.options.memFile} is now ${length} bytes: region ${i} ends at ${region.offset + region.size}`);
        }
        const host = new Mapping(region.size, { name: regionBlockName(i) });
        blocks.add(new RamBlock<Mapping>({ idstr: regionBlockName(i), usedLength: region.size, host }));
        this.readInto(fd, region, host);
      });
      return blocks;
    } catch (error) {
      for (const block of blocks) block.host!.unmap();
      throw error;
    } finally {
      closeSync(fd);
    }
  }

  private readInto(fd: number, region: FileRegion, host: Mapping): void {
    const end = region.offset + region.size;
    for (const [start, stop] of this.dataRanges) {
      for (let at = Math.max(start, region.offset); at < Math.min(stop, end); ) {
        const n = Math.min(LOAD_CHUNK_BYTES, Math.min(stop, end) - at);
        const read = readSync(fd, host.bytes(at - region.offset, n), 0, n, at);
        if (read !== n) throw new PostcopyError('ERR_RESTORE_FAILED', `${this.options.memFile}: a short read at ${at} (${read} of ${n} bytes)`);
        at += n;
      }
    }
  }
}
