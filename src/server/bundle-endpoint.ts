/**
 * The `https_spiffe` bundle endpoint (SPIFFE_Federation.md §5.2.2): a listener of its own whose server
 * certificate is an X509-SVID of this trust domain, spiffe://<td>/tessera/bundle-endpoint, minted by the
 * signing CA as of now. It is minted again at half its life and as soon as the signing CA changes
 * (rotation), so it always chains to the bundle the federated side holds. Serves only `GET /` (and
 * `GET /v1/bundle`): the SPIFFE bundle JSON. No client certificate is asked for.
 */
import { generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import type { AuditEntry } from '../audit/entry.js';
import type { CertificateAuthority, X509SvidResult } from '../ca/authority.js';
import type { Clock } from '../clock.js';
import type { SpiffeBundle } from '../spiffe/bundle.js';
import { formatSpiffeId } from '../spiffe/id.js';

export const ENDPOINT_SVID_TTL_MS = 3600_000;
const CHECK_MS = 1000;

export interface BundleEndpointServer {
  readonly url: string;
  readonly spiffeId: string;
  /** Serial of the SVID it presents now, after a renewal that is due (tests). */
  serial(): Promise<string>;
  close(): Promise<void>;
}

/** What the endpoint asks its SVID for: minted by `ca` and recorded in the audit log before it is used. */
export interface EndpointSvidRequest {
  readonly ca: CertificateAuthority;
  readonly spiffeId: string;
  readonly publicKey: KeyObject;
  readonly ttlMs: number;
  readonly now: number;
}

export interface BundleEndpointOptions {
  readonly host: string;
  readonly port: number;
  readonly trustDomain: string;
  /** The signing CA as of now; a change (rotation) mints a new SVID at once. */
  readonly ca: () => CertificateAuthority;
  readonly mint: (req: EndpointSvidRequest) => Promise<X509SvidResult>;
  readonly bundle: () => SpiffeBundle;
  readonly clock: Clock;
}

/**
 * The broker's `mint` for the endpoint: the SVID is signed (a token key awaited), then recorded as an
 * X.509-SVID issuance by the broker itself (actor null) before the listener presents it.
 */
export function auditedEndpointMint(deps: { readonly audit: { append(entry: AuditEntry): Promise<unknown> }; readonly replicaId: string }): BundleEndpointOptions['mint'] {
  return async (req) => {
    const svid = await req.ca.issueX509SvidAsync({ spiffeId: req.spiffeId, dnsNames: [], publicKey: req.publicKey, ttlMs: req.ttlMs, now: req.now });
    await deps.audit.append({
      ts: req.now,
      type: 'x509-svid.issued',
      decision: 'allow',
      actor: null,
      subject: req.spiffeId,
      serial: svid.serialHex,
      ttlMs: req.ttlMs,
      expiresAt: svid.notAfter,
      reason: 'the https_spiffe bundle endpoint’s own SVID (minted by the broker for its listener)',
      requestId: randomUUID(),
      replica: deps.replicaId,
    });
    return svid;
  };
}

export function endpointSpiffeId(trustDomain: string): string {
  return formatSpiffeId(trustDomain, ['tessera', 'bundle-endpoint']);
}

export async function startBundleEndpoint(o: BundleEndpointOptions): Promise<BundleEndpointServer> {
  const spiffeId = endpointSpiffeId(o.trustDomain);
  interface Minted { ca: CertificateAuthority; serial: string; renewAt: number; context: tls.SecureContext; cert: string; key: string }
  const mint = async (): Promise<Minted> => {
    const ca = o.ca();
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const svid = await o.mint({ ca, spiffeId, publicKey, ttlMs: ENDPOINT_SVID_TTL_MS, now: o.clock.now() });
    const key = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    const cert = svid.chainPem.join('');
    return {
      ca,
      serial: svid.serialHex,
      renewAt: svid.notBefore + (svid.notAfter - svid.notBefore) / 2,
      context: tls.createSecureContext({ key, cert, minVersion: 'TLSv1.2' }),
      cert,
      key,
    };
  };
  let current = await mint();
  let served: { bundle: SpiffeBundle; json: string } | undefined;
  const server = https.createServer(
    {
      key: current.key,
      cert: current.cert,
      minVersion: 'TLSv1.2',
      SNICallback: (_name, cb) => cb(null, current.context),
      headersTimeout: 5_000,
      requestTimeout: 10_000,
      maxHeaderSize: 8 * 1024,
      connectionsCheckingInterval: 1_000,
    },
    (req, res) => {
      const path = (req.url ?? '').split('?')[0];
      if (path !== '/' && path !== '/v1/bundle') {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'not_found', message: 'only GET / (the SPIFFE bundle) is served here' }));
        return;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'application/json' }).end(JSON.stringify({ error: 'method_not_allowed', message: 'use GET' }));
        return;
      }
      const bundle = o.bundle();
      if (served?.bundle !== bundle) served = { bundle, json: JSON.stringify(bundle) };
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': `max-age=${bundle.spiffe_refresh_hint}` });
      res.end(req.method === 'HEAD' ? undefined : served.json);
    },
  );
  // One renewal at a time; a failed one is retried at the next check, the current SVID served meanwhile.
  let renewing: Promise<void> | undefined;
  const renew = (): Promise<void> => {
    if (o.ca() === current.ca && o.clock.now() < current.renewAt) return Promise.resolve();
    renewing ??= mint()
      .then((next) => {
        current = next;
        server.setSecureContext({ key: next.key, cert: next.cert });
      })
      .catch((err: unknown) => {
        process.emitWarning(`bundle endpoint: cannot mint its SVID: ${err instanceof Error ? err.message : String(err)}`, { code: 'TESSERA_FEDERATION' });
      })
      .finally(() => {
        renewing = undefined;
      });
    return renewing;
  };
  const timer = setInterval(() => void renew(), CHECK_MS);
  timer.unref();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = o.host.includes(':') ? `[${o.host}]` : o.host;
  return {
    url: `https://${host}:${port}/`,
    spiffeId,
    serial: async () => {
      await renew();
      return current.serial;
    },
    close: async () => {
      clearInterval(timer);
      await renewing;
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
