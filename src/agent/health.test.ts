import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { startHealthServer, type HealthReport, type HealthServer } from './health.js';

function get(port: number, p: string, method = 'GET', host = '127.0.0.1'): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, path: p, method }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

let server: HealthServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

describe('health endpoint', () => {
  it('answers 200 while healthy and 503 when not, with the report as JSON', async () => {
    let report: HealthReport = { healthy: false, body: { status: 'starting' } };
    server = await startHealthServer(0, () => report);
    const starting = await get(server.port, '/healthz');
    expect(starting.status).toBe(503);
    expect(JSON.parse(starting.body)).toEqual({ status: 'starting' });
    expect(starting.headers['cache-control']).toBe('no-store');
    report = { healthy: true, body: { status: 'ok', secondsToExpiry: 42 } };
    const ok = await get(server.port, '/healthz?verbose=1');
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body)).toEqual({ status: 'ok', secondsToExpiry: 42 });
  });

  it('serves nothing else', async () => {
    server = await startHealthServer(0, () => ({ healthy: true, body: {} }));
    expect((await get(server.port, '/')).status).toBe(404);
    expect((await get(server.port, '/healthz/../metrics')).status).toBe(404);
    const post = await get(server.port, '/healthz', 'POST');
    expect(post.status).toBe(405);
    expect(post.headers.allow).toBe('GET, HEAD');
  });

  it('listens on loopback only', async () => {
    server = await startHealthServer(0, () => ({ healthy: true, body: {} }));
    const { networkInterfaces } = await import('node:os');
    const external = Object.values(networkInterfaces())
      .flat()
      .find((i) => i !== undefined && i.family === 'IPv4' && !i.internal);
    expect(server.address).toBe('127.0.0.1');
    // Where the machine has another interface, the port is closed there.
    if (external !== undefined) await expect(get(server.port, '/healthz', 'GET', external.address)).rejects.toThrow(/ECONNREFUSED/);
    expect((await get(server.port, '/healthz')).status).toBe(200);
  });

  it('fails clearly when the port is taken', async () => {
    server = await startHealthServer(0, () => ({ healthy: true, body: {} }));
    await expect(startHealthServer(server.port, () => ({ healthy: true, body: {} }))).rejects.toThrow(/EADDRINUSE/);
  });
});
