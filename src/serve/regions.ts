// The one message a VMM sends to its userfaultfd handler (Firecracker's UFFD memory backend):
// a JSON array of guest memory regions, in the order of the memory file. Each region names
// where it is mapped in the VMM (`base_host_virt_addr`), how long it is (`size`), where its
// bytes are in the memory file (`offset`) and its page size: `page_size` (Firecracker 1.12+),
// or `page_size_kib` (1.7-1.11; bytes, despite the name), or neither (up to 1.6: 4 KiB). A bad
// field is refused naming the region, the field and the value. Pure: no I/O.
import { HUGE_PAGE_SIZE, ProtocolError, TARGET_PAGE_SIZE, hex } from '../base/index.js';

export interface GuestRegion {
  /** Where the region is mapped in the VMM's address space. */
  base: number;
  size: number;
  /** Where its bytes start in the memory file. */
  offset: number;
  pageSize: number;
}

/** The largest user-space address: regions are checked against it. */
const USER_ADDRESS_LIMIT = 2 ** 47;
/** Regions a VM may declare (Firecracker has a handful; a bound keeps a hostile peer small). */
const MAX_REGIONS = 256;

export function parseRegions(text: string): GuestRegion[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new ProtocolError(`handshake: malformed JSON (${(error as Error).message}): ${JSON.stringify(text.slice(0, 120))}`);
  }
  if (!Array.isArray(value)) throw new ProtocolError(`handshake: expected a JSON array of regions, got ${value === null ? 'null' : typeof value}`);
  if (value.length === 0 || value.length > MAX_REGIONS) throw new ProtocolError(`handshake: ${value.length} regions (1 to ${MAX_REGIONS})`);
  const regions = value.map((entry, i) => parseRegion(entry, i));
  checkDisjoint(regions);
  return regions;
}

function parseRegion(entry: unknown, i: number): GuestRegion {
  const where = `handshake: region ${i}`;
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new ProtocolError(`${where} is not an object`);
  const o = entry as Record<string, unknown>;
  const field = (name: string, limit: number): number => {
    const v = o[name];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v >= limit) throw new ProtocolError(`${where}: ${name} ${JSON.stringify(v)} is not an integer in [0, ${hex(limit)})`);
    return v;
  };
  const base = field('base_host_virt_addr', USER_ADDRESS_LIMIT);
  const size = field('size', USER_ADDRESS_LIMIT);
  const offset = field('offset', Number.MAX_SAFE_INTEGER);
  const pageSize = o.page_size !== undefined ? field('page_size', Number.MAX_SAFE_INTEGER) : o.page_size_kib !== undefined ? field('page_size_kib', Number.MAX_SAFE_INTEGER) : TARGET_PAGE_SIZE;
  if (o.page_size !== undefined && o.page_size_kib !== undefined && o.page_size !== o.page_size_kib) {
    throw new ProtocolError(`${where}: page_size ${o.page_size} and page_size_kib ${o.page_size_kib} differ (both are bytes)`);
  }
  if (pageSize !== TARGET_PAGE_SIZE && pageSize !== HUGE_PAGE_SIZE) throw new ProtocolError(`${where}: page size ${pageSize} is neither 4096 nor 2097152`);
  if (size === 0) throw new ProtocolError(`${where}: size 0`);
  for (const [name, v] of [['base_host_virt_addr', base], ['size', size], ['offset', offset]] as const) {
    if (v % pageSize !== 0) throw new ProtocolError(`${where}: ${name} ${hex(v)} is not a multiple of its page size ${pageSize}`);
  }
  if (base + size > USER_ADDRESS_LIMIT) throw new ProtocolError(`${where}: ${hex(base)}+${hex(size)} ends past the user address space`);
  return { base, size, offset, pageSize };
}

/** No two regions may share an address or a byte of the memory file. */
function checkDisjoint(regions: GuestRegion[]): void {
  const check = (key: 'base' | 'offset', what: string) => {
    const sorted = regions.map((r, i) => ({ start: r[key], end: r[key] + r.size, i })).sort((a, b) => a.start - b.start);
    for (let k = 1; k < sorted.length; k++) {
      const [a, b] = [sorted[k - 1], sorted[k]];
      if (b.start < a.end) throw new ProtocolError(`handshake: regions ${a.i} and ${b.i} overlap in ${what} (${hex(a.start)}+${hex(a.end - a.start)} and ${hex(b.start)}+${hex(b.end - b.start)})`);
    }
  };
  check('base', 'memory');
  check('offset', 'the memory file');
}

/** Bytes of the memory file the regions need. */
export function memoryFileLength(regions: GuestRegion[]): number {
  return regions.reduce((end, r) => Math.max(end, r.offset + r.size), 0);
}
