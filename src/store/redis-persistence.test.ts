import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { judgePersistence, persistenceVerdict, type RedisNodePersistence } from './redis-persistence.js';

const node = (appendonly: string, appendfsync: string, save: string, name = '10.0.0.1:6379'): RedisNodePersistence => ({
  node: name,
  settings: { appendonly, appendfsync, save },
});

describe('judgePersistence', () => {
  it.each([
    ['yes', 'always', '', 'durable'],
    ['yes', 'always', '3600 1', 'durable'],
    ['YES', 'Always', '', 'durable'],
    ['yes', 'everysec', '', 'weak'],
    ['yes', 'no', '', 'volatile'],
    ['no', 'everysec', '3600 1 300 100 60 10000', 'volatile'],
    ['no', 'always', '', 'volatile'],
    ['yes', 'sometimes', '', 'unknown'],
    ['maybe', 'always', '', 'unknown'],
  ])('appendonly %s, appendfsync %s, save %j → %s', (appendonly, appendfsync, save, kind) => {
    expect(judgePersistence({ appendonly, appendfsync, save }).kind).toBe(kind);
  });

  it('names the settings and what they lose', () => {
    expect(judgePersistence({ appendonly: 'no', appendfsync: 'everysec', save: '' })).toMatchObject({
      reason: expect.stringMatching(/appendonly no and save "": Redis keeps nothing across a restart/) as unknown,
    });
    expect(judgePersistence({ appendonly: 'no', appendfsync: 'everysec', save: '900 1' })).toMatchObject({
      reason: expect.stringMatching(/RDB snapshots only, save "900 1".*since the last snapshot/) as unknown,
    });
    expect(judgePersistence({ appendonly: 'yes', appendfsync: 'no', save: '' })).toMatchObject({ reason: expect.stringMatching(/appendfsync no/) as unknown });
  });

  it('never throws, and calls nothing durable but appendonly yes + appendfsync always (any reply strings)', () => {
    fc.assert(
      fc.property(fc.string(), fc.string(), fc.string(), (appendonly, appendfsync, save) => {
        const j = judgePersistence({ appendonly, appendfsync, save });
        if (j.kind === 'durable') {
          expect(appendonly.trim().toLowerCase()).toBe('yes');
          expect(appendfsync.trim().toLowerCase()).toBe('always');
        } else expect(j.reason.length).toBeGreaterThan(0);
      }),
    );
  });
});

describe('persistenceVerdict', () => {
  it('passes a durable Redis quietly', () => {
    expect(persistenceVerdict([node('yes', 'always', '')], { allowVolatile: false })).toEqual({ warnings: [] });
  });

  it('passes everysec with a warning naming the node and the loss', () => {
    const v = persistenceVerdict([node('yes', 'everysec', '')], { allowVolatile: false });
    expect(v.refusal).toBeUndefined();
    expect(v.warnings).toHaveLength(1);
    expect(v.warnings[0]).toMatch(/^Redis persistence on 10\.0\.0\.1:6379 is weak: appendonly yes with appendfsync everysec: .*~1 s/);
  });

  it('refuses a Redis that cannot keep the log, naming the node, the settings, the fix and the opt-out', () => {
    const v = persistenceVerdict([node('no', 'everysec', '')], { allowVolatile: false });
    expect(v.refusal).toMatch(/^Redis store: refusing to start on a Redis that cannot keep the audit log \(10\.0\.0\.1:6379: appendonly no and save ""/);
    expect(v.refusal).toMatch(/appendonly yes and appendfsync always/);
    expect(v.refusal).toMatch(/store\.redis\.allowVolatile: true/);
  });

  it('refuses when any one Cluster master is volatile, naming that one', () => {
    const v = persistenceVerdict([node('yes', 'always', '', 'a:1'), node('no', 'always', '60 1', 'b:2')], { allowVolatile: false });
    expect(v.refusal).toMatch(/\(b:2: appendonly no \(RDB snapshots only/);
    expect(v.refusal).not.toMatch(/a:1/);
  });

  it('with allowVolatile: starts, and says loudly what it starts on', () => {
    const v = persistenceVerdict([node('no', 'everysec', '')], { allowVolatile: true });
    expect(v.refusal).toBeUndefined();
    expect(v.warnings).toEqual([expect.stringMatching(/^store\.redis\.allowVolatile is set: starting on a Redis that CANNOT KEEP THE AUDIT LOG \(10\.0\.0\.1:6379: appendonly no/)]);
  });

  it('allowVolatile changes nothing on a durable Redis', () => {
    expect(persistenceVerdict([node('yes', 'always', '')], { allowVolatile: true })).toEqual({ warnings: [] });
  });

  it('warns loudly where CONFIG is not permitted, naming the error; does not refuse', () => {
    const v = persistenceVerdict([{ node: 'redis.example:6379', error: "NOPERM User tessera has no permissions to run the 'config|get' command" }], { allowVolatile: false });
    expect(v.refusal).toBeUndefined();
    expect(v.warnings).toEqual([expect.stringMatching(/^Redis persistence NOT CHECKED on redis\.example:6379: CONFIG GET was refused \(NOPERM .*config\|get/)]);
  });

  it('warns on values it does not know', () => {
    const v = persistenceVerdict([node('yes', 'sometimes', '')], { allowVolatile: false });
    expect(v.refusal).toBeUndefined();
    expect(v.warnings[0]).toMatch(/could not be judged: appendonly yes with an appendfsync value Tessera does not know \("sometimes"\)/);
  });
});
