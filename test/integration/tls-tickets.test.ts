/**
 * TLS session tickets shared by replicas on one Redis (server/ticket-keys.ts): a session made with
 * replica A resumes on replica B (no full handshake) and the caller's SVID still attests there; a
 * session from another deployment (another Redis prefix: another key) is not resumed — a full handshake,
 * and the request still succeeds. Checks at the moment of use on resumed sessions (expiry, revocation)
 * are in test/security/mtls-validity.test.ts.
 */
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../../src/store/redis.js';
import { type ClientCert, workloadSvid } from '../helpers/admin.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { SHARED_REDIS_URL, deletePrefix, redisRequiredUnderCi, sharedRedis, uniquePrefix } from '../helpers/redis.js';

const redis = await sharedRedis();

/** One JWT-SVID request over a fresh mTLS connection, offering `session`; the ticket the server sent back. */
function renewOverFreshConnection(url: string, ca: string, c: ClientCert, session?: Buffer): Promise<{ status: number; reused: boolean; session?: Buffer }> {
  const port = Number(new URL(url).port);
  const body = JSON.stringify({ audience: ['payments'] });
  const request = `POST /v1/svid/jwt HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`;
  return new Promise((resolve, reject) => {
    let next: Buffer | undefined;
    const s = tls.connect({ host: '127.0.0.1', port, ca, cert: c.cert, key: c.key, servername: 'localhost', ...(session ? { session } : {}) }, () => s.write(request));
    s.on('session', (x: Buffer) => (next = x));
    let text = '';
    s.on('data', (d: Buffer) => (text += d.toString()));
    s.on('end', () => resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), reused: s.isSessionReused(), ...(next ? { session: next } : {}) }));
    s.on('error', reject);
  });
}

describe.skipIf(!redis.ok)('TLS session tickets shared through Redis', () => {
  const prefix = uniquePrefix('tickets');
  const other = uniquePrefix('tickets-other');
  let a: TestBroker;
  let b: TestBroker;
  let c: TestBroker;
  beforeAll(async () => {
    a = await startBroker({ store: () => RedisStore.connect({ url: SHARED_REDIS_URL, prefix }), config: { replicaId: 'replica-a' } });
    b = await startBroker({ store: () => RedisStore.connect({ url: SHARED_REDIS_URL, prefix }), config: { replicaId: 'replica-b' } });
    c = await startBroker({ store: () => RedisStore.connect({ url: SHARED_REDIS_URL, prefix: other }), config: { replicaId: 'elsewhere' } });
  });
  afterAll(async () => {
    for (const x of [a, b, c]) await x?.close();
    await deletePrefix(prefix);
    await deletePrefix(other);
  });

  it('a session made with replica A resumes on replica B; another deployment falls back to a full handshake', async () => {
    const svid = await workloadSvid(a);
    const first = await renewOverFreshConnection(a.url, a.ca, svid);
    expect([first.status, first.reused]).toEqual([200, false]);
    expect(first.session, 'replica A sent a session ticket').toBeDefined();
    const onB = await renewOverFreshConnection(b.url, b.ca, svid, first.session);
    expect([onB.status, onB.reused]).toEqual([200, true]);
    const elsewhere = await renewOverFreshConnection(c.url, c.ca, svid, first.session);
    expect([elsewhere.status, elsewhere.reused]).toEqual([200, false]);
  });

  it('the key is stored in the Store, the same for both replicas, 48 bytes, with an expiry', async () => {
    const keys = await a.broker.store.kvList('tls-ticket');
    expect(keys).toHaveLength(1);
    expect(Buffer.from(keys[0]?.value ?? '', 'base64')).toHaveLength(48);
    expect(await c.broker.store.kvList('tls-ticket')).not.toEqual(keys);
  });
});

describe('Redis availability for the ticket tests', () => {
  redisRequiredUnderCi(redis);
});
