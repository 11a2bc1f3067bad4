// Incremental decoder of the source -> destination stream (wire format v1).
//
// Pull model: `push(chunk)` queues bytes, `next()` returns the next event or undefined when more
// bytes are needed. Every item (header, frame start, record, command) is parsed whole or not at
// all, so the events do not depend on how the input was split. The first error is sticky.
//
// Page data lifetime: `ram-page.data` (and `PACKAGED.data`) is a view into the chunk you pushed
// when the bytes lie in one chunk, else a fresh copy; it is never copied twice. The decoder
// never writes to pushed chunks or to handed-out views, so a view stays valid as long as you do
// not reuse the chunk's memory (Node socket chunks are never reused). Pass `copyPages: true` to
// always get private copies.
import { isPageSizeSummary, isValidPageSize } from '../memory/ramblock.js';
import { toLookupFunction, type BlockLookup, type BlockShape } from './blocks.js';
import type { ByteRange, CommandEvent, HelloFields, MemSizeBlock, StreamEvent } from './stream-events.js';
import {
  AUTH_BYTES,
  Command,
  DEFAULT_MAX_PACKAGED_BYTES,
  DISCARD_VERSION,
  FrameKind,
  MAGIC,
  RAM_FLAGS_MASK,
  RamFlag,
  Role,
  VERSION,
  commandName,
  ramFlagNames,
  roleName,
} from './constants.js';
import { ChunkReader, NEED_MORE, PayloadReader, copyBytes, decodeName, u64BigInt, u64Number } from './reader.js';
import { hex, ProtocolError, TARGET_PAGE_SIZE } from '../base/index.js';

export interface StreamDecoderOptions<B extends BlockShape> {
  /** Resolves idstrs of RAM records, discards and RECV_BITMAP. */
  blocks: BlockLookup<B>;
  /** Expect `magic, version` first (default true). false decodes bare frames. */
  header?: boolean;
  /** The first frame must be a HELLO command (default: same as `header`). */
  requireHello?: boolean;
  /** Largest PACKAGED blob accepted (default 64 MiB). */
  maxPackagedBytes?: number;
  /** Always copy page payloads instead of handing out views (default false). */
  copyPages?: boolean;
}

export type StreamDecoderState = 'header' | 'frames' | 'ram' | 'mem-size' | 'eof' | 'failed';

const S_HEADER = 0;
const S_FRAME = 1;
const S_RAM = 2;
const S_MEM_SIZE = 3;
const S_EOF = 4;
const STATE_NAMES: StreamDecoderState[] = ['header', 'frames', 'ram', 'mem-size', 'eof'];

const HELLO_FIXED = 1 + 1 + 1 + 4 + AUTH_BYTES; // everything but the session id bytes

/** Payload length each command must have: a number (exact) or [minimum] for variable ones. */
const COMMAND_LENGTH: Record<number, number | [number]> = {
  [Command.OPEN_RETURN_PATH]: 0,
  [Command.PING]: 4,
  [Command.POSTCOPY_ADVISE]: 16,
  [Command.POSTCOPY_LISTEN]: 0,
  [Command.POSTCOPY_RUN]: 0,
  [Command.POSTCOPY_RAM_DISCARD]: [1 + 1 + 1 + 1 + 16], // version, len, >= 1 byte idstr, NUL, one pair
  [Command.POSTCOPY_RESUME]: 0,
  [Command.PACKAGED]: 4,
  [Command.RECV_BITMAP]: [2],
  [Command.HELLO]: [HELLO_FIXED + 1],
  [Command.COMPLETE]: 0,
};

const NAMED_FLAGS =
  RamFlag.FULL | RamFlag.ZERO | RamFlag.MEM_SIZE | RamFlag.PAGE | RamFlag.EOS | RamFlag.CONTINUE | RamFlag.XBZRLE | RamFlag.HOOK | RamFlag.MULTIFD_FLUSH;

/** Checks a record's flags; returns them without CONTINUE (the record type). */
export function checkRamFlags(flags: number): number {
  const what = () => `RAM flags ${hex(flags)} (${ramFlagNames(flags)})`;
  if (flags & ~NAMED_FLAGS) throw new ProtocolError(`${what()} have unknown bits ${hex(flags & ~NAMED_FLAGS)}`);
  if (flags & RamFlag.FULL) throw new ProtocolError(`${what()} are obsolete and not supported`);
  if (flags & (RamFlag.XBZRLE | RamFlag.HOOK)) throw new ProtocolError(`${what()} are not supported`);
  const type = flags & ~RamFlag.CONTINUE;
  switch (type) {
    case RamFlag.ZERO:
    case RamFlag.PAGE:
      return type;
    case RamFlag.MEM_SIZE:
    case RamFlag.EOS:
    case RamFlag.MULTIFD_FLUSH:
      if (!(flags & RamFlag.CONTINUE)) return type;
  }
  throw new ProtocolError(`${what()} are an invalid combination`);
}

