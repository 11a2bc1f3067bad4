// The certificates `demo --tls` and the tests make: whatever the random serial's leading bytes,
// OpenSSL reads the certificate (one in 256 once carried a leading zero it refuses as padding).
import test from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createPublicKey } from 'node:crypto';
import { issueCertificate, throwawayCredentials } from '../../src/transport/index.js';

test('a serial with leading zeros, a top bit set or all ones is read back as the same number', () => {
  const { authority } = throwawayCredentials();
  for (const hex of ['0001', '00007f11', '0080', '7f', '80', 'ff'.repeat(16), '00'.repeat(16), '00' + 'a5'.repeat(15)]) {
    const issued = issueCertificate({ commonName: 'localhost', issuer: authority, serial: Buffer.from(hex, 'hex') });
    const cert = new X509Certificate(issued.cert);
    const expected = BigInt(`0x${hex}`).toString(16).toUpperCase();
    assert.equal(BigInt(`0x${cert.serialNumber}`).toString(16).toUpperCase(), expected, hex);
    assert.ok(cert.verify(createPublicKey(authority.key)), `${hex}: signed by its authority`);
    assert.ok(cert.checkIssued(new X509Certificate(authority.cert)), hex);
  }
});
