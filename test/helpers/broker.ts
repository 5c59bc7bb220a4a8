/**
 * Starts a real broker for tests: dev material generated in a temp folder (throwaway keys, never
 * committed), an embedded store on disk, HTTPS on an ephemeral loopback port.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { stringify } from 'yaml';
import { createBroker, type Broker } from '../../src/broker.js';
import type { Clock } from '../../src/clock.js';
import { loadConfig } from '../../src/config/load.js';
import { ensureDevMaterial, type DevMaterial } from '../../src/dev/material.js';
import { DEV_ISSUER, mintDevToken } from '../../src/dev/token-issuer.js';
import { buildServer } from '../../src/server/app.js';
import type { Store } from '../../src/store/store.js';
import { httpsCall, type HttpsCall, type HttpsResult } from './https.js';

export interface TestBroker {
  readonly dir: string;
  readonly url: string;
  readonly ca: string;
  readonly broker: Broker;
  readonly app: FastifyInstance;
  readonly material: DevMaterial;
  readonly routes: readonly { method: string; url: string }[];
  token(opts?: { namespace?: string; serviceAccount?: string; ttlSeconds?: number; audience?: string; now?: number }): Promise<string>;
  call<T = Record<string, unknown>>(call: HttpsCall): Promise<HttpsResult<T>>;
  close(): Promise<void>;
}

/**
 * The part of a test broker's config that points at the shared dev material: trust domain, TLS, CA,
 * audit signing key and the dev token issuer. Every test that writes its own config starts from this.
 */
export function materialConfig(pkiDir: string, material: DevMaterial): Record<string, unknown> & { audit: Record<string, unknown> } {
  return {
    trustDomain: 'example.org',
    tls: { certFile: path.join(pkiDir, 'server.pem'), keyFile: path.join(pkiDir, 'server.key') },
    ca: {
      certFile: path.join(pkiDir, 'intermediate.pem'),
      keyFile: path.join(pkiDir, 'intermediate.key'),
      bundleFile: path.join(pkiDir, 'bundle.pem'),
      jwtKeyFile: path.join(pkiDir, 'jwt-signing.key'),
    },
    audit: { signingKeyFile: material.auditKeyFile },
    issuers: [{ issuer: DEV_ISSUER, jwksFile: material.issuerJwksFile, audiences: ['tessera'] }],
  };
}

/** Material shared by all brokers of one test file: generating a CA per test would only cost time. */
let sharedMaterial: { dir: string; material: DevMaterial } | undefined;

export async function devMaterial(): Promise<{ dir: string; material: DevMaterial }> {
  if (sharedMaterial === undefined) {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-pki-'));
    sharedMaterial = { dir, material: await ensureDevMaterial(dir, 'example.org') };
  }
  return sharedMaterial;
}

export interface StartOptions {
  /** Extra YAML config merged over the test defaults. */
  readonly config?: Record<string, unknown> | undefined;
  readonly store?: (dataDir: string) => Promise<Store>;
  readonly clock?: Clock;
  /** Reuse a data directory (restart tests). */
  readonly dataDir?: string;
  /** Pino options for the server's logger (e.g. `{ level: 'trace', stream }` to capture lines); default: no logger. */
  readonly logger?: Record<string, unknown>;
  /** Listen on this port instead of an ephemeral one (a client that must find a restarted broker). */
  readonly port?: number;
  /**
   * The `secrets:` config section (grants, postgres engines, lease TTLs …). When given, kekFile
   * defaults to the shared dev KEK and the sweeper interval to an hour (tests call sweepOnce()).
   */
  readonly secrets?: Record<string, unknown>;
  /** The `audit.alerts:` config section (rules, webhook), kept beside the dev audit signing key. */
  readonly alerts?: Record<string, unknown>;
}

export async function startBroker(opts: StartOptions = {}): Promise<TestBroker> {
  const { dir: pkiDir, material } = await devMaterial();
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-broker-'));
  const dataDir = opts.dataDir ?? path.join(dir, 'data');
  const file = path.join(dir, 'tessera.yaml');
  const base = materialConfig(pkiDir, material);
  writeFileSync(
    file,
    stringify({
      ...base,
      ...(opts.alerts !== undefined ? { audit: { ...base.audit, alerts: opts.alerts } } : {}),
      replicaId: 'test-replica',
      listen: { host: '127.0.0.1', port: 0 },
      logLevel: 'silent',
      registration: [
        { selector: { namespace: 'shop', serviceAccount: 'web' }, dnsNames: ['web.shop.svc'], jwtAudiences: ['payments'] },
        { selector: { namespace: 'shop', serviceAccount: '*' }, jwtAudiences: ['inventory'] },
        { selector: { namespace: 'payments', serviceAccount: 'api' }, x509TtlSeconds: 600, jwtAudiences: [] },
      ],
      store: { embedded: { dir: dataDir } },
      // The separate admin CA (dev material) and its dev admin, as `tessera serve` has in dev.
      admin: {
        caBundleFile: material.adminCaCertFile,
        caCertFile: material.adminCaCertFile,
        caKeyFile: material.adminCaKeyFile,
        principals: [{ id: 'spiffe://example.org/admin/dev', roles: ['auditor', 'operator', 'secrets-admin'] }],
      },
      ...(opts.secrets !== undefined ? { secrets: { kekFile: material.kekFile, sweepIntervalSeconds: 3600, ...opts.secrets } } : {}),
      ...opts.config,
    }),
  );
  const config = loadConfig({ file, env: {} });
  const store = opts.store !== undefined ? await opts.store(dataDir) : undefined;
  const broker = await createBroker(config, {
    reloadConfig: () => loadConfig({ file, env: {} }),
    ...(store !== undefined ? { store } : {}),
    ...(opts.clock !== undefined ? { clock: opts.clock } : {}),
  });
  const routes: { method: string; url: string }[] = [];
  const app = await buildServer(broker, { logger: opts.logger ?? false, onRoute: (method, url) => routes.push({ method, url }) });
  await app.listen({ host: '127.0.0.1', port: opts.port ?? 0 });
  const address = app.server.address();
  if (address === null || typeof address !== 'object') throw new Error('no address');
  const url = `https://127.0.0.1:${address.port}`;
  const ca = readFileSync(material.bundleFile, 'utf8');
  return {
    dir,
    url,
    ca,
    broker,
    app,
    material,
    routes,
    token: (t = {}) =>
      mintDevToken({
        keyFile: material.issuerKeyFile,
        namespace: t.namespace ?? 'shop',
        serviceAccount: t.serviceAccount ?? 'web',
        ...(t.ttlSeconds !== undefined ? { ttlSeconds: t.ttlSeconds } : {}),
        ...(t.audience !== undefined ? { audience: t.audience } : {}),
        ...(t.now !== undefined ? { now: t.now } : {}),
      }),
    call: (c) => httpsCall(url, ca, c),
    close: async () => {
      await app.close();
      await broker.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
