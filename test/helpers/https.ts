/** A small HTTPS JSON client for tests: real TLS, optional client certificate, no retries. */
import https from 'node:https';

export interface HttpsCall {
  readonly method?: string;
  readonly path: string;
  readonly body?: unknown;
  /** Raw body (sent as-is); wins over `body`. */
  readonly rawBody?: string | Buffer;
  readonly headers?: Record<string, string>;
  readonly token?: string;
  readonly cert?: string;
  readonly key?: string | undefined;
  readonly agent?: https.Agent;
}

export interface HttpsResult<T = unknown> {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly text: string;
  readonly json: T;
}

export function httpsCall<T = Record<string, unknown>>(baseUrl: string, ca: string, call: HttpsCall): Promise<HttpsResult<T>> {
  const url = new URL(call.path, baseUrl);
  const payload =
    call.rawBody !== undefined ? call.rawBody : call.body !== undefined ? JSON.stringify(call.body) : undefined;
  const headers: Record<string, string> = {
    ...(call.body !== undefined && call.rawBody === undefined ? { 'content-type': 'application/json' } : {}),
    ...(call.token !== undefined ? { authorization: `Bearer ${call.token}` } : {}),
    ...call.headers,
  };
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method: call.method ?? (payload !== undefined ? 'POST' : 'GET'),
        ca,
        headers,
        ...(call.cert !== undefined ? { cert: call.cert, key: call.key } : {}),
        ...(call.agent !== undefined ? { agent: call.agent } : { agent: false }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json: json as T });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}
