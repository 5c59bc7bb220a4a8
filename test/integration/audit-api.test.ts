/**
 * The audit API over real TLS: receipts carry a signed checkpoint and an inclusion proof against it,
 * the public endpoints serve the key, checkpoints, proofs and entries, every bad range is a 400, and
 * every response matches openapi.yaml.
 */
import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CheckpointedReceipt } from '../../src/audit/checkpointer.js';
import { leafHash, verifyConsistency, verifyInclusion } from '../../src/audit/merkle.js';
import { openCheckpoint, parseVerifierKey, parseVerifierKeyFile } from '../../src/audit/note.js';
import { auditCommand } from '../../src/cli/audit.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { opensslKeyAndCsr } from '../helpers/openssl.js';

interface Spec {
  paths: Record<string, Record<string, { responses: Record<string, { $ref?: string; content?: Record<string, { schema: unknown }> }> }>>;
  components: { schemas: Record<string, unknown>; responses: Record<string, { content?: Record<string, { schema: unknown }> }> };
}
const spec = parse(readFileSync(new URL('../../openapi.yaml', import.meta.url), 'utf8')) as Spec;
const ajv = new Ajv({ strict: false, validateFormats: false });
ajv.addSchema({ components: spec.components }, 'openapi');

/** Validates a response against the spec; returns the content type the spec declares. */
function checkSpec(p: string, status: number, res: { json: unknown; text: string; headers: Record<string, unknown> }): void {
  const op = spec.paths[p]?.get;
  expect(op, `spec has GET ${p}`).toBeDefined();
  let response = op!.responses[String(status)];
  expect(response, `spec has ${status} for GET ${p}`).toBeDefined();
  if (response!.$ref !== undefined) response = spec.components.responses[response!.$ref.split('/').pop() as string] as typeof response;
  const [type, media] = Object.entries(response!.content ?? {})[0] ?? [];
  expect(String(res.headers['content-type'])).toContain(type);
  const schema = JSON.parse(JSON.stringify(media?.schema ?? {}).replaceAll('"#/components/', '"openapi#/components/')) as object;
  const validate = ajv.compile(schema);
  const body = type?.includes('json') ? res.json : res.text;
  expect(validate(body), `GET ${p} ${status}: ${ajv.errorsText(validate.errors)}`).toBe(true);
}

const b64 = (s: string): Buffer => Buffer.from(s, 'base64');
let b: TestBroker;
let receipts: CheckpointedReceipt[] = [];
let serials: string[] = [];

beforeAll(async () => {
  b = await startBroker();
  const token = await b.token();
  for (let i = 0; i < 5; i++) {
    const x = await b.call<{ serial: string; audit: CheckpointedReceipt }>({ path: '/v1/svid/x509', token, body: { csr: opensslKeyAndCsr('ec-p256').csrPem } });
    expect(x.status, x.text).toBe(200);
    serials.push(x.json.serial);
    receipts.push(x.json.audit);
    const j = await b.call<{ audit: CheckpointedReceipt }>({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } });
    expect(j.status, j.text).toBe(200);
    receipts.push(j.json.audit);
  }
  // A denial between issuances (no receipt; covered by the next checkpoint).
  expect((await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['bank'] } })).status).toBe(403);
  const last = await b.call<{ audit: CheckpointedReceipt }>({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } });
  receipts.push(last.json.audit);
});
afterAll(async () => {
  await b?.close();
});

describe('audit receipts', () => {
  it('carry a checkpoint signed by the audit key and an inclusion proof against it', async () => {
    const key = parseVerifierKey((await b.call({ path: '/v1/audit/key' })).text);
    expect(receipts).toHaveLength(11);
    for (const r of receipts) {
      const cp = openCheckpoint(r.checkpoint, key);
      expect(cp.origin).toBe('example.org/tessera/audit');
      expect(cp.size).toBe(r.treeSize);
      expect(cp.rootHash.toString('base64')).toBe(r.rootHash);
      expect(verifyInclusion(b64(r.leafHash), r.index, r.treeSize, r.inclusionProof.map(b64), cp.rootHash)).toBe(true);
    }
    // Sequential requests each got the checkpoint right after their own entry: no waiting for a timer.
    expect(receipts.slice(0, 10).every((r) => r.treeSize === r.index + 1)).toBe(true);
    expect(receipts[10]?.index).toBe(11);
  });
});

