// The destination's listener. Every connection is challenged with a nonce and must answer
// with a HELLO naming the migration, its role, and (on TCP) proof of the shared token before
// a single page is read from it. Refusals say why, on the connection, then close it.
// Connections that have not proven themselves are few and short-lived: at most
// `maxPending` at once, each closed if it says no HELLO within `helloTimeout` or sends more
// than a HELLO's worth of bytes first, so a peer without the token cannot exhaust descriptors
// or memory. With TLS the challenge and everything after it go inside TLS 1.3.
import type { Server, Socket } from 'node:net';
import { EventEmitter } from 'node:events';
import type { TLSSocket } from 'node:tls';
import {
  Command,
  StreamDecoder,
  createNonce,
  encodeChallenge,
  encodeHelloAck,
  encodeRefuse,
  roleName,
  verifyHelloAuth,
  type BlockLookup,
  type BlockShape,
  type HelloFields,
} from '../wire/index.js';
import { Channel, type ChannelRole } from './channel.js';
import { formatEndpoint, listenOn, type Endpoint } from './endpoint.js';
import { answerPlaintext, createServerFor, explainTlsError, isPlaintextPeer, peerRefusal, type TlsSettings } from './tls.js';
import { PostcopyError } from '../base/index.js';

export interface ListenOptions<B extends BlockShape> {
  endpoint: Endpoint;
  /** Required on TCP (refused without one unless `allowNoToken`); optional on Unix sockets. */
  token?: string;
  allowNoToken?: boolean;
  /** Blocks that RAM records may name (consulted lazily: may grow on MEM_SIZE). */
  blocks: BlockLookup<B>;
  /** Seconds a connection may take to say HELLO (default 5). */
  helloTimeout?: number;
  /** Connections still in their handshake at once; more are closed at once (default 16). */
  maxPending?: number;
  /** TLS 1.3 on every connection: a plaintext peer is refused (told so in plaintext). */
  tls?: TlsSettings;
}

/** The first byte of a TLS handshake record: a TLS client at a plaintext listener. */
const TLS_HANDSHAKE_RECORD = 0x16;
/** More than a HELLO (header, challenge answer) before the HELLO is complete: not a source. */
const MAX_BYTES_BEFORE_HELLO = 4096;
/** How long a refused peer gets to read the reason before its connection is destroyed. */
const REFUSE_LINGER_MS = 1000;

/** A channel that passed the handshake, with its decoder (which may already hold bytes). */
export interface AcceptedChannel<B extends BlockShape> {
  channel: Channel;
  decoder: StreamDecoder<B>;
  hello: HelloFields;
}

export interface IncomingListener<B extends BlockShape> extends EventEmitter {
  on(event: 'channel', listener: (accepted: AcceptedChannel<B>) => void): this;
  on(event: 'refused', listener: (reason: string) => void): this;
}

/**
 * Decides whether a channel may join: returns a refusal reason, or undefined to accept.
 * Called after the token check, so the reasons may name the migration.
 */
export type Admission = (hello: HelloFields) => string | undefined;

export class IncomingListener<B extends BlockShape> extends EventEmitter {
  private server: Server | undefined;
  private pending = 0;
  admit: Admission = () => undefined;
  readonly token: string | undefined;

  constructor(private readonly options: ListenOptions<B>) {
    super();
    if (options.endpoint.kind === 'tcp' && !options.token && !options.allowNoToken) {
      throw new PostcopyError('ERR_POSTCOPY_CONFIG', `listening on ${formatEndpoint(options.endpoint)} needs a token (TCP peers must prove they know it)`);
    }
    this.token = options.token;
  }

  async listen(): Promise<Endpoint> {
    this.server = createServerFor(this.options.tls, this.options.helloTimeout ?? 5, (socket) => this.accept(socket), (error, socket) => this.refuseTls(error, socket));
    return listenOn(this.server, this.options.endpoint);
  }

  /**
   * A TLS handshake failed (Node closes the connection). A plaintext source, which has sent
   * its stream header, is told why in plaintext, the only thing it can read: one small
   * write on the descriptor before Node closes it.
   */
  private refuseTls(error: NodeJS.ErrnoException, socket: TLSSocket): void {
    const reason = explainTlsError(error, 'the source') ?? (error.message.split('\n')[0] || String(error.code));
    if (isPlaintextPeer(error)) answerPlaintext(socket, encodeRefuse('this listener takes TLS only: run the source with TLS too (--tls-cert, --tls-key, --tls-ca or --tls-psk)'));
    this.emit('refused', `TLS handshake failed: ${reason}`);
  }

