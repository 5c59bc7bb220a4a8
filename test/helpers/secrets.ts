/**
 * What the secrets suites share: the workload they issue to, the error shape, calls to one dynamic
 * engine's routes on a test broker and its lease records and audit log, a check of a response against
 * the generated openapi.yaml, and the RabbitMQ management API of this machine.
 */
import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import { parse } from 'yaml';
import { expect } from 'vitest';
import type { EngineKind } from '../../src/secrets/engine.js';
import { LEASE_SPACE, type Lease } from '../../src/secrets/leases.js';
import type { TestBroker } from './broker.js';

/** The workload startBroker's token() stands for by default (namespace shop, service account web). */
export const WEB = 'spiffe://example.org/ns/shop/sa/web';

/** What a dynamic engine's creds route returns (every engine kind). */
export interface EngineCreds {
  username: string;
  password: string;
  leaseId: string;
  expiresAt: string;
  maxExpiresAt: string;
}

export interface Who {
  namespace?: string;
  serviceAccount?: string;
}

/** A refusal: exactly `{error: code, message}` with this status. */
export function expectError(res: { status: number; json: unknown }, status: number, code: string): void {
  expect(res.status, JSON.stringify(res.json)).toBe(status);
  expect(res.json).toEqual({ error: code, message: expect.any(String) });
}

/**
 * Calls to the `kind` engine's creds route and reads of the broker's leases and audit log. `broker` is
 * read at each call (suites start the broker in beforeAll).
 */
export function engineCalls<C extends EngineCreds = EngineCreds>(broker: () => TestBroker, kind: EngineKind, defaultRole: string) {
  return {
    token: (who: Who = {}): Promise<string> => broker().token(who),
    async creds(role = defaultRole, who: Who = {}, body?: unknown) {
      const b = broker();
      return b.call<C>({ path: `/v1/secrets/${kind}/${role}/creds`, token: await b.token(who), method: 'POST', ...(body !== undefined ? { body } : {}) });
    },
    /** Audit entries from index `from` on, parsed. */
    async auditEntries(from: number): Promise<Record<string, unknown>[]> {
      const b = broker();
      return (await b.broker.audit.entries(from, b.broker.audit.size)).map((e) => JSON.parse(e.toString('utf8')) as Record<string, unknown>);
    },
    /** The whole audit log as text (to prove a password never entered it). */
    async auditText(): Promise<string> {
      const b = broker();
      return (await b.broker.audit.entries(0, b.broker.audit.size)).map((e) => e.toString('utf8')).join('\n');
    },
    async leases(): Promise<Lease[]> {
      return (await broker().broker.store.kvList(LEASE_SPACE)).map((r) => JSON.parse(r.value) as Lease);
    },
  };
}

/**
 * Writes a lease record the engine never issued, naming a user it did not create (`username`: root,
 * postgres …), already expired: the sweeper must refuse to drop that user.
 */
export async function plantForeignLease(b: TestBroker, l: { id: string; kind: EngineKind; engine: string; role: string; username: string; now: number }): Promise<Lease> {
  const lease: Lease = {
    v: 1, id: l.id, kind: l.kind, identity: WEB, secret: `${l.kind}/${l.role}`, engine: l.engine, role: l.role,
    username: l.username, issuedAt: l.now - 10_000, expiresAt: l.now - 1, maxExpiresAt: l.now, state: 'active', attempts: 0,
  };
  await b.broker.store.kvPut(LEASE_SPACE, lease.id, JSON.stringify(lease));
  return lease;
}

// ---- responses against openapi.yaml (same approach as openapi.test.ts) ----
interface Spec {
  paths: Record<string, Record<string, { responses: Record<string, { $ref?: string; content?: Record<string, { schema: unknown }> }> }>>;
  components: { responses: Record<string, { content?: Record<string, { schema: unknown }> }> };
}
let compiled: { spec: Spec; ajv: Ajv } | undefined;

/** The response matches what openapi.yaml says `method specPath` answers with this status. */
export function expectSpec(specPath: string, method: string, res: { status: number; json: unknown }): void {
  if (compiled === undefined) {
    const spec = parse(readFileSync(new URL('../../openapi.yaml', import.meta.url), 'utf8')) as Spec;
    const ajv = new Ajv({ strict: false, validateFormats: false });
    ajv.addSchema({ components: spec.components }, 'openapi');
    compiled = { spec, ajv };
  }
  const { spec, ajv } = compiled;
  let response = spec.paths[specPath]?.[method]?.responses[String(res.status)];
  expect(response, `spec has ${method} ${specPath} ${res.status}`).toBeDefined();
  if (response?.$ref !== undefined) response = spec.components.responses[response.$ref.split('/').pop() as string];
  const schema = Object.values(response?.content ?? {})[0]?.schema;
  const validate = ajv.compile(JSON.parse(JSON.stringify(schema).replaceAll('"#/components/', '"openapi#/components/')) as object);
  expect(validate(res.json), `${method} ${specPath} ${res.status}: ${ajv.errorsText(validate.errors)}`).toBe(true);
}

// ---- RabbitMQ's management API on this machine (guest/guest as the default administrator) ----
export const RABBIT_API = 'http://127.0.0.1:15672/api';
export const RABBIT_GUEST = `Basic ${Buffer.from('guest:guest').toString('base64')}`;

/** One management API call; the JSON answer (undefined when empty). */
export async function rabbitApi(method: string, p: string, body?: unknown, auth = RABBIT_GUEST): Promise<{ status: number; json: unknown }> {
  const res = await fetch(`${RABBIT_API}${p}`, {
    method,
    headers: { authorization: auth, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  return { status: res.status, json: text === '' ? undefined : (JSON.parse(text) as unknown) };
}

/** Whether the management API answers as guest, and why not. */
export function rabbitReachable(): Promise<{ ok: boolean; reason: string }> {
  return rabbitApi('GET', '/whoami').then(
    (r) => (r.status === 200 ? { ok: true, reason: 'ok' } : { ok: false, reason: `management API answered ${r.status}` }),
    (err: unknown) => ({ ok: false, reason: `management API on 127.0.0.1:15672: ${(err as Error).message}` }),
  );
}
