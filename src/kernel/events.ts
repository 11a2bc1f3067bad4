// Userfaultfd events as the addon decodes them into a reused Float64Array: no allocation per
// fault. Each event takes EVENT_STRIDE slots; see native/userfaultfd.cc.
import { EVENTS, PAGEFAULT_FLAG_MINOR, PAGEFAULT_FLAG_WP, PAGEFAULT_FLAG_WRITE } from './constants.js';

export const EVENT_STRIDE = 4;
export const MAX_BATCH = 64;

export type EventKind = keyof typeof EVENTS;
const KIND_BY_CODE = new Map<number, EventKind>(
  (Object.entries(EVENTS) as [EventKind, number][]).map(([name, code]) => [code, name]),
);

/** One read's worth of events. Valid until the handler returns: the buffer is reused. */
export class EventBatch {
  readonly data = new Float64Array(MAX_BATCH * EVENT_STRIDE);
  count = 0;

  kind(i: number): EventKind {
    return KIND_BY_CODE.get(this.data[i * EVENT_STRIDE]) ?? 'pagefault';
  }
  isPagefault(i: number): boolean {
    return this.data[i * EVENT_STRIDE] === EVENTS.pagefault;
  }
  /** Fault address (page-aligned unless EXACT_ADDRESS was asked for). */
  address(i: number): number {
    return this.data[i * EVENT_STRIDE + 2];
  }
  flags(i: number): number {
    return this.data[i * EVENT_STRIDE + 1];
  }
  isWrite(i: number): boolean {
    return (this.flags(i) & PAGEFAULT_FLAG_WRITE) !== 0;
  }
  isWriteProtect(i: number): boolean {
    return (this.flags(i) & PAGEFAULT_FLAG_WP) !== 0;
  }
  isMinor(i: number): boolean {
    return (this.flags(i) & PAGEFAULT_FLAG_MINOR) !== 0;
  }
  /** Faulting thread's id when THREAD_ID was granted, else 0. */
  threadId(i: number): number {
    return this.data[i * EVENT_STRIDE + 3];
  }
  /** FORK: the new userfaultfd's descriptor. */
  forkFd(i: number): number {
    return this.data[i * EVENT_STRIDE + 1];
  }
  /** REMAP: [from, to, length]; REMOVE/UNMAP: [start, end]. */
  range(i: number): { start: number; end: number; to?: number; length?: number } {
    const o = i * EVENT_STRIDE;
    if (this.data[o] === EVENTS.remap) {
      return { start: this.data[o + 1], end: this.data[o + 1] + this.data[o + 3], to: this.data[o + 2], length: this.data[o + 3] };
    }
    return { start: this.data[o + 1], end: this.data[o + 2] };
  }
}
