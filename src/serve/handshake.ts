// Taking a VMM's connection: the socket's descriptor is taken before anything is read from it
// (Node's own reads would drop the descriptors that come with the bytes), then its one message
// is received with the descriptors it carries, within a bound, and the peer is named by
// SO_PEERCRED (the process to end when its pages cannot be served).
import { closeSync } from 'node:fs';
import type { Socket } from 'node:net';
import { PostcopyError } from '../base/index.js';
import { duplicateDescriptor, peerCredentials, receiveMessage, socketDescriptor } from '../kernel/index.js';
import { parseRegions, type GuestRegion } from './regions.js';

/** Firecracker sends a few hundred bytes; a bound keeps a hostile peer small. */
const MAX_MESSAGE_BYTES = 64 << 10;
/** The userfaultfd, and perhaps a memfd of guest memory (forks send one). */
const MAX_DESCRIPTORS = 2;
const POLL_MS = 5;

export interface Handshake {
  /** The connection (a descriptor of our own), kept open: the VMM closing it means it is gone. */
  fd: number;
  pid: number;
  uid: number;
}

export interface VmHello {
  regions: GuestRegion[];
  uffdFd: number;
}

/** Takes the descriptor of a connection accepted with pauseOnConnect (nothing read yet). */
export function takeConnection(socket: Socket): Handshake {
  const accepted = socketDescriptor(socket);
  if (accepted === undefined) throw new PostcopyError('ERR_POSTCOPY_INTERNAL', 'internal: an accepted connection without a descriptor');
  const fd = duplicateDescriptor(accepted);
  socket.destroy();
  try {
    const { pid, uid } = peerCredentials(fd);
    return { fd, pid, uid };
  } catch (error) {
    closeSync(fd);
    throw error;
  }
}

/**
 * The VMM's one message: the regions and its userfaultfd. Refuses (ERR_POSTCOPY_PROTOCOL, naming
 * the field) malformed JSON, bad regions, a message with no descriptor, and a peer that sends
 * nothing within `timeoutMs` or closes first. Descriptors beyond the first are closed.
 */
export async function receiveHello(connection: Handshake, timeoutMs: number): Promise<VmHello> {
  const buffer = new Uint8Array(MAX_MESSAGE_BYTES);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const message = receiveMessage(connection.fd, buffer, MAX_DESCRIPTORS);
    if (message) return hello(buffer, message.bytes, message.descriptors);
    if (Date.now() > deadline) throw new PostcopyError('ERR_POSTCOPY_PROTOCOL', `handshake: no message within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function hello(buffer: Uint8Array, bytes: number, descriptors: number[]): VmHello {
  const [uffdFd, ...others] = descriptors;
  for (const fd of others) closeSync(fd); // a fork's memfd of guest memory: the file is our source
  try {
    if (bytes === 0) throw new PostcopyError('ERR_POSTCOPY_PROTOCOL', 'handshake: the VMM closed the connection before sending its regions');
    const regions = parseRegions(Buffer.from(buffer.buffer, buffer.byteOffset, bytes).toString('utf8'));
    if (uffdFd === undefined) throw new PostcopyError('ERR_POSTCOPY_PROTOCOL', 'handshake: no userfaultfd came with the regions (SCM_RIGHTS)');
    return { regions, uffdFd };
  } catch (error) {
    if (uffdFd !== undefined) closeSync(uffdFd);
    throw error;
  }
}
