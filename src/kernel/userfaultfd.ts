// A userfaultfd with named features, modes and flags. Cold-path calls throw Node-shaped
// errors; the `try*` calls are the hot path and return a status (bytes or 0, or -errno).
import { addon, type Address, type NativeUserfaultfd } from './addon.js';

const placement = addon.placement;
import {
  CONTINUE_MODE_DONTWAKE,
  CONTINUE_MODE_WP,
  COPY_MODE_DONTWAKE,
  COPY_MODE_WP,
  FEATURES,
  IOCTLS,
  MOVE_MODE_ALLOW_SRC_HOLES,
  MOVE_MODE_DONTWAKE,
  POISON_MODE_DONTWAKE,
  REGISTER_MODES,
  WRITEPROTECT_MODE_DONTWAKE,
  WRITEPROTECT_MODE_WP,
  ZEROPAGE_MODE_DONTWAKE,
  maskToNames,
  type Feature,
  type Ioctl,
  type RegisterMode,
} from './constants.js';
import { errnoError, hex } from './errors.js';
import { EventBatch } from './events.js';
import { probeFeatures } from './features.js';

export interface OpenOptions {
  /** Features to enable; opening fails, naming them, if the kernel lacks any. */
  features?: Feature[];
  /** Only faults from user mode (UFFD_USER_MODE_ONLY): kernel accesses get EFAULT. */
  userModeOnly?: boolean;
}

export interface WakeOption {
  /** Leave blocked threads asleep (wake them later with `wake`). */
  dontWake?: boolean;
}

export class UnsupportedFeatureError extends Error {
  readonly code = 'ERR_POSTCOPY_UNSUPPORTED';
  constructor(readonly missing: string[], what: string) {
    super(`${what}: this kernel does not grant ${missing.join(', ')}`);
  }
}

export class Userfaultfd {
  readonly features: ReadonlySet<Feature>;
  readonly ioctls: ReadonlySet<Ioctl>;
  private readonly native: NativeUserfaultfd;
  private batch: EventBatch | undefined;
  /** The descriptor for the placement calls; -1 once closed (a reused number is never hit). */
  private descriptor: number;

  /**
   * Opens a userfaultfd and does the UFFDIO_API handshake. The kernel allows the handshake
   * once per descriptor, so what the kernel offers is learnt first on a probe descriptor
   * (cached), and the features asked for are checked against it before they are requested.
   */
  static open(options: OpenOptions = {}): Userfaultfd {
    const wanted = options.features ?? [];
    const offered = probeFeatures();
    const missing = wanted.filter((f) => !offered.features[f]);
    if (missing.length) throw new UnsupportedFeatureError(missing, 'userfaultfd');
    const native = new addon.Userfaultfd({ userModeOnly: options.userModeOnly });
    try {
      const mask = wanted.reduce((m, f) => m | FEATURES[f], 0n);
      const api = native.api(mask);
      return new Userfaultfd(native, maskToNames(mask, FEATURES), maskToNames(api.ioctls, IOCTLS));
    } catch (error) {
      native.close();
      throw error;
    }
  }

  /** Adopts the userfaultfd of a forked child (UFFD_EVENT_FORK); its handshake is done. */
  static adopt(fd: number, features: Iterable<Feature>): Userfaultfd {
    return new Userfaultfd(new addon.Userfaultfd({ fd }), [...features], ['REGISTER', 'UNREGISTER', 'API']);
  }

  private constructor(native: NativeUserfaultfd, features: Feature[], ioctls: Ioctl[]) {
    this.native = native;
    this.descriptor = native.fd;
    this.features = new Set(features);
    this.ioctls = new Set(ioctls);
  }

  get fd(): number {
    return this.descriptor;
  }
  get closed(): boolean {
    return this.descriptor < 0;
  }
  /** How the descriptor was opened: the /dev/userfaultfd device or the userfaultfd(2) syscall. */
  get via(): 'dev' | 'syscall' {
    return this.native.via;
  }
  /** Bytes a hot-path call completed before it returned an error. */
  get lastCount(): number {
    return placement.lastCount();
  }

  /** Registers a range; returns the ioctls the kernel allows on it. */
  register(start: Address, length: number, modes: RegisterMode | RegisterMode[]): Set<Ioctl> {
    const mode = (Array.isArray(modes) ? modes : [modes]).reduce((m, name) => m | REGISTER_MODES[name], 0);
    return new Set(maskToNames(this.native.register(start, length, mode), IOCTLS));
  }

  unregister(start: Address, length: number): void {
    this.native.unregister(start, length);
  }

  // ---- placement: throwing forms --------------------------------------------------------

  /** Places `length` bytes from `src` (at `srcOffset`) at `dst` atomically; returns bytes placed. */
  copy(dst: Address, src: ArrayBufferView | ArrayBuffer, length: number,
       options: WakeOption & { writeProtect?: boolean; srcOffset?: number } = {}): number {
    const mode = (options.dontWake ? COPY_MODE_DONTWAKE : 0) | (options.writeProtect ? COPY_MODE_WP : 0);
    return this.check(placement.copy(this.descriptor, dst, src, length, mode, options.srcOffset ?? 0), 'ioctl(UFFDIO_COPY)', dst, length);
  }

