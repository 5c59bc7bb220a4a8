import { describe, expect, it } from 'vitest';
import { issue19Targets, redisRoundTrips } from '../../bench/targets.mjs';

const peer = (key: string, concurrency: number, rps: number, extra: object = {}): object => ({ key, concurrency, rps, ...extra });

/** A result shaped like bench/results/latest.json, with only what the targets read. */
function result(over: { freshC1P50?: number; redisRatio?: number } = {}): object {
  return {
    peers: {
      rows: [
        peer('tessera-fresh', 1, 900, { p50Ms: over.freshC1P50 ?? 1.1 }),
        peer('tessera-fresh', 32, 2400, { serverCpuUs: 700 }),
        peer('tessera-jwt', 1, 1100, { p50Ms: 0.85 }),
        peer('cfssl-certdb', 1, 1000),
        peer('cfssl-authsign', 32, 5000),
      ],
    },
    redis: { ratios: { oneRedisOverEmbeddedC32: over.redisRatio ?? 1.0 }, roundTrips: { issuances: 50, byCommand: { mget: 50, evalsha: 102, llen: 1 } }, freshOverKeepAlive: 0.31 },
    tlsFloor: { ratio: 0.13, tessera: { ratio: 0.33, ceiling: 0.55 } },
    scale: { ratio: 0.95, rows: [{ entries: 1000 }, { entries: 1e7, restartMs: 1200, restartAfterRunMs: 5200, rssStartMiB: 139, serverPeakRssMiB: 220 }] },
  };
}

const byId = (r: object): Map<string, ReturnType<typeof issue19Targets>[number]> => new Map(issue19Targets(r).map((t) => [t.id, t]));

describe('issue 19 targets from a bench result', () => {
  it('judges each target from its own row, in the direction the target asks', () => {
    const t = byId(result());
    expect(t.get('x509-c1-vs-certdb')).toMatchObject({ measured: 0.9, met: false });
    expect(t.get('x509-c1-p50')).toMatchObject({ measured: 1.1, met: false });
    expect(t.get('x509-c32-cpu')).toMatchObject({ measured: 700, met: false });
    expect(t.get('x509-c32-vs-authsign')).toMatchObject({ measured: 0.48, met: false });
    expect(t.get('redis-vs-embedded')).toMatchObject({ measured: 1, met: true });
    expect(t.get('fresh-mtls')).toMatchObject({ measured: 0.33, met: false });
    expect(t.get('log-rate')).toMatchObject({ measured: 0.95, met: true });
    expect(t.get('log-memory')).toMatchObject({ measured: 220, met: null });
    expect(byId(result({ freshC1P50: 0.8 })).get('x509-c1-p50')?.met).toBe(true);
    expect(byId(result({ redisRatio: 0.79 })).get('redis-vs-embedded')?.met).toBe(false);
  });

  it('takes the slower of the two restarts at 10^7 entries', () => {
    expect(byId(result()).get('log-restart')).toMatchObject({ measured: 5200, met: false });
  });

  it('says "not measured" (met null) for a row that did not run, instead of throwing', () => {
    for (const t of issue19Targets({})) expect(t).toMatchObject({ measured: undefined, met: null });
  });

  it('counts the Redis commands every issuance sent apart from the occasional ones', () => {
    expect(redisRoundTrips({ issuances: 50, byCommand: { mget: 50, evalsha: 102, llen: 1 } })).toEqual({ perIssuance: 3, occasional: 3, issuances: 50 });
    expect(redisRoundTrips({ issuances: 10, byCommand: { evalsha: 40 } })).toEqual({ perIssuance: 4, occasional: 0, issuances: 10 });
    expect(redisRoundTrips(undefined)).toBeUndefined();
  });
});
