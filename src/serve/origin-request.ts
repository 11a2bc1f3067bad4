// How a page server asks the host that has the memory file (`serve-pages`, the origin) for a
// VM's pages. One short exchange of JSON lines on a connection to the origin, then it closes:
//   server -> origin  {"server":"postcopy serve"}   (at once: a TLS origin then sees a page
//                     server without TLS within milliseconds, and answers {"error":...} in plaintext)
//   origin -> server  {"origin":"postcopy serve-pages","nonce":HEX}
//   server -> origin  {"request":{regions,endpoint,session,channels},"auth":HEX}
//   origin -> server  {"ok":true} | {"error":"why"}
// `auth` is HMAC-SHA256(token, nonce || JSON of request): only who knows the token can make the
// origin stream a file. The origin then migrates the regions to `endpoint` as a migration's
// source: the server's listener there admits the channels (each proving the token again), so
// recovery after a break is the migration's own: the origin reconnects.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Socket } from 'node:net';
import { ProtocolError, TARGET_PAGE_SIZE } from '../base/index.js';

export const ORIGIN_BANNER = 'postcopy serve-pages';
export const SERVER_BANNER = 'postcopy serve';
/** A line longer than this is not a request (256 regions fit in far less). */
const MAX_LINE_BYTES = 64 << 10;

/** A region of the memory file the VM needs: block `region i` of the migration. */
export interface FileRegion {
  offset: number;
  size: number;
  pageSize: number;
}

export interface OriginRequest {
  regions: FileRegion[];
  /** Where the server listens for this VM's migration channels ("HOST:PORT" or a Unix path). */
  endpoint: string;
  session: string;
  /** Bulk channels the origin opens besides main and preempt. */
  channels: number;
}

export function newNonce(): string {
  return randomBytes(32).toString('hex');
}

export function requestAuth(token: string | undefined, nonce: string, request: OriginRequest): string {
  if (token === undefined) return '';
  return createHmac('sha256', token).update(nonce).update(JSON.stringify(request)).digest('hex');
}

export function authMatches(token: string | undefined, nonce: string, request: OriginRequest, auth: unknown): boolean {
  const want = Buffer.from(requestAuth(token, nonce, request), 'hex');
  const got = typeof auth === 'string' && /^[0-9a-f]*$/.test(auth) ? Buffer.from(auth, 'hex') : Buffer.alloc(0);
  return want.length === got.length && timingSafeEqual(want, got);
}

/** The block name of region i, on both sides. */
export function regionBlockName(i: number): string {
  return `region ${i}`;
}

/**
 * Checks a request read from the wire: every field named with its value when it is wrong.
 * Regions must lie in a file of `fileLength` bytes, in whole 4 KiB pages.
 */
export function checkRequest(value: unknown, fileLength: number): OriginRequest {
  const o = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  if (!Array.isArray(o.regions) || o.regions.length === 0 || o.regions.length > 256) {
    throw new ProtocolError(`request: regions must be an array of 1 to 256 regions, got ${JSON.stringify(o.regions)?.slice(0, 80)}`);
  }
  const regions = o.regions.map((r: unknown, i: number) => checkRegion(r, i, fileLength));
  if (typeof o.endpoint !== 'string' || o.endpoint.length === 0) throw new ProtocolError(`request: endpoint ${JSON.stringify(o.endpoint)} is not an address`);
  if (typeof o.session !== 'string' || !/^[\w-]{1,64}$/.test(o.session)) throw new ProtocolError(`request: session ${JSON.stringify(o.session)} is not a session id`);
  if (!Number.isInteger(o.channels) || (o.channels as number) < 0 || (o.channels as number) > 16) throw new ProtocolError(`request: channels ${JSON.stringify(o.channels)} is not 0 to 16`);
  return { regions, endpoint: o.endpoint, session: o.session, channels: o.channels as number };
}

function checkRegion(value: unknown, i: number, fileLength: number): FileRegion {
  const r = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  for (const field of ['offset', 'size', 'pageSize'] as const) {
    const v = r[field];
    if (!Number.isSafeInteger(v) || (v as number) < 0) throw new ProtocolError(`request: region ${i} ${field} ${JSON.stringify(v)} is not a non-negative integer`);
  }
  const { offset, size, pageSize } = r as unknown as FileRegion;
  if (pageSize !== TARGET_PAGE_SIZE) throw new ProtocolError(`request: region ${i} pageSize ${pageSize}: the origin serves 4 KiB pages only`);
  if (size === 0 || size % pageSize !== 0 || offset % pageSize !== 0) throw new ProtocolError(`request: region ${i} offset ${offset} size ${size} is not whole pages`);
  if (offset + size > fileLength) throw new ProtocolError(`request: region ${i} ends at byte ${offset + size}, the memory file has ${fileLength}`);
  return { offset, size, pageSize };
}

/** What a connection's reader received after the last line it returned (lines can share a chunk). */
export interface LineCarry {
  text: string;
}

/**
 * Reads one line from `socket` (at most MAX_LINE_BYTES, within `timeoutMs`) and parses it as
 * JSON. Where one side sends two lines in a row, both reads share a `carry`.
 */
export function readJsonLine(socket: Socket, what: string, timeoutMs: number, carry: LineCarry = { text: '' }): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let text = carry.text;
    carry.text = '';
    const done = (error: Error | undefined, value?: Record<string, unknown>) => {
      clearTimeout(timer);
      socket.off('data', onData).off('end', onEnd).off('error', onError);
      if (error) reject(error);
      else resolve(value!);
    };
    const timer = setTimeout(() => done(new ProtocolError(`${what}: nothing within ${timeoutMs} ms`)), timeoutMs);
    const onData = (chunk: Buffer | string) => {
      text += chunk.toString('utf8');
      const end = text.indexOf('\n');
      if (end < 0) {
        if (text.length > MAX_LINE_BYTES) done(new ProtocolError(`${what}: a line longer than ${MAX_LINE_BYTES} bytes`));
        return;
      }
      carry.text = text.slice(end + 1);
      try {
        const value = JSON.parse(text.slice(0, end));
        if (typeof value !== 'object' || value === null) throw new Error(`not an object`);
        done(undefined, value);
      } catch (error) {
        done(new ProtocolError(`${what}: malformed JSON (${(error as Error).message}): ${JSON.stringify(text.slice(0, 120))}`));
      }
    };
    const onEnd = () => done(new ProtocolError(`${what}: the connection closed`));
    const onError = (error: Error) => done(new ProtocolError(`${what}: ${error.message}`));
    socket.on('data', onData).on('end', onEnd).on('error', onError);
    if (text) onData('');
  });
}
