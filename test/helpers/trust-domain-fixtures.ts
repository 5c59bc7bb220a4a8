/** Small fixtures for bundle and federation tests: a self-signed root of a trust domain, and a fresh JWT key. */
import { generateKeyPairSync, type JsonWebKey } from 'node:crypto';
import { mintCa } from '../../src/ca/x509.js';

/** The DER of a fresh self-signed P-256 root CA of `trustDomain`, valid for the next hour. */
export function rootDer(trustDomain: string): Buffer {
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const now = Date.now();
  const cert = mintCa(
    { commonName: 'Root', trustDomain, subjectPublicKey: key.publicKey, notBefore: new Date(now - 60_000), notAfter: new Date(now + 3_600_000), pathLen: 1 },
    { selfSignedKey: key.privateKey },
  );
  return Buffer.from(cert.pem.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64');
}

/** A fresh P-256 public key as a JWK. */
export const jwk = (): JsonWebKey => generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' });
