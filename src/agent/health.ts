/**
 * GET /healthz on a loopback port: 200 while the agent holds a valid X.509-SVID, 503 before the first
 * one and after expiry, with the time to expiry in the body. Nothing secret is ever in the body.
 */
import http from 'node:http';

export interface HealthReport {
  readonly healthy: boolean;
  readonly body: Record<string, unknown>;
}

export interface HealthServer {
  readonly port: number;
  /** The address actually bound (loopback). */
  readonly address: string;
  close(): Promise<void>;
}

export async function startHealthServer(port: number, report: () => HealthReport, host = '127.0.0.1'): Promise<HealthServer> {
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '').split('?')[0];
    res.setHeader('content-type', 'application/json');
    res.setHeader('cache-control', 'no-store');
    if (url !== '/healthz') {
      res.statusCode = 404;
      res.end(JSON.stringify({ error: 'not_found' }));
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.statusCode = 405;
      res.setHeader('allow', 'GET, HEAD');
      res.end(JSON.stringify({ error: 'method_not_allowed' }));
      return;
    }
    const r = report();
    res.statusCode = r.healthy ? 200 : 503;
    res.end(req.method === 'HEAD' ? undefined : JSON.stringify(r.body));
  });
  server.requestTimeout = 5_000;
  server.headersTimeout = 5_000;
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  return {
    port: typeof address === 'object' && address !== null ? address.port : port,
    address: typeof address === 'object' && address !== null ? address.address : host,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
