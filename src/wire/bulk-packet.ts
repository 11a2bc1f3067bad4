// Packets of a bulk channel (multifd-style, after `qemu-multifd.h.txt`). After its handshake a
// bulk channel carries nothing but packets, big-endian:
//
//   u32 magic 0x11223344   u32 flags (SYNC 1, END 2)   u32 normal   u32 zero   u64 number
//   u8 idlen, idstr        (the block; idlen 0 in a packet without pages)
//   u64 offset × (normal + zero)    byte offsets in the block: the normal pages', then the zero pages'
//   normal × 4096 bytes    the normal pages' data, in the order of their offsets
//
// `number` counts the packets of the channel from 0. SYNC and END packets carry no pages: SYNC
// asks the destination to report once everything before it is applied (the main channel's
// MULTIFD_FLUSH waits for every channel's SYNC), END is the channel's last packet. A packet of
// a huge-page block holds exactly the target pages of one host page, each once: a host page is
// never split across packets, let alone channels.
//
// The decoder works on one contiguous buffer (the worker's receive buffer), so page data is
// placed straight from where it was received.
import { decodeUtf8 } from './reader.js';
import { Writer, checkAligned, checkUint, nameBytes } from './writer.js';
import { hex, ProtocolError, TARGET_PAGE_SIZE } from '../base/index.js';

export const BULK_MAGIC = 0x11223344;
export const BulkFlag = { SYNC: 1, END: 2 } as const;
const KNOWN_FLAGS = BulkFlag.SYNC | BulkFlag.END;
/** Most pages in one packet: one 2 MiB huge page. */
export const MAX_PACKET_PAGES = 512;
const FIXED_HEADER = 24;
/** The largest packet there can be: the receive buffer must hold one whole. */
export const MAX_PACKET_BYTES = FIXED_HEADER + 1 + 255 + MAX_PACKET_PAGES * (8 + TARGET_PAGE_SIZE);

export interface BulkBlockInfo {
  idstr: string;
  /** Bytes of the block that pages may be sent for (its postcopy length). */
  length: number;
  pageSize: number;
}

export interface BulkPacket {
  flags: number;
  number: number;
  /** Index (in the list the decoder was given) of the block; -1 in a packet without pages. */
  block: number;
  /** Offsets of the pages with data, then of the zero pages. */
  offsets: Float64Array;
  normal: number;
  zero: number;
  /** The buffer the packet was decoded from, and where its page data starts in it. */
  bytes: Uint8Array;
  dataOffset: number;
}

export interface BulkPacketFields {
  flags?: number;
  number: number;
  idstr?: string;
  normal?: ArrayLike<number> & Iterable<number>;
  zero?: ArrayLike<number> & Iterable<number>;
}

/**
 * The header of a packet (everything but the page data, which follows it: `normal.length`
 * pages, 4096 bytes each, in the order of `normal`).
 */
export function encodeBulkHeader(fields: BulkPacketFields): Buffer {
  const { flags = 0, number, idstr, normal = [], zero = [] } = fields;
  const pages = normal.length + zero.length;
  checkUint(flags, 32, 'bulk packet flags');
  if (flags & ~KNOWN_FLAGS) throw new RangeError(`bulk packet flags ${hex(flags)} has unknown bits`);
  if (pages > MAX_PACKET_PAGES) throw new RangeError(`bulk packet: ${pages} pages > ${MAX_PACKET_PAGES}`);
  if (pages > 0 && idstr === undefined) throw new RangeError('bulk packet: pages without a block');
  if (pages > 0 && flags !== 0) throw new RangeError('bulk packet: a SYNC or END packet carries no pages');
  const id = pages > 0 ? nameBytes(idstr!, 'bulk packet idstr') : Buffer.alloc(0);
  const w = new Writer(FIXED_HEADER + 1 + id.length + 8 * pages)
    .u32(BULK_MAGIC).u32(flags).u32(normal.length).u32(zero.length).u64(number).u8(id.length).bytes(id);
  for (const offset of normal) checkAligned(offset, TARGET_PAGE_SIZE, 'bulk packet offset'), w.u64(offset);
  for (const offset of zero) checkAligned(offset, TARGET_PAGE_SIZE, 'bulk packet offset'), w.u64(offset);
  return w.done();
}

function u64At(view: DataView, at: number, field: string): number {
  const high = view.getUint32(at);
  if (high >= 0x200000) throw new ProtocolError(`bulk packet: ${field} ${hex(view.getBigUint64(at))} is not a safe integer`);
  return high * 0x100000000 + view.getUint32(at + 4);
}

/**
 * Decodes the packets of one bulk channel, checking every field against the blocks: bad
 * magic, unknown flags, a count over the bound, a block that does not exist, an offset that is
 * unaligned or past the block, a page-less packet with pages, a packet out of sequence, a huge
 * host page not whole: each is a ProtocolError naming the field and value.
 */