/** Throws unless `len` is the payload length COMMAND_LENGTH gives for `cmd`. */
function checkCommandLength(cmd: number, len: number, context: string): void {
  const rule = COMMAND_LENGTH[cmd];
  if (typeof rule === 'number' ? len !== rule : len < rule[0]) {
    throw new ProtocolError(`${context}: length ${len} does not match (must be ${typeof rule === 'number' ? rule : `at least ${rule[0]}`})`);
  }
}

function adviseCommand(payload: PayloadReader): CommandEvent<never> {
  const context = payload.context;
  const pageSizeSummary = payload.u64('page size summary');
  const targetPageSize = payload.u64('target page size');
  if (!isPageSizeSummary(pageSizeSummary)) {
    throw new ProtocolError(`${context}: page size summary ${hex(pageSizeSummary)} is not an OR of page sizes from 4 KiB to 1 GiB`);
  }
  if (targetPageSize !== TARGET_PAGE_SIZE) {
    throw new ProtocolError(`${context}: target page size ${hex(targetPageSize)} does not match ${hex(TARGET_PAGE_SIZE)}`);
  }
  return { type: 'command', cmd: Command.POSTCOPY_ADVISE, pageSizeSummary, targetPageSize };
}

export class StreamDecoder<B extends BlockShape = BlockShape> {
  readonly #reader = new ChunkReader();
  readonly #lookup: (idstr: string) => B | undefined;
  readonly #requireHello: boolean;
  readonly #maxPackaged: number;
  readonly #copyPages: boolean;
  #state: number;
  #error: unknown = undefined;
  #failed = false;
  #helloSeen = false;
  /** The channel's current block, for CONTINUE records. */
  #block: B | undefined = undefined;
  #blockId = '';
  /** MEM_SIZE list in progress. */
  #memTotal = 0;
  #memSum = 0;
  #memBlocks: MemSizeBlock[] = [];
  #memNames = new Set<string>();