  close(): void {
    this.server?.close();
  }

  /** Sends the reason, stops reading, and closes: nothing more from this peer is taken. */
  private refuse(socket: Socket, reason: string): void {
    this.emit('refused', reason);
    socket.pause();
    const linger = setTimeout(() => socket.destroy(), REFUSE_LINGER_MS);
    socket.once('close', () => clearTimeout(linger));
    socket.end(encodeRefuse(reason), () => socket.destroy());
  }

  private accept(socket: Socket): void {
    socket.on('error', () => undefined); // a peer that vanishes mid-handshake is no error of ours
    if (this.pending >= (this.options.maxPending ?? 16)) {
      this.emit('refused', `too many connections in their handshake (${this.pending})`);
      socket.destroy();
      return;
    }
    const tlsRefusal = this.options.tls && peerRefusal(this.options.tls, socket as TLSSocket);
    if (tlsRefusal) {
      this.refuse(socket, tlsRefusal);
      return;
    }
    const nonce = createNonce();
    const decoder = new StreamDecoder<B>({ blocks: this.options.blocks, header: true, requireHello: true });
    this.awaitHello(socket, decoder, nonce, (hello) => this.admitChannel(socket, decoder, nonce, hello));
  }

  /**
   * Counts the connection as in its handshake, sends the challenge and reads up to the HELLO
   * (nothing after it), then pauses the socket and hands the HELLO on. A peer with no complete
   * HELLO within the HELLO timeout or MAX_BYTES_BEFORE_HELLO, or with a bad one, is refused.
   */
  private awaitHello(socket: Socket, decoder: StreamDecoder<B>, nonce: Uint8Array, onHello: (hello: HelloFields) => void): void {
    this.pending++;
    let counted = true;
    const settle = () => {
      if (counted) this.pending--;
      counted = false;
      clearTimeout(timer);
    };
    /** The handshake is over: stop reading; refuse the peer if there is a reason. */
    const finish = (refusal?: string) => {
      settle();
      socket.off('data', onData);
      if (refusal !== undefined) this.refuse(socket, refusal);
    };
    const helloTimeout = this.options.helloTimeout ?? 5;
    const timer = setTimeout(() => finish(`no HELLO within ${helloTimeout} s`), helloTimeout * 1000);
    socket.on('close', settle);
    socket.write(encodeChallenge(nonce));
    let before = 0;
    const onData = (chunk: Buffer) => {
      if (before === 0 && chunk[0] === TLS_HANDSHAKE_RECORD && !this.options.tls) {
        finish('the source speaks TLS and this listener does not: run both sides with TLS, or neither');
        return;
      }
      let hello: HelloFields | undefined;
      try {
        before += chunk.length;
        decoder.push(chunk);
        hello = pullHello(decoder);
      } catch (error) {
        finish((error as Error).message);
        return;
      }
      if (!hello) {
        if (before > MAX_BYTES_BEFORE_HELLO) finish(`${before} bytes without a complete HELLO`);
        return;
      }
      finish();
      socket.pause();
      onHello(hello);
    };
    socket.on('data', onData);
  }

  /** A complete HELLO: checks the token and the role, asks `admit`, then acknowledges and emits the channel. */
  private admitChannel(socket: Socket, decoder: StreamDecoder<B>, nonce: Uint8Array, hello: HelloFields): void {
    if (!verifyHelloAuth(hello, this.token, nonce)) {
      this.refuse(socket, `authentication failed for migration '${hello.sessionId}': wrong or missing token`);
      return;
    }
    if (roleName(hello.role) === undefined) {
      this.refuse(socket, `channel role ${hello.role} is not supported`);
      return;
    }
    const reason = this.admit(hello);
    if (reason) {
      this.refuse(socket, reason);
      return;
    }
    socket.write(encodeHelloAck(0));
    const role = roleName(hello.role) as ChannelRole;
    this.emit('channel', { channel: new Channel(socket, role, hello.index), decoder, hello });
  }
}

/** Pulls only the header and HELLO: nothing after them is decoded before admission. */
function pullHello<B extends BlockShape>(decoder: StreamDecoder<B>): HelloFields | undefined {
  let hello: HelloFields | undefined;
  for (let event = decoder.next(); event; event = event.type === 'header' ? decoder.next() : undefined) {
    if (event.type === 'command' && event.cmd === Command.HELLO) hello = event;
  }
  return hello;
}