export class BulkPacketDecoder {
  private expected = 0;
  private readonly byName = new Map<string, number>();

  constructor(private readonly blocks: readonly BulkBlockInfo[], private readonly channel: string) {
    blocks.forEach((b, i) => this.byName.set(b.idstr, i));
  }

  /**
   * The packet at `start` of `bytes` (which hold valid data up to `end`), or undefined when
   * its bytes have not all arrived yet. `size` is the packet's whole length.
   */
  decode(bytes: Uint8Array, start: number, end: number): { packet: BulkPacket; size: number } | undefined {
    const available = end - start;
    if (available < FIXED_HEADER + 1) return undefined;
    const view = new DataView(bytes.buffer, bytes.byteOffset + start, available);
    const where = `${this.channel} packet ${this.expected}`;
    const magic = view.getUint32(0);
    if (magic !== BULK_MAGIC) throw new ProtocolError(`${where}: magic ${hex(magic)} != ${hex(BULK_MAGIC)}`);
    const flags = view.getUint32(4);
    if (flags & ~KNOWN_FLAGS) throw new ProtocolError(`${where}: flags ${hex(flags)} has unknown bits`);
    const normal = view.getUint32(8);
    const zero = view.getUint32(12);
    const pages = normal + zero;
    if (normal > MAX_PACKET_PAGES || zero > MAX_PACKET_PAGES || pages > MAX_PACKET_PAGES) {
      throw new ProtocolError(`${where}: page count ${normal} normal + ${zero} zero > ${MAX_PACKET_PAGES}`);
    }
    const number = u64At(view, 16, 'number');
    if (number !== this.expected) throw new ProtocolError(`${this.channel}: packet number ${number}, expected ${this.expected}`);
    const idLength = view.getUint8(24);
    if (flags !== 0 && (pages > 0 || idLength > 0)) throw new ProtocolError(`${where}: a ${flags & BulkFlag.END ? 'END' : 'SYNC'} packet with ${pages} page(s)`);
    if (pages > 0 && idLength === 0) throw new ProtocolError(`${where}: ${pages} page(s) without a block (idlen 0)`);
    const headerSize = FIXED_HEADER + 1 + idLength + 8 * pages;
    const size = headerSize + normal * TARGET_PAGE_SIZE;
    if (available < size) return undefined;
    let block = -1;
    if (pages > 0) {
      const idstr = decodeUtf8(bytes.subarray(start + 25, start + 25 + idLength));
      if (idstr === undefined) throw new ProtocolError(`${where}: idstr is not valid UTF-8`);
      block = this.byName.get(idstr) ?? -1;
      if (block < 0) throw new ProtocolError(`${where}: idstr '${idstr}' names no block`);
    }
    const info = this.blocks[block];
    const offsets = new Float64Array(pages);
    for (let i = 0, at = 25 + idLength; i < pages; i++, at += 8) {
      const offset = u64At(view, at, `offset[${i}]`);
      if (offset % TARGET_PAGE_SIZE !== 0) throw new ProtocolError(`${where}: offset[${i}] ${hex(offset)} is not a multiple of ${TARGET_PAGE_SIZE}`);
      if (offset >= info.length) throw new ProtocolError(`${where}: offset[${i}] ${hex(offset)} is past block '${info.idstr}' (length ${hex(info.length)})`);
      offsets[i] = offset;
    }
    if (pages > 0 && info.pageSize !== TARGET_PAGE_SIZE) this.checkWholeHostPage(info, offsets, where);
    this.expected++;
    return { packet: { flags, number, block, offsets, normal, zero, bytes, dataOffset: start + headerSize }, size };
  }

  /** A huge-page block's packet holds exactly the target pages of one host page, each once. */
  private checkWholeHostPage(info: BulkBlockInfo, offsets: Float64Array, where: string): void {
    const perHost = info.pageSize / TARGET_PAGE_SIZE;
    const host = offsets[0] - (offsets[0] % info.pageSize);
    if (offsets.length !== perHost) {
      throw new ProtocolError(`${where}: ${offsets.length} target page(s) of block '${info.idstr}' (page size ${info.pageSize}): a packet carries one whole host page (${perHost})`);
    }
    const seen = new Uint8Array(perHost);
    for (let i = 0; i < offsets.length; i++) {
      const index = (offsets[i] - host) / TARGET_PAGE_SIZE;
      if (index < 0 || index >= perHost) throw new ProtocolError(`${where}: offset[${i}] ${hex(offsets[i])} is outside host page ${hex(host)} of block '${info.idstr}'`);
      if (seen[index]++) throw new ProtocolError(`${where}: offset[${i}] ${hex(offsets[i])} appears twice in host page ${hex(host)}`);
    }
  }
}
