/**
 * CA rotation with the CA and JWT keys in a real SoftHSM2 token (test/helpers/softhsm.ts), on an
 * injected clock: next keys are generated in the token under a label named after their step, a switch
 * between two token authorities signs with the new pair, a dropped generated pair is destroyed and the
 * configured one never is; a crash between generating a key and writing the state reuses the pair;
 * mixed cases (one key in the token, the other a sealed PEM); `ca prepare` / `ca import` with a token key.
 * What the token holds is read with pkcs11-tool, CSRs and chains are checked with openssl.
 */
import { spawnSync } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, randomBytes, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TestClock } from '../../test/helpers/clock.js';
import { openssl, opensslVerify } from '../../test/helpers/openssl.js';
import { createToken, removeTokens, softhsmMissing, softhsmRequiredUnderCi, USER_PIN, type TestToken } from '../../test/helpers/softhsm.js';
import { KeyRing, kekIdOf } from '../secrets/envelope.js';
import { EmbeddedStore } from '../store/embedded.js';
import { AuthorityKeys, type AuthorityKey } from './keys.js';
import { countKeyObjects } from './pkcs11-keygen.js';
import { Pkcs11Signer } from './pkcs11-signer.js';
import { activateAt, activeOf, CaRotation, nextKeyStep, prepareAt, preparedOf, rootIssuer, type AuthorityMaterial, type AuthorityRecord, type CaRotationOptions } from './rotation.js';
import { issuerFromPem, mintCa } from './x509.js';

const missing = softhsmMissing();
softhsmRequiredUnderCi();

const TD = 'example.org';
const S = 1000;
const LIMITS = { maxX509TtlMs: 5 * S, maxJwtTtlMs: 30 * S };
const pemOf = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();
const spki = (k: KeyObject): Buffer => k.export({ type: 'spki', format: 'der' });
const ring = KeyRing.of((() => {
  const key = randomBytes(32);
  return { id: kekIdOf(key), key };
})());

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
const tempDir = (): string => {
  const d = mkdtempSync(path.join(tmpdir(), 'tessera-rotation-hsm-'));
  dirs.push(d);
  return d;
};

