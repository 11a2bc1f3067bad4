// An IncomingMigration on one block, listening on loopback, with a hand-driven source: the
// test writes the stream with the source's encoder and reads the return path itself.
import { Mapping, RamBlock, RamList } from '../../src/index.js';
import { IncomingMigration, type IncomingOptions } from '../../src/incoming/index.js';
import { IncomingListener, connectChannel, type ChannelRole, type ConnectedChannel } from '../../src/transport/index.js';
import type { ReturnPathEvent } from '../../src/wire/index.js';
import { waitFor } from './threads.js';
import { type GuestBlock } from '../../src/pager/index.js';

export const PAGE = 4096;

export interface Destination {
  migration: IncomingMigration;
  mapping: Mapping;
  blocks: RamList<Mapping>;
  source: ConnectedChannel<GuestBlock>;
  failed: Promise<Error>;
  /** ADVISE, LISTEN, RUN on the main channel; resolves once the destination is RUNNING. */
  startPostcopy(): Promise<void>;
  /** Another channel of the same session (a reconnection, or the preempt channel). */
  connect(role: ChannelRole, capabilities?: number, index?: number): Promise<ConnectedChannel<GuestBlock>>;
  cleanup(): void;
}

export interface DestinationOptions extends Omit<IncomingOptions, 'blocks'> {
  pageSize?: number;
  length?: number;
  /** HELLO capabilities of the first main channel. */
  capabilities?: number;
}

export async function destination(options: DestinationOptions = {}): Promise<Destination> {
  const { pageSize = PAGE, length = 1 << 21, capabilities, ...incoming } = options;
  const mapping = new Mapping(length, { huge: pageSize > PAGE });
  const blocks = new RamList<Mapping>([new RamBlock<Mapping>({ idstr: 'ram0', usedLength: length, pageSize, host: mapping })]);
  const migration = new IncomingMigration({ blocks, ...incoming });
  const listener = new IncomingListener<GuestBlock>({ endpoint: { kind: 'tcp', host: '127.0.0.1', port: 0 }, token: 'secret', blocks });
  listener.admit = (hello) => migration.admit(hello);
  listener.on('channel', (accepted) => migration.attach(accepted));
  const endpoint = await listener.listen();
  const channels: ConnectedChannel<GuestBlock>[] = [];
  const connect = async (role: ChannelRole, caps = 0, index = 0) => {
    const c = await connectChannel<GuestBlock>({ endpoint, sessionId: 'test', role, index, token: 'secret', blocks, capabilities: caps });
    channels.push(c);
    return c;
  };
  const source = await connect('main', capabilities);
  const failed = new Promise<Error>((resolve) => migration.on('failed', resolve));
  const cleanup = () => {
    for (const c of channels) c.channel.destroy();
    listener.close();
    mapping.unmap();
  };
  const startPostcopy = async () => {
    const { channel, encoder: e } = source;
    channel.send(e.advise(pageSize));
    channel.send(e.listen());
    channel.send(e.run());
    await waitFor(() => migration.state === 'RUNNING', 5000, 'RUNNING');
  };
  return { migration, mapping, blocks, source, failed, startPostcopy, connect, cleanup };
}

/** Collects return-path events of a hand-driven source channel as they arrive. */
export function returnPath(source: ConnectedChannel<GuestBlock>): ReturnPathEvent<GuestBlock>[] {
  const events: ReturnPathEvent<GuestBlock>[] = [];
  source.channel.socket.on('data', (chunk: Buffer) => {
    source.returnPath.push(chunk);
    for (let e = source.returnPath.next(); e; e = source.returnPath.next()) events.push(e);
  });
  source.channel.socket.resume();
  return events;
}

/** A page of `value` words. */
export function filledPage(value: number): Uint8Array {
  return new Uint8Array(new Int32Array(PAGE / 4).fill(value).buffer);
}
