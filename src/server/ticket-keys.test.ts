import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EmbeddedStore } from '../store/embedded.js';
import { SharedTicketKeys, TICKET_SPACE } from './ticket-keys.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function store(clock: { now(): number }): Promise<EmbeddedStore> {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-tickets-'));
  const s = await EmbeddedStore.open(dir, { fsync: false, clock });
  cleanup.push(async () => {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return s;
}

describe('SharedTicketKeys', () => {
  it('replicas install one random key per period, and follow the rotation to the next one', async () => {
    const clock = { t: 10 * 3_600_000 + 5, now() { return this.t; } };
    const s = await store(clock);
    const installed: [string, Buffer][] = [];
    const target = (name: string) => ({ setTicketKeys: (k: Buffer) => installed.push([name, Buffer.from(k)]) });
    const [x, y] = await Promise.all([
      SharedTicketKeys.start(s, target('x'), { periodMs: 3_600_000, clock }),
      SharedTicketKeys.start(s, target('y'), { periodMs: 3_600_000, clock }),
    ]);
    cleanup.push(async () => {
      x.close();
      y.close();
    });
    // One of them may wait for the other's key; a refresh picks it up.
    await x.refresh();
    await y.refresh();
    const first = installed.map(([, k]) => k.toString('hex'));
    expect(new Set(first).size).toBe(1);
    expect(first[0]).toHaveLength(96);
    expect([x.period, y.period]).toEqual([10, 10]);
    clock.t += 3_600_000;
    await x.refresh();
    await y.refresh();
    const second = installed.slice(first.length).map(([, k]) => k.toString('hex'));
    expect(second).toHaveLength(2);
    expect(new Set(second).size).toBe(1);
    expect(second[0]).not.toBe(first[0]);
    expect((await s.kvList(TICKET_SPACE)).map((r) => r.key).sort()).toEqual(['period:10', 'period:11']);
  });

  it('refuses a period under a second', async () => {
    const s = await store({ now: () => 0 });
    await expect(SharedTicketKeys.start(s, { setTicketKeys: () => {} }, { periodMs: 10 })).rejects.toThrow(/periodMs/);
  });
});
