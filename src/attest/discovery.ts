/**
 * OpenID Connect discovery for a token issuer (issuers[].discovery): `<issuer>/.well-known/openid-configuration`
 * names the issuer's JWKS (`jwks_uri`), which the key source (jwks.ts) then fetches and parses like any
 * other JWKS. Both documents are fetched over https only, verified against the configured CA (or the
 * system's), with a bounded size and time and no redirects. A document whose `issuer` is not exactly the
 * configured one is refused (OpenID Connect Discovery 1.0 §4.3), so a misrouted or hostile endpoint cannot
 * make us trust another issuer's keys.
 */
import https from 'node:https';
import { isRecord } from '../is-record.js';

/** A discovery document is a few hundred bytes; anything near this is not one. */
export const MAX_DISCOVERY_BYTES = 64 * 1024;
const MAX_URI_LENGTH = 2048;

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** `<issuer>/.well-known/openid-configuration` (a trailing slash of the issuer removed first, §4). */
export function discoveryUrl(issuer: string): URL {
  const url = new URL(`${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`);
  if (url.protocol !== 'https:') throw new Error(`issuer ${issuer}: discovery needs an https:// issuer`);
  if (url.username !== '' || url.password !== '') throw new Error(`issuer ${issuer}: the issuer URL may not carry credentials`);
  return url;
}

/**
 * Parses a discovery document (the raw bytes of the answer) and returns its `jwks_uri`; throws a plain
 * Error saying what is wrong: too large, not UTF-8 JSON, not an object, another issuer, no or a bad
 * jwks_uri (not https, credentials in it).
 */
export function parseDiscoveryDocument(body: Uint8Array, issuer: string): URL {
  if (body.byteLength > MAX_DISCOVERY_BYTES) throw new Error(`the discovery document is larger than ${MAX_DISCOVERY_BYTES} bytes`);
  let document: unknown;
  try {
    document = JSON.parse(strictUtf8.decode(body));
  } catch {
    throw new Error('the discovery document is not UTF-8 JSON');
  }
  if (!isRecord(document)) throw new Error('the discovery document is not a JSON object');
  if (typeof document.issuer !== 'string') throw new Error('the discovery document has no "issuer"');
  if (document.issuer !== issuer) {
    throw new Error(`the discovery document names issuer ${JSON.stringify(document.issuer.slice(0, 200))}, not the configured ${issuer}`);
  }
  const raw = document.jwks_uri;
  if (typeof raw !== 'string' || raw.length === 0) throw new Error('the discovery document has no "jwks_uri"');
  if (raw.length > MAX_URI_LENGTH) throw new Error('the discovery document\'s "jwks_uri" is too long');
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error('the discovery document\'s "jwks_uri" is not a URL');
  }
  if (url.protocol !== 'https:') throw new Error('the discovery document\'s "jwks_uri" is not https://');
  if (url.username !== '' || url.password !== '') throw new Error('the discovery document\'s "jwks_uri" carries credentials');
  url.hash = '';
  return url;
}

export interface HttpsGetOptions {
  /** PEM CA bundle the server's certificate must chain to; undefined: the system's trust store. */
  readonly ca: string | undefined;
  /** The whole exchange, connect to last byte. */
  readonly timeoutMs: number;
  readonly maxBytes: number;
}

/** One GET over https: a 200 with a body of at most maxBytes, or an Error (redirects are not followed). */
export function httpsGet(url: URL, opts: HttpsGetOptions): Promise<Uint8Array> {
  if (url.protocol !== 'https:') return Promise.reject(new Error(`${url.href}: https:// only`));
  return new Promise((resolve, reject) => {
    const req = https.request(url, {
      method: 'GET',
      agent: false,
      ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
      headers: { accept: 'application/json' },
    });
    const deadline = setTimeout(() => req.destroy(new Error(`${url.href} did not answer within ${opts.timeoutMs} ms`)), opts.timeoutMs);
    const fail = (err: Error): void => {
      clearTimeout(deadline);
      reject(err);
    };
    req.on('error', (err) => fail(new Error(`${url.href}: ${err.message}`)));
    req.on('response', (res) => {
      const status = res.statusCode ?? 0;
      if (status !== 200) {
        res.resume();
        req.destroy();
        fail(new Error(`${url.href} answered HTTP ${status}${status >= 300 && status < 400 ? ' (redirects are not followed)' : ''}`));
        return;
      }
      const declared = Number(res.headers['content-length'] ?? '0');
      const tooLarge = (): void => {
        req.destroy();
        fail(new Error(`${url.href} answered more than ${opts.maxBytes} bytes`));
      };
      if (declared > opts.maxBytes) return tooLarge();
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > opts.maxBytes) tooLarge();
        else chunks.push(chunk);
      });
      res.on('end', () => {
        clearTimeout(deadline);
        if (size <= opts.maxBytes) resolve(Buffer.concat(chunks));
      });
      res.on('error', (err) => fail(new Error(`${url.href}: ${err.message}`)));
    });
    req.end();
  });
}

/** The issuer's JWKS document via discovery (parsed JSON, for the key source to validate). */
export async function fetchJwksByDiscovery(issuer: string, opts: HttpsGetOptions): Promise<{ readonly jwksUri: URL; readonly document: unknown }> {
  const jwksUri = parseDiscoveryDocument(await httpsGet(discoveryUrl(issuer), { ...opts, maxBytes: Math.min(opts.maxBytes, MAX_DISCOVERY_BYTES) }), issuer);
  const body = await httpsGet(jwksUri, opts);
  let document: unknown;
  try {
    document = JSON.parse(strictUtf8.decode(body));
  } catch {
    throw new Error(`the JWKS at ${jwksUri.href} is not UTF-8 JSON`);
  }
  return { jwksUri, document };
}
