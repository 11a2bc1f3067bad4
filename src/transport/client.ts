// The source's side of a channel: connect, answer the destination's challenge with HELLO,
// and wait for HELLO_ACK (or a refusal, which is thrown with its reason).
import { connect as netConnect, type Socket } from 'node:net';
import {
  ReturnPathDecoder,
  Role,
  StreamEncoder,
  helloAuth,
  type BlockLookup,
  type BlockShape,
} from '../wire/index.js';
import { Channel, type ChannelRole } from './channel.js';
import { formatEndpoint, type Endpoint } from './endpoint.js';

export interface ConnectOptions<B extends BlockShape> {
  endpoint: Endpoint;
  sessionId: string;
  role: ChannelRole;
  token?: string;
  /** Blocks the return path may name in page requests. */
  blocks: BlockLookup<B>;
  timeout?: number;
}

export interface ConnectedChannel<B extends BlockShape> {
  channel: Channel;
  encoder: StreamEncoder;
  returnPath: ReturnPathDecoder<B>;
}

export async function connectChannel<B extends BlockShape>(options: ConnectOptions<B>): Promise<ConnectedChannel<B>> {
  const { endpoint } = options;
  const where = formatEndpoint(endpoint);
  const socket: Socket = endpoint.kind === 'unix' ? netConnect(endpoint.path) : netConnect(endpoint.port, endpoint.host);
  socket.setNoDelay(true);
  const returnPath = new ReturnPathDecoder<B>({ blocks: options.blocks });
  const encoder = new StreamEncoder();
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`${where}: no answer to HELLO in time`)), (options.timeout ?? 10) * 1000);
    const fail = (error: Error) => {
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
            const role = options.role === 'main' ? Role.MAIN : Role.PREEMPT;
            const auth = helloAuth(options.token, event.nonce, options.sessionId, role, 0);
            socket.write(encoder.header());
            socket.write(encoder.hello({ sessionId: options.sessionId, role, index: 0, capabilities: 0, auth }));
          } else if (event.type === 'refuse') {
            return fail(new Error(`${where} refused the ${options.role} channel: ${event.reason}`));
          } else if (event.type === 'hello-ack') {
            clearTimeout(timer);
            socket.off('data', onData);
            socket.off('error', fail);
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
    const onClose = () => fail(new Error(`${where} closed the ${options.role} channel during the handshake`));
    socket.on('data', onData);
    socket.once('error', fail);
    socket.once('close', onClose);
  });
  return { channel: new Channel(socket, options.role), encoder, returnPath };
}
