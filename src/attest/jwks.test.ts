import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BrokerError } from '../errors.js';
import { JwksKeySource, type JwksSourceOptions } from './jwks.js';

type Jwk = Record<string, unknown>;

let dir: string;
let rsa1: Jwk;
let rsa2: Jwk;
let ec1: Jwk;
let rsa1Public: KeyObject;
let nowMs = 1_900_000_000_000;
const clock = { now: (): number => nowMs };

const rsaJwk = (kid: string, bits = 2048): { jwk: Jwk; publicKey: KeyObject } => {
  const { publicKey } = generateKeyPairSync('rsa', { modulusLength: bits });
  return { jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' }, publicKey };
};
const ecJwk = (kid: string, namedCurve = 'P-256'): Jwk => {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve });
  return { ...publicKey.export({ format: 'jwk' }), kid, use: 'sig' };
};

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-'));
  const r1 = rsaJwk('rsa-1');
  rsa1 = r1.jwk;
  rsa1Public = r1.publicKey;
  rsa2 = rsaJwk('rsa-2').jwk;
  ec1 = ecJwk('ec-1');
});

afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  nowMs = 1_900_000_000_000;
});

function fileSource(keys: unknown[], extra: Partial<JwksSourceOptions> = {}): JwksKeySource {
  const file = path.join(dir, `jwks-${Math.random().toString(36).slice(2)}.json`);
  fs.writeFileSync(file, JSON.stringify({ keys }));
  return new JwksKeySource({ issuer: 'https://issuer.example', jwksFile: file, clock, ...extra });
}

async function rejection(p: Promise<unknown>): Promise<BrokerError> {
  const err: unknown = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BrokerError);
  const be = err as BrokerError;
  expect(be.code).toBe('invalid_token');
  expect(be.status).toBe(401);
  return be;
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

