/**
 * HTTPS calls to the broker: one connection per call (renewals are rare), the broker verified
 * against the current trust bundle, an optional client SVID for mTLS, a hard timeout and a size limit.
 * Every failure becomes a TesseraError.
 */
import https from 'node:https';
import { TesseraError } from './errors.js';

export const MAX_RESPONSE_BYTES = 1024 * 1024;

export interface BrokerCall {
  readonly method: 'GET' | 'POST';
  readonly path: string;
  readonly body?: unknown;
  /** Service-account token, sent as `Authorization: Bearer`. */
  readonly token?: string;
  /** Client SVID (chain PEM) and its key, for mTLS. */
  readonly cert?: string;
  readonly key?: string;
}

export interface BrokerEndpoint {
  readonly url: URL;
  /** PEM roots the broker's certificate must chain to. */
  ca(): string;
  readonly timeoutMs: number;
}

/** Checks a broker URL: https only, no credentials, query or fragment. */
export function brokerUrl(input: string | URL): URL {
  let url: URL;
  try {
    url = new URL(String(input));
  } catch {
    throw new TypeError(`broker URL ${JSON.stringify(String(input))} is not a URL`);
  }
  if (url.protocol !== 'https:') throw new TypeError('broker URL must use https://');
  if (url.username !== '' || url.password !== '') throw new TypeError('broker URL must not carry credentials');
  if (url.search !== '' || url.hash !== '') throw new TypeError('broker URL must not have a query or fragment');
  return url;
}

export function callBroker<T>(endpoint: BrokerEndpoint, call: BrokerCall): Promise<T> {
  const base = endpoint.url;
  const target = new URL(base.pathname.replace(/\/+$/, '') + call.path, base);
  const payload = call.body === undefined ? undefined : JSON.stringify(call.body);
  const headers: Record<string, string> = { accept: 'application/json' };
  if (payload !== undefined) headers['content-type'] = 'application/json';
  if (call.token !== undefined) headers.authorization = `Bearer ${call.token}`;
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const fail = (err: TesseraError): void => {
      if (settled) return;
      settled = true;
      reject(err);
    };
    const req = https.request(
      target,
      {
        method: call.method,
        headers,
        ca: endpoint.ca(),
        ...(call.cert !== undefined && call.key !== undefined ? { cert: call.cert, key: call.key } : {}),
        agent: false,
        minVersion: 'TLSv1.2',
        timeout: endpoint.timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy();
            fail(new TesseraError('bad_response', `broker response is larger than ${MAX_RESPONSE_BYTES} bytes`));
            return;
          }
          chunks.push(chunk);
        });
        res.on('error', (err) => fail(new TesseraError('unavailable', `broker response failed: ${err.message}`, { cause: err })));
        res.on('end', () => {
          if (settled) return;
          const status = res.statusCode ?? 0;
          let json: unknown;
          try {
            json = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            json = undefined;
          }
          if (status === 200 && json !== undefined) {
            settled = true;
            resolve(json as T);
            return;
          }
          const body = (typeof json === 'object' && json !== null ? json : {}) as { error?: unknown; message?: unknown };
          const code = typeof body.error === 'string' ? body.error : status === 200 ? 'bad_response' : `http_${status}`;
          const message = typeof body.message === 'string' ? body.message : `broker answered HTTP ${status}`;
          fail(new TesseraError(code, `${call.method} ${call.path}: ${message}`, { status }));
        });
      },
    );
    req.on('timeout', () => {
      req.destroy();
      fail(new TesseraError('unavailable', `${call.method} ${call.path}: no answer from ${base.host} within ${endpoint.timeoutMs} ms`));
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      fail(new TesseraError('unavailable', `${call.method} ${call.path}: cannot reach ${base.host}: ${err.code ?? err.message}`, { cause: err }));
    });
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}
