/**
 * The broker with two in-process witnesses (real HTTP, real state directories): cosigned checkpoints
 * on the API, an inclusion proof against a cosigned checkpoint, and audit.requireWitnesses failing
 * issuance closed (503 witness_quorum_unavailable, audited) while a witness is down, then recovering.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cosigner, generateCosignerKey, parseCosignerSecretKey, verifyCosignatures } from '../../src/audit/cosignature.js';
import { leafHash, verifyInclusion } from '../../src/audit/merkle.js';
import { openCheckpoint, parseVerifierKey } from '../../src/audit/note.js';
import { startWitnessServer } from '../../src/witness/server.js';
import { WitnessState } from '../../src/witness/state.js';
import { Witness } from '../../src/witness/witness.js';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';
import { httpsCall } from '../helpers/https.js';
import { until } from '../helpers/until.js';

interface InProcessWitness {
  cosigner: Cosigner;
  port: number;
  url: string;
  stop(): Promise<void>;
  start(): Promise<void>;
}

const tmp = mkdtempSync(path.join(tmpdir(), 'tessera-witness-int-'));
const witnesses: InProcessWitness[] = [];
let b: TestBroker;
let token: string;

async function inProcessWitness(name: string, logVkey: string): Promise<InProcessWitness> {
  const cosigner = parseCosignerSecretKey(generateCosignerKey(name).skey);
  const dir = path.join(tmp, name);
  let close: (() => Promise<void>) | undefined;
  const w: InProcessWitness = {
    cosigner,
    port: 0,
    url: '',
    start: async () => {
      const state = await WitnessState.open(dir);
      const srv = await startWitnessServer(new Witness({ cosigner, logs: [parseVerifierKey(logVkey)], state }), { host: '127.0.0.1', port: w.port });
      w.port = Number(new URL(srv.url).port);
      w.url = srv.url;
      close = async () => {
        await srv.close();
        await state.close();
      };
    },
    stop: async () => {
      await close?.();
      close = undefined;
    },
  };
  await w.start();
  witnesses.push(w);
  return w;
}

beforeAll(async () => {
  const { material } = await devMaterial();
  const logVkey = readFileSync(material.auditPubFile, 'utf8');
  const [w1, w2] = [await inProcessWitness('w1.example', logVkey), await inProcessWitness('w2.example', logVkey)];
  b = await startBroker({
    config: {
      audit: {
        signingKeyFile: material.auditKeyFile,
        checkpointIntervalMs: 100,
        witnesses: [w1, w2].map((w) => ({ name: w.cosigner.name, url: w.url, key: w.cosigner.verifierKey })),
        witnessQuorum: 2,
        requireWitnesses: true,
        maxWitnessLagSeconds: 5,
        witnessTimeoutMs: 1000,
      },
    },
  });
  token = await b.token({ namespace: 'shop', serviceAccount: 'web' });
}, 60_000);

afterAll(async () => {
  await b?.close();
  for (const w of witnesses) await w.stop();
  rmSync(tmp, { recursive: true, force: true });
});

const issueJwt = () => httpsCall<{ audit: { index: number; checkpoint: string }; error?: string }>(b.url, b.ca, { path: '/v1/svid/jwt', token, body: { audience: ['payments'] } });

describe('witnessed audit log (in-process witnesses)', () => {
  it('issues once a quorum cosigned; serves cosigned checkpoints and proofs against them', async () => {
    const first = await until('issuance once the witnesses cosigned', async () => {
      const r = await issueJwt();
      return r.status === 200 ? r.json : undefined;
    }, 30_000, 100);
    const keys = witnesses.map((w) => w.cosigner.key);
    const note = await until('a cosigned checkpoint covering the entry', async () => {
      const r = await httpsCall(b.url, b.ca, { path: '/v1/audit/checkpoint?cosigned=2' });
      return r.status === 200 && Number(r.text.split('\n')[1]) > first.audit.index ? r.text : undefined;
    }, 30_000, 100);
    expect(verifyCosignatures(note, keys).map((c) => c.name).sort()).toEqual(['w1.example', 'w2.example']);
    const cp = openCheckpoint(note, parseVerifierKey(b.broker.checkpoints.verifierKey));
    // The entry's proof against that cosigned checkpoint.
    const p = await httpsCall<{ treeSize: number; leafHash: string; inclusionProof: string[]; checkpoint: string }>(b.url, b.ca, {
      path: `/v1/audit/proof/inclusion?index=${first.audit.index}&cosigned=2`,
    });
    expect(p.status, p.text).toBe(200);
    expect(p.json.treeSize).toBe(cp.size);
    expect(verifyCosignatures(p.json.checkpoint, keys)).toHaveLength(2);
    const entry = (await b.broker.audit.entries(first.audit.index, first.audit.index + 1))[0] as Buffer;
    expect(p.json.leafHash).toBe(leafHash(entry).toString('base64'));
    const proof = p.json.inclusionProof.map((h) => Buffer.from(h, 'base64'));
    expect(verifyInclusion(leafHash(entry), first.audit.index, cp.size, proof, cp.rootHash)).toBe(true);
    // Bad requests are 400s.
    for (const q of ['/v1/audit/checkpoint?cosigned=3', '/v1/audit/checkpoint?cosigned=x', `/v1/audit/proof/inclusion?index=0&cosigned=2&treeSize=1`, `/v1/audit/proof/inclusion?index=999999&cosigned=2`]) {
      expect((await httpsCall(b.url, b.ca, { path: q })).status, q).toBe(400);
    }
  }, 90_000);

  it('requireWitnesses: issuance fails closed (503, audited) while the quorum lags, and recovers', async () => {
    const w2 = witnesses[1] as InProcessWitness;
    await w2.stop();
    const refused = await until('a 503 witness_quorum_unavailable', async () => {
      const r = await issueJwt();
      return r.status === 503 ? r.json : undefined;
    }, 30_000, 250);
    expect(refused.error).toBe('witness_quorum_unavailable');
    // The refusal is in the audit log.
    const size = b.broker.audit.size;
    const entries = (await b.broker.audit.entries(0, size)).map((e) => JSON.parse(e.toString('utf8')) as { decision: string; reason?: string });
    expect(entries.some((e) => e.decision === 'deny' && /witness/.test(e.reason ?? ''))).toBe(true);
    await w2.start();
    await until('issuance again once the witness is back', async () => ((await issueJwt()).status === 200 ? true : undefined), 60_000, 250);
  }, 120_000);
});
