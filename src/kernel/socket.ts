// Unix stream sockets at the level a userfaultfd handler needs them: the one message a VMM
// sends (bytes with its userfaultfd in SCM_RIGHTS), and the pid at the other end. Node's own
// sockets cannot do either: libuv reads a non-IPC pipe with read(2), and the kernel then
// drops the descriptors. So the socket must not be read by libuv (pauseOnConnect) while
// these take from it. Besides: a connected pair for a worker behind a TLS channel, the
// descriptor under a Node socket, and bounds on a socket's kernel buffers (Node sets none).
import type { Socket } from 'node:net';
import { EAGAIN } from '../base/index.js';
import { addon } from './addon.js';

export interface ReceivedMessage {
  /** Bytes written into the buffer; 0: the peer closed its end (no message). */
  bytes: number;
  /** Descriptors that came with the bytes, open and close-on-exec: the caller owns them. */
  descriptors: number[];
  /** The peer sent more descriptors than asked for (or other control data): the rest were closed. */
  truncated: boolean;
}

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

/**
 * One non-blocking `recvmsg` on a Unix stream socket: the bytes (up to the buffer's length)
 * and up to `maxDescriptors` descriptors (at most 253) sent with them; descriptors beyond
 * that are closed, never leaked. Undefined when nothing has arrived yet: wait and call
 * again. A failure throws Node's error (code 'ENOTSOCK', syscall 'recvmsg', ...).
 */
export function receiveMessage(fd: number, buffer: ArrayBufferView | ArrayBuffer, maxDescriptors = 2): ReceivedMessage | undefined {
  const message = addon.receiveMessage(fd, buffer, maxDescriptors);
  return message.bytes === EAGAIN ? undefined : message;
}

/**
 * The process at the other end of a Unix socket, as it was when it connected (SO_PEERCRED):
 * the VMM a page server ends when it cannot serve it.
 */
export function peerCredentials(fd: number): PeerCredentials {
  return addon.peerCredentials(fd);
}

/**
 * A connected pair of Unix stream sockets (close-on-exec), for a worker thread that owns one
 * end while this thread relays the other (a TLS channel's bytes, decrypted here).
 */
export function socketPair(): [number, number] {
  return addon.socketPair();
}

/**
 * shutdown(SHUT_RDWR): a thread blocked writing to the socket (a worker's writeRuns waiting on a
 * peer that stopped reading) wakes at once with EPIPE, so it can end now and not at its stall
 * bound. The descriptor stays open (whoever owns it closes it).
 */
export function shutdownSocket(fd: number): void {
  addon.shutdownSocket(fd);
}

/**
 * Bounds a socket's kernel buffers (SO_SNDBUF, SO_RCVBUF; 0 leaves one as it is): bytes queued
 * there are bytes a page requested meanwhile waits behind. Returns both sizes as the kernel now
 * has them: it doubles what it is given and clamps it to its limits; setting one ends its
 * autotuning.
 */
export function setSocketBuffers(fd: number, sendBytes: number, receiveBytes: number): { send: number; receive: number } {
  return addon.setSocketBuffers(fd, sendBytes, receiveBytes);
}

/**
 * The descriptor under a Node socket (its libuv handle's, which Node does not expose), or
 * undefined once it has none: to hand a connection to a worker, or to write to it past Node.
 */
export function socketDescriptor(socket: Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}
