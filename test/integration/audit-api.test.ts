/**
 * The audit API over real TLS: receipts carry a signed checkpoint and an inclusion proof against it,
 * the public endpoints serve the key, checkpoints, proofs and leaf hashes (enough to verify every
 * receipt), entries go only to an auditor (all) or a workload (its own), every bad range is a 400, and
 * every response matches openapi.yaml.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Ajv } from 'ajv';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CheckpointedReceipt } from '../../src/audit/checkpointer.js';
import { parseAuditEntry } from '../../src/audit/entry.js';
import { leafHash, rootFromLeaves, verifyConsistency, verifyInclusion } from '../../src/audit/merkle.js';
import { openCheckpoint, parseVerifierKey, parseVerifierKeyFile } from '../../src/audit/note.js';
import { auditCommand } from '../../src/cli/audit.js';
import { auditEntries, type ClientCert, mintAdminCert, workloadSvid, writeClientCert } from '../helpers/admin.js';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';
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
  if (response!.$ref !== undefined) response = spec.components.responses[response!.$ref.split('/').pop() as string];
  const [type, media] = Object.entries(response!.content ?? {})[0] ?? [];
  expect(String(res.headers['content-type'])).toContain(type);
  const schema = JSON.parse(JSON.stringify(media?.schema ?? {}).replaceAll('"#/components/', '"openapi#/components/')) as object;
  const validate = ajv.compile(schema);
  const body = type?.includes('json') ? res.json : res.text;
  expect(validate(body), `GET ${p} ${status}: ${ajv.errorsText(validate.errors)}`).toBe(true);
}

const b64 = (s: string): Buffer => Buffer.from(s, 'base64');
let b: TestBroker;
const receipts: CheckpointedReceipt[] = [];
const serials: string[] = [];
const ALICE = 'spiffe://example.org/admin/alice'; // auditor
const OLIVE = 'spiffe://example.org/admin/olive'; // operator, not auditor
const WEB = 'spiffe://example.org/ns/shop/sa/web';
const API = 'spiffe://example.org/ns/payments/sa/api';
let alice: ClientCert;
let olive: ClientCert;
const as = (c: ClientCert) => ({ cert: c.cert, key: c.key });

beforeAll(async () => {
  const { material: m } = await devMaterial();
  b = await startBroker({
    config: {
      admin: {
        caBundleFile: m.adminCaCertFile,
        caCertFile: m.adminCaCertFile,
        caKeyFile: m.adminCaKeyFile,
        principals: [{ id: ALICE, roles: ['auditor'] }, { id: OLIVE, roles: ['operator'] }],
      },
    },
  });
  alice = mintAdminCert(b.material, ALICE);
  olive = mintAdminCert(b.material, OLIVE);
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
    const res = await b.call<{ start: number; end: number; treeSize: number; scope: string; entries: string[] }>({ path: '/v1/audit/entries?start=0&end=12', ...as(alice) });
    expect(res.status, res.text).toBe(200);
    checkSpec('/v1/audit/entries', 200, res);
    expect(res.json.scope).toBe('all');
    expect(res.json.entries).toHaveLength(12);
    for (const r of receipts) {
      if (r.index < 12) expect(leafHash(Buffer.from(res.json.entries[r.index]!, 'utf8')).toString('base64')).toBe(r.leafHash);
    }
    const x509 = JSON.parse(res.json.entries[0]!) as Record<string, unknown>;
    expect(x509).toMatchObject({ type: 'x509-svid.issued', serial: serials[0], namespace: 'shop', serviceAccount: 'web' });
    expect(JSON.stringify(x509)).not.toMatch(/BEGIN|PRIVATE|eyJ/); // no keys, CSRs or tokens
    const denial = res.json.entries.map((e) => JSON.parse(e) as { type: string }).find((e) => e.type === 'denial');
    expect(denial).toBeDefined();
    const page = await b.call<{ start: number; end: number; entries: string[] }>({ path: '/v1/audit/entries?start=10', ...as(alice) });
    expect(page.json).toMatchObject({ start: 10, end: page.json.start + page.json.entries.length });
    expect(page.json.end).toBeGreaterThanOrEqual(12);
    // Reading the log is itself in the log.
    const reads = (await auditEntries(b)).filter((e) => e.entry.type === 'admin' && e.entry.action === 'audit.entries');
    expect(reads.map((e) => [e.entry.actor, e.entry.decision, e.entry.reason])).toContainEqual([ALICE, 'allow', 'entries [0, 12)']);
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
    ['/v1/audit/leaves?start=0&end=1001', /at most 1000/],
    ['/v1/audit/leaves?start=5&end=2', /start must not exceed end/],
    ['/v1/audit/leaves?start=0&end=99999', /at most 1000|beyond/],
    ['/v1/audit/leaves?start=99999', /beyond the log/],
    ['/v1/audit/leaves?start=-1', /invalid request/],
    ['/v1/audit/leaves?start=0&extra=1', /invalid request/],
    ['/v1/audit/leaves', /invalid request/],
  ])('refuses %s with 400', async (p, message) => {
    // Entries need the auditor role first; the other endpoints are public.
    const res = await b.call<{ error: string; message: string }>({ path: p, ...(p.startsWith('/v1/audit/entries') ? as(alice) : {}) });
    expect(res.status, res.text).toBe(400);
    expect(res.json.error).toBe('bad_request');
    expect(res.json.message).toMatch(message);
    checkSpec(p.split('?')[0] as string, 400, res);
  });

  const cli = async (args: string[]): Promise<{ code: number; out: string }> => {
    const out: string[] = [];
    const code = await auditCommand(args, { stdout: (t) => out.push(t), stderr: (t) => out.push(t), now: () => Date.now() });
    return { code, out: out.join('') };
  };
  const verifyArgs = (): string[] => ['verify', '--log', b.url, '--key', b.material.auditPubFile, '--cacert', b.material.bundleFile];

  it('verifies end to end over HTTPS with the CLI verifier, hashes only without credentials, and says so', async () => {
    const r = await cli(verifyArgs());
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/^OK: the audit log example.org\/tessera\/audit verifies/);
    expect(r.out).toMatch(/checked +: leaf hashes only/);
  });

  it('verifies every entry over HTTPS as an auditor (--admin-cert, --admin-key), and says so', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-auditor-'));
    try {
      const a = writeClientCert(dir, 'alice', alice);
      const r = await cli([...verifyArgs(), '--admin-cert', a.certFile, '--admin-key', a.keyFile]);
      expect(r.code, r.out).toBe(0);
      expect(r.out).toMatch(/^OK: the audit log/);
      expect(r.out).toMatch(/checked +: every entry, read as an auditor/);
      // An admin without the auditor role is told so, not silently downgraded to hashes.
      const o = writeClientCert(dir, 'olive', olive);
      await expect(cli([...verifyArgs(), '--admin-cert', o.certFile, '--admin-key', o.keyFile])).rejects.toThrow(/HTTP 403.*auditor/);
      await expect(cli([...verifyArgs(), '--admin-cert', a.certFile])).rejects.toThrow(/--admin-cert and --admin-key/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('what the audit API makes public, and what it does not', () => {
  it('refuses entries to an unauthenticated caller with 401 {error, message}', async () => {
    const res = await b.call<{ error: string; message: string }>({ path: '/v1/audit/entries?start=0&end=12' });
    expect(res.status, res.text).toBe(401);
    expect(res.json).toEqual({ error: 'unauthenticated', message: expect.any(String) });
    expect(res.text).not.toContain('spiffe://');
    checkSpec('/v1/audit/entries', 401, res);
  });

  it('refuses entries to an admin without the auditor role (403)', async () => {
    const res = await b.call<{ error: string; message: string }>({ path: '/v1/audit/entries?start=0&end=12', ...as(olive) });
    expect(res.status, res.text).toBe(403);
    expect(res.json.error).toBe('forbidden');
    expect(res.text).not.toContain('ns/shop');
    checkSpec('/v1/audit/entries', 403, res);
    const refused = (await auditEntries(b)).filter((e) => e.entry.action === 'audit.entries' && e.entry.actor === OLIVE);
    expect(refused.length).toBeGreaterThanOrEqual(1);
    expect(refused.every((e) => e.entry.decision === 'deny')).toBe(true);
  });

  it('serves leaf hashes publicly: enough to check every receipt without reading an entry', async () => {
    const res = await b.call<{ start: number; end: number; treeSize: number; leafHashes: string[] }>({ path: '/v1/audit/leaves?start=0&end=12' });
    expect(res.status, res.text).toBe(200);
    checkSpec('/v1/audit/leaves', 200, res);
    expect(res.json).toMatchObject({ start: 0, end: 12 });
    expect(res.json.leafHashes).toHaveLength(12);
    for (const r of receipts) {
      expect(res.json.leafHashes[r.index]).toBe(r.leafHash);
      // The receipt's root, rebuilt from public leaf hashes alone.
      expect(rootFromLeaves(res.json.leafHashes.slice(0, r.treeSize).map(b64)).toString('base64')).toBe(r.rootHash);
    }
    expect(res.text).not.toContain('spiffe://');
    const page = await b.call<{ start: number; end: number; leafHashes: string[] }>({ path: '/v1/audit/leaves?start=10' });
    expect(page.json).toMatchObject({ start: 10, end: 10 + page.json.leafHashes.length });
  });

  it('serves checkpoints publicly, and they carry no entry contents (origin, size, root, signatures only)', async () => {
    const res = await b.call<{ checkpoints: string[] }>({ path: '/v1/audit/checkpoints' });
    expect(res.status).toBe(200);
    expect(res.json.checkpoints.length).toBeGreaterThanOrEqual(11);
    for (const note of res.json.checkpoints) {
      const [body, sigs] = note.split('\n\n');
      expect(body?.split('\n')).toEqual([expect.stringMatching(/^example\.org\/tessera\/audit$/), expect.stringMatching(/^\d+$/), expect.stringMatching(/^[A-Za-z0-9+/]{43}=$/)]);
      expect(sigs?.trim().split('\n').every((l) => l.startsWith('\u2014 '))).toBe(true);
      expect(note).not.toMatch(/spiffe:|shop|payments/);
    }
  });

  /** Issues one JWT-SVID for payments/api and returns the entries as seen by `who`. */
  const pageAs = async (who: { token?: string; cert?: string; key?: string }) => {
    const end = (await b.call<{ treeSize: number }>({ path: '/v1/audit/leaves?start=0&end=0' })).json.treeSize;
    const res = await b.call<{ scope: string; entries: (string | null)[] }>({ path: `/v1/audit/entries?start=0&end=${end}`, ...who });
    expect(res.status, res.text).toBe(200);
    checkSpec('/v1/audit/entries', 200, res);
    expect(res.json.scope).toBe('own');
    expect(res.json.entries).toHaveLength(end);
    return res.json.entries;
  };
  const involves = (text: string, id: string): boolean => {
    const e = parseAuditEntry(Buffer.from(text, 'utf8'));
    return e.actor === id || e.subject === id;
  };

  it('serves a workload (token) only the entries whose actor or subject is its own SPIFFE ID', async () => {
    const api = await b.token({ namespace: 'payments', serviceAccount: 'api' });
    const issued = await b.call<{ audit: CheckpointedReceipt }>({ path: '/v1/svid/x509', token: api, body: { keyType: 'ec-p256' } });
    expect(issued.status, issued.text).toBe(200);
    const all = await b.call<{ entries: string[] }>({ path: `/v1/audit/entries?start=0&end=${issued.json.audit.index + 1}`, ...as(alice) });

    const web = await pageAs({ token: await b.token() });
    const mine = web.filter((e): e is string => e !== null);
    expect(mine.length).toBeGreaterThanOrEqual(11);
    expect(mine.every((e) => involves(e, WEB))).toBe(true);
    expect(web[issued.json.audit.index]).toBeNull(); // payments/api's issuance
    expect(web.join('')).not.toContain('ns/payments');
    // Withheld is exactly what is not its own; what is shown is the exact entry.
    all.json.entries.forEach((e, i) => expect(web[i]).toBe(involves(e, WEB) ? e : null));

    const apiView = await pageAs({ token: api });
    expect(apiView[issued.json.audit.index]).toBe(all.json.entries[issued.json.audit.index]);
    expect(apiView.filter((e) => e !== null).every((e) => involves(e, API))).toBe(true);
    expect(apiView.join('')).not.toContain('ns/shop');
  });

  it('serves a workload presenting its X.509-SVID the same: its own entries only', async () => {
    const svid = await workloadSvid(b, { namespace: 'payments', serviceAccount: 'api' });
    const view = await pageAs({ cert: svid.cert, key: svid.key });
    const mine = view.filter((e): e is string => e !== null);
    expect(mine.some((e) => JSON.parse(e).serial === svid.serial)).toBe(true);
    expect(mine.every((e) => involves(e, API))).toBe(true);
  });
});
