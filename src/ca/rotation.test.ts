import { describe, it, expect, beforeAll, afterEach } from 'vitest';
import fc from 'fast-check';
import { generateKeyPairSync, randomBytes, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { TestClock } from '../../test/helpers/clock.js';
import { KeyRing, kekIdOf } from '../secrets/envelope.js';
import { EmbeddedStore } from '../store/embedded.js';
import {
  activeOf,
  activateAt,
  applyStep,
  CA_STATE_KEY,
  CA_STATE_SPACE,
  CaRotation,
  dueStep,
  prepareAt,
  RETIRE_GRACE_MS,
  rootIssuer,
  type AuthorityMaterial,
  type AuthorityRecord,
  type CaRotationOptions,
  type CaState,
  type LiveAuthorities,
} from './rotation.js';
import { issuerFromPem, mintCa } from './x509.js';

const TD = 'example.org';
const S = 1000;
const LIMITS = { maxX509TtlMs: 5 * S, maxJwtTtlMs: 30 * S };
const pemOf = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();
const p256 = (): { publicKey: KeyObject; privateKey: KeyObject } => generateKeyPairSync('ec', { namedCurve: 'P-256' });

const t0 = Date.UTC(2030, 0, 1);
let rootPem: string;
let rootKeyPem: string;
let initial: AuthorityMaterial;

beforeAll(() => {
  const rk = p256();
  rootPem = mintCa(
    { commonName: 'Root', trustDomain: TD, subjectPublicKey: rk.publicKey, notBefore: new Date(t0 - 86_400_000), notAfter: new Date(t0 + 365 * 86_400_000), pathLen: 1 },
    { selfSignedKey: rk.privateKey },
  ).pem;
  rootKeyPem = pemOf(rk.privateKey);
  const ik = p256();
  // The first signing CA lives 60 s: prepare at 30 s, activate at 50 s.
  const cert = mintCa(
    { commonName: 'First', trustDomain: TD, subjectPublicKey: ik.publicKey, notBefore: new Date(t0), notAfter: new Date(t0 + 60 * S), pathLen: 0 },
    issuerFromPem(rootPem, rootKeyPem),
  );
  initial = { certPem: cert.pem, intermediatesPem: '', key: { pem: pemOf(ik.privateKey) }, jwtKey: { pem: pemOf(p256().privateKey) } };
});

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const ring = KeyRing.of((() => {
  const key = randomBytes(32);
  return { id: kekIdOf(key), key };
})());

interface Harness {
  rotation: CaRotation;
  store: EmbeddedStore;
  changes: LiveAuthorities[];
  steps: string[];
  errors: string[];
}

async function open(dir: string, clock: TestClock, owner = 'a', overrides: Partial<CaRotationOptions> = {}): Promise<Harness> {
  const store = await EmbeddedStore.open(dir, { fsync: false });
  const changes: LiveAuthorities[] = [];
  const steps: string[] = [];
  const errors: string[] = [];
  const rotation = await CaRotation.open(
    {
      store,
      clock,
      ring,
      rootsPem: rootPem,
      root: rootIssuer(rootPem, rootKeyPem),
      trustDomain: TD,
      caTtlMs: 120 * S,
      pollIntervalMs: 60_000,
      limits: LIMITS,
      owner,
      refreshHintSeconds: 300,
      onChange: (live) => changes.push(live),
      onStep: async (step) => {
        steps.push(step.kind);
      },
      onError: (err) => errors.push(err instanceof Error ? err.message : String(err)),
      ...overrides,
    },
    initial,
  );
  return { rotation, store, changes, steps, errors };
}

const tempDir = (): string => {
  const d = mkdtempSync(path.join(tmpdir(), 'tessera-rotation-'));
  dirs.push(d);
  return d;
};

/** The bundle publishes the active authority's JWT key, and its X.509 root, in every state. */
function expectConsistent(live: LiveAuthorities): void {
  const active = activeOf(live.state);
  expect(live.ca.authorityId).toBe(active.id);
  expect(live.jwt.kid).toBe(active.jwtKid);
  const kids = live.bundle.keys.filter((k) => k.use === 'jwt-svid').map((k) => k.kid);
  expect(kids).toContain(active.jwtKid);
  expect(kids).toEqual(live.state.authorities.map((a) => a.jwtKid));
  expect(live.bundle.spiffe_sequence).toBe(live.state.sequence);
}

describe('CA rotation (one replica, injected clock)', () => {
  it('prepares at 1/2, activates at 5/6, drops the old one after its last SVID, stepping the bundle sequence', async () => {
    const clock = TestClock.frozen(t0 + S);
    const h = await open(tempDir(), clock);
    const first = h.rotation.current();
    expect(first.state.sequence).toBe(1);
    expect(first.state.authorities.map((a) => a.state)).toEqual(['active']);
    expectConsistent(first);

    clock.set(t0 + 29 * S);
    await h.rotation.tick();
    expect(h.changes).toHaveLength(0);

    clock.set(t0 + 30 * S);
    await h.rotation.tick();
    let live = h.rotation.current();
    expect(live.state.sequence).toBe(2);
    expect(live.state.authorities.map((a) => a.state)).toEqual(['active', 'prepared']);
    expect(live.ca).toBe(first.ca); // published, not yet signing
    expect(live.bundle.keys.filter((k) => k.use === 'jwt-svid')).toHaveLength(2);
    expectConsistent(live);
    const next = live.state.authorities[1] as AuthorityRecord;
    // The next CA chains to the same root, is a CA, and has its own key.
    const nextCert = new X509Certificate(next.certPem);
    expect(nextCert.ca).toBe(true);
    expect(nextCert.verify(new X509Certificate(rootPem).publicKey)).toBe(true);
    expect(Date.parse(nextCert.validTo) - (t0 + 30 * S)).toBe(120 * S);

    clock.set(t0 + 49 * S);
    await h.rotation.tick();
    expect(h.rotation.current().ca).toBe(first.ca);

    clock.set(t0 + 50 * S);
    await h.rotation.tick();
    live = h.rotation.current();
    expect(live.state.sequence).toBe(2); // activation changes nothing published
    expect(live.ca.authorityId).toBe(next.id);
    expect(live.state.authorities.map((a) => a.state)).toEqual(['old', 'active']);
    const old = live.state.authorities[0] as AuthorityRecord;
    // The last JWT-SVID of the old key (issued up to the switch) ends 30 s after it: 50 + 30 + grace.
    expect(old.retireAt).toBe(t0 + 80 * S + RETIRE_GRACE_MS);
    expectConsistent(live);

    // A new X.509-SVID comes from the new CA, with its full TTL.
    const svid = live.ca.issueX509Svid({ spiffeId: 'spiffe://example.org/w', dnsNames: [], publicKey: p256().publicKey, ttlMs: 5 * S, now: clock.now() });
    expect(new X509Certificate(svid.certPem).verify(nextCert.publicKey)).toBe(true);
    expect(svid.notAfter).toBe(clock.now() + 5 * S);

    clock.set((old.retireAt as number) - 1);
    await h.rotation.tick();
    expect(h.rotation.current().state.authorities).toHaveLength(2);
    clock.set(old.retireAt as number);
    await h.rotation.tick();
    live = h.rotation.current();
    expect(live.state.sequence).toBe(3);
    expect(live.state.authorities.map((a) => a.id)).toEqual([next.id]);
    expectConsistent(live);
    expect(h.steps).toEqual(['prepare', 'activate', 'drop']);
    expect(h.errors).toEqual([]);
    await h.rotation.close();
    await h.store.close();
  });

  it('restarts (the process gone without closing anything) after each step into the same state and goes on from there (never a bundle without its active authority)', async () => {
    const dir = tempDir();
    const clock = TestClock.frozen(t0 + S);
    const seen: CaState[] = [];
    for (const at of [30, 50, 86, 200]) {
      const h = await open(dir, clock);
      const before = h.rotation.current();
      // The stored state wins over the config files on restart: no reseeding.
      if (seen.length > 0) expect(before.state).toEqual(seen[seen.length - 1]);
      expectConsistent(before);
      clock.set(t0 + at * S);
      await h.rotation.tick();
      const after = h.rotation.current();
      expectConsistent(after);
      seen.push(after.state);
      // The next instance opens the same directory (the dir lock must be free: the store is closed, nothing else).
      await h.rotation.close();
      await h.store.close();
    }
    expect(seen.map((s) => s.sequence)).toEqual([2, 2, 3, 4]);
    // At 200 s the second CA (24 s..150 s) has passed 1/2 of its life: a third is prepared.
    expect((seen[3] as CaState).authorities.map((a) => a.state)).toEqual(['active', 'prepared']);
  });

  it('a step that did not reach the store is redone after a restart', async () => {
    const dir = tempDir();
    const clock = TestClock.frozen(t0 + 30 * S);
    // The store refuses the write of the prepare step: the state stays as it was.
    const broken = await open(dir, clock);
    const put = broken.store.kvPut.bind(broken.store);
    broken.store.kvPut = async () => {
      throw new Error('disk full');
    };
    await broken.rotation.tick();
    expect(broken.errors).toEqual(['disk full']);
    expect(broken.rotation.current().state.sequence).toBe(1);
    broken.store.kvPut = put;
    await broken.rotation.close();
    await broken.store.close();
    const again = await open(dir, clock);
    await again.rotation.tick();
    expect(again.rotation.current().state.sequence).toBe(2);
    expect(JSON.parse((await again.store.kvGet(CA_STATE_SPACE, CA_STATE_KEY)) ?? '{}')).toEqual(again.rotation.current().state);
    await again.rotation.close();
    await again.store.close();
  });

  it('a second rotation on the same store only follows: one replica prepares, the other switches on its next read', async () => {
    const dir = tempDir();
    const clock = TestClock.frozen(t0 + S);
    const a = await open(dir, clock, 'a');
    const b = new CaRotationFollower(a.store, clock);
    await b.open();
    clock.set(t0 + 30 * S);
    await a.rotation.tick();
    await b.rotation().tick();
    expect(b.rotation().current().state).toEqual(a.rotation.current().state);
    expect(b.rotation().current().bundle.spiffe_sequence).toBe(2);
    await b.rotation().close();
    await a.rotation.close();
    await a.store.close();
  });

  it('reads authorities whose keys are sealed PEMs (as stored before token keys existed) or token labels, and nothing else', () => {
    const sealed = { v: 1, alg: 'A256GCM', kek: 'kek-0000000000000000', dek: '', iv: '', ct: '', tag: '' };
    const record = (key: unknown, jwtKey: unknown): string =>
      JSON.stringify({
        version: 1,
        sequence: 1,
        authorities: [{ id: 'ab', state: 'active', certPem: 'x', intermediatesPem: '', key, jwtKey, jwtKid: 'k', jwtPublic: { kty: 'EC', crv: 'P-256', x: '', y: '' }, notBefore: 0, notAfter: 1, preparedAt: 0 }],
      });
    expect(activeOf(CaRotation.parse(record(sealed, sealed))).key).toEqual(sealed);
    expect(activeOf(CaRotation.parse(record({ token: { keyLabel: 'ca' } }, sealed))).key).toEqual({ token: { keyLabel: 'ca' } });
    expect(activeOf(CaRotation.parse(record(sealed, { token: { keyLabel: 'jwt.next-00' } }))).jwtKey).toEqual({ token: { keyLabel: 'jwt.next-00' } });
    for (const bad of [{ token: { keyLabel: '' } }, { token: { keyLabel: 'ca', module: '/x.so' } }, { token: { keyLabel: 'ca' }, ct: '' }, { ...sealed, token: { keyLabel: 'ca' } }]) {
      expect(() => CaRotation.parse(record(bad, sealed)), JSON.stringify(bad)).toThrow(/unreadable/);
    }
  });

  it('refuses a stored state that is not one', async () => {
    expect(() => CaRotation.parse('{"version":1,"sequence":1,"authorities":[]}')).toThrow(/0 active authorities/);
    expect(() => CaRotation.parse('nope')).toThrow(/unreadable \(not JSON\)/);
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        expect(() => CaRotation.parse(JSON.stringify(v))).toThrow();
      }),
      { numRuns: 300 },
    );
  });

  it('rootIssuer names the problem when the key is no root of the bundle', () => {
    expect(() => rootIssuer(rootPem, pemOf(p256().privateKey))).toThrow(/matches no root certificate/);
    expect(() => rootIssuer(rootPem, 'junk')).toThrow(/not a readable private key/);
  });
});

