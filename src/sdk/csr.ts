/**
 * A fresh P-256 key and a PKCS#10 request for it, built with node:crypto and a few bytes of DER.
 * The private key never leaves the workload: the broker only sees the CSR, and it takes nothing from
 * it but the public key (subject and extensions are decided by policy), so the subject is left empty.
 */
import { generateKeyPair, sign, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';

const generateKeyPairAsync = promisify(generateKeyPair);

/** AlgorithmIdentifier { ecdsa-with-SHA256 (1.2.840.10045.4.3.2) }, no parameters (RFC 5758). */
const ECDSA_WITH_SHA256 = Buffer.from('300a06082a8648ce3d040302', 'hex');

function tlv(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  const n = body.length;
  let len: Buffer;
  if (n < 0x80) len = Buffer.from([n]);
  else if (n < 0x100) len = Buffer.from([0x81, n]);
  else if (n < 0x10000) len = Buffer.from([0x82, n >> 8, n & 0xff]);
  else throw new RangeError('DER value too long for a CSR');
  return Buffer.concat([Buffer.from([tag]), len, body]);
}

export interface KeyAndCsr {
  readonly privateKey: KeyObject;
  readonly privateKeyPem: string;
  readonly csrPem: string;
}

/** Builds the CSR for an existing EC P-256 key pair. */
export function csrFor(privateKey: KeyObject, publicKey: KeyObject): string {
  const info = tlv(
    0x30,
    Buffer.from([0x02, 0x01, 0x00]), // version v1(0)
    Buffer.from([0x30, 0x00]), // subject: empty Name
    publicKey.export({ type: 'spki', format: 'der' }),
    Buffer.from([0xa0, 0x00]), // attributes [0]: none
  );
  const signature = sign('sha256', info, { key: privateKey, dsaEncoding: 'der' });
  const der = tlv(0x30, info, ECDSA_WITH_SHA256, tlv(0x03, Buffer.from([0x00]), signature));
  const b64 = der.toString('base64').replace(/.{1,64}/g, '$&\n');
  return `-----BEGIN CERTIFICATE REQUEST-----\n${b64}-----END CERTIFICATE REQUEST-----\n`;
}

export async function newKeyAndCsr(): Promise<KeyAndCsr> {
  const { privateKey, publicKey } = await generateKeyPairAsync('ec', { namedCurve: 'P-256' });
  return {
    privateKey,
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    csrPem: csrFor(privateKey, publicKey),
  };
}
