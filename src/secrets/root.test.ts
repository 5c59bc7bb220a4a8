import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BrokerError } from '../errors.js';
import { EmbeddedStore } from '../store/embedded.js';
import type { SecretEngine } from './engine.js';
import { KeyRing, kekIdOf } from './envelope.js';
import { ROOT_SPACE, RootPasswords } from './root.js';

/**
 * A backend with one admin password, reached through the engine seam: health() logs in with whatever
 * the RootPasswords source says now (the config's password when nothing is stored), rotateRoot()
 * changes it — or fails before or after changing it, as a real backend may.
 */
class FakeEngine {
  readonly kind = 'redis' as const;
  readonly name = 'fake';
  backend = 'config-pw';
  fail: 'none' | 'before' | 'after' | 'refused' = 'none';
  constructor(private readonly roots: RootPasswords) {}
  async current(): Promise<string> {
    return (await this.roots.current(this.name)) ?? 'config-pw';
  }
  async health(): Promise<{ ok: true } | { ok: false; error: string }> {
    return (await this.current()) === this.backend ? { ok: true } : { ok: false, error: 'WRONGPASS' };
  }
  async rotateRoot(pw: string): Promise<void> {
    if ((await this.current()) !== this.backend) throw new BrokerError('engine_unavailable', 'login refused');
    if (this.fail === 'refused') throw new BrokerError('root_rotation_refused', 'cannot');
    if (this.fail === 'before') throw new BrokerError('engine_unavailable', 'connection reset');
    this.backend = pw;
    if (this.fail === 'after') throw new BrokerError('engine_unavailable', 'answer lost');
  }
}

const engine = (f: FakeEngine): SecretEngine => f as unknown as SecretEngine;

describe('RootPasswords', () => {
  let dir: string;
  let store: EmbeddedStore;
  const ring = (() => {
    const key = randomBytes(32);
    return KeyRing.of({ id: kekIdOf(key), key });
  })();

  beforeEach(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'tessera-root-'));
    store = await EmbeddedStore.open(dir, { fsync: false });
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('rotates: the backend gets a fresh password, the store holds it sealed, and the engine uses it', async () => {
    const roots = new RootPasswords(store, ring, 'r1');
    const f = new FakeEngine(roots);
    expect(await roots.current('fake')).toBeUndefined();
    await roots.rotate(engine(f));
    expect(f.backend).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(await roots.current('fake')).toBe(f.backend);
    expect((await f.health()).ok).toBe(true);
    const text = (await store.kvGet(ROOT_SPACE, 'fake')) as string;
    expect(text).not.toContain(f.backend);
    expect(Object.keys(JSON.parse(text) as object)).toEqual(['active']);
    // Another replica (same store, same KEK) reads the same password.
    expect(await new RootPasswords(store, ring, 'r2').current('fake')).toBe(f.backend);
    const first = f.backend;
    await roots.rotate(engine(f));
    expect(f.backend).not.toBe(first);
  });

  it('a failure before the backend changed drops the pending password; one after keeps it', async () => {
    const roots = new RootPasswords(store, ring, 'r1');
    const f = new FakeEngine(roots);
    f.fail = 'before';
    await expect(roots.rotate(engine(f))).rejects.toMatchObject({ code: 'engine_unavailable' });
    expect(f.backend).toBe('config-pw');
    expect(await store.kvGet(ROOT_SPACE, 'fake')).toBe('{}');
    expect((await f.health()).ok).toBe(true);

    f.fail = 'after';
    await expect(roots.rotate(engine(f))).rejects.toMatchObject({ code: 'engine_unavailable' });
    expect(await roots.current('fake')).toBe(f.backend);
    expect((await f.health()).ok).toBe(true);

    f.fail = 'refused';
    const before = await store.kvGet(ROOT_SPACE, 'fake');
    await expect(roots.rotate(engine(f))).rejects.toMatchObject({ code: 'root_rotation_refused' });
    expect(await store.kvGet(ROOT_SPACE, 'fake')).toBe(before);
  });

  it('settle (start): a pending password is kept if it logs in, else dropped', async () => {
    const roots = new RootPasswords(store, ring, 'r1');
    const f = new FakeEngine(roots);
    await roots.rotate(engine(f));
    const active = f.backend;
    expect(await roots.settle(engine(f))).toBe('active');
    // Leave a pending record as a crash would, with the backend unchanged: dropped.
    f.fail = 'before';
    const record = JSON.parse((await store.kvGet(ROOT_SPACE, 'fake')) as string) as { active: unknown };
    await expect(roots.rotate(engine(f))).rejects.toThrow();
    await store.kvPut(ROOT_SPACE, 'fake', JSON.stringify({ ...record, pending: record.active }));
    f.backend = 'something-else';
    expect(await roots.settle(engine(f))).toBe('dropped');
    f.backend = active;
    expect(await roots.current('fake')).toBe(active);
  });

  it('one rotation at a time; no KEK, a tampered record or a wrong KEK: refused, never used', async () => {
    const roots = new RootPasswords(store, ring, 'r1');
    const f = new FakeEngine(roots);
    expect(await store.tryLock('secret-root/fake', 'other-replica', 60_000)).toBe(true);
    await expect(roots.rotate(engine(f))).rejects.toMatchObject({ code: 'root_rotation_refused' });
    await store.unlock('secret-root/fake', 'other-replica');
    await roots.rotate(engine(f));

    await expect(new RootPasswords(store, undefined, 'r').current('fake')).rejects.toMatchObject({ code: 'kek_unavailable' });
    await expect(new RootPasswords(store, undefined, 'r').rotate(engine(f))).rejects.toMatchObject({ code: 'kek_unavailable' });
    const other = randomBytes(32);
    await expect(new RootPasswords(store, KeyRing.of({ id: kekIdOf(other), key: other }), 'r').current('fake')).rejects.toMatchObject({ code: 'kek_unavailable' });

    const rec = JSON.parse((await store.kvGet(ROOT_SPACE, 'fake')) as string) as { active: { ct: string } };
    rec.active.ct = Buffer.from('tampered').toString('base64');
    await store.kvPut(ROOT_SPACE, 'fake', JSON.stringify(rec));
    await expect(roots.current('fake')).rejects.toMatchObject({ code: 'secret_integrity_failed' });
    await store.kvPut(ROOT_SPACE, 'fake', '{"active":"x"}');
    await expect(roots.current('fake')).rejects.toMatchObject({ code: 'secret_integrity_failed' });
  });

  it('rewrapAll moves every stored password under the new active KEK', async () => {
    const roots = new RootPasswords(store, ring, 'r1');
    const f = new FakeEngine(roots);
    await roots.rotate(engine(f));
    const key = randomBytes(32);
    const next = ring.withActive({ id: kekIdOf(key), key });
    expect(await new RootPasswords(store, next, 'cli').rewrapAll(next)).toEqual({ rewrapped: 1, failed: [] });
    expect(((JSON.parse((await store.kvGet(ROOT_SPACE, 'fake')) as string) as { active: { kek: string } }).active.kek)).toBe(next.activeId);
    expect(await new RootPasswords(store, KeyRing.of({ id: kekIdOf(key), key }), 'r').current('fake')).toBe(f.backend);
  });
});
