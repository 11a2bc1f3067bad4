// A region of guest memory as migration sees it (QEMU's RAMBlock, reduced to what postcopy
// needs). It does not own memory: the postcopy layer hangs its mapping on `host`.
import { Bitmap } from './bitmap.js';
import { hex, TARGET_PAGE_SIZE } from '../base/index.js';


const MAX_IDSTR_BYTES = 255; // it travels behind a u8 length
/** 1 GiB hugetlb is the largest host page Linux offers. */
export const MAX_PAGE_SIZE = 2 ** 30;

/** Whether `size` can be a block's host page size: a power of two from 4 KiB to 1 GiB. */
export function isValidPageSize(size: number): boolean {
  return Number.isSafeInteger(size) && size >= TARGET_PAGE_SIZE && size <= MAX_PAGE_SIZE && (size & (size - 1)) === 0;
}

/** Whether `summary` can be an OR of valid page sizes (RamList.pageSizeSummary, POSTCOPY_ADVISE). */
export function isPageSizeSummary(summary: number): boolean {
  return Number.isSafeInteger(summary) && summary > 0 && summary % TARGET_PAGE_SIZE === 0 && summary < 2 * MAX_PAGE_SIZE;
}

export interface RamBlockOptions<H = unknown> {
  idstr: string;
  usedLength: number;
  /** Defaults to usedLength. */
  maxLength?: number;
  /** Host page size of the block: 4096, or the huge page size for hugetlb. Defaults to 4096. */
  pageSize?: number;
  /** Length covered by postcopy (received map, registration). Defaults to usedLength. */
  postcopyLength?: number;
  host?: H;
}

/** Byte length of `idstr` as UTF-8, or a reason it cannot name a block. */
export function checkIdstr(idstr: unknown): string | undefined {
  if (typeof idstr !== 'string') return `idstr must be a string, got ${typeof idstr}`;
  const bytes = Buffer.byteLength(idstr, 'utf8');
  if (bytes < 1 || bytes > MAX_IDSTR_BYTES) return `idstr '${idstr}' is ${bytes} bytes as UTF-8 (must be 1..${MAX_IDSTR_BYTES})`;
  if (idstr.includes('\0')) return `idstr ${JSON.stringify(idstr)} contains a NUL character`;
  return undefined;
}

export class RamBlock<H = unknown> {
  readonly idstr: string;
  readonly usedLength: number;
  readonly maxLength: number;
  readonly pageSize: number;
  readonly postcopyLength: number;
  /** One bit per target page of postcopyLength: set once the page is placed. */
  readonly receivedMap: Bitmap;
  /** The postcopy layer's mapping of this block, if any. */
  host: H | undefined;

  constructor(options: RamBlockOptions<H>) {
    const { idstr, usedLength, maxLength = usedLength, pageSize = TARGET_PAGE_SIZE, postcopyLength = usedLength } = options;
    const bad = checkIdstr(idstr);
    if (bad !== undefined) throw new RangeError(`RamBlock: ${bad}`);
    const where = `RamBlock '${idstr}'`;
    if (!isValidPageSize(pageSize)) {
      throw new RangeError(`${where}: pageSize ${pageSize} must be a power of two from 4096 to 1 GiB`);
    }
    const length = (name: string, value: number): void => {
      if (!Number.isSafeInteger(value) || value <= 0) throw new RangeError(`${where}: ${name} ${value} must be a positive integer`);
      if (value % pageSize !== 0) throw new RangeError(`${where}: ${name} ${hex(value)} is not a multiple of pageSize ${hex(pageSize)}`);
    };
    length('usedLength', usedLength);
    length('maxLength', maxLength);
    length('postcopyLength', postcopyLength);
    if (usedLength > maxLength) throw new RangeError(`${where}: usedLength ${hex(usedLength)} exceeds maxLength ${hex(maxLength)}`);
    if (postcopyLength > maxLength) throw new RangeError(`${where}: postcopyLength ${hex(postcopyLength)} exceeds maxLength ${hex(maxLength)}`);
    this.idstr = idstr;
    this.usedLength = usedLength;
    this.maxLength = maxLength;
    this.pageSize = pageSize;
    this.postcopyLength = postcopyLength;
    this.receivedMap = new Bitmap(postcopyLength / TARGET_PAGE_SIZE);
    this.host = options.host;
  }

