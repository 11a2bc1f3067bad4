// The destination's listener. Every connection is challenged with a nonce and must answer
// with a HELLO naming the migration, its role, and (on TCP) proof of the shared token before
// a single page is read from it. Refusals say why, on the connection, then close it.
import { createServer, type Server, type Socket } from 'node:net';
import { unlinkSync } from 'node:fs';
import { EventEmitter } from 'node:events';
import {
  Command,
  Role,
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
import { formatEndpoint, type Endpoint } from './endpoint.js';

export interface ListenOptions<B extends BlockShape> {
  endpoint: Endpoint;
  /** Required on TCP (refused without one unless `allowNoToken`); optional on Unix sockets. */
  token?: string;
  allowNoToken?: boolean;
  /** Blocks that RAM records may name (consulted lazily: may grow on MEM_SIZE). */
  blocks: BlockLookup<B>;
  /** Seconds a connection may take to say HELLO. */
  helloTimeout?: number;
}

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
  admit: Admission = () => undefined;
  readonly token: string | undefined;

  constructor(private readonly options: ListenOptions<B>) {
    super();
    if (options.endpoint.kind === 'tcp' && !options.token && !options.allowNoToken) {
      throw new Error(`listening on ${formatEndpoint(options.endpoint)} needs a token (TCP peers must prove they know it)`);
    }
    this.token = options.token;
  }

  async listen(): Promise<Endpoint> {
    const server = (this.server = createServer((socket) => this.accept(socket)));
    const { endpoint } = this.options;
    if (endpoint.kind === 'unix') {
      try {
        unlinkSync(endpoint.path);
      } catch {
        // not there: fine
      }
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if (endpoint.kind === 'unix') server.listen(endpoint.path, resolve);
      else server.listen(endpoint.port, endpoint.host, resolve);
    });
    const address = server.address();
    return endpoint.kind === 'tcp' && address && typeof address === 'object' ? { ...endpoint, port: address.port } : endpoint;
  }

  close(): void {
    this.server?.close();
  }

  private refuse(socket: Socket, reason: string): void {
    this.emit('refused', reason);
    socket.end(encodeRefuse(reason));
  }

  private accept(socket: Socket): void {
    const nonce = createNonce();
    const decoder = new StreamDecoder<B>({ blocks: this.options.blocks, header: true, requireHello: true });
    const timer = setTimeout(() => this.refuse(socket, 'no HELLO in time'), (this.options.helloTimeout ?? 10) * 1000);
    socket.on('error', () => clearTimeout(timer));
    socket.on('close', () => clearTimeout(timer));
    socket.write(encodeChallenge(nonce));
    const onData = (chunk: Buffer) => {
      let hello: HelloFields | undefined;
      try {
        decoder.push(chunk);
        // pull only the header and HELLO: nothing after them is decoded before admission
        for (let event = decoder.next(); event; event = event.type === 'header' ? decoder.next() : undefined) {
          if (event.type === 'command' && event.cmd === Command.HELLO) hello = event;
        }
      } catch (error) {
        clearTimeout(timer);
        socket.off('data', onData);
        this.refuse(socket, (error as Error).message);
        return;
      }
      if (!hello) return;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.pause();
      if (!verifyHelloAuth(hello, this.token, nonce)) {
        this.refuse(socket, `authentication failed for migration '${hello.sessionId}': wrong or missing token`);
        return;
      }
      if (hello.role !== Role.MAIN && hello.role !== Role.PREEMPT) {
        this.refuse(socket, `channel role ${roleName(hello.role) ?? hello.role} is not supported`);
        return;
      }
      const reason = this.admit(hello);
      if (reason) {
        this.refuse(socket, reason);
        return;
      }
      socket.write(encodeHelloAck(0));
      const role: ChannelRole = hello.role === Role.MAIN ? 'main' : 'preempt';
      this.emit('channel', { channel: new Channel(socket, role), decoder, hello });
    };
    socket.on('data', onData);
  }
}
