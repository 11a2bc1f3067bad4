// TLS 1.3 on every channel of a migration between hosts. Two ways to trust the peer:
// certificates (each side presents its own, signed by an authority both trust: the source
// checks the destination's name, the destination checks that the source's is signed) or a
// pre-shared key both sides hold. The token stays the authorization (HELLO, inside TLS); TLS
// keeps the pages secret and unaltered on the way.
import { readFileSync, writeSync } from 'node:fs';
import { connect as netConnect, createServer as createNetServer, isIP, type Server, type Socket } from 'node:net';
import { connect as tlsConnect, createSecureContext, createServer as createTlsServer, type ConnectionOptions, type SecureContext, type TLSSocket, type TlsOptions } from 'node:tls';
import { PostcopyError } from '../base/index.js';
import { socketDescriptor } from '../kernel/socket.js';
import type { Endpoint } from './endpoint.js';

export type TlsSettings =
  | { kind: 'certificate'; cert: Buffer; key: Buffer; ca: Buffer }
  | { kind: 'psk'; key: Buffer };

export interface TlsFiles {
  cert?: string;
  key?: string;
  ca?: string;
  /** A file holding the pre-shared key as hex (at least 32 digits: `openssl rand -hex 32`). */
  psk?: string;
}

/** The one cipher suite TLS 1.3 can use with a key given as bytes (OpenSSL ties it to SHA-256). */
const PSK_CIPHERS = 'TLS_AES_128_GCM_SHA256';
const PSK_IDENTITY = 'postcopy';
const MIN_PSK_BYTES = 16;

/**
 * Reads and checks TLS settings from files: a certificate, its key and the authority that
 * signs the peers' (all three), or a pre-shared key, never both. Undefined when none is given.
 */
export function loadTls(files: TlsFiles): TlsSettings | undefined {
  const certificateOptions = ([['cert', files.cert], ['key', files.key], ['ca', files.ca]] as const).filter(([, f]) => f !== undefined);
  if (files.psk !== undefined) {
    if (certificateOptions.length) throw config(`--tls-psk and --tls-${certificateOptions[0][0]} do not go together: trust the peer by a pre-shared key or by certificates`);
    const text = read('psk', files.psk).toString('utf8').trim();
    if (!/^([0-9a-fA-F]{2})+$/.test(text)) throw config(`--tls-psk ${files.psk}: the key must be hex digits (e.g. from openssl rand -hex 32)`);
    const key = Buffer.from(text, 'hex');
    if (key.length < MIN_PSK_BYTES) throw config(`--tls-psk ${files.psk}: ${key.length} bytes is too short a key (at least ${MIN_PSK_BYTES})`);
    return { kind: 'psk', key };
  }
  if (!certificateOptions.length) return undefined;
  const missing = (['cert', 'key', 'ca'] as const).filter((name) => files[name] === undefined);
  if (missing.length) throw config(`TLS with certificates needs --tls-cert, --tls-key and --tls-ca: --tls-${missing.join(' and --tls-')} missing`);
  const settings: TlsSettings = { kind: 'certificate', cert: read('cert', files.cert!), key: read('key', files.key!), ca: read('ca', files.ca!) };
  try {
    contextOf(settings);
  } catch (error) {
    const reason = (error as Error).message;
    throw config(/mismatch/i.test(reason) ? `--tls-key ${files.key} is not the key of --tls-cert ${files.cert}` : `TLS settings (--tls-cert ${files.cert}, --tls-key ${files.key}, --tls-ca ${files.ca}): ${reason}`);
  }
  return settings;
}

/**
 * Options for the destination's TLS server: TLS 1.3 only, the source's certificate asked
 * for. It is judged after the handshake (peerRefusal), not during it: TLS 1.3 ends the
 * client's handshake before the server checks its certificate, so only a refusal sent
 * inside TLS reaches the source with its reason.
 */
function serverTlsOptions(settings: TlsSettings, handshakeSeconds: number): TlsOptions {
  const common = { minVersion: 'TLSv1.3' as const, handshakeTimeout: handshakeSeconds * 1000 };
  if (settings.kind === 'psk') return { ...common, ciphers: PSK_CIPHERS, pskCallback: (_socket, identity) => (identity === PSK_IDENTITY ? settings.key : null) };
  return { ...common, cert: settings.cert, key: settings.key, ca: settings.ca, requestCert: true, rejectUnauthorized: false };
}

/** Why the destination refuses a source that finished the TLS handshake, if it does: its certificate. */
export function peerRefusal(settings: TlsSettings, socket: TLSSocket): string | undefined {
  if (settings.kind === 'psk' || socket.authorized) return undefined;
  if (!socket.getPeerCertificate()?.raw) return 'TLS: the source presented no certificate (run it with --tls-cert and --tls-key)';
  const code = String(socket.authorizationError);
  return `TLS: the source's ${certificateProblem(code) ?? `certificate failed verification (${code})`}`;
}

/** Options for the source's TLS client: TLS 1.3 only, the destination's certificate checked against `host`. */
function clientTlsOptions(settings: TlsSettings, host: string): ConnectionOptions {
  if (settings.kind === 'psk') {
    return { minVersion: 'TLSv1.3', ciphers: PSK_CIPHERS, pskCallback: () => ({ psk: settings.key, identity: PSK_IDENTITY }), checkServerIdentity: () => undefined };
  }
  return { minVersion: 'TLSv1.3', secureContext: contextOf(settings), servername: isIP(host) ? undefined : host, rejectUnauthorized: true };
}

