/**
 * Hostile HTTP against a live broker: oversized and deeply nested bodies, prototype-poisoning JSON,
 * wrong content types, oversized and malformed header blocks, and slow clients. Every answer is a
 * clean 4xx `{error, message}` (or a closed connection for a client that never finishes), never a
 * 5xx, a crash or a hang, and nothing is issued.
 */
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { allowCount, expectError } from './helpers.js';

let b: TestBroker;
let token: string;
let port: number;
let issuedBefore: number;
beforeAll(async () => {
  b = await startBroker();
  token = await b.token();
  port = Number(new URL(b.url).port);
  issuedBefore = await allowCount(b);
});
afterAll(async () => {
  await b?.close();
});

const json = { 'content-type': 'application/json' };

describe('bodies', () => {
  it('oversized bodies → 413, whether announced or not', async () => {
    expectError(await b.call({ path: '/v1/svid/x509', token, rawBody: `{"csr":"${'A'.repeat(70_000)}"}`, headers: json }), 413, 'payload_too_large');
    expectError(await b.call({ path: '/v1/svid/x509', token, rawBody: Buffer.alloc(1024 * 1024, 0x20), headers: json }), 413, 'payload_too_large');
    // Content-Length over the limit is refused before the body is read.
    const announced = await rawRequest(`POST /v1/svid/x509 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{}`);
    expect(announced.status).toBe(413);
    expect(JSON.parse(announced.body)).toMatchObject({ error: 'payload_too_large' });
  });

  it('deep JSON → 400, never a stack overflow', async () => {
    // As deep as the 64 KiB body limit allows.
    const bodies = [
      '['.repeat(32_000) + ']'.repeat(32_000),
      '{"a":'.repeat(10_000) + '1' + '}'.repeat(10_000),
      `{"csr":${'['.repeat(32_000)}${']'.repeat(32_000)}}`,
      `{"audience":[${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}]}`,
      '['.repeat(60_000), // unterminated
    ];
    for (const rawBody of bodies) expect(rawBody.length).toBeLessThan(65_536);
    for (const rawBody of bodies) {
      for (const path of ['/v1/svid/x509', '/v1/svid/jwt']) {
        const res = await b.call({ path, token, rawBody, headers: json });
        expect(res.status, res.text.slice(0, 200)).toBe(400);
        expect(['bad_request', 'invalid_json']).toContain((res.json as { error: string }).error);
      }
    }
  });

  it('prototype poisoning and duplicate keys → 400 or ignored, never applied', async () => {
    for (const rawBody of ['{"__proto__":{"keyType":"ec-p256"}}', '{"constructor":{"prototype":{"keyType":"ec-p256"}}}', '{"keyType":"ec-p256","__proto__":{"admin":true}}']) {
      const res = await b.call({ path: '/v1/svid/x509', token, rawBody, headers: json });
      expect(res.status, res.text).toBe(400);
    }
    expect(({} as Record<string, unknown>).admin).toBeUndefined();
    expect(({} as Record<string, unknown>).keyType).toBeUndefined();
  });

  it('bodies of the wrong JSON type, and empty or non-UTF-8 ones', async () => {
    for (const rawBody of ['null', '"x"', '42', 'true', '[]', '', '\xff\xfe{', '{"keyType":"ec-p256"}garbage', '\u0000']) {
      const res = await b.call({ path: '/v1/svid/x509', token, rawBody, headers: json });
      expect(res.status, `${JSON.stringify(rawBody)} → ${res.text}`).toBe(400);
      expect(['bad_request', 'invalid_json']).toContain((res.json as { error: string }).error);
    }
  });
});

describe('content types', () => {
  it('anything but JSON → 415', async () => {
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/xml', 'application/jsonx', 'application/octet-stream']) {
      const res = await b.call({ path: '/v1/svid/x509', token, rawBody: '{"keyType":"ec-p256"}', headers: { 'content-type': type } });
      expect(res.status, `${type}: ${res.text}`).toBe(415);
      expectError(res, 415, 'unsupported_media_type');
    }
  });

  it('a body with no content type at all → 415', async () => {
    const res = await rawRequest(`POST /v1/svid/x509 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Length: 21\r\n\r\n{"keyType":"ec-p256"}`);
    expect(res.status).toBe(415);
    expect(JSON.parse(res.body)).toMatchObject({ error: 'unsupported_media_type' });
  });
});