describe('audit API', () => {
  it('serves the public key as a verifier key and as PEM, matching the dev audit.pub', async () => {
    const vkey = await b.call({ path: '/v1/audit/key' });
    expect(vkey.status).toBe(200);
    checkSpec('/v1/audit/key', 200, vkey);
    expect(vkey.text).toBe(readFileSync(b.material.auditPubFile, 'utf8'));
    const pem = await b.call({ path: '/v1/audit/key?format=pem' });
    expect(pem.status).toBe(200);
    expect(pem.headers['content-type']).toContain('application/x-pem-file');
    expect(parseVerifierKeyFile(pem.text).rawPublicKey.equals(parseVerifierKey(vkey.text).rawPublicKey)).toBe(true);
    expect((await b.call({ path: '/v1/audit/key?format=der' })).status).toBe(400);
  });

  it('serves the latest checkpoint as a signed note', async () => {
    const res = await b.call({ path: '/v1/audit/checkpoint' });
    expect(res.status).toBe(200);
    checkSpec('/v1/audit/checkpoint', 200, res);
    const cp = openCheckpoint(res.text, parseVerifierKey((await b.call({ path: '/v1/audit/key' })).text));
    expect(cp.size).toBeGreaterThanOrEqual(12);
  });

  it('serves inclusion proofs that match the receipts', async () => {
    const r = receipts[3]!;
    const res = await b.call<{ leafHash: string; rootHash: string; inclusionProof: string[] }>({ path: `/v1/audit/proof/inclusion?index=${r.index}&treeSize=${r.treeSize}` });
    expect(res.status).toBe(200);
    checkSpec('/v1/audit/proof/inclusion', 200, res);
    expect(res.json).toMatchObject({ leafHash: r.leafHash, rootHash: r.rootHash, inclusionProof: r.inclusionProof });
    // Default tree size: the latest checkpoint's.
    const latest = await b.call<{ treeSize: number; rootHash: string; inclusionProof: string[]; leafHash: string }>({ path: `/v1/audit/proof/inclusion?index=${r.index}` });
    expect(latest.json.treeSize).toBe(openCheckpoint((await b.call({ path: '/v1/audit/checkpoint' })).text, parseVerifierKey((await b.call({ path: '/v1/audit/key' })).text)).size);
    expect(verifyInclusion(b64(r.leafHash), r.index, latest.json.treeSize, latest.json.inclusionProof.map(b64), b64(latest.json.rootHash))).toBe(true);
  });

  it('serves consistency proofs between two receipts’ checkpoints', async () => {
    const [a, z] = [receipts[1]!, receipts[9]!];
    const res = await b.call<{ fromRootHash: string; toRootHash: string; consistencyProof: string[] }>({ path: `/v1/audit/proof/consistency?from=${a.treeSize}&to=${z.treeSize}` });
    expect(res.status).toBe(200);
    checkSpec('/v1/audit/proof/consistency', 200, res);
    expect(res.json.fromRootHash).toBe(a.rootHash);
    expect(res.json.toRootHash).toBe(z.rootHash);
    expect(verifyConsistency(a.treeSize, z.treeSize, b64(a.rootHash), b64(z.rootHash), res.json.consistencyProof.map(b64))).toBe(true);
  });

  it('serves entries as exact canonical text whose leaf hashes match the receipts', async () => {
    const res = await b.call<{ start: number; end: number; treeSize: number; entries: string[] }>({ path: '/v1/audit/entries?start=0&end=12' });
    expect(res.status).toBe(200);
    checkSpec('/v1/audit/entries', 200, res);
    expect(res.json.entries).toHaveLength(12);
    for (const r of receipts) {
      if (r.index < 12) expect(leafHash(Buffer.from(res.json.entries[r.index]!, 'utf8')).toString('base64')).toBe(r.leafHash);
    }
    const x509 = JSON.parse(res.json.entries[0]!) as Record<string, unknown>;
    expect(x509).toMatchObject({ type: 'x509-svid.issued', serial: serials[0], namespace: 'shop', serviceAccount: 'web' });
    expect(JSON.stringify(x509)).not.toMatch(/BEGIN|PRIVATE|eyJ/); // no keys, CSRs or tokens
    const denial = res.json.entries.map((e) => JSON.parse(e) as { type: string }).find((e) => e.type === 'denial');
    expect(denial).toBeDefined();
    const page = await b.call<{ start: number; end: number; entries: string[] }>({ path: '/v1/audit/entries?start=10' });
    expect(page.json).toMatchObject({ start: 10, end: page.json.start + page.json.entries.length });
    expect(page.json.end).toBeGreaterThanOrEqual(12);
  });

  it('lists the stored checkpoints in pages', async () => {
    const res = await b.call<{ total: number; checkpoints: string[] }>({ path: '/v1/audit/checkpoints?start=1&end=3' });
    expect(res.status).toBe(200);
    checkSpec('/v1/audit/checkpoints', 200, res);
    expect(res.json.checkpoints).toHaveLength(2);
    expect(res.json.total).toBeGreaterThanOrEqual(11);
  });

  it.each([
    ['/v1/audit/proof/inclusion?index=500&treeSize=5', /index must be below treeSize/],
    ['/v1/audit/proof/inclusion?index=0&treeSize=99999', /beyond the log/],
    ['/v1/audit/proof/inclusion?index=-1', /invalid request/],
    ['/v1/audit/proof/inclusion?index=01', /invalid request/],
    ['/v1/audit/proof/inclusion', /invalid request/],
    ['/v1/audit/proof/inclusion?index=1&treeSize=9999999999999999', /too large|beyond/],
    ['/v1/audit/proof/consistency?from=9&to=3', /from must not exceed to/],
    ['/v1/audit/proof/consistency?from=1&to=99999', /beyond the log/],
    ['/v1/audit/entries?start=0&end=1001', /at most 1000/],
    ['/v1/audit/entries?start=5&end=2', /start must not exceed end/],
    ['/v1/audit/entries?start=0&end=99999', /at most 1000|beyond/],
    ['/v1/audit/entries?start=99999', /beyond the log/],
    ['/v1/audit/entries?start=abc', /invalid request/],
    ['/v1/audit/entries?start=0&extra=1', /invalid request/],
    ['/v1/audit/checkpoints?start=0&end=99999', /at most 1000|beyond/],
    ['/v1/audit/checkpoints?start=99990&end=99999', /beyond/],
  ])('refuses %s with 400', async (p, message) => {
    const res = await b.call<{ error: string; message: string }>({ path: p });
    expect(res.status, res.text).toBe(400);
    expect(res.json.error).toBe('bad_request');
    expect(res.json.message).toMatch(message);
    checkSpec(p.split('?')[0] as string, 400, res);
  });

  it('verifies end to end over HTTPS with the CLI verifier (tessera audit verify --log URL)', async () => {
    const out: string[] = [];
    const code = await auditCommand(['verify', '--log', b.url, '--key', b.material.auditPubFile, '--cacert', b.material.bundleFile], {
      stdout: (t) => out.push(t),
      stderr: (t) => out.push(t),
      now: () => Date.now(),
    });
    expect(code, out.join('')).toBe(0);
    expect(out.join('')).toMatch(/^OK: the audit log example.org\/tessera\/audit verifies/);
  });
});