/** Parsed once per settings: every channel and every reconnection reuses it. */
const contexts = new WeakMap<TlsSettings, SecureContext>();
function contextOf(settings: Extract<TlsSettings, { kind: 'certificate' }>): SecureContext {
  let context = contexts.get(settings);
  if (!context) contexts.set(settings, (context = createSecureContext({ cert: settings.cert, key: settings.key, ca: settings.ca, minVersion: 'TLSv1.3' })));
  return context;
}

/**
 * A server handing each connection to `onConnection`: with TLS, once its handshake is done
 * (a failed one goes to `onTlsError`; Node closes the connection after it).
 */
export function createServerFor(tls: TlsSettings | undefined, handshakeSeconds: number, onConnection: (socket: Socket) => void,
  onTlsError: (error: NodeJS.ErrnoException, socket: TLSSocket) => void): Server {
  if (!tls) return createNetServer(onConnection);
  return createTlsServer(serverTlsOptions(tls, handshakeSeconds), onConnection).on('tlsClientError', onTlsError);
}

/** Whether a failed handshake's peer sent plaintext (it reads only plaintext: tell it so with `answerPlaintext`). */
export function isPlaintextPeer(error: NodeJS.ErrnoException): boolean {
  return PLAINTEXT_PEER.test(error.message);
}

/**
 * Writes `bytes` in plaintext on the descriptor of a connection whose handshake failed, before
 * Node closes it: one small write, the only thing a plaintext peer can read. A peer gone
 * already is no error.
 */
export function answerPlaintext(socket: TLSSocket, bytes: Uint8Array | string): void {
  const fd = socketDescriptor(socket);
  if (fd === undefined) return;
  try {
    writeSync(fd, typeof bytes === 'string' ? Buffer.from(bytes) : bytes);
  } catch {
    // gone already
  }
}

/** A connection to `endpoint`, TLS 1.3 when settings are given (writes wait for the handshake), Nagle off. */
export function connectSocket(endpoint: Endpoint, tls: TlsSettings | undefined): Socket {
  const where = endpoint.kind === 'unix' ? { path: endpoint.path } : { host: endpoint.host, port: endpoint.port };
  const socket = tls ? tlsConnect({ ...where, ...clientTlsOptions(tls, endpoint.kind === 'unix' ? 'localhost' : endpoint.host) }) : netConnect(where);
  socket.setNoDelay(true);
  return socket;
}

/** Verification failures of the peer's certificate, by OpenSSL's name for them. */
const CERTIFICATE_PROBLEMS: Record<string, string> = {
  CERT_HAS_EXPIRED: 'has expired',
  CERT_NOT_YET_VALID: 'is not valid yet',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'is not signed by an authority in --tls-ca',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'is not signed by an authority in --tls-ca',
  UNABLE_TO_GET_ISSUER_CERT: 'is not signed by an authority in --tls-ca',
  SELF_SIGNED_CERT_IN_CHAIN: 'is not signed by an authority in --tls-ca',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'is self-signed and not in --tls-ca',
  CERT_SIGNATURE_FAILURE: 'has a bad signature (signed by another authority of the same name?)',
  INVALID_CA: 'is signed by a certificate that is no authority',
};

/** OpenSSL's words for a first record that is no TLS record. */
const PLAINTEXT_PEER = /wrong version number|packet length too long|http request/i;

/** OpenSSL's messages (Node often codes them only EPROTO), in words. */
const MESSAGES: [RegExp, string][] = [
  [PLAINTEXT_PEER, 'does not speak TLS (its first bytes are not a TLS record): run both sides with TLS, or neither'],
  [/no shared cipher|no suitable signature algorithm|alert handshake failure|unknown psk identity/i,
    'has no TLS settings in common with this side (certificates on one side and a pre-shared key on the other?)'],
  [/binder does not verify|alert illegal parameter|alert decrypt error/i, 'holds another pre-shared key'],
  [/alert certificate expired/i, "refused this side's certificate: it has expired"],
  [/alert unknown ca|alert bad certificate|alert certificate unknown/i, "refused this side's certificate"],
  [/alert certificate required|peer did not return a certificate/i, 'wants a certificate from the other side (--tls-cert)'],
];

/**
 * Why a TLS handshake failed, in words, as seen by this side: `peer` is 'the destination' or
 * 'the source'. Undefined for errors that are not about TLS (a refused connection).
 */
export function explainTlsError(error: NodeJS.ErrnoException, peer: string): string | undefined {
  const problem = certificateProblem(error.code);
  if (problem) return `${peer}'s ${problem}`;
  if (error.code === 'ERR_TLS_CERT_ALTNAME_INVALID') return `${peer}'s certificate is not for this address: ${error.message}`;
  for (const [pattern, words] of MESSAGES) if (pattern.test(error.message)) return `${peer} ${words}`;
  if (error.code === 'ECONNRESET' || /socket hang up/.test(error.message)) return `${peer} hung up during the TLS handshake (does it trust this side's certificate?)`;
  if (error.code?.startsWith('ERR_SSL_') || error.code?.startsWith('ERR_TLS_') || error.code === 'EPROTO') return `TLS with ${peer} failed: ${error.message.split('\n')[0]}`;
  return undefined;
}

/** 'certificate has expired (CERT_HAS_EXPIRED)' for a verification failure's code. */
export function certificateProblem(code: string | null | undefined): string | undefined {
  if (!code) return undefined;
  return CERTIFICATE_PROBLEMS[code] ? `certificate ${CERTIFICATE_PROBLEMS[code]} (${code})` : /CERT|ISSUER/.test(code) ? `certificate failed verification (${code})` : undefined;
}

function read(option: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    throw config(`cannot read --tls-${option} ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
}

function config(message: string): PostcopyError {
  return new PostcopyError('ERR_POSTCOPY_CONFIG', message);
}