/** A replica that shares the store (the same embedded store object stands in for Redis here). */
class CaRotationFollower {
  #rotation: CaRotation | undefined;
  constructor(
    private readonly store: EmbeddedStore,
    private readonly clock: TestClock,
  ) {}

  async open(): Promise<void> {
    this.#rotation = await CaRotation.open(
      {
        store: this.store,
        clock: this.clock,
        ring,
        rootsPem: rootPem,
        root: rootIssuer(rootPem, rootKeyPem),
        trustDomain: TD,
        caTtlMs: 120 * S,
        pollIntervalMs: 60_000,
        limits: LIMITS,
        owner: 'b',
        refreshHintSeconds: 300,
        onChange: () => {},
        onError: () => {},
      },
      // Its own config files do not matter once the store holds a state.
      { ...initial, jwtKey: { pem: pemOf(p256().privateKey) } },
    );
  }

  rotation(): CaRotation {
    if (this.#rotation === undefined) throw new Error('not open');
    return this.#rotation;
  }
}

describe('rotation schedule (pure)', () => {
  const rec = (id: string, state: AuthorityRecord['state'], notBefore: number, notAfter: number): AuthorityRecord => ({
    id,
    state,
    certPem: 'x',
    intermediatesPem: '',
    key: { v: 1, alg: 'A256GCM-envelope', kek: 'kek-0000000000000000', dek: '', iv: '', ct: '', tag: '' } as unknown as AuthorityRecord['key'],
    jwtKey: { v: 1, alg: 'A256GCM-envelope', kek: 'kek-0000000000000000', dek: '', iv: '', ct: '', tag: '' } as unknown as AuthorityRecord['key'],
    jwtKid: `kid-${id}`,
    jwtPublic: { kty: 'EC', crv: 'P-256', x: '', y: '' },
    notBefore,
    notAfter,
    preparedAt: notBefore,
  });

  it('over any sequence of ticks: one active authority, sequence only grows, nothing dropped before its SVIDs ended, never an expired active while a successor was ready', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 40_000 }), { minLength: 1, maxLength: 60 }), fc.integer({ min: 30, max: 600 }), (gaps, ttlS) => {
        const ttl = ttlS * S;
        let state: CaState = { version: 1, sequence: 1, authorities: [rec('a0', 'active', 0, ttl)] };
        let now = 0;
        let n = 1;
        for (const gap of gaps) {
          now += gap;
          // Like a tick: every due step, one after the other.
          for (let step = dueStep(state, now); step !== undefined; step = dueStep(state, now)) {
            const before = state;
            const prepared = step.kind === 'prepare' ? { ...rec(`a${n++}`, 'prepared', now, now + ttl) } : undefined;
            if (step.kind === 'drop') {
              const dropped = before.authorities.find((a) => a.id === step.id) as AuthorityRecord;
              const activated = activeOf(before).activatedAt ?? 0;
              expect(now).toBeGreaterThanOrEqual(Math.max(dropped.retireAt as number, activated));
            }
            state = applyStep(before, step, now, LIMITS, prepared);
            expect(state.authorities.filter((a) => a.state === 'active')).toHaveLength(1);
            expect(state.sequence).toBe(before.sequence + (step.kind === 'activate' ? 0 : 1));
            if (step.kind === 'activate') {
              const old = state.authorities.find((a) => a.id === activeOf(before).id) as AuthorityRecord;
              // Nothing the old one signed outlives its stay in the bundle.
              expect(old.retireAt).toBeGreaterThanOrEqual(Math.min(old.notAfter, now + LIMITS.maxX509TtlMs));
              expect(old.retireAt).toBeGreaterThanOrEqual(now + LIMITS.maxJwtTtlMs);
            }
          }
          const active = activeOf(state);
          // Once the due steps are done, the active authority is live, however long the broker was away.
          expect(now).toBeLessThan(active.notAfter);
          expect(now < prepareAt(active) || preparedOf(state) !== undefined || now >= activateAt(active)).toBe(true);
        }
      }),
      { numRuns: 200 },
    );
  });
});

