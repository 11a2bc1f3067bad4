// TLS credentials for tests, written to files as a user would keep them: a host certificate
// signed by an authority, one from a foreign authority, an expired one, and pre-shared keys.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { issueCertificate, throwawayCredentials, type TlsFiles } from '../../src/transport/index.js';

const DAY_MS = 86_400_000;

export interface TlsCredentialFiles {
  /** Signed by `authority`, valid for localhost and 127.0.0.1. */
  good: Required<Omit<TlsFiles, 'psk'>>;
  /** A valid certificate from another authority (and that authority as its --tls-ca). */
  foreign: Required<Omit<TlsFiles, 'psk'>>;
  /** Signed by `authority`, expired yesterday. */
  expired: Required<Omit<TlsFiles, 'psk'>>;
  psk: string;
  otherPsk: string;
}

export function writeTlsCredentials(dir: string): TlsCredentialFiles {
  const put = (name: string, text: string) => {
    writeFileSync(join(dir, name), text, { mode: 0o600 });
    return join(dir, name);
  };
  const { authority, host } = throwawayCredentials();
  const other = throwawayCredentials();
  const old = issueCertificate({
    commonName: 'localhost', altNames: ['localhost', '127.0.0.1'], issuer: authority,
    notBefore: new Date(Date.now() - 10 * DAY_MS), notAfter: new Date(Date.now() - DAY_MS),
  });
  const ca = put('authority.crt', authority.cert);
  return {
    good: { cert: put('host.crt', host.cert), key: put('host.key', host.key), ca },
    foreign: { cert: put('foreign.crt', other.host.cert), key: put('foreign.key', other.host.key), ca: put('foreign-authority.crt', other.authority.cert) },
    expired: { cert: put('expired.crt', old.cert), key: put('expired.key', old.key), ca },
    psk: put('psk', `${'5a'.repeat(32)}\n`),
    otherPsk: put('other.psk', 'c3'.repeat(32)),
  };
}

/** The command-line options for a set of certificate files. */
export function tlsArgs(files: Required<Omit<TlsFiles, 'psk'>>): string[] {
  return ['--tls-cert', files.cert, '--tls-key', files.key, '--tls-ca', files.ca];
}
