// Where a channel listens or connects: HOST:PORT (or a bare PORT on loopback) over TCP, or unix:PATH.
import { existsSync, unlinkSync } from 'node:fs';
import { isIP, type Server } from 'node:net';
import { dirname } from 'node:path';
import { PostcopyError } from '../base/index.js';

export type Endpoint = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export function parseEndpoint(text: string, what = 'address'): Endpoint {
  if (text.startsWith('unix:')) {
    const path = text.slice(5);
    if (!path) throw new PostcopyError('ERR_POSTCOPY_ADDRESS', `${what} '${text}': unix: needs a socket path`);
    return { kind: 'unix', path };
  }
  // a bare port means loopback: listening wider is always an explicit choice
  if (/^\d+$/.test(text)) text = `127.0.0.1:${text}`;
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  if (!match) throw new PostcopyError('ERR_POSTCOPY_ADDRESS', `${what} '${text}' is not HOST:PORT or unix:PATH`);
  const host = match[1] ?? match[2];
  const port = Number(match[3]);
  if (port > 65535) throw new PostcopyError('ERR_POSTCOPY_ADDRESS', `${what} '${text}': port ${port} is out of range 0..65535`);
  if (match[1] && isIP(host) !== 6) throw new PostcopyError('ERR_POSTCOPY_ADDRESS', `${what} '${text}': [${host}] is not an IPv6 address`);
  return { kind: 'tcp', host, port };
}

export function formatEndpoint(e: Endpoint): string {
  return e.kind === 'unix' ? `unix:${e.path}` : `${e.host.includes(':') ? `[${e.host}]` : e.host}:${e.port}`;
}

/**
 * Starts `server` listening on `endpoint` (a stale Unix socket file is replaced; a missing
 * directory is named); resolves with the bound endpoint, the real port when asked for port 0.
 */
export async function listenOn(server: Server, endpoint: Endpoint): Promise<Endpoint> {
  if (endpoint.kind === 'unix') {
    const directory = dirname(endpoint.path);
    if (!existsSync(directory)) throw new PostcopyError('ERR_POSTCOPY_CONFIG', `cannot listen on unix:${endpoint.path}: the directory ${directory} does not exist`);
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
