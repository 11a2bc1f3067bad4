// Where a channel listens or connects: HOST:PORT (or a bare PORT on loopback) over TCP, or unix:PATH.
import { isIP } from 'node:net';
import { MigrationError } from '../wire/index.js';

export type Endpoint = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export function parseEndpoint(text: string, what = 'address'): Endpoint {
  if (text.startsWith('unix:')) {
    const path = text.slice(5);
    if (!path) throw new MigrationError('ERR_POSTCOPY_ADDRESS', `${what} '${text}': unix: needs a socket path`);
    return { kind: 'unix', path };
  }
  // a bare port means loopback: listening wider is always an explicit choice
  if (/^\d+$/.test(text)) text = `127.0.0.1:${text}`;
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  if (!match) throw new MigrationError('ERR_POSTCOPY_ADDRESS', `${what} '${text}' is not HOST:PORT or unix:PATH`);
  const host = match[1] ?? match[2];
  const port = Number(match[3]);
  if (port > 65535) throw new MigrationError('ERR_POSTCOPY_ADDRESS', `${what} '${text}': port ${port} is out of range 0..65535`);
  if (match[1] && isIP(host) !== 6) throw new MigrationError('ERR_POSTCOPY_ADDRESS', `${what} '${text}': [${host}] is not an IPv6 address`);
  return { kind: 'tcp', host, port };
}

export function formatEndpoint(e: Endpoint): string {
  return e.kind === 'unix' ? `unix:${e.path}` : `${e.host.includes(':') ? `[${e.host}]` : e.host}:${e.port}`;
}
