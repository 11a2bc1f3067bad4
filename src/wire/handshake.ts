// Channel authentication. The destination sends CHALLENGE (a fresh 32-byte nonce) on every
// connection; the source answers with HELLO whose auth is
//   HMAC-SHA256(token, nonce || UTF-8 session id || u8 role || u8 index)
// so a HELLO cannot be replayed on another connection, session or channel. The session id is
// the only variable-length field and everything after it is fixed-size, so the input is
// unambiguous. Without a token (Unix sockets, where file permissions guard the socket) the
// auth is 32 zero bytes.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { AUTH_BYTES, NONCE_BYTES } from './constants.js';
import { checkBytes, checkUint, shortStringBytes } from './writer.js';

export type AuthToken = Buffer | Uint8Array | string;

export function createNonce(): Uint8Array {
  return new Uint8Array(randomBytes(NONCE_BYTES));
}

export function helloAuth(token: AuthToken | undefined, nonce: Uint8Array, sessionId: string, role: number, index: number): Uint8Array {
  checkBytes(nonce, NONCE_BYTES, 'helloAuth nonce');
  const id = shortStringBytes(sessionId, 'helloAuth session id');
  checkUint(role, 8, 'helloAuth role');
  checkUint(index, 8, 'helloAuth index');
  if (token === undefined) return new Uint8Array(AUTH_BYTES);
  if (token.length === 0) throw new RangeError('helloAuth token is empty (pass undefined for no token)');
  const mac = createHmac('sha256', token).update(nonce).update(id).update(Uint8Array.of(role, index)).digest();
  return new Uint8Array(mac);
}

/** Constant-time comparison (for equal lengths; unequal lengths are simply unequal). */
export function authEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Recomputes a HELLO's auth for `nonce` and compares in constant time. */
export function verifyHelloAuth(
  hello: { sessionId: string; role: number; index: number; auth: Uint8Array },
  token: AuthToken | undefined,
  nonce: Uint8Array,
): boolean {
  return authEqual(helloAuth(token, nonce, hello.sessionId, hello.role, hello.index), hello.auth);
}
