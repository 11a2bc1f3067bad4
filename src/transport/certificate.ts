// Small X.509 certificates made here, for `demo --tls` (a throwaway authority and a host
// certificate it signs) and for tests (an expired one, a foreign authority). ECDSA P-256 with
// SHA-256, DER built by hand: Node can sign and verify certificates but not issue them, and
// the demo must not depend on an openssl binary being installed.
import { X509Certificate, createPrivateKey, generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';

export interface IssuedCertificate {
  /** PEM. */
  cert: string;
  /** PEM (PKCS#8). */
  key: string;
}

export interface CertificateRequest {
  commonName: string;
  /** Host names and IP addresses the certificate is valid for (subjectAltName). */
  altNames?: string[];
  /** An authority (basicConstraints CA): it may sign others. */
  authority?: boolean;
  /** Signed by this authority; self-signed without one. */
  issuer?: IssuedCertificate;
  notBefore?: Date;
  notAfter?: Date;
  /** Unsigned, big-endian; 16 random bytes unless told. */
  serial?: Buffer;
}

const OID = {
  ecPublicKey: '1.2.840.10045.2.1',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  commonName: '2.5.4.3',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
};

const DAY_MS = 86_400_000;

/** A fresh key and a certificate for it, valid from an hour ago for 30 days unless told. */
export function issueCertificate(request: CertificateRequest): IssuedCertificate {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const notBefore = request.notBefore ?? new Date(Date.now() - 3_600_000);
  const notAfter = request.notAfter ?? new Date(notBefore.getTime() + 30 * DAY_MS);
  const subject = name(request.commonName);
  const issuerName = request.issuer ? name(commonNameOf(request.issuer.cert)) : subject;
  const signer: KeyObject = request.issuer ? createPrivateKey(request.issuer.key) : privateKey;
  const serial = request.serial ?? randomBytes(16);
  const algorithm = sequence(oid(OID.ecdsaWithSha256));
  const extensions = [
    extension(OID.basicConstraints, true, sequence(...(request.authority ? [tlv(0x01, Buffer.from([0xff]))] : []))),
    // digitalSignature, plus keyCertSign and cRLSign for an authority
    extension(OID.keyUsage, true, request.authority ? tlv(0x03, Buffer.from([0x01, 0x86])) : tlv(0x03, Buffer.from([0x07, 0x80]))),
    ...(request.altNames?.length ? [extension(OID.subjectAltName, false, sequence(...request.altNames.map(altName)))] : []),
  ];
  const tbs = sequence(
    tlv(0xa0, unsignedInteger(Buffer.from([2]))), // v3
    unsignedInteger(serial),
    algorithm,
    issuerName,
    sequence(time(notBefore), time(notAfter)),
    subject,
    publicKey.export({ type: 'spki', format: 'der' }),
    tlv(0xa3, sequence(...extensions)),
  );
  const signature = sign('sha256', tbs, signer);
  const der = sequence(tbs, algorithm, tlv(0x03, Buffer.concat([Buffer.from([0]), signature])));
  return { cert: pem('CERTIFICATE', der), key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

/** A throwaway authority and a certificate it signs for this host's loopback names. */
export function throwawayCredentials(): { authority: IssuedCertificate; host: IssuedCertificate } {
  const authority = issueCertificate({ commonName: `postcopy throwaway authority ${randomBytes(6).toString('hex')}`, authority: true });
  const host = issueCertificate({ commonName: 'localhost', altNames: ['localhost', '127.0.0.1', '::1'], issuer: authority });
  return { authority, host };
}

function commonNameOf(certPem: string): string {
  // the issuer's name must be byte-for-byte its subject: ours are always a lone CN
  return /CN=([^\n]+)/.exec(new X509Certificate(certPem).subject)![1];
}

function tlv(tag: number, body: Buffer): Buffer {
  const n = body.length;
  const length = n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), length, body]);
}

function sequence(...items: Buffer[]): Buffer {
  return tlv(0x30, Buffer.concat(items));
}

/** An unsigned big-endian number as DER wants it: no leading zero byte unless the next has its
 *  top bit set (OpenSSL refuses any other padding). */
function unsignedInteger(bytes: Buffer): Buffer {
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start++;
  const digits = bytes.subarray(start);
  return tlv(0x02, digits[0] & 0x80 ? Buffer.concat([Buffer.from([0]), digits]) : digits);
}

function oid(dotted: string): Buffer {
  const [a, b, ...rest] = dotted.split('.').map(Number);
  const bytes = [40 * a + b];
  for (const arc of rest) {
    const base128 = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) base128.unshift((v & 0x7f) | 0x80);
    bytes.push(...base128);
  }
  return tlv(0x06, Buffer.from(bytes));
}

function name(commonName: string): Buffer {
  return sequence(tlv(0x31, sequence(oid(OID.commonName), tlv(0x0c, Buffer.from(commonName, 'utf8')))));
}

function time(date: Date): Buffer {
  const iso = date.toISOString().replace(/[-:T]/g, '').slice(0, 14); // YYYYMMDDHHMMSS
  const year = date.getUTCFullYear();
  return year >= 1950 && year < 2050 ? tlv(0x17, Buffer.from(`${iso.slice(2)}Z`)) : tlv(0x18, Buffer.from(`${iso}Z`));
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return sequence(oid(id), ...(critical ? [tlv(0x01, Buffer.from([0xff]))] : []), tlv(0x04, value));
}

function altName(value: string): Buffer {
  const family = isIP(value);
  if (family === 4) return tlv(0x87, Buffer.from(value.split('.').map(Number)));
  if (family === 6) return tlv(0x87, ipv6Bytes(value));
  return tlv(0x82, Buffer.from(value, 'ascii'));
}

function ipv6Bytes(address: string): Buffer {
  const [head, tail] = address.split('::');
  const groups = (part: string | undefined) => (part ? part.split(':').map((g) => parseInt(g, 16)) : []);
  const left = groups(head);
  const right = groups(tail);
  const all = tail === undefined ? left : [...left, ...new Array(8 - left.length - right.length).fill(0), ...right];
  const bytes = Buffer.alloc(16);
  all.forEach((g, i) => bytes.writeUInt16BE(g, 2 * i));
  return bytes;
}

function pem(label: string, der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g)!;
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}
