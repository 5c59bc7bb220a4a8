import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { BrokerError } from '../errors.js';
import { splitPemCertificates } from '../ca/x509.js';
import { devPkiExists, generateDevPki, type DevPkiPaths } from './pki.js';

const TD = 'dev.tessera.test';
const YEAR = 365 * 86_400_000;
let tmp: string;
let dir: string;
let paths: DevPkiPaths;
const started = Date.now();

const certs = (file: string): X509Certificate[] => splitPemCertificates(fs.readFileSync(file, 'utf8')).map((d) => new X509Certificate(d));
const mode = (file: string): number => fs.statSync(file).mode & 0o777;
const snapshot = (p: DevPkiPaths): string[] =>
  [p.rootCertFile, p.rootKeyFile, p.intermediateCertFile, p.intermediateKeyFile, p.bundleFile, p.serverCertFile, p.serverKeyFile].map((f) => fs.readFileSync(f, 'utf8'));

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-devpki-'));
  dir = path.join(tmp, 'certs-dev');
  expect(devPkiExists(dir)).toBe(false);
  paths = await generateDevPki(dir, { trustDomain: TD });
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('generateDevPki', () => {
  it('writes every file, keys 0600', () => {
    expect(devPkiExists(dir)).toBe(true);
    expect(paths.rootCertFile).toBe(path.join(dir, 'root.pem'));
    expect(paths.serverKeyFile).toBe(path.join(dir, 'server.key'));
    for (const k of [paths.rootKeyFile, paths.intermediateKeyFile, paths.serverKeyFile]) {
      expect(mode(k)).toBe(0o600);
      expect(fs.readFileSync(k, 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    }
  });

  it('creates a P-256 root (10 years, pathLen 1) and intermediate (1 year, pathLen 0)', () => {
    const [root] = certs(paths.rootCertFile) as [X509Certificate];
    const [inter] = certs(paths.intermediateCertFile) as [X509Certificate];
    expect(root.ca).toBe(true);
    expect(root.checkIssued(root) && root.verify(root.publicKey)).toBe(true);
    expect(root.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(new Date(root.validTo).getTime() - started).toBeGreaterThan(10 * YEAR - 2 * 86_400_000);
    expect(root.subjectAltName).toBe(`URI:spiffe://${TD}`);
    expect(inter.checkIssued(root) && inter.verify(root.publicKey)).toBe(true);
    expect(inter.ca).toBe(true);
    const interLife = new Date(inter.validTo).getTime() - started;
    expect(interLife).toBeGreaterThan(YEAR - 86_400_000);
    expect(interLife).toBeLessThan(YEAR + 2 * 86_400_000);
    const text = (file: string): string => spawnSync('openssl', ['x509', '-noout', '-text', '-in', file], { encoding: 'utf8' }).stdout;
    expect(text(paths.rootCertFile)).toContain('CA:TRUE, pathlen:1');
    expect(text(paths.intermediateCertFile)).toContain('CA:TRUE, pathlen:0');
    expect(fs.readFileSync(paths.bundleFile, 'utf8')).toBe(fs.readFileSync(paths.rootCertFile, 'utf8'));
  });

  it('creates the broker serving SVID chain (leaf + intermediate) with its key', () => {
    const chain = certs(paths.serverCertFile);
    expect(chain).toHaveLength(2);
    const [leaf, inter] = chain as [X509Certificate, X509Certificate];
    expect(inter.raw.equals(certs(paths.intermediateCertFile)[0]!.raw)).toBe(true);
    expect(leaf.subjectAltName).toBe(`URI:spiffe://${TD}/tessera/broker, DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1`);
    expect(leaf.checkPrivateKey(createPrivateKey(fs.readFileSync(paths.serverKeyFile, 'utf8')))).toBe(true);
    expect(new Date(leaf.validTo).getTime()).toBeLessThanOrEqual(new Date(inter.validTo).getTime());
    const leafFile = path.join(tmp, 'server-leaf.pem');
    fs.writeFileSync(leafFile, leaf.toString());
    const r = spawnSync('openssl', ['verify', '-x509_strict', '-purpose', 'sslserver', '-CAfile', paths.bundleFile, '-untrusted', paths.intermediateCertFile, leafFile], { encoding: 'utf8' });
    expect(r.stdout).toContain(': OK');
  });

  it('serves TLS that a client trusting only bundle.pem accepts for localhost and 127.0.0.1', async () => {
    const server = tls.createServer({ cert: fs.readFileSync(paths.serverCertFile), key: fs.readFileSync(paths.serverKeyFile) }, (s) => s.end('hi'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    try {
      for (const servername of ['localhost', undefined]) {
        const got = await new Promise<string>((resolve, reject) => {
          const sock = tls.connect({ host: '127.0.0.1', port, ca: fs.readFileSync(paths.bundleFile), ...(servername ? { servername } : {}) }, () => {
            sock.setEncoding('utf8');
            let data = '';
            sock.on('data', (d: string) => (data += d));
            sock.on('end', () => resolve(data));
          });
          sock.on('error', reject);
        });
        expect(got).toBe('hi');
      }
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('reuses existing files and regenerates only what is missing', async () => {
    const before = snapshot(paths);
    await generateDevPki(dir, { trustDomain: TD });
    expect(snapshot(paths)).toEqual(before);

    fs.rmSync(paths.serverCertFile);
    fs.rmSync(paths.serverKeyFile);
    fs.rmSync(paths.bundleFile);
    await generateDevPki(dir, { trustDomain: TD, serverDnsNames: ['broker.internal'], serverIps: ['10.9.8.7'] });
    const after = snapshot(paths);
    expect(after.slice(0, 5)).toEqual(before.slice(0, 5)); // root, intermediate, bundle identical
    expect(after[5]).not.toBe(before[5]);
    const [leaf] = certs(paths.serverCertFile) as [X509Certificate];
    expect(leaf.subjectAltName).toBe(`URI:spiffe://${TD}/tessera/broker, DNS:broker.internal, IP Address:10.9.8.7`);
    expect(mode(paths.serverKeyFile)).toBe(0o600);
  });

  it('refuses a half-present pair, a foreign intermediate and another trust domain', async () => {
    const other = path.join(tmp, 'other');
    await generateDevPki(other, { trustDomain: TD });

    const half = path.join(tmp, 'half');
    fs.mkdirSync(half);
    fs.copyFileSync(paths.rootCertFile, path.join(half, 'root.pem'));
    await expect(generateDevPki(half, { trustDomain: TD })).rejects.toThrow(/incomplete/);

    const mixed = path.join(tmp, 'mixed');
    fs.mkdirSync(mixed);
    for (const f of ['root.pem', 'root.key']) fs.copyFileSync(path.join(dir, f), path.join(mixed, f));
    for (const f of ['intermediate.pem', 'intermediate.key']) fs.copyFileSync(path.join(other, f), path.join(mixed, f));
    await expect(generateDevPki(mixed, { trustDomain: TD })).rejects.toBeInstanceOf(BrokerError);

    await expect(generateDevPki(dir, { trustDomain: 'another.test' })).rejects.toThrow(/trust domain/);
  });
});
