// The page server for VMMs (Firecracker's userfaultfd handler protocol): it listens on a Unix
// socket, takes each VMM's one message (its regions and its userfaultfd), and serves that VM's
// pages from the source on a pager worker of its own. Any number of VMs, one server; they share
// the source's page cache. A VM that is refused (a bad message, a memory file too short) or
// whose pages can no longer be served is ended (SIGKILL by default), and the server goes on.
import { EventEmitter } from 'node:events';
import { statSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { PostcopyError, errorCode } from '../base/index.js';
import { SnapshotReader, verifyPageData } from '../snapshot/index.js';
import { receiveHello, takeConnection, type Handshake } from './handshake.js';
import { ServeMetrics } from './metrics.js';
import type { PageSourceSpec, PrefetchMode } from './protocol.js';
import { RemoteStaging } from './remote-staging.js';
import type { IncomingReport } from '../incoming/index.js';
import { checkRegionsFit } from './page-source.js';
import { memoryFileLength, type GuestRegion } from './regions.js';
import { Vm, closeQuietly, endProcess, killQuietly, type OnFailure } from './vm.js';
import type { WorkingSetFile } from './working-set.js';

export interface PageServerOptions {
  /** The Unix socket the VMMs connect to (a stale socket file there is replaced). */
  socket: string;
  source: PageSourceSpec;
  /** What happens to a VM whose pages can no longer be served: 'kill' (default) or 'leave'. */
  onFailure?: OnFailure;
  prefetch?: PrefetchMode;
  /** Pages to prefetch first (prefetch 'working-set'). */
  workingSet?: WorkingSetFile;
  /** Record each VM's fault order: a 'working-set' event when its pager ends. */
  recordWorkingSet?: boolean;
  /** A VMM that sends no message within this long is refused (default 5000 ms). */
  handshakeTimeoutMs?: number;
  /** Faults waiting and no page placed for this long: the VM fails (default 10 s). */
  stallSeconds?: number;
}

export interface VmInfo {
  vm: number;
  pid: number;
  regions: GuestRegion[];
}

export interface PageServer {
  on(event: 'vm', listener: (info: VmInfo) => void): this;
  on(event: 'first-fault' | 'all-present', listener: (info: VmInfo, ms: number) => void): this;
  on(event: 'ended', listener: (info: VmInfo, reason: string, outcome: string) => void): this;
  on(event: 'refused', listener: (pid: number | undefined, reason: string) => void): this;
  on(event: 'working-set', listener: (info: VmInfo, pages: number[]) => void): this;
  /** A remote source: every page of the VM's regions has arrived here (the migration's report). */
  on(event: 'staged', listener: (info: VmInfo, report: IncomingReport) => void): this;
}

export class PageServer extends EventEmitter {
  readonly metrics = new ServeMetrics();
  readonly vms = new Map<number, Vm>();
  private server: Server | undefined;
  private nextVm = 1;
  /** A snapshot source's blocks (regions must match them). */
  private snapshotBlocks: { idstr: string; usedLength: number; pageSize: number }[] = [];

  constructor(private readonly options: PageServerOptions) {
    super();
  }

  /** Checks the source (a snapshot: every checksum), then listens. */
  async listen(): Promise<void> {
    const { source, socket } = this.options;
    if (source.kind === 'remote' && this.options.onFailure === 'leave') {
      throw new PostcopyError('ERR_POSTCOPY_CONFIG', 'a remote source ends a VM whose pages stop coming (--on-failure leave would leave it reading zeros)');
    }
    if (source.kind !== 'remote') statSync(source.path); // there, and ours to read: else the server does not start
    if (source.kind === 'snapshot') this.snapshotBlocks = checkSnapshot(source.path);
    try {
      unlinkSync(socket);
    } catch {
      // nothing there
    }
    this.server = createServer({ pauseOnConnect: true }, (connection) => void this.admit(connection));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(socket, resolve);
    });
  }

  /** Stops listening and ends every VM (killed by default: nobody would serve them). */
  close(reason = 'the page server stopped'): void {
    this.server?.close();
    for (const vm of this.vms.values()) vm.stop(reason);
    this.metrics.close();
  }

  private async admit(socket: Socket): Promise<void> {
    let connection: Handshake | undefined;
    try {
      connection = takeConnection(socket);
      const hello = await receiveHello(connection, this.options.handshakeTimeoutMs ?? 5000);
      try {
        this.checkFit(hello.regions);
      } catch (error) {
        closeQuietly(hello.uffdFd);
        throw error;
      }
      await this.start(connection, hello.regions, hello.uffdFd);
    } catch (error) {
      this.refuse(connection, error as Error);
    }
  }

  /** The regions against the source: a memory file long enough (now: it may have changed), a snapshot's blocks. */
  private checkFit(regions: GuestRegion[]): void {
    const { source } = this.options;
    if (source.kind === 'remote') return; // the origin checks them against its file
    if (source.kind === 'snapshot') return checkRegionsFit(this.snapshotBlocks, regions, source.path);
    const needed = memoryFileLength(regions);
    const length = statSync(source.path).size;
    if (needed > length) throw new PostcopyError('ERR_POSTCOPY_PROTOCOL', `handshake: the regions need ${needed} bytes of ${source.path}, which has ${length}`);
  }

  private async start(connection: Handshake, regions: GuestRegion[], uffdFd: number): Promise<void> {
    const o = this.options;
    const stallSeconds = o.stallSeconds ?? 10;
    const prefetch = o.prefetch ?? 'working-set';
    const { source } = o;
    let staging: RemoteStaging | undefined;
    if (source.kind === 'remote') {
      // the VMM is killed and gone before staging's userfaultfd closes: no zero reaches it
      staging = new RemoteStaging(regions, source, () => endProcess(connection.pid));
      try {
        await staging.start();
      } catch (error) {
        closeQuietly(uffdFd);
        staging.close('refused');
        staging.release();
        throw error;
      }
    }
    const vm = new Vm({
      vm: this.nextVm++, connection, uffdFd, regions,
      source: source.kind === 'remote' ? { kind: 'staging', regions: staging!.descriptors } : source,
      // from staging: the faults pull pages while the stream fills it, then the prefetch places the rest
      prefetch: staging ? 'none' : prefetch,
      workingSet: prefetch === 'none' ? [] : o.workingSet?.pages ?? [], recordWorkingSet: o.recordWorkingSet ?? false,
      onFailure: o.onFailure ?? 'kill', eagainBoundMs: stallSeconds * 1000,
      // a read of staging may wait out a recovery
      stallSeconds: stallSeconds + (source.kind === 'remote' ? source.recoverSeconds ?? 30 : 0),
    });
    const info: VmInfo = { vm: vm.id, pid: vm.pid, regions };
    if (staging) this.follow(vm, info, staging, prefetch);
    this.vms.set(vm.id, vm);
    this.metrics.active.inc();
    vm.on('counters', (counters) => this.metrics.add(counters));
    vm.on('first-fault', (ms) => this.emit('first-fault', info, ms));
    vm.on('all-present', (ms) => this.emit('all-present', info, ms));
    vm.on('working-set', (pages) => this.emit('working-set', info, pages));
    vm.on('ended', (reason, outcome) => {
      this.vms.delete(vm.id);
      this.metrics.active.dec();
      this.metrics.vmEnded(outcome);
      this.emit('ended', info, reason, outcome);
    });
    this.emit('vm', info);
  }

  /** A VM served from staging: prefetch once staging is complete; a failed migration ends the VM; the VM's end ends the migration. */
  private follow(vm: Vm, info: VmInfo, staging: RemoteStaging, prefetch: PrefetchMode): void {
    staging.on('complete', (report) => {
      vm.prefetch(prefetch === 'none' ? 'none' : 'sequential');
      this.emit('staged', info, report);
    });
    staging.on('failed', (error) => vm.fail(`its pages stopped coming from the origin: ${error.message}`));
    vm.on('ended', (reason) => staging.close(reason));
    void vm.exited.then(() => staging.release());
  }

  /** A VM that cannot be served is ended too (by default), and told nothing: Firecracker reads nothing. */
  private refuse(connection: Handshake | undefined, error: Error): void {
    const reason = errorCode(error) === 'ERR_POSTCOPY_PROTOCOL' ? error.message : `handshake failed: ${error.message}`;
    if (connection) {
      if ((this.options.onFailure ?? 'kill') === 'kill') killQuietly(connection.pid);
      closeQuietly(connection.fd);
    }
    this.metrics.vmEnded('refused');
    this.emit('refused', connection?.pid, reason);
  }
}

/** A snapshot is served only when whole and intact: structure, then every page's checksum. Returns its blocks. */
function checkSnapshot(path: string): { idstr: string; usedLength: number; pageSize: number }[] {
  const reader = SnapshotReader.open(path);
  try {
    const bad = reader.pageChecksums ? verifyPageData(reader).find((b) => !b.ok) : undefined;
    if (bad) throw new PostcopyError('ERR_SNAPSHOT_FORMAT', `${path}: page data of block ${bad.idstr} does not match its checksum: refused before serving any VM`);
    return reader.blocks.map(({ idstr, usedLength, pageSize }) => ({ idstr, usedLength, pageSize }));
  } finally {
    reader.close();
  }
}
