/**
 * The bundle endpoint client (SPIFFE_Federation.md §5): one GET over https, authenticated per profile,
 *   - https_web:    the server's certificate verified as WebPKI (system CAs, or `caPem`) for the URL's host;
 *   - https_spiffe: the server presents an X509-SVID that chains to the CURRENT bundle of the foreign trust
 *                   domain (the bootstrap bundle before the first fetch) and carries exactly `endpointSpiffeId`.
 * Bounded: https only, no redirects (a 3xx is a failure), a total deadline, a size cap on the body. The
 * body is parsed strictly (bundle-parse.ts). Every failure is a BundleError with the reason.
 */
import type { X509Certificate } from 'node:crypto';
import https from 'node:https';
import type { PeerCertificate } from 'node:tls';
import { chainOf } from '../sdk/rotating-agent.js';
import { verifySvid } from '../sdk/x509.js';
import { BundleError, MAX_BUNDLE_BYTES, parseTrustBundle, type TrustBundle } from './bundle-parse.js';

export type BundleEndpointProfile = 'https_web' | 'https_spiffe';

export interface FetchBundleOptions {
  readonly url: string;
  readonly trustDomain: string;
  readonly profile: BundleEndpointProfile;
  /** https_spiffe: the SPIFFE ID the endpoint's SVID must carry. */
  readonly endpointSpiffeId?: string | undefined;
  /** https_spiffe: the foreign trust domain's current X.509 authorities. */
  readonly currentRoots?: readonly X509Certificate[];
  /** https_web: trust these roots (PEM) instead of the system's. */
  readonly caPem?: string | undefined;
  readonly timeoutMs: number;
  readonly maxBytes?: number;
  readonly now?: () => number;
}

export async function fetchTrustBundle(o: FetchBundleOptions): Promise<TrustBundle> {
  let url: URL;
  try {
    url = new URL(o.url);
  } catch {
    throw new BundleError(`bundle endpoint URL ${JSON.stringify(o.url)} does not parse`);
  }
  if (url.protocol !== 'https:') throw new BundleError('bundle endpoint URL must be https://');
  if (url.username !== '' || url.password !== '') throw new BundleError('bundle endpoint URL may not carry credentials');
  const maxBytes = o.maxBytes ?? MAX_BUNDLE_BYTES;
  let tlsOptions: https.RequestOptions;
  if (o.profile === 'https_spiffe') {
    const roots = o.currentRoots ?? [];
    const expected = o.endpointSpiffeId;
    if (expected === undefined) throw new BundleError('https_spiffe needs endpointSpiffeId');
    if (roots.length === 0) throw new BundleError(`no current X.509 bundle of ${o.trustDomain} to authenticate its endpoint with (give a bootstrap bundle)`);
    tlsOptions = {
      // The chain is verified below against the foreign trust domain's bundle only (not the system CAs).
      ca: roots.map((r) => r.toString()),
      rejectUnauthorized: true,
      checkServerIdentity: (_host: string, cert: PeerCertificate): Error | undefined => {
        try {
          const [leaf, ...intermediates] = chainOf(cert);
          if (leaf === undefined) return new BundleError('the endpoint presented no certificate');
          verifySvid({ leaf, intermediates, roots, allowed: new Set([expected]), ...(o.now !== undefined ? { now: o.now() } : {}) });
          return undefined;
        } catch (err) {
          return new BundleError(`the endpoint's SVID does not authenticate as ${expected}: ${err instanceof Error ? err.message : String(err)}`);
        }
      },
    };
  } else {
    tlsOptions = { rejectUnauthorized: true, ...(o.caPem !== undefined ? { ca: o.caPem } : {}) };
  }
  const body = await new Promise<Buffer>((resolve, reject) => {
    const req = https.request(
      url,
      { method: 'GET', headers: { accept: 'application/json' }, agent: false, minVersion: 'TLSv1.2', ...tlsOptions, timeout: o.timeoutMs },
      (res) => {
        const status = res.statusCode ?? 0;
        if (status >= 300 && status < 400) {
          res.resume();
          reject(new BundleError(`the bundle endpoint answered ${status} (a redirect): redirects are refused`));
          return;
        }
        if (status !== 200) {
          res.resume();
          reject(new BundleError(`the bundle endpoint answered ${status}`));
          return;
        }
        const declared = Number(res.headers['content-length'] ?? '0');
        if (declared > maxBytes) {
          res.destroy();
          reject(new BundleError(`the bundle is larger than ${maxBytes} bytes`));
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > maxBytes) {
            res.destroy();
            reject(new BundleError(`the bundle is larger than ${maxBytes} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => resolve(Buffer.concat(chunks)));
        res.on('error', (err) => reject(new BundleError(`reading the bundle: ${err.message}`)));
      },
    );
    const deadline = setTimeout(() => req.destroy(new BundleError(`the bundle endpoint did not answer within ${o.timeoutMs} ms`)), o.timeoutMs);
    req.on('close', () => clearTimeout(deadline));
    req.on('timeout', () => req.destroy(new BundleError(`the bundle endpoint did not answer within ${o.timeoutMs} ms`)));
    req.on('error', (err) => reject(err instanceof BundleError ? err : new BundleError(`cannot fetch the bundle: ${err.message}`)));
    req.end();
  });
  return parseTrustBundle(body, o.trustDomain);
}
