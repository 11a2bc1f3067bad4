// The source's side of a channel: connect (with TLS when given), send the stream header at
// once, answer the destination's challenge with HELLO, and wait for HELLO_ACK (or a
// refusal, which is thrown with its reason). The header goes first so that a listener
// expecting TLS sees plaintext at once and can say so.
import { ReturnPathDecoder, Role, StreamEncoder, helloAuth, type BlockLookup, type BlockShape } from '../wire/index.js';
import { Channel, type ChannelRole } from './channel.js';
import { formatEndpoint, type Endpoint } from './endpoint.js';
import { connectSocket, explainTlsError, type TlsSettings } from './tls.js';
import { PostcopyError } from '../base/index.js';

export interface ConnectOptions<B extends BlockShape> {
  endpoint: Endpoint;
  sessionId: string;
  role: ChannelRole;
  /** A bulk channel's number (0-based). */
  index?: number;
  token?: string;
  /** Blocks the return path may name in page requests. */
  blocks: BlockLookup<B>;
  /** HELLO capability bits (Capability.*). */
  capabilities?: number;
  /** Seconds the whole handshake may take (default 10). */
  timeout?: number;
  /** TLS on this channel (the destination must listen with TLS too). */
  tls?: TlsSettings;
}

export interface ConnectedChannel<B extends BlockShape> {
  channel: Channel;
  encoder: StreamEncoder;
  returnPath: ReturnPathDecoder<B>;
}

export async function connectChannel<B extends BlockShape>(options: ConnectOptions<B>): Promise<ConnectedChannel<B>> {
  const { endpoint } = options;
  const where = formatEndpoint(endpoint);
  const index = options.role === 'bulk' ? options.index ?? 0 : 0;
  const name = options.role === 'bulk' ? `bulk ${index}` : options.role;
  const socket = connectSocket(endpoint, options.tls);
  const returnPath = new ReturnPathDecoder<B>({ blocks: options.blocks });
  const encoder = new StreamEncoder();
  socket.write(encoder.header());
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => fail(new PostcopyError('ERR_POSTCOPY_HANDSHAKE', `${where}: the ${name} channel's handshake did not finish within ${options.timeout ?? 10} s`)),
      (options.timeout ?? 10) * 1000);
    let settled = false;
    const fail = (error: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.destroy();
      reject(error);
    };
    const onData = (chunk: Buffer) => {
      try {
        returnPath.push(chunk);
        for (let event = returnPath.next(); event; event = returnPath.next()) {
          if (event.type === 'challenge') {
            const role = options.role === 'main' ? Role.MAIN : options.role === 'preempt' ? Role.PREEMPT : Role.BULK;
            const auth = helloAuth(options.token, event.nonce, options.sessionId, role, index);
            socket.write(encoder.hello({ sessionId: options.sessionId, role, index, capabilities: options.capabilities ?? 0, auth }));
          } else if (event.type === 'refuse') {
            return fail(new PostcopyError('ERR_POSTCOPY_REFUSED', `${where} refused the ${name} channel: ${event.reason}`));
          } else if (event.type === 'hello-ack') {
            settled = true;
            clearTimeout(timer);
            socket.off('data', onData);
            socket.off('error', onError);
            socket.off('close', onClose);
            socket.pause();
            // anything after the ACK belongs to the return path proper: keep it queued
            return resolve();
          }
        }
      } catch (error) {
        fail(error as Error);
      }
    };
    const onClose = () => fail(new PostcopyError('ERR_POSTCOPY_HANDSHAKE', `${where} closed the ${name} channel during the handshake`));
    const onError = (error: NodeJS.ErrnoException) => {
      const tlsReason = options.tls && explainTlsError(error, `the destination ${where}`);
      if (tlsReason) return fail(new PostcopyError('ERR_POSTCOPY_TLS', `${name} channel: ${tlsReason}`, { cause: error }));
      fail(new PostcopyError('ERR_POSTCOPY_HANDSHAKE',
        `${name} channel to ${where}: ${error.code === 'ENOENT' ? 'no such socket' : error.code === 'ECONNREFUSED' ? 'nobody listens there' : error.message}`, { cause: error }));
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.once('close', onClose);
  });
  return { channel: new Channel(socket, options.role, index), encoder, returnPath };
}