  /** Maps the zero page over a missing range (not for hugetlb: EINVAL there). */
  zeropage(dst: Address, length: number, options: WakeOption = {}): number {
    const mode = options.dontWake ? ZEROPAGE_MODE_DONTWAKE : 0;
    return this.check(placement.zeropage(this.descriptor, dst, length, mode), 'ioctl(UFFDIO_ZEROPAGE)', dst, length);
  }

  writeProtect(start: Address, length: number, options: WakeOption = {}): void {
    const mode = WRITEPROTECT_MODE_WP | (options.dontWake ? WRITEPROTECT_MODE_DONTWAKE : 0);
    this.check(placement.writeProtect(this.descriptor, start, length, mode), 'ioctl(UFFDIO_WRITEPROTECT)', start, length);
  }

  /** Removes write protection and (unless dontWake) wakes the writers waiting on it. */
  unprotect(start: Address, length: number, options: WakeOption = {}): void {
    const mode = options.dontWake ? WRITEPROTECT_MODE_DONTWAKE : 0;
    this.check(placement.writeProtect(this.descriptor, start, length, mode), 'ioctl(UFFDIO_WRITEPROTECT)', start, length);
  }

  wake(start: Address, length: number): void {
    this.check(placement.wake(this.descriptor, start, length), 'ioctl(UFFDIO_WAKE)', start, length);
  }

  /** Resolves MINOR faults: maps the page already in the page cache. */
  continue(start: Address, length: number, options: WakeOption & { writeProtect?: boolean } = {}): number {
    const mode = (options.dontWake ? CONTINUE_MODE_DONTWAKE : 0) | (options.writeProtect ? CONTINUE_MODE_WP : 0);
    return this.check(placement.continue(this.descriptor, start, length, mode), 'ioctl(UFFDIO_CONTINUE)', start, length);
  }

  /** Marks a missing range poisoned: accesses get SIGBUS (a page that can never arrive). */
  poison(start: Address, length: number, options: WakeOption = {}): number {
    const mode = options.dontWake ? POISON_MODE_DONTWAKE : 0;
    return this.check(placement.poison(this.descriptor, start, length, mode), 'ioctl(UFFDIO_POISON)', start, length);
  }

  /** Moves pages from `src` (anonymous private memory) to the missing range at `dst`, no copy. */
  move(dst: Address, src: Address, length: number, options: WakeOption & { allowSrcHoles?: boolean } = {}): number {
    const mode = (options.dontWake ? MOVE_MODE_DONTWAKE : 0) | (options.allowSrcHoles ? MOVE_MODE_ALLOW_SRC_HOLES : 0);
    return this.check(placement.move(this.descriptor, dst, src, length, mode), 'ioctl(UFFDIO_MOVE)', dst, length);
  }

  // ---- placement: hot path, statuses ----------------------------------------------------

  /** Bytes placed, or -errno (-EEXIST: already placed; -EAGAIN: retry after reading events). */
  tryCopy(dst: Address, src: ArrayBufferView | ArrayBuffer, length: number, mode = 0, srcOffset = 0): number {
    return placement.copy(this.descriptor, dst, src, length, mode, srcOffset);
  }
  tryZeropage(dst: Address, length: number, mode = 0): number {
    return placement.zeropage(this.descriptor, dst, length, mode);
  }
  /** mode: WRITEPROTECT_MODE_WP to protect, 0 to unprotect (and wake). */
  tryWriteProtect(start: Address, length: number, mode: number): number {
    return placement.writeProtect(this.descriptor, start, length, mode);
  }
  tryWake(start: Address, length: number): number {
    return placement.wake(this.descriptor, start, length);
  }

  // ---- events ---------------------------------------------------------------------------

  /**
   * Delivers events to `handler` on this thread's event loop, in batches of up to 64 decoded
   * from one read. The batch object is reused: read it before returning. A read error
   * (other than EAGAIN) goes to `onError`, or is thrown from the loop.
   */
  onEvents(handler: (batch: EventBatch) => void, onError?: (error: Error) => void): void {
    const batch = (this.batch ??= new EventBatch());
    this.native.startEvents(batch.data, (count) => {
      if (count < 0) {
        const error = errnoError(count, 'read', `userfaultfd ${this.fd}`);
        if (onError) onError(error);
        else throw error;
        return;
      }
      batch.count = count;
      handler(batch);
    });
  }

  stopEvents(): void {
    this.native.stopEvents();
  }

  /** Reads pending events without the event loop (0 if none): for polling loops and tests. */
  readEvents(batch: EventBatch): number {
    const count = this.native.readEvents(batch.data);
    if (count < 0) throw errnoError(count, 'read', `userfaultfd ${this.fd}`);
    batch.count = count;
    return count;
  }

  /**
   * Closes the descriptor. Threads blocked on a fault wake and retry their access, which on
   * MISSING memory then reads zeros: stop guest threads first where that matters.
   */
  close(): void {
    this.native.close();
    this.descriptor = -1;
  }

  private check(status: number, syscall: string, start: Address, length: number): number {
    if (status < 0) throw errnoError(status, syscall, `${hex(start)} length ${length}`);
    return status;
  }
}

