// A userfaultfd with named features, modes and flags. Cold-path calls throw Node-shaped
// errors; the `try*` calls are the hot path and return a status (bytes or 0, or -errno).
//
// No range call reaches the kernel unchecked: a wrong address could place pages into, or
// (UFFDIO_MOVE) take pages out of, memory that is not guest memory, such as V8's heap. So
// register() takes only ranges inside a live Mapping of this package, and every placement
// must lie inside one range registered on this descriptor whose Mapping is still mapped (a
// MOVE source inside a live Mapping). The bookkeeping follows register, unregister, unmap
// and close. Another process's userfaultfd (adoptForeign) acts on that process's memory:
// the ranges it declared stand for the Mappings.
import { addon, type Address, type NativeUserfaultfd } from './addon.js';
import type { FileMapping } from './file-mapping.js';
import { declaredRanges, handshakeFeatures, type ForeignRange, type Holder } from './foreign.js';
import { mappingHolding } from './live-mappings.js';

const placement = addon.placement;
import {
  CONTINUE_MODE_DONTWAKE,
  CONTINUE_MODE_WP,
  COPY_MODE_DONTWAKE,
  COPY_MODE_WP,
  FEATURES,
  FEATURE_SINCE,
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
import { argumentError, coded, errnoError, type CodedError } from './errors.js';
import { EBADF, EFAULT, hex, PostcopyError, RangeIndex } from '../base/index.js';
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

/** The last range call of this thread was refused: the addon's count is older (like it, per thread). */
let refusedLast = false;

/** An address as a number (exact: user addresses are below 2^47); NaN if it is no address. */
function position(address: Address): number {
  return typeof address === 'number' ? address : typeof address === 'bigint' ? Number(address) : NaN;
}

export class UnsupportedFeatureError extends PostcopyError {
  /** `why`: instead of "this kernel does not grant ...", when the kernel has it but this use lacks it. */
  constructor(readonly missing: string[], what: string, why?: string) {
    const named = missing.map((f) => (f in FEATURE_SINCE ? `${f} (Linux ${FEATURE_SINCE[f as Feature]}+)` : f));
    super('ERR_POSTCOPY_UNSUPPORTED', `${what}: ${why ?? `this kernel (${probeFeatures().kernel}) does not grant ${named.join(', ')}`}`);
    this.name = 'UnsupportedFeatureError';
  }
}

export class Userfaultfd {
  readonly features: ReadonlySet<Feature>;
  readonly ioctls: ReadonlySet<Ioctl>;
  private readonly native: NativeUserfaultfd;
  private batch: EventBatch | undefined;
  /** The descriptor for the placement calls; -1 once closed (a reused number is never hit). */
  private descriptor: number;
  /** adoptForeign: the ranges the owner declared (its memory, not ours); else undefined. */
  private readonly declared: RangeIndex<Holder> | undefined;
  /** The ranges registered here, by the Mapping (or declared range) that holds each; an unmapped one covers nothing. */
  private ranges: RangeIndex<Holder>;

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

  /**
   * Adopts the userfaultfd of a forked child (UFFD_EVENT_FORK); its handshake is done. `fd`
   * must be a userfaultfd that no Userfaultfd owns yet: anything else throws (code
   * ERR_INVALID_ARG_VALUE; EBADF for a closed descriptor) and is left open. Once adopted the
   * descriptor belongs to the Userfaultfd, which closes it on close() or when collected: do
   * not close it yourself. Its bookkeeping starts empty: register() the ranges to serve (the
   * kernel lets a range be registered again).
   */
  static adopt(fd: number, features: Iterable<Feature>): Userfaultfd {
    return new Userfaultfd(new addon.Userfaultfd({ fd }), [...features], ['REGISTER', 'UNREGISTER', 'API']);
  }

  /**
   * Adopts, as adopt() does, the userfaultfd of another process (a VMM's, received over a
   * Unix socket) whose handshake and registration that process did. Its faults are of that
   * process's address space and placements write into it. `ranges` are the ones it declared
   * (page-aligned and disjoint, else ERR_POSTCOPY_RANGE before the descriptor is taken): every
   * range call is checked against them as against the Mappings of our own memory, and
   * unregister() takes parts of them away. register() is refused (the owner registers), and
   * so is move() (its source would be read in the owner's memory). `features` are those the
   * owner's handshake enabled.
   */
  static adoptForeign(fd: number, ranges: readonly ForeignRange[]): Userfaultfd {
    const declared = declaredRanges(ranges);
    const native = new addon.Userfaultfd({ fd });
    return new Userfaultfd(native, handshakeFeatures(native.fd), ['REGISTER', 'UNREGISTER', 'API'], declared);
  }

  private constructor(native: NativeUserfaultfd, features: Feature[], ioctls: Ioctl[], declared?: RangeIndex<Holder>) {
    this.native = native;
    this.descriptor = native.fd;
    this.features = new Set(features);
    this.ioctls = new Set(ioctls);
    this.declared = declared;
    this.ranges = new RangeIndex(declared?.entries());
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
  /** Bytes a placement call completed before it returned an error (read it right after; 0 if refused). */
  get lastCount(): number {
    return refusedLast ? 0 : placement.lastCount();
  }

  /** Registers a range inside one live Mapping; returns the ioctls the kernel allows on it. */
  register(start: Address, length: number, modes: RegisterMode | RegisterMode[]): Set<Ioctl> {
    const mode = (Array.isArray(modes) ? modes : [modes]).reduce((m, name) => m | REGISTER_MODES[name], 0);
    if (this.declared) throw this.foreignRefusal('ioctl(UFFDIO_REGISTER)', 'its owner registered the ranges it declared');
    const at = position(start);
    const mapping = mappingHolding(at, length);
    if (!mapping) throw this.refusal('ioctl(UFFDIO_REGISTER)', 'start', start, length);
    const ioctls = this.native.register(start, length, mode);
    this.record(at, at + length, mapping);
    return new Set(maskToNames(ioctls, IOCTLS));
  }

  /**
   * Unregisters a range inside one live Mapping, or one declared range of another process's
   * userfaultfd (threads waiting there wake; their memory there is theirs again: zeros where
   * nothing was placed).
   */
  unregister(start: Address, length: number): void {
    const at = position(start);
    if (!this.holding(at, length)) throw this.refusal('ioctl(UFFDIO_UNREGISTER)', 'start', start, length);
    this.native.unregister(start, length);
    this.record(at, at + length);
  }

  // ---- placement: throwing forms --------------------------------------------------------

  /** Places `length` bytes from `src` (at `srcOffset`) at `dst` atomically; returns bytes placed. */
  copy(dst: Address, src: ArrayBufferView | ArrayBuffer, length: number,
       options: WakeOption & { writeProtect?: boolean; srcOffset?: number } = {}): number {
    const mode = (options.dontWake ? COPY_MODE_DONTWAKE : 0) | (options.writeProtect ? COPY_MODE_WP : 0);
    this.guard('ioctl(UFFDIO_COPY)', 'dst', dst, length);
    return this.check(placement.copy(this.descriptor, dst, src, length, mode, options.srcOffset ?? 0), 'ioctl(UFFDIO_COPY)', dst, length);
  }

  /** Maps the zero page over a missing range (not for hugetlb: EINVAL there). */
  zeropage(dst: Address, length: number, options: WakeOption = {}): number {
    const mode = options.dontWake ? ZEROPAGE_MODE_DONTWAKE : 0;
    this.guard('ioctl(UFFDIO_ZEROPAGE)', 'dst', dst, length);
    return this.check(placement.zeropage(this.descriptor, dst, length, mode), 'ioctl(UFFDIO_ZEROPAGE)', dst, length);
  }

  writeProtect(start: Address, length: number, options: WakeOption = {}): void {
    const mode = WRITEPROTECT_MODE_WP | (options.dontWake ? WRITEPROTECT_MODE_DONTWAKE : 0);
    this.guard('ioctl(UFFDIO_WRITEPROTECT)', 'start', start, length);
    this.check(placement.writeProtect(this.descriptor, start, length, mode), 'ioctl(UFFDIO_WRITEPROTECT)', start, length);
  }

  /** Removes write protection and (unless dontWake) wakes the writers waiting on it. */
  unprotect(start: Address, length: number, options: WakeOption = {}): void {
    const mode = options.dontWake ? WRITEPROTECT_MODE_DONTWAKE : 0;
    this.guard('ioctl(UFFDIO_WRITEPROTECT)', 'start', start, length);
    this.check(placement.writeProtect(this.descriptor, start, length, mode), 'ioctl(UFFDIO_WRITEPROTECT)', start, length);
  }

  wake(start: Address, length: number): void {
    this.guard('ioctl(UFFDIO_WAKE)', 'start', start, length);
    this.check(placement.wake(this.descriptor, start, length), 'ioctl(UFFDIO_WAKE)', start, length);
  }

  /** Resolves MINOR faults: maps the page already in the page cache. */
  continue(start: Address, length: number, options: WakeOption & { writeProtect?: boolean } = {}): number {
    const mode = (options.dontWake ? CONTINUE_MODE_DONTWAKE : 0) | (options.writeProtect ? CONTINUE_MODE_WP : 0);
    this.guard('ioctl(UFFDIO_CONTINUE)', 'start', start, length);
    return this.check(placement.continue(this.descriptor, start, length, mode), 'ioctl(UFFDIO_CONTINUE)', start, length);
  }

  /** Marks a missing range poisoned: accesses get SIGBUS (a page that can never arrive). */
  poison(start: Address, length: number, options: WakeOption = {}): number {
    const mode = options.dontWake ? POISON_MODE_DONTWAKE : 0;
    this.guard('ioctl(UFFDIO_POISON)', 'start', start, length);
    this.requireKernel('POISON', 'ioctl(UFFDIO_POISON)');
    return this.check(placement.poison(this.descriptor, start, length, mode), 'ioctl(UFFDIO_POISON)', start, length);
  }

  /**
   * Moves pages from `src` (private anonymous memory of a live Mapping) to the missing range
   * at `dst`, no copy.
   */
  move(dst: Address, src: Address, length: number, options: WakeOption & { allowSrcHoles?: boolean } = {}): number {
    const mode = (options.dontWake ? MOVE_MODE_DONTWAKE : 0) | (options.allowSrcHoles ? MOVE_MODE_ALLOW_SRC_HOLES : 0);
    this.guard('ioctl(UFFDIO_MOVE)', 'dst', dst, length);
    if (this.declared) throw this.foreignRefusal('ioctl(UFFDIO_MOVE)', 'the kernel would take the source from its memory, not ours');
    if (!mappingHolding(position(src), length)) throw this.refusal('ioctl(UFFDIO_MOVE)', 'src', src, length);
    this.requireKernel('MOVE', 'ioctl(UFFDIO_MOVE)');
    if (!this.features.has('MOVE')) throw new UnsupportedFeatureError(['MOVE'], 'ioctl(UFFDIO_MOVE)', 'this userfaultfd was not opened with it (features: [\'MOVE\'])');
    return this.check(placement.move(this.descriptor, dst, src, length, mode), 'ioctl(UFFDIO_MOVE)', dst, length);
  }

  // ---- placement: hot path, statuses ----------------------------------------------------
  // A range the throwing forms would refuse (ERR_POSTCOPY_RANGE) is -EFAULT here (-EBADF once
  // closed), and no ioctl is made. Arguments of the wrong type still throw.

  /** Bytes placed, or -errno (-EEXIST: already placed; -EAGAIN: retry after reading events). */
  tryCopy(dst: Address, src: ArrayBufferView | ArrayBuffer, length: number, mode = 0, srcOffset = 0): number {
    if (!this.covers(dst, length)) return this.refused('dst', dst, length);
    refusedLast = false;
    return placement.copy(this.descriptor, dst, src, length, mode, srcOffset);
  }
  /**
   * tryCopy from a FileMapping: `length` bytes at `srcOffset` of `src`. A source range outside
   * the live FileMapping is refused as a dst range is (-EFAULT, no ioctl).
   */
  tryCopyFrom(dst: Address, src: FileMapping, srcOffset: number, length: number, mode = 0): number {
    if (!this.covers(dst, length)) return this.refused('dst', dst, length);
    if (!src.holds(srcOffset, length)) return this.refused('srcOffset', srcOffset, length, false);
    refusedLast = false;
    return placement.copyFrom(this.descriptor, dst, src.base + srcOffset, length, mode);
  }
  tryZeropage(dst: Address, length: number, mode = 0): number {
    if (!this.covers(dst, length)) return this.refused('dst', dst, length);
    refusedLast = false;
    return placement.zeropage(this.descriptor, dst, length, mode);
  }
  /** mode: WRITEPROTECT_MODE_WP to protect, 0 to unprotect (and wake). */
  tryWriteProtect(start: Address, length: number, mode: number): number {
    if (!this.covers(start, length)) return this.refused('start', start, length);
    refusedLast = false;
    return placement.writeProtect(this.descriptor, start, length, mode);
  }
  tryWake(start: Address, length: number): number {
    if (!this.covers(start, length)) return this.refused('start', start, length);
    refusedLast = false;
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
    this.ranges = new RangeIndex<Holder>();
  }

  /** A call the running kernel does not have fails naming the feature, not with the kernel's bare EINVAL. */
  private requireKernel(feature: Feature, syscall: string): void {
    if (!probeFeatures().features[feature]) throw new UnsupportedFeatureError([feature], syscall);
  }

  private check(status: number, syscall: string, start: Address, length: number): number {
    if (status < 0) throw errnoError(status, syscall, `${hex(start)} length ${length}`);
    return status;
  }

  // ---- the range checks -----------------------------------------------------------------

  /**
   * Whether [address, address + length) lies inside one registered range whose Mapping is
   * still mapped. Runs on every placement: a binary search over a few ranges, no allocation.
   */
  private covers(address: Address, length: number): boolean {
    if (typeof length !== 'number') return false;
    return this.ranges.find(position(address), length)?.mapped ?? false;
  }

  /** For the throwing forms: throws why the range is refused, if it is. */
  private guard(syscall: string, name: string, address: Address, length: number): void {
    if (!this.covers(address, length)) throw this.refusal(syscall, name, address, length);
    refusedLast = false;
  }

  /** For the try* forms: the status of a refused range (no ioctl made). */
  private refused(name: string, value: Address, length: number, isAddress = true): number {
    const invalid = argumentError(name, value, isAddress) ?? argumentError('length', length, false);
    if (invalid) throw invalid;
    refusedLast = true;
    return this.closed ? EBADF : EFAULT;
  }

  /** Why a range call is refused, as the error to throw. */
  private refusal(syscall: string, name: string, address: Address, length: number): CodedError {
    const invalid = argumentError(name, address, true) ?? argumentError('length', length, false);
    if (invalid) return invalid;
    refusedLast = true;
    const range = `${name} ${hex(address)} length ${length}`;
    if (this.closed) return errnoError(EBADF, syscall, `${range} (the userfaultfd is closed)`);
    const inside = this.holding(position(address), length) !== undefined;
    const why = inside ? 'is not inside a range registered on this userfaultfd'
      : this.declared ? 'is not inside a range declared for this userfaultfd (adoptForeign)'
      : 'is not inside a live Mapping';
    return coded(new RangeError(`${syscall} refused: ${range} ${why}`), 'ERR_POSTCOPY_RANGE');
  }

  /** A call refused on another process's userfaultfd whatever its range. */
  private foreignRefusal(syscall: string, why: string): CodedError {
    refusedLast = true;
    return coded(new RangeError(`${syscall} refused: this userfaultfd is another process's (adoptForeign): ${why}`), 'ERR_POSTCOPY_RANGE');
  }

  /** The live Mapping, or (adoptForeign) the declared range, that holds all of the range. */
  private holding(start: number, length: number): Holder | undefined {
    if (!this.declared) return mappingHolding(start, length);
    return typeof length === 'number' ? this.declared.find(start, length) : undefined;
  }

  /**
   * Bookkeeping after a register (with its Mapping) or an unregister (without): cuts
   * [start, end) out of the ranges, adds it back if registered, and joins the neighbours of
   * one Mapping (or declared range). Ranges of Mappings unmapped since go: the kernel has
   * dropped them.
   */
  private record(start: number, end: number, holder?: Holder): void {
    const cut: { start: number; end: number; value: Holder }[] = [];
    for (const range of this.ranges.entries()) {
      if (!range.value.mapped) continue;
      if (range.start < start) cut.push({ ...range, end: Math.min(range.end, start) });
      if (range.end > end) cut.push({ ...range, start: Math.max(range.start, end) });
    }
    if (holder) cut.push({ start, end, value: holder });
    cut.sort((a, b) => a.start - b.start);
    const joined: typeof cut = [];
    for (const range of cut) {
      const last = joined[joined.length - 1];
      if (last && last.value === range.value && last.end === range.start) last.end = range.end;
      else joined.push(range);
    }
    this.ranges = new RangeIndex(joined);
  }

}

/**
 * One registered range, driven from another thread (a Userfaultfd lives on the thread that
 * opened it): the worker gets a descriptor and the range, and every call is checked against
 * the range, a call outside it returning -EFAULT without an ioctl.
 */
abstract class RangeOfAnotherThread {
  constructor(
    readonly fd: number,
    readonly start: number,
    readonly length: number,
  ) {}

  protected outside(offset: number, length: number): boolean {
    return !(offset >= 0 && length > 0 && offset + length <= this.length);
  }
}

/**
 * Un-protects pages of one write-protected range from a snapshot walker on a worker. The owner
 * keeps the descriptor open and the range registered until the worker has stopped.
 */
export class RangeUnprotector extends RangeOfAnotherThread {
  /** 0, or -errno (-EFAULT for a range outside this one, without an ioctl); wakes waiters. */
  tryUnprotect(offset: number, length: number): number {
    if (this.outside(offset, length)) return EFAULT;
    return placement.writeProtect(this.fd, this.start + offset, length, 0);
  }
}

/**
 * Places pages into one MISSING-registered range from a bulk channel's worker. The worker's
 * `fd` is a duplicate (see duplicateDescriptor), closed by the owner only once the worker has
 * exited, so no descriptor number can be reused under it.
 */
export class RangePlacer extends RangeOfAnotherThread {
  /** Bytes placed, or -errno (-EEXIST: already there; -EFAULT outside the range, no ioctl); wakes waiters. */
  tryCopy(offset: number, src: ArrayBufferView, length: number, srcOffset = 0): number {
    if (this.outside(offset, length)) return EFAULT;
    return placement.copy(this.fd, this.start + offset, src, length, 0, srcOffset);
  }

  tryZeropage(offset: number, length: number): number {
    if (this.outside(offset, length)) return EFAULT;
    return placement.zeropage(this.fd, this.start + offset, length, 0);
  }

  /** Bytes the last call completed before it failed. */
  get lastCount(): number {
    return placement.lastCount();
  }
}