  /** Target pages in postcopyLength (bits of receivedMap). */
  get targetPages(): number {
    return this.postcopyLength / TARGET_PAGE_SIZE;
  }

  /** Host pages in postcopyLength. */
  get hostPages(): number {
    return this.postcopyLength / this.pageSize;
  }

  get targetPagesPerHostPage(): number {
    return this.pageSize / TARGET_PAGE_SIZE;
  }

  /** Like QEMU's offset_in_ramblock: a byte offset inside the used length. */
  offsetInBlock(offset: number): boolean {
    return Number.isSafeInteger(offset) && offset >= 0 && offset < this.usedLength;
  }

  /** Start offset of the host page that contains `offset` (offset < postcopyLength). */
  hostPageOf(offset: number): number {
    this.#checkOffset(offset);
    return offset - (offset % this.pageSize);
  }

  /** Index in receivedMap of the target page that contains `offset`. */
  targetPageIndex(offset: number): number {
    this.#checkOffset(offset);
    return Math.floor(offset / TARGET_PAGE_SIZE);
  }

  isReceived(offset: number): boolean {
    return this.receivedMap.get(this.targetPageIndex(offset));
  }

  /** Whether every target page of the host page containing `offset` is received. */
  isHostPageReceived(offset: number): boolean {
    const start = this.hostPageOf(offset) / TARGET_PAGE_SIZE;
    return this.receivedMap.isRangeSet(start, this.targetPagesPerHostPage);
  }

  /**
   * Sets the received bits of [offset, offset+length); both target-page aligned. Returns how
   * many target pages were not received before: the count of pages placed is exact whoever
   * placed a page first.
   */
  markReceived(offset: number, length: number): number {
    this.#checkRange('markReceived', offset, length);
    return this.receivedMap.setRange(offset / TARGET_PAGE_SIZE, length / TARGET_PAGE_SIZE);
  }

  /** Clears the received bits of [offset, offset+length) (a discard); target-page aligned. */
  clearReceived(offset: number, length: number): void {
    this.#checkRange('clearReceived', offset, length);
    this.receivedMap.clearRange(offset / TARGET_PAGE_SIZE, length / TARGET_PAGE_SIZE);
  }

  #checkOffset(offset: number): void {
    if (!(Number.isSafeInteger(offset) && offset >= 0 && offset < this.postcopyLength)) {
      throw new RangeError(`RamBlock '${this.idstr}': offset ${offset >= 0 ? hex(offset) : offset} is outside postcopy length ${hex(this.postcopyLength)}`);
    }
  }

  #checkRange(what: string, offset: number, length: number): void {
    const fits = Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0 &&
      offset % TARGET_PAGE_SIZE === 0 && length % TARGET_PAGE_SIZE === 0 && offset + length <= this.postcopyLength;
    if (fits) return; // called per page placed: the message is built only when it is needed
    const where = `RamBlock '${this.idstr}' ${what}`;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new RangeError(`${where}: offset ${offset} length ${length} must be non-negative integers`);
    }
    if (offset % TARGET_PAGE_SIZE !== 0 || length % TARGET_PAGE_SIZE !== 0) {
      throw new RangeError(`${where}: offset ${hex(offset)} length ${hex(length)} must be multiples of ${TARGET_PAGE_SIZE}`);
    }
    if (offset + length > this.postcopyLength) {
      throw new RangeError(`${where}: range ${hex(offset)}+${hex(length)} exceeds postcopy length ${hex(this.postcopyLength)}`);
    }
  }
}
