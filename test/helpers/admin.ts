/**
 * Helpers for the admin and break-glass suites: admin certificates minted by the dev admin CA (any
 * SPIFFE-style ID), a certificate from an unrelated CA, a workload SVID, the audit log as parsed
 * entries, and a real webhook receiver on 127.0.0.1 that records every alert POSTed to it.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { CertificateAuthority } from '../../src/ca/authority.js';
import { mintCa } from '../../src/ca/x509.js';
import { type AuditEntry, parseAuditEntry } from '../../src/audit/entry.js';
import type { DevMaterial } from '../../src/dev/material.js';
import { devMaterial, type TestBroker } from './broker.js';

export interface ClientCert {
  readonly cert: string;
  readonly key: string;
  readonly serial: string;
}

function newKey(): { publicKey: KeyObject; keyPem: string } {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { publicKey, keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

/** An admin client certificate for `spiffeId`, signed by the dev admin CA. */
export function mintAdminCert(material: DevMaterial, spiffeId: string, ttlMs = 3_600_000): ClientCert {
  const caPem = readFileSync(material.adminCaCertFile, 'utf8');
  const ca = CertificateAuthority.fromPem({ certPem: caPem, keyPem: readFileSync(material.adminCaKeyFile, 'utf8'), rootsPem: caPem });
  const k = newKey();
  const leaf = ca.issueX509Svid({ spiffeId, dnsNames: [], publicKey: k.publicKey, ttlMs, now: Date.now() });
  return { cert: leaf.chainPem.join(''), key: k.keyPem, serial: leaf.serialHex };
}

/** Writes a client certificate as DIR/<name>.pem and DIR/<name>.key (0600), for CLI flags. */
export function writeClientCert(dir: string, name: string, c: ClientCert): { certFile: string; keyFile: string } {
  const certFile = path.join(dir, `${name}.pem`);
  const keyFile = path.join(dir, `${name}.key`);
  writeFileSync(certFile, c.cert);
  writeFileSync(keyFile, c.key, { mode: 0o600 });
  return { certFile, keyFile };
}

/** A client certificate for `spiffeId` from a throwaway CA that neither the workload nor the admin trust. */
export function mintForeignCert(spiffeId: string): ClientCert {
  const leafKey = newKey();
  const rootKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const now = Date.now();
  const rootCert = mintCa(
    { commonName: 'Foreign CA', trustDomain: 'example.org', subjectPublicKey: rootKey.publicKey, notBefore: new Date(now - 60_000), notAfter: new Date(now + 86_400_000), pathLen: 0 },
    { selfSignedKey: rootKey.privateKey },
  );
  const ca = CertificateAuthority.fromPem({
    certPem: rootCert.pem,
    keyPem: rootKey.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    rootsPem: rootCert.pem,
  });
  const leaf = ca.issueX509Svid({ spiffeId, dnsNames: [], publicKey: leafKey.publicKey, ttlMs: 3_600_000, now });
  return { cert: leaf.chainPem.join(''), key: leafKey.keyPem, serial: leaf.serialHex };
}

/** A workload X.509-SVID (server-made key) for the token's identity. */
export async function workloadSvid(b: TestBroker, t: { namespace?: string; serviceAccount?: string } = {}): Promise<ClientCert & { spiffeId: string }> {
  const res = await b.call<{ svid: string; privateKey: string; serial: string; spiffeId: string }>({
    path: '/v1/svid/x509',
    token: await b.token(t),
    body: { keyType: 'ec-p256' },
  });
  if (res.status !== 200) throw new Error(`SVID issuance failed: ${res.status} ${res.text}`);
  return { cert: res.json.svid, key: res.json.privateKey, serial: res.json.serial, spiffeId: res.json.spiffeId };
}

/** Every audit entry in the broker's store, parsed, with its index. */
export async function auditEntries(b: TestBroker): Promise<{ index: number; entry: AuditEntry }[]> {
  const size = await b.broker.store.auditSize();
  const raw = await b.broker.store.readAuditEntries(0, size);
  return raw.map((bytes, index) => ({ index, entry: parseAuditEntry(bytes) }));
}

/** The raw audit log text (to prove something never entered it). */
export async function auditText(b: TestBroker): Promise<string> {
  const size = await b.broker.store.auditSize();
  return (await b.broker.store.readAuditEntries(0, size)).map((x) => x.toString('utf8')).join('\n');
}

export interface WebhookReceiver {
  readonly url: string;
  readonly alerts: Record<string, unknown>[];
  /** Resolves with the first alert matching `pred` (waits up to `timeoutMs`). */
  waitFor(pred: (a: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  close(): Promise<void>;
}

/** A real HTTP server on 127.0.0.1 that answers 204 and records every JSON body. */
export async function startWebhookReceiver(): Promise<WebhookReceiver> {
  const alerts: Record<string, unknown>[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      try {
        alerts.push(JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>);
      } catch {
        alerts.push({ unparsable: true });
      }
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/alerts`,
    alerts,
    async waitFor(pred, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = alerts.find(pred);
        if (hit !== undefined) return hit;
        if (Date.now() > deadline) throw new Error(`no matching alert within ${timeoutMs} ms; got ${JSON.stringify(alerts)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** The `admin:` config section on the dev admin CA with these principals (startBroker's default has only the dev admin). */
export async function adminSection(principals: readonly { id: string; roles: readonly string[] }[]): Promise<{ admin: Record<string, unknown> }> {
  const { material } = await devMaterial();
  return {
    admin: {
      caBundleFile: material.adminCaCertFile,
      caCertFile: material.adminCaCertFile,
      caKeyFile: material.adminCaKeyFile,
      principals: principals.map((p) => ({ id: p.id, roles: [...p.roles] })),
    },
  };
}
