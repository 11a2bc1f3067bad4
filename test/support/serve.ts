// A minimal MISSING-fault server for kernel tests: each fault gets its whole host page placed,
// by copy from a source image or as zeros; later faults on a placed page only wake.
import { type EventBatch, type Mapping, type Userfaultfd } from '../../src/kernel/index.js';

export type Resolution = 'copy' | 'zeropage';

export class PageServer {
  readonly placed = new Set<number>();
  readonly threadIds = new Set<number>();
  faults = 0;
  placements = 0;
  wakes = 0;
  errors: Error[] = [];
  private readonly zeroHugePage: Uint8Array | undefined;

  constructor(
    private readonly uffd: Userfaultfd,
    private readonly mapping: Mapping,
    private readonly resolution: Resolution,
    private readonly source?: Uint8Array,
  ) {
    // hugetlb has no UFFDIO_ZEROPAGE: zeros are copied from a zero huge page
    if (resolution === 'zeropage' && mapping.huge) this.zeroHugePage = new Uint8Array(mapping.pageSize);
  }

  start(): this {
    this.uffd.onEvents((batch) => this.handle(batch));
    return this;
  }

  stop(): void {
    this.uffd.stopEvents();
  }

  private handle(batch: EventBatch): void {
    const { base, pageSize } = this.mapping;
    for (let i = 0; i < batch.count; i++) {
      if (!batch.isPagefault(i)) continue;
      this.faults++;
      this.threadIds.add(batch.threadId(i));
      const hostPage = Math.floor((batch.address(i) - base) / pageSize);
      const address = base + hostPage * pageSize;
      if (this.placed.has(hostPage)) {
        this.wakes++;
        this.uffd.tryWake(address, pageSize);
        continue;
      }
      let status: number;
      if (this.resolution === 'copy') status = this.uffd.tryCopy(address, this.source!, pageSize, 0, hostPage * pageSize);
      else if (this.zeroHugePage) status = this.uffd.tryCopy(address, this.zeroHugePage, pageSize);
      else status = this.uffd.tryZeropage(address, pageSize);
      if (status < 0) this.errors.push(new Error(`placing host page ${hostPage}: status ${status}`));
      this.placed.add(hostPage);
      this.placements++;
    }
  }
}

/** A deterministic, never-zero pattern: word k of the image is a hash of k. */
export function patternImage(length: number, seed = 1): Uint8Array {
  const words = new Int32Array(length / 4);
  for (let k = 0; k < words.length; k++) words[k] = Math.imul(k + seed, 0x9e3779b1) | 1;
  return new Uint8Array(words.buffer);
}

/** Fisher–Yates with a seeded xorshift, so failures reproduce. */
export function shuffled(n: number, seed = 12345): number[] {
  const v = Array.from({ length: n }, (_, i) => i);
  let x = seed >>> 0 || 1;
  for (let i = n - 1; i > 0; i--) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    const j = x % (i + 1);
    [v[i], v[j]] = [v[j], v[i]];
  }
  return v;
}
