/**
 * The TokenReview attestor against a local HTTPS server that answers as the Kubernetes API does
 * (authentication.k8s.io/v1 TokenReview, v1 Pod, v1 Status for a missing pod): authenticated,
 * unauthenticated, deleted pod, API server down, slow, oversized answer; the per-token cache; the
 * opt-in JWKS-only fallback; and, through a broker, a registration entry with a pod-label selector.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTokenAttestor } from '../../src/attest/attestor.js';
import type { Config } from '../../src/config/config.js';
import { DEV_ISSUER, mintDevToken } from '../../src/dev/token-issuer.js';
import { BrokerError } from '../../src/errors.js';
import { mintAdminCert } from '../helpers/admin.js';
import { devMaterial, startBroker } from '../helpers/broker.js';
import { TestClock } from '../helpers/clock.js';
import { sendJson } from '../helpers/json-response.js';

type Mode = 'ok' | 'unauthenticated' | 'slow' | 'oversized';
interface Pod {
  uid: string;
  labels: Record<string, string>;
}

const BROKER_API_TOKEN = 'broker-sa-token';
let mode: Mode = 'ok';
const pods = new Map<string, Pod>(); // "ns/name"
let requests = 0;
let server: https.Server;
let apiServer: string;
let pki: { dir: string; caFile: string; tokenFile: string; jwksFile: string; issuerKey: string };

function payloadOf(token: string): { 'kubernetes.io': { namespace: string; serviceaccount: { name: string }; pod: { name: string; uid: string } } } {
  return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as never;
}

beforeAll(async () => {
  const { dir, material } = await devMaterial();
  const tokenFile = path.join(dir, 'broker-api-token');
  writeFileSync(tokenFile, `${BROKER_API_TOKEN}\n`);
  pki = { dir, caFile: material.bundleFile, tokenFile, jwksFile: material.issuerJwksFile, issuerKey: material.issuerKeyFile };
  server = https.createServer({ cert: readFileSync(path.join(dir, 'server.pem')), key: readFileSync(path.join(dir, 'server.key')) }, (req, res) => {
    requests += 1;
    if (req.headers.authorization !== `Bearer ${BROKER_API_TOKEN}`) return sendJson(res, 401, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: 'Unauthorized', reason: 'Unauthorized', code: 401 });
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (mode === 'slow') return void setTimeout(() => sendJson(res, 500, {}), 3000);
      if (mode === 'oversized') return sendJson(res, 200, { pad: 'x'.repeat(2 * 1024 * 1024) });
      if (req.method === 'POST' && req.url === '/apis/authentication.k8s.io/v1/tokenreviews') {
        const review = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { apiVersion: string; kind: string; spec: { token: string; audiences: string[] } };
        if (review.apiVersion !== 'authentication.k8s.io/v1' || review.kind !== 'TokenReview') return sendJson(res, 400, { kind: 'Status', code: 400 });
        const k8s = payloadOf(review.spec.token)['kubernetes.io'];
        const pod = pods.get(`${k8s.namespace}/${k8s.pod.name}`);
        const authenticated = mode === 'ok' && pod !== undefined && pod.uid === k8s.pod.uid;
        return sendJson(res, 201, {
          kind: 'TokenReview',
          apiVersion: 'authentication.k8s.io/v1',
          metadata: { creationTimestamp: null },
          spec: review.spec,
          status: authenticated
            ? {
                authenticated: true,
                user: {
                  username: `system:serviceaccount:${k8s.namespace}:${k8s.serviceaccount.name}`,
                  uid: randomUUID(),
                  groups: ['system:serviceaccounts', `system:serviceaccounts:${k8s.namespace}`, 'system:authenticated'],
                  extra: { 'authentication.kubernetes.io/pod-name': [k8s.pod.name], 'authentication.kubernetes.io/pod-uid': [k8s.pod.uid] },
                },
                audiences: review.spec.audiences,
              }
            : { user: {}, error: '[invalid bearer token, service account token has been invalidated]' },
        });
      }
      const m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/.exec(req.url ?? '');
      if (req.method === 'GET' && m) {
        const [ns, name] = [m[1] as string, m[2] as string];
        const pod = pods.get(`${ns}/${name}`);
        if (pod === undefined) {
          return sendJson(res, 404, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `pods "${name}" not found`, reason: 'NotFound', details: { name, kind: 'pods' }, code: 404 });
        }
        return sendJson(res, 200, {
          kind: 'Pod',
          apiVersion: 'v1',
          metadata: { name, namespace: ns, uid: pod.uid, labels: pod.labels, annotations: { 'example.com/team': 'payments' }, ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: `${name}-rs`, uid: randomUUID(), controller: true }] },
          spec: { serviceAccountName: 'web', nodeName: 'node-1', containers: [{ name: 'web', image: 'registry.example/shop/web:1.2' }], initContainers: [{ name: 'agent', image: 'registry.example/tessera:0.1' }] },
          status: { phase: 'Running' },
        });
      }
      return sendJson(res, 404, { kind: 'Status', code: 404 });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  apiServer = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

function config(kubernetes: Record<string, unknown> = {}): Pick<Config, 'trustDomain' | 'issuers'> {
  return {
    trustDomain: 'example.org',
    issuers: [
      {
        issuer: DEV_ISSUER,
        jwksFile: pki.jwksFile,
        allowInsecureHttp: false,
        audiences: ['tessera'],
        maxLifetimeSeconds: 86_400,
        requirePodBinding: false,
        kubernetes: { apiServer, caFile: pki.caFile, tokenFile: pki.tokenFile, cacheSeconds: 60, jwksFallback: false, timeoutMs: 1000, ...kubernetes },
      },
    ],
  };
}

async function podToken(name: string, labels: Record<string, string> = { app: 'web' }): Promise<{ token: string; uid: string }> {
  const token = await mintDevToken({ keyFile: pki.issuerKey, namespace: 'shop', serviceAccount: 'web', podName: name });
  const uid = payloadOf(token)['kubernetes.io'].pod.uid;
  pods.set(`shop/${name}`, { uid, labels });
  return { token, uid };
}

async function refusal(p: Promise<unknown>): Promise<BrokerError> {
  const err = await p.then(() => new Error('expected a refusal'), (e: unknown) => e);
  expect(err).toBeInstanceOf(BrokerError);
  return err as BrokerError;
}

describe('TokenReview attestor', () => {
  it('authenticated: the identity carries the pod labels, annotations, node and images as selectors; cached per token', async () => {
    mode = 'ok';
    const clock = new TestClock();
    const attestor = createTokenAttestor(config(), clock);
    const { token, uid } = await podToken('web-1');
    const before = requests;
    const identity = await attestor.attest(token);
    expect(identity.selectors).toEqual([
      'k8s:ns:shop',
      'k8s:sa:web',
      'k8s:pod-name:web-1',
      `k8s:pod-uid:${uid}`,
      'k8s:pod-label:app:web',
      'k8s:pod-annotation:example.com/team:payments',
      'k8s:node-name:node-1',
      'k8s:container-image:registry.example/shop/web:1.2',
      'k8s:container-image:registry.example/tessera:0.1',
    ]);
    expect(requests - before).toBe(2); // one TokenReview, one pod GET
    await attestor.attest(token);
    expect(requests - before).toBe(2); // cached
    clock.advance(61_000);
    await attestor.attest(token);
    expect(requests - before).toBe(4); // the cache holds at most cacheSeconds
  });

  it('unauthenticated, or a deleted pod: 401 at once, not at token expiry', async () => {
    mode = 'ok';
    const attestor = createTokenAttestor(config(), new TestClock());
    const { token } = await podToken('web-2');
    await attestor.attest(token);
    const fresh = createTokenAttestor(config(), new TestClock());
    pods.delete('shop/web-2');
    const gone = await refusal(fresh.attest(token));
    expect([gone.code, gone.status]).toEqual(['invalid_token', 401]);
    expect(gone.message).toMatch(/does not accept this token.*invalidated/);

    // The API server refuses a token (say, its service account was deleted).
    const { token: t3 } = await podToken('web-3');
    mode = 'unauthenticated';
    expect((await refusal(fresh.attest(t3))).code).toBe('invalid_token');
    mode = 'ok';
    const { token: t4, uid } = await podToken('web-4');
    pods.set('shop/web-4', { uid: randomUUID(), labels: {} }); // replaced by another pod of the same name
    const replaced = await refusal(fresh.attest(t4));
    expect([replaced.code, uid === pods.get('shop/web-4')?.uid]).toEqual(['invalid_token', false]);
  });

  it('API server down, slow or oversized: 503 attestation_unavailable (fail closed), unless jwksFallback', async () => {
    const { token } = await podToken('web-5');
    const down = createTokenAttestor(config({ apiServer: 'https://127.0.0.1:1' }), new TestClock());
    const e1 = await refusal(down.attest(token));
    expect([e1.code, e1.status]).toEqual(['attestation_unavailable', 503]);

    mode = 'slow';
    const started = Date.now();
    const e2 = await refusal(createTokenAttestor(config({ timeoutMs: 300 }), new TestClock()).attest(token));
    expect([e2.code, e2.message]).toEqual(['attestation_unavailable', expect.stringMatching(/did not answer within 300 ms/)]);
    expect(Date.now() - started).toBeLessThan(2500);

    mode = 'oversized';
    const e3 = await refusal(createTokenAttestor(config(), new TestClock()).attest(token));
    expect([e3.code, e3.message]).toEqual(['attestation_unavailable', expect.stringMatching(/too large/)]);

    const fallback = await createTokenAttestor(config({ jwksFallback: true }), new TestClock()).attest(token);
    expect(fallback.selectors).toEqual(['k8s:ns:shop', 'k8s:sa:web', 'k8s:pod-name:web-5', expect.stringMatching(/^k8s:pod-uid:/)]);
    mode = 'ok';

    // A token whose signature fails never reaches the API server.
    const before = requests;
    const forged = `${token.slice(0, -4)}AAAA`;
    expect((await refusal(createTokenAttestor(config(), new TestClock()).attest(forged))).code).toBe('invalid_token');
    expect(requests).toBe(before);
  });

  it('through a broker: an entry with a pod-label selector matches the labelled pod only; a deleted pod gets nothing', async () => {
    mode = 'ok';
    const { material } = await devMaterial();
    const b = await startBroker({ config: { issuers: config().issuers } });
    try {
      const admin = mintAdminCert(material, 'spiffe://example.org/admin/dev');
      const created = await b.call({
        path: '/v1/admin/entries',
        body: { spiffeId: 'spiffe://example.org/shop/web-canary', selectors: ['k8s:ns:shop', 'k8s:sa:web', 'k8s:pod-label:track:canary'] },
        cert: admin.cert,
        key: admin.key,
      });
      expect(created.status, created.text).toBe(201);
      const issue = async (token: string) => b.call<{ spiffeId: string; error?: string }>({ path: '/v1/svid/x509', token, body: { keyType: 'ec-p256' } });
      const canary = await podToken('web-canary-1', { app: 'web', track: 'canary' });
      const stable = await podToken('web-stable-1', { app: 'web', track: 'stable' });
      expect((await issue(canary.token)).json.spiffeId).toBe('spiffe://example.org/shop/web-canary');
      expect((await issue(stable.token)).json.spiffeId).toBe('spiffe://example.org/ns/shop/sa/web');
      const gone = await podToken('web-gone-1');
      pods.delete('shop/web-gone-1');
      const refused = await issue(gone.token);
      expect([refused.status, refused.json.error]).toEqual([401, 'invalid_token']);
    } finally {
      await b.close();
    }
  });
});