  constructor(options: StreamDecoderOptions<B>) {
    this.#lookup = toLookupFunction(options.blocks);
    const header = options.header ?? true;
    this.#state = header ? S_HEADER : S_FRAME;
    this.#requireHello = options.requireHello ?? header;
    this.#maxPackaged = options.maxPackagedBytes ?? DEFAULT_MAX_PACKAGED_BYTES;
    if (!Number.isSafeInteger(this.#maxPackaged) || this.#maxPackaged < 0 || this.#maxPackaged > 0xffffffff) {
      throw new RangeError(`maxPackagedBytes ${this.#maxPackaged} must be an integer in [0, 2^32)`);
    }
    this.#copyPages = options.copyPages ?? false;
  }

  /** Bytes pushed but not yet decoded (a partial item, or items not pulled yet). */
  get pending(): number {
    return this.#reader.buffered;
  }

  get state(): StreamDecoderState {
    return this.#failed ? 'failed' : STATE_NAMES[this.#state];
  }

  /** True once the EOF frame has been decoded. */
  get ended(): boolean {
    return this.#state === S_EOF;
  }

  /** The block named by the last ZERO/PAGE record on this channel. */
  get currentBlock(): B | undefined {
    return this.#block;
  }

  push(chunk: Uint8Array): void {
    if (this.#failed) throw this.#error;
    this.#reader.push(chunk);
    if (this.#state === S_EOF && this.#reader.buffered > 0) this.#afterEof();
  }

  /** The next event, or undefined until more bytes are pushed. Throws the (sticky) ProtocolError. */
  next(): StreamEvent<B> | undefined {
    if (this.#failed) throw this.#error;
    const reader = this.#reader;
    for (;;) {
      if (this.#state === S_EOF) {
        if (reader.buffered > 0) this.#afterEof();
        return undefined;
      }
      let event: StreamEvent<B> | undefined;
      try {
        event = this.#step();
      } catch (error) {
        if (error === NEED_MORE) {
          reader.rollback();
          return undefined;
        }
        this.#fail(error);
      }
      reader.commit();
      if (event !== undefined) return event;
    }
  }

  /** Every event the pushed bytes complete. */
  *events(): IterableIterator<StreamEvent<B>> {
    for (let event = this.next(); event !== undefined; event = this.next()) yield event;
  }

  /** The input has ended: throws unless the stream reached EOF with nothing after it. */
  finish(): void {
    if (this.#failed) throw this.#error;
    const buffered = this.#reader.buffered;
    if (this.#state === S_EOF) {
      if (buffered > 0) this.#afterEof();
      return;
    }
    const where = ['in the stream header', 'between frames', 'inside a RAM frame', 'inside a MEM_SIZE block list'][this.#state];
    const partial = buffered > 0 ? `, ${buffered} byte(s) of an incomplete item pending` : '';
    this.#fail(new ProtocolError(`stream truncated: input ended ${where} before EOF${partial}`));
  }

  /** Names the first byte after EOF and where it is: the same however the input was chunked. */
  #afterEof(): never {
    const reader = this.#reader;
    reader.rollback();
    this.#fail(new ProtocolError(`data after EOF: byte ${hex(reader.peek())} at stream offset ${reader.position}`));
  }

  #fail(error: unknown): never {
    this.#failed = true;
    this.#error = error;
    throw error;
  }

  // Each step reads one whole item and only then changes decoder state, so a NEED_MORE part-way
  // leaves the state as it was.
  #step(): StreamEvent<B> | undefined {
    switch (this.#state) {
      case S_HEADER:
        return this.#header();
      case S_FRAME:
        return this.#frame();
      case S_RAM:
        return this.#ramRecord();
      default:
        return this.#memSizeEntry();
    }
  }

  #header(): StreamEvent<B> {
    const magic = this.#reader.u32();
    if (magic !== MAGIC) throw new ProtocolError(`stream header: magic ${hex(magic)} is not ${hex(MAGIC)} ('PCPY')`);
    const version = this.#reader.u32();
    if (version !== VERSION) throw new ProtocolError(`stream header: version ${version} is not supported (expected ${VERSION})`);
    this.#state = S_FRAME;
    return { type: 'header', version };
  }

  #frame(): StreamEvent<B> | undefined {
    const kind = this.#reader.u8();
    switch (kind) {
      case FrameKind.COMMAND:
        return this.#command();
      case FrameKind.RAM:
        this.#checkHello('frame kind 0x2 (RAM)');
        this.#state = S_RAM;
        return undefined;
      case FrameKind.EOF:
        this.#checkHello('frame kind 0x0 (EOF)');
        this.#state = S_EOF;
        return { type: 'eof' };
      default:
        throw new ProtocolError(`frame kind ${hex(kind)} is unknown`);
    }
  }

  #checkHello(what: string): void {
    if (this.#requireHello && !this.#helloSeen) {
      throw new ProtocolError(`${what} before HELLO: a channel must open with a HELLO command`);
    }
  }