describe.skipIf(missing !== undefined)('CA rotation with keys in a SoftHSM2 token', () => {
  let token: TestToken;
  let rootPem: string;
  let rootKeyPem: string;
  const opened: Pkcs11Signer[] = [];
  /** The configured keys, as the broker opens them from ca.pkcs11 / ca.jwtPkcs11. */
  const configured = async (label: string): Promise<AuthorityKey> => {
    const signer = await Pkcs11Signer.open({ ...token.pkcs11(label), sessions: 1 });
    opened.push(signer);
    return { token: { keyLabel: label }, signer };
  };
  const pem = (): AuthorityKey => ({ pem: pemOf(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey) });

  /** A signing CA for `key`, from the root, valid [notBefore, notAfter]. */
  const caFor = (key: AuthorityKey, notBefore: number, notAfter: number): string => {
    const publicKey = 'pem' in key ? createPublicKey(key.pem) : key.signer.publicKey;
    return mintCa({ commonName: 'First', trustDomain: TD, subjectPublicKey: publicKey, notBefore: new Date(notBefore), notAfter: new Date(notAfter), pathLen: 0 }, issuerFromPem(rootPem, rootKeyPem)).pem;
  };

  beforeAll(() => {
    token = createToken('rotation');
    token.generate('ca', 'EC:prime256v1');
    token.generate('jwt', 'EC:prime256v1');
    const rk = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const now = Date.now();
    rootPem = mintCa({ commonName: 'Root', trustDomain: TD, subjectPublicKey: rk.publicKey, notBefore: new Date(now - 3_600_000), notAfter: new Date(now + 10 * 365 * 86_400_000), pathLen: 1 }, { selfSignedKey: rk.privateKey }).pem;
    rootKeyPem = pemOf(rk.privateKey);
  });
  afterAll(() => {
    for (const s of opened) s.close();
    token?.remove();
    removeTokens();
  });

  /** The public key of the pair labelled `label`, as pkcs11-tool reads it out of the token. */
  function tokenPublicKey(label: string): KeyObject {
    const out = path.join(tempDir(), 'pub.der');
    const r = spawnSync('pkcs11-tool', ['--module', token.module, '--token-label', token.label, '--login', '--pin', USER_PIN, '--read-object', '--type', 'pubkey', '--label', label, '--output-file', out], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    return createPublicKey({ key: readFileSync(out), format: 'der', type: 'spki' });
  }

  const objects = (label: string): Promise<{ privateKeys: number; publicKeys: number }> => countKeyObjects(token.pkcs11(label));
  const pair = { privateKeys: 1, publicKeys: 1 };
  const none = { privateKeys: 0, publicKeys: 0 };

  async function open(dir: string, clock: TestClock, initial: AuthorityMaterial, tokens: { x509?: boolean; jwt?: boolean }, overrides: Partial<CaRotationOptions> = {}) {
    const store = await EmbeddedStore.open(dir, { fsync: false });
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
        keys: new AuthorityKeys({
          ...(tokens.x509 ? { x509: { ...token.pkcs11('ca'), sessions: 2 } } : {}),
          ...(tokens.jwt ? { jwt: { ...token.pkcs11('jwt'), sessions: 2 } } : {}),
        }),
        caTtlMs: 120 * S,
        pollIntervalMs: 60_000,
        limits: LIMITS,
        owner: 'a',
        refreshHintSeconds: 300,
        onChange: () => {},
        onStep: async (step) => {
          steps.push(step.kind);
        },
        onError: (err) => errors.push(err instanceof Error ? err.message : String(err)),
        ...overrides,
      },
      initial,
    ).catch(async (err: unknown) => {
      await store.close();
      throw err;
    });
    return { rotation, store, steps, errors, close: async () => (await rotation.close(), await store.close()) };
  }

  /** Issues an X.509-SVID and a JWT-SVID with what is active, and checks both against `bundle`'s authority. */
  async function issuesWith(rotation: CaRotation, clock: TestClock, expected: AuthorityRecord): Promise<void> {
    const live = rotation.current();
    expect(live.ca.authorityId).toBe(expected.id);
    const svid = await live.ca.issueX509SvidAsync({ spiffeId: 'spiffe://example.org/w', dnsNames: [], publicKey: generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey, ttlMs: 5 * S, now: clock.now() });
    expect(new X509Certificate(svid.certPem).verify(new X509Certificate(expected.certPem).publicKey)).toBe(true);
    const jwt = await live.jwt.sign({ spiffeId: 'spiffe://example.org/w', audiences: ['a'], ttlMs: 30 * S, now: clock.now() });
    const jwks = createLocalJWKSet({ keys: live.bundle.keys.filter((k) => k.use === 'jwt-svid').map((k) => ({ ...k, use: 'sig' })) });
    const { protectedHeader } = await jwtVerify(jwt.token, jwks, { algorithms: ['ES256'], currentDate: new Date(clock.now()) });
    expect(protectedHeader.kid).toBe(expected.jwtKid);
  }

  it('rotates twice between token authorities: next pairs made in the token, the generated pair destroyed when dropped, the configured one kept', async () => {
    const t0 = Date.now();
    const clock = TestClock.frozen(t0);
    const key = await configured('ca');
    const initial: AuthorityMaterial = { certPem: caFor(key, t0 - S, t0 + 60 * S), intermediatesPem: '', key, jwtKey: await configured('jwt') };
    // Both keys in the token: nothing is sealed, so no KEK at all.
    const h = await open(tempDir(), clock, initial, { x509: true, jwt: true }, { ring: undefined });
    try {
      const first = activeOf(h.rotation.current().state);
      // The initial authority names the configured labels; nothing about it is sealed.
      expect(first.key).toEqual({ token: { keyLabel: 'ca' } });
      expect(first.jwtKey).toEqual({ token: { keyLabel: 'jwt' } });
      expect(h.rotation.current().ca.localKey).toBe(false);
      await issuesWith(h.rotation, clock, first);

      clock.set(prepareAt(first));
      await h.rotation.tick();
      const second = preparedOf(h.rotation.current().state) as AuthorityRecord;
      const secondLabels = { x509: `ca.${nextKeyStep(first)}`, jwt: `jwt.${nextKeyStep(first)}` };
      expect(second.key).toEqual({ token: { keyLabel: secondLabels.x509 } });
      expect(second.jwtKey).toEqual({ token: { keyLabel: secondLabels.jwt } });
      expect(await objects(secondLabels.x509)).toEqual(pair);
      expect(await objects(secondLabels.jwt)).toEqual(pair);
      // Its certificate is for the pair in the token, its kid for the JWT pair in the token.
      expect(spki(new X509Certificate(second.certPem).publicKey).equals(spki(tokenPublicKey(secondLabels.x509)))).toBe(true);
      const jwk = tokenPublicKey(secondLabels.jwt).export({ format: 'jwk' });
      expect(second.jwtPublic).toEqual({ kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y });
      expect(h.rotation.current().state.sequence).toBe(2);

      clock.set(activateAt(first));
      await h.rotation.tick();
      await issuesWith(h.rotation, clock, second);

      const retireFirst = h.rotation.current().state.authorities.find((a) => a.id === first.id)?.retireAt as number;
      clock.set(retireFirst);
      await h.rotation.tick();
      expect(h.rotation.current().state.sequence).toBe(3);
      // The operator's configured pairs are never destroyed.
      expect(await objects('ca')).toEqual(pair);
      expect(await objects('jwt')).toEqual(pair);

      // Second round: the dropped authority is one Tessera generated.
      const active = activeOf(h.rotation.current().state);
      clock.set(prepareAt(active));
      await h.rotation.tick();
      const third = preparedOf(h.rotation.current().state) as AuthorityRecord;
      expect(third.key).toEqual({ token: { keyLabel: `ca.${nextKeyStep(second)}` } });
      clock.set(activateAt(active));
      await h.rotation.tick();
      await issuesWith(h.rotation, clock, third);
      const retireSecond = h.rotation.current().state.authorities.find((a) => a.id === second.id)?.retireAt as number;
      clock.set(retireSecond);
      await h.rotation.tick();
      expect(h.rotation.current().state.authorities.map((a) => a.id)).toEqual([third.id]);
      expect(h.rotation.current().state.sequence).toBe(5);
      expect(await objects(secondLabels.x509)).toEqual(none);
      expect(await objects(secondLabels.jwt)).toEqual(none);
      expect(await objects(`ca.${nextKeyStep(second)}`)).toEqual(pair);
      expect(await objects('ca')).toEqual(pair);
      expect(h.steps).toEqual(['prepare', 'activate', 'drop', 'prepare', 'activate', 'drop']);
      expect(h.errors).toEqual([]);
    } finally {
      await h.close();
    }
  });

  it('a crash between generating the next pair and writing the state restarts into the same step and reuses the pair', async () => {
    const t0 = Date.now();
    const dir = tempDir();
    const clock = TestClock.frozen(t0);
    const key = await configured('ca');
    const initial: AuthorityMaterial = { certPem: caFor(key, t0 - S, t0 + 60 * S), intermediatesPem: '', key, jwtKey: await configured('jwt') };
    const broken = await open(dir, clock, initial, { x509: true, jwt: true });
    const first = activeOf(broken.rotation.current().state);
    const label = `ca.${nextKeyStep(first)}`;
    clock.set(prepareAt(first));
    // The pair is made, then the state write does not happen (the process dies there).
    broken.store.kvPut = async () => {
      throw new Error('killed before the write');
    };
    await broken.rotation.tick();
    expect(broken.errors).toEqual(['killed before the write']);
    expect(broken.rotation.current().state.sequence).toBe(1);
    expect(await objects(label)).toEqual(pair);
    const made = tokenPublicKey(label);
    await broken.close();

    const again = await open(dir, clock, initial, { x509: true, jwt: true });
    try {
      await again.rotation.tick();
      const prepared = preparedOf(again.rotation.current().state) as AuthorityRecord;
      expect(prepared.key).toEqual({ token: { keyLabel: label } });
      expect(spki(new X509Certificate(prepared.certPem).publicKey).equals(spki(made))).toBe(true);
      // No second pair under the label, no orphan beside it.
      expect(await objects(label)).toEqual(pair);
      expect(again.errors).toEqual([]);
    } finally {
      await again.close();
    }
  });

  it.each([
    ['the CA key in the token, the JWT key a sealed PEM', { x509: true, jwt: false }],
    ['the JWT key in the token, the CA key a sealed PEM', { x509: false, jwt: true }],
  ])('rotates with %s', async (_what, tokens: { x509: boolean; jwt: boolean }) => {
    const t0 = Date.now();
    const clock = TestClock.frozen(t0);
    const key = tokens.x509 ? await configured('ca') : pem();
    const jwtKey = tokens.jwt ? await configured('jwt') : pem();
    const h = await open(tempDir(), clock, { certPem: caFor(key, t0 - S, t0 + 60 * S), intermediatesPem: '', key, jwtKey }, tokens);
    try {
      const first = activeOf(h.rotation.current().state);
      clock.set(prepareAt(first));
      await h.rotation.tick();
      const next = preparedOf(h.rotation.current().state) as AuthorityRecord;
      const sealed = (k: AuthorityRecord['key']): boolean => !('token' in k) && typeof k.ct === 'string';
      expect('token' in next.key).toBe(tokens.x509);
      expect(sealed(next.key)).toBe(!tokens.x509);
      expect('token' in next.jwtKey).toBe(tokens.jwt);
      expect(sealed(next.jwtKey)).toBe(!tokens.jwt);
      clock.set(activateAt(first));
      await h.rotation.tick();
      await issuesWith(h.rotation, clock, next);
      expect(h.rotation.current().ca.localKey).toBe(!tokens.x509);
      expect(h.errors).toEqual([]);
    } finally {
      await h.close();
    }
  });

  it('a key held as a PEM cannot be sealed without the secrets KEK: the start is refused, naming secrets.kekFile', async () => {
    const t0 = Date.now();
    const key = await configured('ca');
    const initial: AuthorityMaterial = { certPem: caFor(key, t0 - S, t0 + 60 * S), intermediatesPem: '', key, jwtKey: pem() };
    await expect(open(tempDir(), TestClock.frozen(t0), initial, { x509: true }, { ring: undefined })).rejects.toThrow(/secrets\.kekFile/);
  });

  it('moves a rotating deployment into the token: the stored sealed authority stays active until replaced, the next one is made in the token; a token authority without a token setting stops the start', async () => {
    const t0 = Date.now();
    const dir = tempDir();
    const clock = TestClock.frozen(t0);
    const fileKey = pem();
    const before = await open(dir, clock, { certPem: caFor(fileKey, t0 - S, t0 + 60 * S), intermediatesPem: '', key: fileKey, jwtKey: pem() }, {});
    const first = activeOf(before.rotation.current().state);
    await before.close();
    // Restarted with both keys configured in the token (its own first CA does not matter: the store wins).
    const key = await configured('ca');
    const initial: AuthorityMaterial = { certPem: caFor(key, t0 - S, t0 + 60 * S), intermediatesPem: '', key, jwtKey: await configured('jwt') };
    const after = await open(dir, clock, initial, { x509: true, jwt: true });
    try {
      expect(after.rotation.current().ca.authorityId).toBe(first.id);
      expect(after.rotation.current().ca.localKey).toBe(true);
      clock.set(prepareAt(first));
      await after.rotation.tick();
      const next = preparedOf(after.rotation.current().state) as AuthorityRecord;
      expect(next.key).toEqual({ token: { keyLabel: `ca.${nextKeyStep(first)}` } });
      clock.set(activateAt(first));
      await after.rotation.tick();
      await issuesWith(after.rotation, clock, next);
      expect(after.rotation.current().ca.localKey).toBe(false);
      expect(after.errors).toEqual([]);
    } finally {
      await after.close();
    }
    // Back to files: the active authority's keys are in the token, and nothing says which token.
    await expect(open(dir, clock, initial, {})).rejects.toThrow(/^config\.ca\.pkcs11: the CA state names a key pair "ca\.next-[0-9a-f]{16}" in a PKCS#11 token, but config\.ca\.pkcs11 is not configured/);
  });

  it('ca prepare writes a CSR signed by the token key; ca import installs the certificate for it; SVIDs then chain to the root', async () => {
    const work = tempDir();
    const clock = new TestClock();
    const now = clock.now();
    const key = await configured('ca');
    const initial: AuthorityMaterial = { certPem: caFor(key, now - 60 * S, now + 3_600 * S), intermediatesPem: '', key, jwtKey: await configured('jwt') };
    // An offline root: the broker holds no root key.
    const h = await open(tempDir(), clock, initial, { x509: true, jwt: true }, { root: undefined });
    try {
      const first = activeOf(h.rotation.current().state);
      const out = await h.rotation.prepareCsr();
      expect(out.created).toBe(true);
      const label = `ca.${nextKeyStep(first)}`;
      expect(h.rotation.current().state.pending?.key).toEqual({ token: { keyLabel: label } });
      writeFileSync(path.join(work, 'next.csr'), out.csrPem);
      const verified = openssl(['req', '-in', path.join(work, 'next.csr'), '-noout', '-verify', '-pubkey']);
      expect(verified.status, verified.stderr).toBe(0);
      expect(verified.stdout + verified.stderr).toMatch(/verify OK/i);
      // The CSR's key is the pair in the token.
      expect(spki(createPublicKey(verified.stdout.slice(verified.stdout.indexOf('-----BEGIN PUBLIC KEY-----')))).equals(spki(tokenPublicKey(label)))).toBe(true);
      // Asked again, the same CSR.
      expect((await h.rotation.prepareCsr()).csrPem).toBe(out.csrPem);

      // The offline root signs it with openssl.
      writeFileSync(path.join(work, 'root.pem'), rootPem);
      writeFileSync(path.join(work, 'root.key'), rootKeyPem, { mode: 0o600 });
      writeFileSync(path.join(work, 'ext.cnf'), '[ca]\nbasicConstraints = critical, CA:TRUE, pathlen:0\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\nsubjectAltName = URI:spiffe://example.org\n');
      const signed = openssl(['x509', '-req', '-in', path.join(work, 'next.csr'), '-CA', path.join(work, 'root.pem'), '-CAkey', path.join(work, 'root.key'), '-CAcreateserial', '-CAserial', path.join(work, 'serial.srl'), '-days', '1', '-sha256', '-extfile', path.join(work, 'ext.cnf'), '-extensions', 'ca']);
      expect(signed.status, signed.stderr).toBe(0);
      const record = await h.rotation.importCertificate(signed.stdout, '');
      expect(record.key).toEqual({ token: { keyLabel: label } });
      expect(h.rotation.current().state.pending).toBeUndefined();
      expect(h.rotation.current().state.sequence).toBe(2);

      await h.rotation.activateNow();
      const live = h.rotation.current();
      expect(live.ca.authorityId).toBe(record.id);
      const svid = await live.ca.issueX509SvidAsync({ spiffeId: 'spiffe://example.org/w', dnsNames: [], publicKey: generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey, ttlMs: 5 * S, now: clock.now() });
      expect(opensslVerify(rootPem, svid.chainPem)).toMatchObject({ ok: true });
      expect(h.errors).toEqual([]);
    } finally {
      await h.close();
    }
  });
});
