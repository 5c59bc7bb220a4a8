/**
 * Two replicas (two AuditLogs + two Checkpointers in one process) on one real Redis prefix: receipts
 * from both are proven against signed checkpoints, the signing lock keeps stored checkpoints in
 * non-decreasing order, and every stored checkpoint is a prefix of the one merged log.
 */
import { generateKeyPairSync } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpointer, type CheckpointedReceipt } from '../../src/audit/checkpointer.js';
import type { AuditEntry } from '../../src/audit/entry.js';
import { AuditLog } from '../../src/audit/log.js';
import { leafHash, rootFromLeaves, verifyInclusion } from '../../src/audit/merkle.js';
import { NoteSigner, openCheckpoint } from '../../src/audit/note.js';
import { RedisStore } from '../../src/store/redis.js';
import { deletePrefix, redisRequiredUnderCi, SHARED_REDIS_URL, sharedRedis, uniquePrefix } from '../helpers/redis.js';

const redis = await sharedRedis();
redisRequiredUnderCi(redis);

const signer = new NoteSigner('example.org/tessera/audit', generateKeyPairSync('ed25519').privateKey);
const entry = (replica: string, i: number): AuditEntry => ({
  ts: 1_700_000_000_000 + i,
  type: 'jwt-svid.issued',
  decision: 'allow',
  actor: 'spiffe://example.org/ns/shop/sa/web',
  subject: 'spiffe://example.org/ns/shop/sa/web',
  jti: `${replica}-${i}`,
  requestId: `${replica}-${i}`,
  replica,
});

describe.skipIf(!redis.ok)('checkpoints across replicas sharing Redis', () => {
  const prefix = uniquePrefix('audit-cp');
  const stores: RedisStore[] = [];
  const replicas: { audit: AuditLog; cp: Checkpointer; id: string }[] = [];

  beforeAll(async () => {
    for (const id of ['a', 'b']) {
      const store = await RedisStore.connect({ url: SHARED_REDIS_URL, prefix });
      stores.push(store);
      const audit = await AuditLog.open(store);
      const cp = await Checkpointer.start({ store, audit, signer, intervalMs: 50, replicaId: id });
      replicas.push({ audit, cp, id });
    }
  });
  afterAll(async () => {
    for (const r of replicas) await r.cp.close();
    for (const s of stores) await s.close();
    await deletePrefix(prefix);
  });

  it('proves every receipt and never stores a fork or a shrinking checkpoint', async () => {
    const receipts: CheckpointedReceipt[] = [];
    await Promise.all(
      replicas.map(async (r) => {
        for (let i = 0; i < 40; i++) {
          const batch = await Promise.all([0, 1, 2].map((k) => r.audit.append(entry(r.id, i * 3 + k)).then((x) => r.cp.receipt(x))));
          receipts.push(...batch);
        }
      }),
    );
    const size = await stores[0]!.auditSize();
    expect(size).toBe(240);
    const leaves = (await stores[0]!.readAuditEntries(0, size)).map((e) => leafHash(e));
    for (const r of receipts) {
      const cp = openCheckpoint(r.checkpoint, signer.verifier);
      expect(cp.size).toBe(r.treeSize);
      expect(cp.rootHash.equals(rootFromLeaves(leaves.slice(0, cp.size)))).toBe(true);
      const b = (s: string): Buffer => Buffer.from(s, 'base64');
      expect(verifyInclusion(b(r.leafHash), r.index, r.treeSize, r.inclusionProof.map(b), cp.rootHash)).toBe(true);
    }
    const stored = (await stores[0]!.listCheckpoints()).map((n) => openCheckpoint(n, signer.verifier));
    expect(stored.length).toBeGreaterThan(1);
    for (let i = 0; i < stored.length; i++) {
      const cp = stored[i]!;
      expect(cp.rootHash.equals(rootFromLeaves(leaves.slice(0, cp.size))), `checkpoint ${i} is a prefix of the log`).toBe(true);
      if (i > 0) expect(cp.size).toBeGreaterThanOrEqual(stored[i - 1]!.size);
    }
    // Both replicas signed some of them (the lock is shared, not owned by one replica for good).
    expect(replicas.every((r) => r.cp.stats.signed > 0)).toBe(true);
  });
});
