import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Cosigner, verifyCosignatures } from '../audit/cosignature.js';
import { leafHash, MerkleTree } from '../audit/merkle.js';
import { ed25519PrivateKeyFromSeed, NoteSigner, openCheckpoint, signCheckpoint } from '../audit/note.js';
import { formatAddCheckpoint } from './request.js';
import { startWitnessServer } from './server.js';
import { originHash, WitnessState } from './state.js';
import { Witness } from './witness.js';

const dirs: string[] = [];
const states: WitnessState[] = [];
afterEach(async () => {
  for (const s of states.splice(0)) await s.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const log = new NoteSigner('example.org/tessera/audit', ed25519PrivateKeyFromSeed(Buffer.alloc(32, 1)));
const other = new NoteSigner('other.example/log', ed25519PrivateKeyFromSeed(Buffer.alloc(32, 2)));
const impostor = new NoteSigner('example.org/tessera/audit', ed25519PrivateKeyFromSeed(Buffer.alloc(32, 3)));
const cosigner = new Cosigner('witness.example/w1', ed25519PrivateKeyFromSeed(Buffer.alloc(32, 4)));
let now = 1_700_000_000_000;
const clock = { now: () => now };

function tree(n: number, tag = 'a'): MerkleTree {
  const t = new MerkleTree();
  for (let i = 0; i < n; i++) t.append(leafHash(Buffer.from(`${tag}${i}`)));
  return t;
}

async function witness(dir?: string): Promise<{ w: Witness; dir: string; state: WitnessState }> {
  const d = dir ?? mkdtempSync(path.join(tmpdir(), 'witness-'));
  if (dir === undefined) dirs.push(d);
  const state = await WitnessState.open(d);
  states.push(state);
  return { w: new Witness({ cosigner, logs: [log.verifier, other.verifier], state, clock }), dir: d, state };
}

/** Submits the checkpoint of `t` at `size`, with a proof from `old` (taken from `proofTree`, default `t`). */
async function submit(w: Witness, t: MerkleTree, old: number, size = t.size, signer = log, proofTree = t) {
  const cp = await signCheckpoint(signer, size, t.root(size));
  const proof = old === 0 || old > size ? [] : proofTree.consistencyProof(old, Math.min(size, proofTree.size));
  return { a: await w.addCheckpoint(Buffer.from(formatAddCheckpoint(old, proof, cp.note))), note: cp.note };
}

describe('witness add-checkpoint', () => {
  it('cosigns the first checkpoint from old 0, then each consistent extension; the cosignature verifies', async () => {
    const { w } = await witness();
    const t = tree(10);
    const first = await submit(w, t, 0, 4);
    expect(first.a.status).toBe(200);
    expect(first.a.body).toMatch(/^— witness\.example\/w1 [A-Za-z0-9+/]+=*\n$/);
    expect(verifyCosignatures(first.note + first.a.body, [cosigner.key])).toEqual([{ name: 'witness.example/w1', timestamp: 1_700_000_000 }]);
    now += 5000;
    const second = await submit(w, t, 4, 10);
    expect(second.a.status).toBe(200);
    expect(verifyCosignatures(second.note + second.a.body, [cosigner.key])[0]?.timestamp).toBe(1_700_000_005);
    // The same checkpoint again (same size, same root) is cosigned again.
    expect((await submit(w, t, 10, 10)).a.status).toBe(200);
  });

  it('409 with the size it holds when old size is not its latest; the client retries from it', async () => {
    const { w } = await witness();
    const t = tree(12);
    await submit(w, t, 0, 5);
    for (const old of [0, 3, 6]) {
      const r = await submit(w, t, old, 12);
      expect(r.a).toEqual({ status: 409, contentType: 'text/x.tlog.size', body: '5\n' });
    }
    expect((await submit(w, t, 5, 12)).a.status).toBe(200);
  });

  it('never cosigns a smaller size (rollback) nor another root for a size (fork)', async () => {
    const { w } = await witness();
    const t = tree(8);
    expect((await submit(w, t, 0, 8)).a.status).toBe(200);
    // Rollback: a checkpoint of size 6 of the same log. Old size 8 > 6 is a 400; old 6 is a 409.
    expect((await submit(w, t, 8, 6)).a.status).toBe(400);
    expect((await submit(w, t, 6, 6)).a.status).toBe(409);
    // Fork at the same size: another root for size 8.
    const fork = tree(8, 'b');
    expect((await submit(w, fork, 8, 8)).a.status).toBe(422);
    // Fork that grows: size 9 with a proof from the fork's own tree does not extend what it cosigned.
    const forkLonger = tree(9, 'b');
    expect((await submit(w, forkLonger, 8, 9)).a.status).toBe(422);
    // Still at 8 with the original root: the real log continues.
    const t10 = tree(10);
    expect((await submit(w, t10, 8, 10)).a.status).toBe(200);
  });

  it('422 for a proof of the wrong length, a non-empty proof from 0, and a size-0 checkpoint with a non-empty root', async () => {
    const { w } = await witness();
    const t = tree(16);
    await submit(w, t, 0, 3);
    const cp = await signCheckpoint(log, 16, t.root(16));
    const proof = t.consistencyProof(3, 16);
    const ask = (old: number, p: Buffer[], note = cp.note) => w.addCheckpoint(Buffer.from(formatAddCheckpoint(old, p, note)));
    expect((await ask(3, proof.slice(1))).status).toBe(422);
    expect((await ask(3, [...proof, proof[0] as Buffer])).status).toBe(422);
    expect((await ask(3, [])).status).toBe(422);
    const { w: fresh } = await witness();
    expect((await fresh.addCheckpoint(Buffer.from(formatAddCheckpoint(0, [proof[0] as Buffer], cp.note)))).status).toBe(422);
    const zero = await signCheckpoint(log, 0, Buffer.alloc(32, 9));
    expect((await fresh.addCheckpoint(Buffer.from(formatAddCheckpoint(0, [], zero.note)))).status).toBe(422);
    const emptyOk = await signCheckpoint(log, 0, tree(0).root(0));
    expect((await fresh.addCheckpoint(Buffer.from(formatAddCheckpoint(0, [], emptyOk.note)))).status).toBe(200);
  });

  it('404 for a log it does not follow, 403 for a note without a valid signature by the log key', async () => {
    const { w } = await witness();
    const t = tree(4);
    const stranger = new NoteSigner('stranger.example/log', ed25519PrivateKeyFromSeed(Buffer.alloc(32, 5)));
    expect((await submit(w, t, 0, 4, stranger)).a.status).toBe(404);
    expect((await submit(w, t, 0, 4, impostor)).a.status).toBe(403);
    // A valid signature plus a bad line by the same key: malformed note, 403.
    const cp = await signCheckpoint(log, 4, t.root(4));
    const sigLine = cp.note.split('\n')[4] as string;
    const broken = `${sigLine.slice(0, -6)}AAAAA=`;
    expect((await w.addCheckpoint(Buffer.from(formatAddCheckpoint(0, [], `${cp.note}${broken}\n`)))).status).toBe(403);
    // A second log is followed independently.
    expect((await submit(w, t, 0, 4, other)).a.status).toBe(200);
    expect((await submit(w, t, 0, 4)).a.status).toBe(200);
  });

  it('400 for old size above the checkpoint size and for malformed bodies', async () => {
    const { w } = await witness();
    const t = tree(4);
    expect((await submit(w, t, 5, 4)).a.status).toBe(400);
    expect((await w.addCheckpoint(Buffer.from('old x\n\n'))).status).toBe(400);
  });

  it('concurrent requests for one log: exactly one of two racing extensions from the same old size wins', async () => {
    const { w } = await witness();
    const t = tree(20);
    await submit(w, t, 0, 5);
    const [a, b] = await Promise.all([submit(w, t, 5, 10), submit(w, t, 5, 15)]);
    expect([a.a.status, b.a.status].sort()).toEqual([200, 409]);
  });

  it('persists before answering: a restarted witness holds the last cosigned size and root', async () => {
    const { w, dir, state } = await witness();
    const t = tree(9);
    await submit(w, t, 0, 9);
    await state.close();
    states.splice(states.indexOf(state), 1);
    const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
    expect(files).toEqual([`${originHash(log.name)}.json`]);
    const { w: again } = await witness(dir);
    expect((await submit(again, t, 0, 9)).a.body).toBe('9\n');
    expect((await submit(again, tree(9, 'b'), 9, 9)).a.status).toBe(422);
    // The stored note carries the log signature and the cosignature.
    const rec = JSON.parse(readFileSync(path.join(dir, files[0] as string), 'utf8')) as { note: string };
    expect(openCheckpoint(rec.note, log.verifier).size).toBe(9);
    expect(verifyCosignatures(rec.note, [cosigner.key])).toHaveLength(1);
    expect(again.checkpoint(originHash(log.name))).toMatchObject({ status: 200, body: rec.note });
    expect(again.checkpoint(originHash('nope')).status).toBe(404);
  });

  it('refuses to start on a corrupt record, and clears an unfinished temporary file', async () => {
    const d = mkdtempSync(path.join(tmpdir(), 'witness-'));
    dirs.push(d);
    writeFileSync(path.join(d, '.tmp-0123abcd'), 'half');
    const s = await WitnessState.open(d);
    expect(readdirSync(d)).not.toContain('.tmp-0123abcd');
    await s.close();
    writeFileSync(path.join(d, `${originHash(log.name)}.json`), '{"origin":"example.org/tessera/audit","size":3');
    await expect(WitnessState.open(d)).rejects.toThrow(/not JSON/);
    writeFileSync(path.join(d, `${originHash(log.name)}.json`), JSON.stringify({ origin: 'x', size: 1, rootHash: Buffer.alloc(32).toString('base64'), note: '' }));
    await expect(WitnessState.open(d)).rejects.toThrow(/another log/);
  });

  it('a second witness process cannot open the same state directory', async () => {
    const { dir } = await witness();
    await expect(WitnessState.open(dir)).rejects.toThrow();
  });
});

describe('witness HTTP server', () => {
  it('serves add-checkpoint and the monitoring checkpoint; refuses other methods, paths and oversized bodies', async () => {
    const { w } = await witness();
    const srv = await startWitnessServer(w, { host: '127.0.0.1', port: 0 });
    try {
      const t = tree(3);
      const cp = await signCheckpoint(log, 3, t.root(3));
      const post = (body: string | Buffer) => fetch(`${srv.url}/add-checkpoint`, { method: 'POST', body });
      const ok = await post(formatAddCheckpoint(0, [], cp.note));
      expect(ok.status).toBe(200);
      const line = await ok.text();
      expect(verifyCosignatures(cp.note + line, [cosigner.key])).toHaveLength(1);
      const conflict = await post(formatAddCheckpoint(0, [], cp.note));
      expect(conflict.status).toBe(409);
      expect(conflict.headers.get('content-type')).toBe('text/x.tlog.size');
      expect(await conflict.text()).toBe('3\n');
      expect((await fetch(`${srv.url}/add-checkpoint`)).status).toBe(405);
      expect((await fetch(`${srv.url}/nope`)).status).toBe(404);
      const mon = await fetch(`${srv.url}/${originHash(log.name)}/checkpoint`);
      expect(mon.status).toBe(200);
      expect(await mon.text()).toBe(cp.note + line);
      const big = await post(Buffer.alloc(200_000, 0x41)).catch(() => undefined);
      if (big !== undefined) expect(big.status).toBe(413);
      // Still serving after the oversized one.
      expect((await post('old 0\n')).status).toBe(400);
    } finally {
      await srv.close();
    }
  });
});
