import { createPrivateKey, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEntry } from '../audit/entry.js';
import { CertificateAuthority } from '../ca/authority.js';
import { KeySigner, type Signer } from '../ca/signer.js';
import { systemClock } from '../clock.js';
import { ensureDevMaterial } from '../dev/material.js';
import { auditedEndpointMint, endpointSpiffeId, startBundleEndpoint } from './bundle-endpoint.js';
import { buildBundle } from '../spiffe/bundle.js';

let dir: string;
let rootsPem: string;
/** The dev signing CA behind a Signer that only signs asynchronously, as a key in a PKCS#11 token does. */
let tokenLikeCa: CertificateAuthority;

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'tessera-bundle-endpoint-'));
  await ensureDevMaterial(dir, 'example.org');
  rootsPem = readFileSync(path.join(dir, 'bundle.pem'), 'utf8');
  const local = new KeySigner(createPrivateKey(readFileSync(path.join(dir, 'intermediate.key'), 'utf8')));
  const asyncOnly: Signer = { algorithm: local.algorithm, publicKey: local.publicKey, sign: (data) => local.sign(data) };
  tokenLikeCa = CertificateAuthority.fromSigner({ certPem: readFileSync(path.join(dir, 'intermediate.pem'), 'utf8'), rootsPem }, asyncOnly);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

const bundle = buildBundle({ rootCertsDer: [], jwtKeys: [], sequence: 1, refreshHintSeconds: 60 });

function presented(url: string): Promise<X509Certificate> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: u.hostname, port: Number(u.port), ca: rootsPem, checkServerIdentity: () => undefined }, () => {
      const raw = socket.getPeerCertificate().raw;
      socket.destroy();
      resolve(new X509Certificate(raw));
    });
    socket.on('error', reject);
  });
}

describe('the https_spiffe bundle endpoint SVID', () => {
  it('is minted with a CA whose key only signs asynchronously (a token) and recorded in the audit log before it is presented', async () => {
    const recorded: AuditEntry[] = [];
    const audit = { append: async (entry: AuditEntry): Promise<void> => void recorded.push(entry) };
    const server = await startBundleEndpoint({
      host: '127.0.0.1',
      port: 0,
      trustDomain: 'example.org',
      ca: () => tokenLikeCa,
      mint: auditedEndpointMint({ audit, replicaId: 'r1' }),
      bundle: () => bundle,
      clock: systemClock,
    });
    try {
      // Recorded by the time the listener exists, so before any client can see it.
      expect(recorded).toHaveLength(1);
      const cert = await presented(server.url);
      expect(cert.subjectAltName).toBe(`URI:${endpointSpiffeId('example.org')}`);
      expect(recorded[0]).toMatchObject({
        type: 'x509-svid.issued',
        decision: 'allow',
        actor: null,
        subject: endpointSpiffeId('example.org'),
        replica: 'r1',
      });
      const hex = (h: string | undefined): string => (h ?? '').toLowerCase().replace(/^0+/, '');
      expect(hex(recorded[0]?.serial)).toBe(hex(cert.serialNumber));
      expect(await server.serial()).toBe(recorded[0]?.serial);
    } finally {
      await server.close();
    }
  });

  it('is never presented when the audit log cannot record it: the endpoint does not start', async () => {
    const failing = { append: async (): Promise<void> => Promise.reject(new Error('store down')) };
    await expect(
      startBundleEndpoint({
        host: '127.0.0.1',
        port: 0,
        trustDomain: 'example.org',
        ca: () => tokenLikeCa,
        mint: auditedEndpointMint({ audit: failing, replicaId: 'r1' }),
        bundle: () => bundle,
        clock: systemClock,
      }),
    ).rejects.toThrow(/store down/);
  });
});