function preparedOf(state: CaState): AuthorityRecord | undefined {
  return state.authorities.find((a) => a.state === 'prepared');
}


describe('checkImportedCa (ca import)', () => {
  it('accepts a CA under an intermediate only with the chain, and refuses a pathLenConstraint it breaks', async () => {
    const { checkImportedCa } = await import('./rotation.js');
    const { issuerFromPem: issuerOf, mintCa: ca } = await import('./x509.js');
    const pem = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();
    const now = Date.now();
    const span = { notBefore: new Date(now - 60_000), notAfter: new Date(now + 3_600_000) };
    const make = (pathLen: number) => {
      const rootKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const root = ca({ commonName: 'Root', trustDomain: 'example.org', subjectPublicKey: rootKey.publicKey, ...span, pathLen }, { selfSignedKey: rootKey.privateKey });
      const midKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const mid = ca({ commonName: 'Mid', trustDomain: 'example.org', subjectPublicKey: midKey.publicKey, ...span, pathLen: 1 }, issuerOf(root.pem, pem(rootKey.privateKey)));
      const nextKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const next = ca({ commonName: 'Next', trustDomain: 'example.org', subjectPublicKey: nextKey.publicKey, ...span, pathLen: 0 }, issuerOf(mid.pem, pem(midKey.privateKey)));
      return { root: root.pem, mid: mid.pem, next: next.pem, key: pem(nextKey.privateKey) };
    };
    const limits = { maxX509TtlMs: 60_000, maxJwtTtlMs: 60_000 };
    const ok = make(2);
    expect(() => checkImportedCa(ok.next, ok.mid, { pem: ok.key }, ok.root, now, limits)).not.toThrow();
    expect(() => checkImportedCa(ok.next, '', { pem: ok.key }, ok.root, now, limits)).toThrow(/does not chain to a root/);
    expect(() => checkImportedCa(ok.next, ok.mid, { pem: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() }, ok.root, now, limits)).toThrow(/does not match the prepared key/);
    expect(() => checkImportedCa(ok.next + ok.mid, '', { pem: ok.key }, ok.root, now, limits)).toThrow(/exactly one certificate/);
    expect(() => checkImportedCa(ok.next, ok.mid, { pem: ok.key }, ok.root, now + 7_200_000, limits)).toThrow(/expired at/);
    const tight = make(1);
    expect(() => checkImportedCa(tight.next, tight.mid, { pem: tight.key }, tight.root, now, limits)).toThrow(/allows 1 CA certificate\(s\) below it \(pathLenConstraint\) but the path to the SVIDs has 2/);
  });
});