describe('header blocks', () => {
  it('too many or too large headers → 431 in JSON', async () => {
    const many: Record<string, string> = {};
    for (let i = 0; i < 300; i++) many[`x-h${i}`] = 'v'.repeat(100);
    expectError(await b.call({ path: '/v1/svid/x509', token, body: { keyType: 'ec-p256' }, headers: many }), 431, 'header_too_large');
    expectError(await b.call({ path: '/healthz', headers: { cookie: 'c'.repeat(40_000) } }), 431, 'header_too_large');
  });

  it('malformed requests and smuggling attempts → 400 in JSON', async () => {
    const cases = [
      'GARBAGE\r\n\r\n',
      'POST /v1/svid/x509 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      'POST /v1/svid/x509 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}',
      'GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n',
      'GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\u0000b\r\n\r\n',
    ];
    for (const raw of cases) {
      const res = await rawRequest(raw);
      expect(res.status, JSON.stringify(raw)).toBe(400);
      expect(JSON.parse(res.body)).toMatchObject({ error: 'bad_request' });
    }
  });
});

describe('slow clients are cut off by the server’s timeouts', () => {
  it('headers one byte per second (slowloris), a body that never ends, a handshake that never starts', async () => {
    const started = Date.now();
    const [headers, body, handshake] = await Promise.all([
      trickle('GET /healthz HTTP/1.1\r\nHost: x\r\n', 'X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 20_000),
      trickle(`POST /v1/svid/x509 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{`, ' '.repeat(100), 20_000),
      silentTcp(20_000),
    ]);
    // headersTimeout 5 s (checked every second): a 408 in JSON, well before 35 s.
    expect(headers.closedAfterMs).toBeGreaterThan(4_000);
    expect(headers.closedAfterMs).toBeLessThan(8_000);
    expect(headers.response).toMatch(/^HTTP\/1\.1 408 /);
    expect(JSON.parse(headers.response.split('\r\n\r\n')[1] ?? '')).toMatchObject({ error: 'request_timeout' });
    // requestTimeout 10 s for the whole request.
    expect(body.closedAfterMs).toBeGreaterThan(9_000);
    expect(body.closedAfterMs).toBeLessThan(13_000);
    expect(body.response === '' || /^HTTP\/1\.1 408 /.test(body.response), body.response).toBe(true);
    // TLS handshakeTimeout 10 s.
    expect(handshake).toBeGreaterThan(9_000);
    expect(handshake).toBeLessThan(13_000);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect((await b.call({ path: '/healthz' })).status).toBe(200);
  }, 30_000);
});

describe('after all of it', () => {
  it('nothing was issued and the broker still serves', async () => {
    expect(await allowCount(b)).toBe(issuedBefore);
    expect((await b.call({ path: '/v1/svid/x509', token, body: { keyType: 'ec-p256' } })).status).toBe(200);
  });
});

/** Sends raw bytes over TLS and reads until the server closes or answers; parses status and body. */
function rawRequest(raw: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ port, host: '127.0.0.1', ca: b.ca, servername: 'localhost', rejectUnauthorized: false });
    let buf = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no answer to ${JSON.stringify(raw.slice(0, 60))}: ${buf}`));
    }, 15_000);
    const done = (): void => {
      clearTimeout(timer);
      const [head = '', body = ''] = buf.split('\r\n\r\n');
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0), body });
      s.destroy();
    };
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      const m = /content-length: (\d+)/i.exec(buf);
      const sep = buf.indexOf('\r\n\r\n');
      if (m && sep !== -1 && buf.length - sep - 4 >= Number(m[1])) done();
    });
    s.on('close', done);
    s.on('error', () => undefined);
    s.on('secureConnect', () => s.write(raw, 'latin1'));
  });
}

/** Sends `head`, then one byte of `drip` per second; resolves when the server closes the connection. */
function trickle(head: string, drip: string, giveUpMs: number): Promise<{ closedAfterMs: number; response: string }> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false });
    let response = '';
    let started = 0;
    let i = 0;
    let timer: NodeJS.Timeout | undefined;
    const giveUp = setTimeout(() => {
      clearInterval(timer);
      s.destroy();
      reject(new Error(`server kept a slow client for ${giveUpMs} ms`));
    }, giveUpMs);
    s.on('secureConnect', () => {
      started = Date.now();
      s.write(head);
      timer = setInterval(() => {
        if (!s.destroyed && i < drip.length) s.write(drip[i++] as string);
      }, 1_000);
    });
    s.on('data', (d: Buffer) => (response += d.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearInterval(timer);
      clearTimeout(giveUp);
      resolve({ closedAfterMs: Date.now() - started, response });
    });
  });
}

/** Opens a TCP connection and never starts TLS; resolves with how long the server kept it. */
function silentTcp(giveUpMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    const started = Date.now();
    const giveUp = setTimeout(() => {
      s.destroy();
      reject(new Error(`server kept a silent connection for ${giveUpMs} ms`));
    }, giveUpMs);
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(giveUp);
      resolve(Date.now() - started);
    });
    s.resume();
  });
}