async function server(handler: Handler): Promise<{ url: string; hits: () => number; close: () => Promise<void> }> {
  let hits = 0;
  const srv = http.createServer((req, res) => {
    hits += 1;
    handler(req, res);
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/jwks`,
    hits: () => hits,
    close: () =>
      new Promise<void>((resolve) => {
        srv.closeAllConnections();
        srv.close(() => resolve());
      }),
  };
}

const serveKeys = (keys: () => unknown[], delayMs = 0): Handler => (_req, res) => {
  setTimeout(() => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ keys: keys() }));
  }, delayMs);
};

const urlSource = (url: string, extra: Partial<JwksSourceOptions> = {}): JwksKeySource =>
  new JwksKeySource({ issuer: 'https://issuer.example', jwksUrl: url, allowInsecureHttp: true, clock, ...extra });

describe('JwksKeySource: key filtering', () => {
  it('keeps RSA >= 2048 and EC P-256 keys, imported for one algorithm and verify only', async () => {
    const src = fileSource([rsa1, ec1]);
    const rsa = await src.getKey('RS256', 'rsa-1');
    expect(rsa.type).toBe('public');
    expect(rsa.algorithm).toMatchObject({ name: 'RSASSA-PKCS1-v1_5', hash: { name: 'SHA-256' } });
    expect(rsa.usages).toEqual(['verify']);
    const ec = await src.getKey('ES256', 'ec-1');
    expect(ec.algorithm).toMatchObject({ name: 'ECDSA', namedCurve: 'P-256' });
  });

  it('drops weak, foreign-curve, non-signing and other-algorithm keys', async () => {
    const weak = rsaJwk('weak', 1024).jwk;
    const p384 = ecJwk('p384', 'P-384');
    const { publicKey: ed } = generateKeyPairSync('ed25519');
    const src = fileSource([
      weak,
      p384,
      { ...ed.export({ format: 'jwk' }), kid: 'ed' },
      { ...rsa2, kid: 'enc', use: 'enc' },
      { ...rsa2, kid: 'ps', alg: 'PS256' },
      { ...ec1, kid: 'es384', alg: 'ES384' },
      { ...rsa2, kid: 'ops', key_ops: ['encrypt'] },
      { kty: 'oct', k: 'c2VjcmV0', kid: 'hmac' },
      { ...rsa2, kid: 'broken', n: 'AAAA' },
      'not a key',
      null,
      rsa1,
    ]);
    for (const kid of ['weak', 'enc', 'ps', 'ops', 'hmac', 'broken']) {
      expect((await rejection(src.getKey('RS256', kid))).message).toMatch(/key id is unknown/);
    }
    for (const kid of ['p384', 'ed', 'es384']) {
      expect((await rejection(src.getKey('ES256', kid))).message).toMatch(/key id is unknown/);
    }
    await expect(src.getKey('RS256', 'rsa-1')).resolves.toBeDefined();
  });

  it('never keeps private key material from the JWKS', async () => {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const src = fileSource([{ ...privateKey.export({ format: 'jwk' }), kid: 'priv' }]);
    const key = await src.getKey('RS256', 'priv');
    expect(key.type).toBe('public');
  });

  it('pins each key to its type: an RSA kid never serves ES256 and vice versa', async () => {
    const src = fileSource([rsa1, ec1]);
    expect((await rejection(src.getKey('ES256', 'rsa-1'))).message).toMatch(/does not match the type/);
    expect((await rejection(src.getKey('RS256', 'ec-1'))).message).toMatch(/does not match the type/);
    expect((await rejection(src.resolve({ alg: 'HS256', kid: 'rsa-1' }))).message).toMatch(/not allowed/);
    expect((await rejection(src.resolve({ alg: 'PS256', kid: 'rsa-1' }))).message).toMatch(/not allowed/);
  });

  it('without kid, uses the only key of the type, refuses to guess among several', async () => {
    const one = fileSource([rsa1, ec1]);
    await expect(one.getKey('RS256', undefined)).resolves.toBeDefined();
    const two = fileSource([rsa1, rsa2]);
    expect((await rejection(two.getKey('RS256', undefined))).message).toMatch(/several keys/);
  });

  it('keeps the first of two keys with the same kid', async () => {
    const src = fileSource([rsa1, { ...rsa2, kid: 'rsa-1' }]);
    const key = await src.getKey('RS256', 'rsa-1');
    const { webcrypto } = await import('node:crypto');
    const exported = await webcrypto.subtle.exportKey('jwk', key);
    expect(exported.n).toBe(rsa1Public.export({ format: 'jwk' }).n);
  });

  it('refuses a JWKS file without usable keys, or that is not a JWK Set', () => {
    expect(() => fileSource([rsaJwk('weak', 1024).jwk])).toThrow(/no usable key/);
    const file = path.join(dir, 'not-a-set.json');
    fs.writeFileSync(file, JSON.stringify([rsa1]));
    expect(() => new JwksKeySource({ issuer: 'i', jwksFile: file })).toThrow(/not a JWK Set/);
  });

  it('accepts only https URLs unless allowInsecureHttp, and no credentials', () => {
    const make = (jwksUrl: string, allowInsecureHttp = false) => () =>
      new JwksKeySource({ issuer: 'i', jwksUrl, allowInsecureHttp });
    expect(make('http://127.0.0.1/jwks')).toThrow(/https/);
    expect(make('ftp://example.com/jwks', true)).toThrow(/https/);
    expect(make('not a url')).toThrow(/not a valid URL/);
    expect(make('https://user:pw@example.com/jwks')).toThrow(/credentials/);
    expect(make('https://example.com/jwks')).not.toThrow();
    expect(make('http://127.0.0.1/jwks', true)).not.toThrow();
  });
});

describe('JwksKeySource: fetching', () => {
  it('shares one in-flight fetch between concurrent lookups', async () => {
    const s = await server(serveKeys(() => [rsa1], 100));
    try {
      const src = urlSource(s.url);
      const keys = await Promise.all(Array.from({ length: 25 }, () => src.getKey('RS256', 'rsa-1')));
      expect(keys).toHaveLength(25);
      expect(s.hits()).toBe(1);
      expect(src.fetches).toBe(1);
    } finally {
      await s.close();
    }
  });

  it('concurrent unknown kids share one refetch', async () => {
    let keys = [rsa1];
    const s = await server(serveKeys(() => keys, 50));
    try {
      const src = urlSource(s.url);
      await src.getKey('RS256', 'rsa-1');
      keys = [rsa1, rsa2];
      nowMs += 30_000;
      const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => src.getKey('RS256', i % 2 ? 'rsa-2' : 'nope')));
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(5);
      expect(s.hits()).toBe(2);
    } finally {
      await s.close();
    }
  });

  it('gives up after the fetch timeout', async () => {
    const s = await server(() => {
      /* never answers */
    });
    try {
      const src = urlSource(s.url, { fetchTimeoutMs: 200 });
      const started = performance.now();
      expect((await rejection(src.getKey('RS256', 'rsa-1'))).message).toMatch(/could not be fetched/);
      expect(performance.now() - started).toBeLessThan(2_000);
    } finally {
      await s.close();
    }
  });

  it('refuses a response above the size limit, declared or streamed', async () => {
    const big = JSON.stringify({ keys: [rsa1], pad: 'x'.repeat(4096) });
    const declared = await server((_req, res) => res.end(big));
    const chunked = await server((_req, res) => {
      res.write(big.slice(0, 2000));
      res.end(big.slice(2000));
    });
    try {
      for (const s of [declared, chunked]) {
        const src = urlSource(s.url, { maxResponseBytes: 2048 });
        expect((await rejection(src.getKey('RS256', 'rsa-1'))).message).toMatch(/could not be fetched/);
        expect(s.hits()).toBe(1);
      }
      // The same document under a larger limit is fine.
      await expect(urlSource(declared.url).getKey('RS256', 'rsa-1')).resolves.toBeDefined();
    } finally {
      await declared.close();
      await chunked.close();
    }
  });

  it('does not follow redirects and refuses non-200 responses', async () => {
    const target = await server(serveKeys(() => [rsa1]));
    const redirect = await server((_req, res) => {
      res.statusCode = 302;
      res.setHeader('location', target.url);
      res.end();
    });
    const failing = await server((_req, res) => {
      res.statusCode = 500;
      res.end(JSON.stringify({ keys: [rsa1] }));
    });
    try {
      await rejection(urlSource(redirect.url).getKey('RS256', 'rsa-1'));
      expect(target.hits()).toBe(0);
      await rejection(urlSource(failing.url).getKey('RS256', 'rsa-1'));
    } finally {
      await Promise.all([target.close(), redirect.close(), failing.close()]);
    }
  });

  it('keeps the cached keys when a refetch fails', async () => {
    let up = true;
    const s = await server((req, res) => {
      if (!up) {
        res.statusCode = 503;
        res.end();
        return;
      }
      serveKeys(() => [rsa1])(req, res);
    });
    try {
      const src = urlSource(s.url);
      await src.getKey('RS256', 'rsa-1');
      up = false;
      nowMs += 31_000;
      expect((await rejection(src.getKey('RS256', 'rsa-2'))).message).toMatch(/key id is unknown/);
      expect(s.hits()).toBe(2);
      await expect(src.getKey('RS256', 'rsa-1')).resolves.toBeDefined();
    } finally {
      await s.close();
    }
  });

  it('refetches keys older than the cache max age, so a removed key stops verifying', async () => {
    let keys = [rsa1, rsa2];
    const s = await server(serveKeys(() => keys));
    try {
      const src = urlSource(s.url, { cacheMaxAgeMs: 60_000 });
      await src.getKey('RS256', 'rsa-2');
      keys = [rsa1];
      nowMs += 59_000;
      await expect(src.getKey('RS256', 'rsa-2')).resolves.toBeDefined();
      nowMs += 1_000;
      expect((await rejection(src.getKey('RS256', 'rsa-2'))).message).toMatch(/key id is unknown/);
      expect(s.hits()).toBe(2);
    } finally {
      await s.close();
    }
  });

  it('resolves the key for a JWS header (alg + kid)', async () => {
    const s = await server(serveKeys(() => [rsa1]));
    try {
      const src = urlSource(s.url);
      await expect(src.resolve({ alg: 'RS256', kid: 'rsa-1' })).resolves.toMatchObject({ type: 'public' });
      expect(await src.refresh()).toBe(false); // within the refresh interval of the first fetch
    } finally {
      await s.close();
    }
  });
});