  #command(): StreamEvent<B> {
    const reader = this.#reader;
    const cmd = reader.u16();
    const name = commandName(cmd);
    if (name === undefined) throw new ProtocolError(`COMMAND: cmd ${hex(cmd)} is unknown`);
    const context = `COMMAND ${name}`;
    this.#checkCommandOrder(cmd, context);
    const len = reader.u16();
    checkCommandLength(cmd, len, context);
    const payload = new PayloadReader(reader.bytes(len), context);
    switch (cmd) {
      case Command.OPEN_RETURN_PATH:
      case Command.POSTCOPY_LISTEN:
      case Command.POSTCOPY_RUN:
      case Command.POSTCOPY_RESUME:
      case Command.COMPLETE:
        return { type: 'command', cmd };
      case Command.PING:
        return { type: 'command', cmd, value: payload.u32('value') };
      case Command.POSTCOPY_ADVISE:
        return adviseCommand(payload);
      case Command.POSTCOPY_RAM_DISCARD:
        return this.#discard(payload, len);
      case Command.PACKAGED:
        return this.#packaged(payload);
      case Command.RECV_BITMAP:
        return this.#recvBitmap(payload);
      case Command.HELLO:
        return this.#hello(payload, len);
    }
    /* c8 ignore next */
    throw new Error(`internal: command ${name} has no decoder`);
  }

  /** HELLO comes first and once; every other command only after it (when required). */
  #checkCommandOrder(cmd: number, context: string): void {
    if (cmd === Command.HELLO) {
      if (this.#helloSeen) throw new ProtocolError(`${context}: received twice on one channel`);
    } else {
      this.#checkHello(context);
    }
  }

  /** PACKAGED: the u32 length in the payload, then that many bytes of blob after it. */
  #packaged(payload: PayloadReader): StreamEvent<B> {
    const length = payload.u32('length');
    if (length > this.#maxPackaged) {
      throw new ProtocolError(`${payload.context}: length ${hex(length)} exceeds the limit ${hex(this.#maxPackaged)}`);
    }
    return { type: 'command', cmd: Command.PACKAGED, data: this.#reader.bytes(length, this.#copyPages) };
  }

  #recvBitmap(payload: PayloadReader): StreamEvent<B> {
    const context = payload.context;
    const idstr = payload.wholeIdstr();
    const block = this.#lookup(idstr);
    if (block === undefined) throw new ProtocolError(`${context}: block '${idstr}' is unknown`);
    return { type: 'command', cmd: Command.RECV_BITMAP, block, idstr };
  }

  #hello(payload: PayloadReader, len: number): StreamEvent<B> {
    const context = payload.context;
    const n = payload.u8('session id length');
    if (len !== HELLO_FIXED + n || n === 0) {
      throw new ProtocolError(`${context}: length ${len} does not match session id length ${n} (must be ${HELLO_FIXED + n}, id 1..255 bytes)`);
    }
    const sessionId = decodeName(payload.slice(n, 'session id'), `${context}: session id`);
    const role = payload.u8('role');
    const roleText = roleName(role);
    if (roleText === undefined) throw new ProtocolError(`${context}: role ${role} is unknown (0 main, 1 preempt, 2 bulk)`);
    const index = payload.u8('channel index');
    if (role !== Role.BULK && index !== 0) throw new ProtocolError(`${context}: channel index ${index} must be 0 for role ${roleText}`);
    const capabilities = payload.u32('capabilities');
    const auth = copyBytes(payload.slice(AUTH_BYTES, 'auth')); // own copy: it outlives the chunk
    this.#helloSeen = true;
    return { type: 'command', cmd: Command.HELLO, sessionId, role: role as Role, index, capabilities, auth };
  }

  #discard(payload: PayloadReader, len: number): StreamEvent<B> {
    const context = payload.context;
    const version = payload.u8('version');
    if (version !== DISCARD_VERSION) throw new ProtocolError(`${context}: version ${version} is not supported (expected ${DISCARD_VERSION})`);
    const n = payload.u8('idstr length');
    if (n === 0) throw new ProtocolError(`${context}: idstr length 0 (must be 1..255)`);
    const pairBytes = len - (1 + 1 + n + 1);
    if (pairBytes < 16 || pairBytes % 16 !== 0) {
      throw new ProtocolError(`${context}: length ${len} does not hold version, idstr of ${n} bytes, NUL and whole (start, length) pairs`);
    }
    const idstr = decodeName(payload.slice(n, 'idstr'), `${context}: idstr`);
    const nul = payload.u8('idstr terminator');
    if (nul !== 0) throw new ProtocolError(`${context}: idstr terminator is ${hex(nul)} (must be 0)`);
    const block = this.#lookup(idstr);
    if (block === undefined) throw new ProtocolError(`${context}: block '${idstr}' is unknown`);
    const ranges: ByteRange[] = [];
    const { pageSize, postcopyLength } = block;
    // decoded inside the pause, thousands at a time: messages are built only for a bad range
    while (payload.remaining > 0) {
      const start = payload.u64('range start');
      const length = payload.u64('range length');
      if (length === 0 || start % pageSize !== 0 || length % pageSize !== 0 || start + length > postcopyLength) {
        const range = `range ${hex(start)}+${hex(length)}`;
        if (length === 0) throw new ProtocolError(`${context}: ${range} of block '${idstr}' is empty`);
        if (start % pageSize !== 0 || length % pageSize !== 0) {
          throw new ProtocolError(`${context}: ${range} is not aligned to block '${idstr}' page size ${hex(pageSize)}`);
        }
        throw new ProtocolError(`${context}: ${range} extends beyond block '${idstr}' postcopy length ${hex(postcopyLength)}`);
      }
      ranges.push([start, length]);
    }
    return { type: 'command', cmd: Command.POSTCOPY_RAM_DISCARD, block, idstr, ranges };
  }

  #ramRecord(): StreamEvent<B> | undefined {
    const reader = this.#reader;
    const hi = reader.u32();
    const lo = reader.u32();
    const flags = lo & RAM_FLAGS_MASK;
    const type = checkRamFlags(flags);
    const offsetLo = lo - flags; // offset is target-page aligned: the flags occupy its low bits
    if (type === RamFlag.ZERO || type === RamFlag.PAGE) {
      let block: B | undefined;
      let idstr: string;
      if (flags & RamFlag.CONTINUE) {
        block = this.#block;
        idstr = this.#blockId;
        if (block === undefined) throw new ProtocolError(`RAM record: CONTINUE flag set but no block has been named on this channel`);
      } else {
        const n = reader.u8();
        if (n === 0) throw new ProtocolError(`RAM record: idstr length 0 (must be 1..255)`);
        idstr = decodeName(reader.bytes(n), 'RAM record: idstr');
        block = this.#lookup(idstr);
        if (block === undefined) throw new ProtocolError(`RAM record: block '${idstr}' is unknown`);
      }
      const limit = block.postcopyLength;
      if (hi >= 0x200000 || hi * 0x100000000 + offsetLo >= limit) {
        throw new ProtocolError(
          `RAM record: offset ${hex(u64BigInt(hi, offsetLo))} is at or beyond block '${idstr}' postcopy length ${hex(limit)}`,
        );
      }
      const offset = hi * 0x100000000 + offsetLo;
      if (type === RamFlag.ZERO) {
        const byte = reader.u8();
        if (byte !== 0) {
          throw new ProtocolError(`RAM record: zero page byte is ${hex(byte)} (must be 0) at offset ${hex(offset)} of block '${idstr}'`);
        }
        this.#block = block;
        this.#blockId = idstr;
        return { type: 'ram-zero', block, idstr, offset };
      }
      const data = reader.bytes(TARGET_PAGE_SIZE, this.#copyPages);
      this.#block = block;
      this.#blockId = idstr;
      return { type: 'ram-page', block, idstr, offset, data };
    }
    if (type === RamFlag.MEM_SIZE) {
      const total = u64Number(hi, offsetLo, 'MEM_SIZE: total');
      if (total === 0) return { type: 'mem-size', total, blocks: [] };
      this.#memTotal = total;
      this.#memSum = 0;
      this.#memBlocks = [];
      this.#memNames = new Set();
      this.#state = S_MEM_SIZE;
      return undefined;
    }
    const name = type === RamFlag.EOS ? 'EOS' : 'MULTIFD_FLUSH';
    if (hi !== 0 || offsetLo !== 0) throw new ProtocolError(`RAM record: ${name} carries offset ${hex(u64BigInt(hi, offsetLo))} (must be 0)`);
    if (type === RamFlag.EOS) {
      this.#state = S_FRAME;
      return { type: 'ram-eos' };
    }
    return { type: 'multifd-flush' };
  }

  /** One `u8 len, idstr, u64 usedLength, u64 pageSize` entry of a MEM_SIZE list. */
  #memSizeEntry(): StreamEvent<B> | undefined {
    const reader = this.#reader;
    const n = reader.u8();
    if (n === 0) throw new ProtocolError(`MEM_SIZE: idstr length 0 (must be 1..255)`);
    const idstr = decodeName(reader.bytes(n), 'MEM_SIZE: idstr');
    const usedLength = u64Number(reader.u32(), reader.u32(), `MEM_SIZE: block '${idstr}' used length`);
    const pageSize = u64Number(reader.u32(), reader.u32(), `MEM_SIZE: block '${idstr}' page size`);
    if (!isValidPageSize(pageSize)) {
      throw new ProtocolError(`MEM_SIZE: block '${idstr}' page size ${hex(pageSize)} is not a power of two from 4 KiB to 1 GiB`);
    }
    if (usedLength === 0 || usedLength % pageSize !== 0) {
      throw new ProtocolError(`MEM_SIZE: block '${idstr}' used length ${hex(usedLength)} is not a positive multiple of its page size ${hex(pageSize)}`);
    }
    if (this.#memNames.has(idstr)) throw new ProtocolError(`MEM_SIZE: block '${idstr}' is listed twice`);
    if (this.#memSum + usedLength > this.#memTotal) {
      throw new ProtocolError(
        `MEM_SIZE: block '${idstr}' used length ${hex(usedLength)} overruns the total ${hex(this.#memTotal)} (${hex(this.#memSum)} listed before it)`,
      );
    }
    this.#memBlocks.push({ idstr, usedLength, pageSize });
    this.#memNames.add(idstr);
    this.#memSum += usedLength;
    if (this.#memSum < this.#memTotal) return undefined;
    const event: StreamEvent<B> = { type: 'mem-size', total: this.#memTotal, blocks: this.#memBlocks };
    this.#memBlocks = [];
    this.#state = S_RAM;
    return event;
  }
}
