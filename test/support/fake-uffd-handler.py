#!/usr/bin/env python3
"""A fake Firecracker page handler, for the VMM stand-in's self-test (test/engines/vmm-standin.test.ts).

Written apart from the stand-in on purpose (another language, no shared code), so that a mistake
in one cannot hide one in the other. Binds and listens on --socket, accepts one VMM, receives
the region JSON and the uffd in one recvmsg (SCM_RIGHTS), reads page_size ?? page_size_kib ??
4096, and serves faults with UFFDIO_COPY from --mem-file, one whole page each; EAGAIN: read the
events, retry; EEXIST: wake. Exits when the VMM's socket reaches EOF.

--mode good   removed ranges (EVENT_REMOVE) are zeros on their next fault
--mode wrong  as good, but --wrong R:P:O flips the byte at offset O of region R's page P
--mode never  holds the uffd and serves nothing
--mode stale  ignores EVENT_REMOVE: removed pages get the file's data again

stdout: {"event":"listening"}, then {"event":"handshake","raw":...,"regions":[...] or null,"fds":N}.
"""
import argparse
import ctypes
import errno
import fcntl
import json
import os
import select
import socket
import struct

UFFDIO_COPY, UFFDIO_ZEROPAGE, UFFDIO_WAKE = 0xC028AA03, 0xC020AA04, 0x8010AA02
EVENT_PAGEFAULT, EVENT_REMOVE = 0x12, 0x15
MSG_SIZE = 32  # sizeof(struct uffd_msg)


def say(event):
    print(json.dumps(event), flush=True)


def read_events(uffd):
    out = []
    while True:
        try:
            data = os.read(uffd, MSG_SIZE * 64)
        except BlockingIOError:
            return out
        out += [data[i:i + MSG_SIZE] for i in range(0, len(data), MSG_SIZE)]


class Handler:
    def __init__(self, uffd, regions, mem, mode, wrong):
        self.uffd, self.mem, self.mode, self.wrong = uffd, mem, mode, wrong
        self.regions = [(r['base_host_virt_addr'], r['size'], r['offset'], r.get('page_size', r.get('page_size_kib', 4096)))
                        for r in regions]
        self.removed = set()  # page addresses that must read zeros

    def region_of(self, address):
        for index, (base, size, offset, page) in enumerate(self.regions):
            if base <= address < base + size:
                return index, base, offset, page
        raise RuntimeError(f'fault at {address:#x} outside every region')

    def remove(self, start, end):
        _, base, _, page = self.region_of(start)
        self.removed.update(range(start - (start - base) % page, end, page))

    def place(self, address):
        """True when done; False on EAGAIN (an event is queued: read it first)."""
        index, base, offset, page = self.region_of(address)
        address -= (address - base) % page
        try:
            if address in self.removed and page == 4096:
                fcntl.ioctl(self.uffd, UFFDIO_ZEROPAGE, bytearray(struct.pack('<QQQq', address, page, 0, 0)), True)
                return True
            data = bytearray(page) if address in self.removed else bytearray(os.pread(self.mem, page, offset + address - base))
            if self.mode == 'wrong' and self.wrong[:2] == (index, (address - base) // page):
                data[self.wrong[2]] ^= 0xFF
            source = ctypes.create_string_buffer(bytes(data), page)
            fcntl.ioctl(self.uffd, UFFDIO_COPY, bytearray(struct.pack('<QQQQq', address, ctypes.addressof(source), page, 0, 0)), True)
        except OSError as error:
            if error.errno == errno.EAGAIN:
                return False
            if error.errno != errno.EEXIST:
                raise
            fcntl.ioctl(self.uffd, UFFDIO_WAKE, struct.pack('<QQ', address, page))
        return True

    def serve(self, conn):
        poller = select.poll()
        poller.register(conn, select.POLLIN)
        if self.mode != 'never':
            poller.register(self.uffd, select.POLLIN)
        pending = []
        while True:
            ready = dict(poller.poll(10 if pending else -1))
            if conn.fileno() in ready:  # the VMM never writes after the handshake: this is EOF
                return
            events = read_events(self.uffd) if self.mode != 'never' else []
            for msg in events:
                if msg[0] == EVENT_REMOVE and self.mode != 'stale':
                    self.remove(*struct.unpack_from('<QQ', msg, 8))
                elif msg[0] == EVENT_PAGEFAULT:
                    pending.append(struct.unpack_from('<Q', msg, 16)[0])
            try:
                pending = [address for address in pending if not self.place(address)]
            except OSError as error:
                if error.errno == errno.ESRCH:  # the VMM is gone
                    return
                raise


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--socket', required=True)
    parser.add_argument('--mem-file', required=True)
    parser.add_argument('--mode', choices=['good', 'wrong', 'never', 'stale'], default='good')
    parser.add_argument('--wrong', default='0:0:0', help='REGION:PAGE:OFFSET')
    args = parser.parse_args()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(args.socket)
    server.listen(1)
    say({'event': 'listening'})
    conn, _ = server.accept()
    raw, fds, _, _ = socket.recv_fds(conn, 4096, 2)
    try:
        regions = json.loads(raw)
    except ValueError:
        regions = None
    say({'event': 'handshake', 'raw': raw.decode(errors='replace'), 'regions': regions, 'fds': len(fds)})
    for fd in fds[1:]:
        os.close(fd)
    if regions is None or not fds:
        conn.recv(1)  # nothing to serve: wait for the VMM to go
        return
    mem = os.open(args.mem_file, os.O_RDONLY)
    Handler(fds[0], regions, mem, args.mode, tuple(int(x) for x in args.wrong.split(':'))).serve(conn)


if __name__ == '__main__':
    main()
