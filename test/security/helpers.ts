/**
 * Shared by the hostile-input suites: error-shape checks, audit log reads (the broker runs in this
 * process, so the log is read directly), and raw JWS crafting for tokens no well-behaved library
 * would produce.
 */
import { createHmac, sign, type KeyObject } from 'node:crypto';
import { expect } from 'vitest';
import type { TestBroker } from '../helpers/broker.js';
import type { HttpsResult } from '../helpers/https.js';

export interface Entry {
  readonly type: string;
  readonly decision: 'allow' | 'deny';
  readonly actor: string | null;
  readonly subject: string | null;
  readonly code?: string;
  readonly reason?: string;
  readonly requestId?: string;
  readonly serial?: string;
  readonly [k: string]: unknown;
}

export function expectError(res: HttpsResult, status: number, code: string): void {
  expect(res.status, res.text).toBe(status);
  expect(res.json).toEqual({ error: code, message: expect.any(String) });
}

export async function entries(b: TestBroker, start = 0): Promise<Entry[]> {
  await b.broker.audit.refresh();
  const raw = await b.broker.audit.entries(start, b.broker.audit.size);
  return raw.map((e) => JSON.parse(e.toString('utf8')) as Entry);
}

/** Credentials issued so far (allow entries of any issuance type). */
export async function allowCount(b: TestBroker): Promise<number> {
  return (await entries(b)).filter((e) => e.decision === 'allow' && e.type.endsWith('.issued')).length;
}

/** The denial entry the broker wrote for this response (matched by the x-request-id it echoed). */
export async function denialOf(b: TestBroker, res: HttpsResult): Promise<Entry> {
  const id = res.headers['x-request-id'];
  expect(typeof id, 'x-request-id header').toBe('string');
  const found = (await entries(b)).filter((e) => e.requestId === id);
  expect(found, `audit entries for request ${String(id)}`).toHaveLength(1);
  const entry = found[0] as Entry;
  expect(entry).toMatchObject({ type: 'denial', decision: 'deny' });
  return entry;
}

const b64url = (data: string | Buffer): string => Buffer.from(data).toString('base64url');

export type Signer =
  | { readonly alg: 'RS256'; readonly key: KeyObject }
  | { readonly alg: 'ES256'; readonly key: KeyObject }
  | { readonly alg: 'HS256'; readonly secret: Buffer }
  | { readonly alg: 'none' };

/**
 * A compact JWS from raw header and payload objects. The header's `alg` is whatever the caller put
 * there: the signature is made with `signer`, so header and key can disagree on purpose.
 */
export function craftJws(header: Record<string, unknown>, payload: Record<string, unknown>, signer: Signer): string {
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  let signature: Buffer;
  switch (signer.alg) {
    case 'RS256':
      signature = sign('sha256', Buffer.from(input), signer.key);
      break;
    case 'ES256':
      signature = sign('sha256', Buffer.from(input), { key: signer.key, dsaEncoding: 'ieee-p1363' });
      break;
    case 'HS256':
      signature = createHmac('sha256', signer.secret).update(input).digest();
      break;
    case 'none':
      signature = Buffer.alloc(0);
      break;
  }
  return `${input}.${b64url(signature)}`;
}
