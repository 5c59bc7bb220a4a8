/**
 * Automatic rotation of the X.509 signing CA and the JWT-SVID key (config `ca.rotation`, docs/ca.md),
 * for deployments where Tessera holds the root that signs its intermediates.
 *
 * An *authority* is one signing CA (certificate + key) and one JWT-SVID key, with one lifecycle:
 *
 *   prepared  at 1/2 of the active authority's life: new keys, a new CA certificate from the root;
 *             its JWT key is published in the bundle (spiffe_sequence + 1)
 *   active    at 5/6 of the active authority's life: every replica signs with it
 *   old       until the last SVID it signed has expired, then dropped (spiffe_sequence + 1)
 *
 * The whole state (every authority and the bundle sequence) is ONE record in the Store, and each step
 * is one write of it — so a crash between any two writes restarts into the state before or after a
 * step, and every stored state has exactly one active authority that is in the bundle. Only the
 * replica holding the `ca-rotation` lock writes (and it re-reads the state under the lock); every
 * replica reads the record every `pollIntervalMs` and switches to what it says. Private keys are
 * sealed with the secrets KEK (secrets/envelope.ts) before they reach the store.
 */
import { createPrivateKey, createPublicKey, generateKeyPair, randomUUID, X509Certificate } from 'node:crypto';
import { promisify } from 'node:util';
import Type, { type Static } from 'typebox';
import type { Clock } from '../clock.js';
import { BrokerError } from '../errors.js';
import { recordParser, SafeInteger } from '../records.js';
import { open as openSealed, seal, SealedRecordSchema, type KeyRing } from '../secrets/envelope.js';
import { buildBundle, type SpiffeBundle } from '../spiffe/bundle.js';
import type { Store } from '../store/store.js';
import { CertificateAuthority } from './authority.js';
import { toPem } from './der.js';
import { JwtSvidSigner } from './jwt-svid.js';
import { issuerFromPem, mintCa, splitPemCertificates, type IssuerMaterial } from './x509.js';

const AuthorityRecordSchema = Type.Object({
  /** The signing certificate's subject key identifier (hex), as in metrics and logs. */
  id: Type.String({ pattern: '^[0-9a-f]{2,128}$' }),
  state: Type.Enum(['prepared', 'active', 'old']),
  certPem: Type.String({ minLength: 1 }),
  /** Certificates between the signing CA and the root ('' when the root signed it). */
  intermediatesPem: Type.String(),
  key: SealedRecordSchema,
  jwtKey: SealedRecordSchema,
  jwtKid: Type.String({ minLength: 1 }),
  jwtPublic: Type.Object({ kty: Type.Literal('EC'), crv: Type.String(), x: Type.String(), y: Type.String() }),
  notBefore: SafeInteger(),
  notAfter: SafeInteger(),
  preparedAt: SafeInteger(),
  activatedAt: Type.Optional(SafeInteger()),
  /** `old`: dropped from the bundle at this time, when every SVID it signed has expired. */
  retireAt: Type.Optional(SafeInteger()),
});
export type AuthorityRecord = Static<typeof AuthorityRecordSchema>;
export type AuthorityState = AuthorityRecord['state'];

const CaStateSchema = Type.Object({
  version: Type.Literal(1),
  /** The trust bundle's spiffe_sequence: +1 each time the set of published authorities changes. */
  sequence: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
  authorities: Type.Array(AuthorityRecordSchema, { maxItems: 32 }),
});
export type CaState = Static<typeof CaStateSchema>;
const parseCaState = recordParser(CaStateSchema);

/** Where the state lives in the Store (kv space and key). */
export const CA_STATE_SPACE = 'ca';
export const CA_STATE_KEY = 'authorities';
const LOCK = 'ca-rotation';
const LOCK_TTL_MS = 30_000;
/**
 * Added to the longest SVID TTL before an old authority is dropped: the switch reaching every replica
 * (one poll), a mint job already on a minting thread, clock skew between replicas.
 */
export const RETIRE_GRACE_MS = 5_000;

export type RotationStep =
  | { readonly kind: 'prepare' }
  | { readonly kind: 'activate'; readonly id: string }
  | { readonly kind: 'drop'; readonly id: string };

export interface RotationLimits {
  /** The longest X.509-SVID and JWT-SVID the broker issues (svid.x509MaxTtlSeconds, jwtMaxTtlSeconds). */
  readonly maxX509TtlMs: number;
  readonly maxJwtTtlMs: number;
}

const lifeFraction = (a: AuthorityRecord, fraction: number): number => a.notBefore + Math.floor((a.notAfter - a.notBefore) * fraction);
export const prepareAt = (a: AuthorityRecord): number => lifeFraction(a, 1 / 2);
export const activateAt = (a: AuthorityRecord): number => lifeFraction(a, 5 / 6);

export function activeOf(state: CaState): AuthorityRecord {
  const active = state.authorities.filter((a) => a.state === 'active');
  if (active.length !== 1) throw new BrokerError('ca_unavailable', `the stored CA state has ${active.length} active authorities, not one`);
  return active[0] as AuthorityRecord;
}

export const preparedOf = (state: CaState): AuthorityRecord | undefined => state.authorities.find((a) => a.state === 'prepared');

/** The next step due at `now`, if any: drop an old authority, activate the prepared one, or prepare one. */
export function dueStep(state: CaState, now: number): RotationStep | undefined {
  const old = state.authorities.find((a) => a.state === 'old' && (a.retireAt ?? a.notAfter) <= now);
  if (old !== undefined) return { kind: 'drop', id: old.id };
  const active = activeOf(state);
  const prepared = preparedOf(state);
  if (prepared !== undefined) return now >= activateAt(active) && now >= prepared.notBefore ? { kind: 'activate', id: prepared.id } : undefined;
  return now >= prepareAt(active) ? { kind: 'prepare' } : undefined;
}

/** The state after `step`: a pure function, so the order of the steps is checked in one place. */
export function applyStep(state: CaState, step: RotationStep, now: number, limits: RotationLimits, prepared?: AuthorityRecord): CaState {
  switch (step.kind) {
    case 'prepare': {
      if (prepared === undefined || prepared.state !== 'prepared') throw new Error('prepare needs a prepared authority');
      if (preparedOf(state) !== undefined) throw new Error('an authority is already prepared');
      if (state.authorities.some((a) => a.id === prepared.id)) throw new Error(`authority ${prepared.id} already exists`);
      return { ...state, sequence: state.sequence + 1, authorities: [...state.authorities, prepared] };
    }
    case 'activate': {
      const next = preparedOf(state);
      if (next === undefined || next.id !== step.id) throw new Error(`authority ${step.id} is not prepared`);
      // The last SVID the outgoing authority signs is issued before every replica has switched (grace):
      // its X.509-SVIDs end by its notAfter at the latest, its JWT-SVIDs are not bounded by it.
      const x509End = Math.min(activeOf(state).notAfter, now + limits.maxX509TtlMs + RETIRE_GRACE_MS);
      const retireAt = Math.max(x509End, now + limits.maxJwtTtlMs + RETIRE_GRACE_MS);
      return {
        ...state,
        authorities: state.authorities.map((a) =>
          a.state === 'active' ? { ...a, state: 'old', retireAt } : a.id === step.id ? { ...a, state: 'active', activatedAt: now } : a,
        ),
      };
    }
    case 'drop': {
      const target = state.authorities.find((a) => a.id === step.id);
      if (target === undefined || target.state !== 'old') throw new Error(`authority ${step.id} is not old`);
      return { ...state, sequence: state.sequence + 1, authorities: state.authorities.filter((a) => a.id !== step.id) };
    }
  }
}

const generateKeyPairAsync = promisify(generateKeyPair);

/** PEMs of one authority's keys and certificates, before they are sealed into a record. */
export interface AuthorityMaterial {
  readonly certPem: string;
  readonly keyPem: string;
  readonly intermediatesPem: string;
  readonly jwtKeyPem: string;
}

const keyContext = (id: string, which: 'x509' | 'jwt'): string => `ca-authority/${id}/${which}`;

/** Seals an authority's keys into a record (the certificate is checked against `rootsPem` first). */
export async function authorityRecord(
  material: AuthorityMaterial,
  state: AuthorityState,
  now: number,
  ring: KeyRing,
  rootsPem: string,
): Promise<AuthorityRecord> {
  const ca = CertificateAuthority.fromPem({ certPem: material.certPem, keyPem: material.keyPem, intermediatesPem: material.intermediatesPem, rootsPem });
  const jwt = await JwtSvidSigner.fromPem(material.jwtKeyPem);
  const cert = new X509Certificate(material.certPem);
  const { kty, crv, x, y } = jwt.publicJwk;
  if (kty !== 'EC' || crv === undefined || x === undefined || y === undefined) throw new BrokerError('internal', 'the JWT-SVID key is not an EC key');
  return {
    id: ca.authorityId,
    state,
    certPem: material.certPem,
    intermediatesPem: material.intermediatesPem,
    key: seal(ring, Buffer.from(material.keyPem, 'utf8'), keyContext(ca.authorityId, 'x509')),
    jwtKey: seal(ring, Buffer.from(material.jwtKeyPem, 'utf8'), keyContext(ca.authorityId, 'jwt')),
    jwtKid: jwt.kid,
    jwtPublic: { kty: 'EC', crv, x, y },
    notBefore: Date.parse(cert.validFrom),
    notAfter: Date.parse(cert.validTo),
    preparedAt: now,
    ...(state === 'active' ? { activatedAt: now } : {}),
  };
}

/**
 * The root that signs new signing CAs: the certificate in `rootsPem` whose public key is `rootKeyPem`'s.
 * Throws a BrokerError naming the cause when the key fits no root.
 */
export function rootIssuer(rootsPem: string, rootKeyPem: string): IssuerMaterial {
  let publicDer: Buffer;
  try {
    publicDer = createPublicKey(createPrivateKey(rootKeyPem)).export({ type: 'spki', format: 'der' });
  } catch (err) {
    throw new BrokerError('internal', 'ca.rotation.rootKeyFile is not a readable private key', { cause: err });
  }
  for (const der of splitPemCertificates(rootsPem, 'ca.bundleFile')) {
    const cert = new X509Certificate(der);
    if (cert.publicKey.export({ type: 'spki', format: 'der' }).equals(publicDer)) return issuerFromPem(toPem('CERTIFICATE', der), rootKeyPem);
  }
  throw new BrokerError('internal', 'ca.rotation.rootKeyFile matches no root certificate in ca.bundleFile');
}

/** Makes the next authority: new CA and JWT keys, a CA certificate from the root valid `ttlMs` from now. */
export async function mintNextAuthority(root: IssuerMaterial, trustDomain: string, ttlMs: number, now: number): Promise<AuthorityMaterial> {
  // Backdated a little (clock skew), never before the root; never past the root's end.
  const notBefore = Math.max(now - Math.min(60_000, Math.floor(ttlMs / 20)), root.notBefore.getTime());
  const notAfter = Math.min(now + ttlMs, root.notAfter.getTime());
  if (notAfter - now < ttlMs / 2) {
    throw new BrokerError('ca_expired', `the root CA expires at ${root.notAfter.toISOString()}: too soon to make a next signing CA; replace the root`);
  }
  const [ca, jwt] = await Promise.all([
    generateKeyPairAsync('ec', { namedCurve: 'P-256' }),
    generateKeyPairAsync('ec', { namedCurve: 'P-256' }),
  ]);
  const cert = mintCa(
    { commonName: 'Tessera Signing CA', trustDomain, subjectPublicKey: ca.publicKey, notBefore: new Date(notBefore), notAfter: new Date(notAfter), pathLen: 0 },
    root,
  );
  return {
    certPem: cert.pem,
    keyPem: ca.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    intermediatesPem: '',
    jwtKeyPem: jwt.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}

/** What the broker signs with right now, and what it publishes. */
export interface LiveAuthorities {
  readonly state: CaState;
  readonly ca: CertificateAuthority;
  readonly jwt: JwtSvidSigner;
  readonly bundle: SpiffeBundle;
}

export interface CaRotationOptions {
  readonly store: Store;
  readonly clock: Clock;
  readonly ring: KeyRing;
  readonly rootsPem: string;
  /** Signs next signing CAs. */
  readonly root: IssuerMaterial;
  readonly trustDomain: string;
  readonly caTtlMs: number;
  readonly pollIntervalMs: number;
  readonly limits: RotationLimits;
  readonly owner: string;
  readonly refreshHintSeconds: number;
  /** After every switch to a new state (this replica's or another's write). */
  readonly onChange: (live: LiveAuthorities, previous: LiveAuthorities) => void;
  /** After this replica wrote a step (the audit entry). */
  readonly onStep?: (step: RotationStep, record: AuthorityRecord, state: CaState) => Promise<void>;
  readonly onError: (err: unknown, what: string) => void;
}

export class CaRotation {
  readonly #opts: CaRotationOptions;
  #live: LiveAuthorities;
  #storedText: string;
  #timer: NodeJS.Timeout | undefined;
  #ticking: Promise<void> | undefined;
  #closed = false;

  private constructor(opts: CaRotationOptions, live: LiveAuthorities, storedText: string) {
    this.#opts = opts;
    this.#live = live;
    this.#storedText = storedText;
  }

  /**
   * Loads the stored state; on a store that has none, one replica (under the lock) writes the first:
   * `initial` (the CA and JWT key of the config files) as the active authority, bundle sequence 1.
   */
  static async open(opts: CaRotationOptions, initial: AuthorityMaterial): Promise<CaRotation> {
    let text = await opts.store.kvGet(CA_STATE_SPACE, CA_STATE_KEY);
    for (let attempt = 0; text === undefined; attempt++) {
      if (await opts.store.tryLock(LOCK, opts.owner, LOCK_TTL_MS)) {
        try {
          text = await opts.store.kvGet(CA_STATE_SPACE, CA_STATE_KEY);
          if (text === undefined) {
            const now = opts.clock.now();
            const first: CaState = { version: 1, sequence: 1, authorities: [await authorityRecord(initial, 'active', now, opts.ring, opts.rootsPem)] };
            text = JSON.stringify(first);
            await opts.store.kvPut(CA_STATE_SPACE, CA_STATE_KEY, text);
          }
        } finally {
          await opts.store.unlock(LOCK, opts.owner);
        }
      } else {
        if (attempt >= 300) throw new BrokerError('ca_unavailable', 'no CA state in the store and another replica holds the ca-rotation lock; retry');
        await new Promise((r) => setTimeout(r, 100));
        text = await opts.store.kvGet(CA_STATE_SPACE, CA_STATE_KEY);
      }
    }
    const state = CaRotation.parse(text);
    return new CaRotation(opts, await CaRotation.build(opts, state), text);
  }

  static parse(text: string): CaState {
    const parsed = parseCaState(text);
    if (!parsed.ok) throw new BrokerError('internal', `the stored CA state is unreadable (${parsed.why})`);
    activeOf(parsed.value);
    return parsed.value;
  }

  static async build(opts: Pick<CaRotationOptions, 'ring' | 'rootsPem' | 'refreshHintSeconds'>, state: CaState): Promise<LiveAuthorities> {
    const active = activeOf(state);
    const unseal = (which: 'x509' | 'jwt'): string =>
      openSealed(opts.ring, which === 'x509' ? active.key : active.jwtKey, keyContext(active.id, which)).toString('utf8');
    const ca = CertificateAuthority.fromPem({ certPem: active.certPem, keyPem: unseal('x509'), intermediatesPem: active.intermediatesPem, rootsPem: opts.rootsPem });
    if (ca.authorityId !== active.id) throw new BrokerError('internal', `the stored authority ${active.id} holds another certificate`);
    const jwt = await JwtSvidSigner.fromPem(unseal('jwt'));
    const bundle = buildBundle({
      rootCertsDer: ca.rootCertsDer,
      jwtKeys: state.authorities.map((a) => ({ kid: a.jwtKid, jwk: a.jwtPublic })),
      sequence: state.sequence,
      refreshHintSeconds: opts.refreshHintSeconds,
    });
    return { state, ca, jwt, bundle };
  }

  current(): LiveAuthorities {
    return this.#live;
  }

  /** Ticks every pollIntervalMs (the timer does not keep the process alive). */
  start(): void {
    if (this.#timer !== undefined || this.#closed) return;
    this.#timer = setInterval(() => void this.tick(), this.#opts.pollIntervalMs);
    this.#timer.unref();
  }

  /**
   * Reads the stored state and switches to it if it changed; then, if a step is due, takes the lock,
   * re-reads, and writes the step. Ticks never overlap; errors are reported, never thrown.
   */
  tick(): Promise<void> {
    this.#ticking ??= this.#tick().finally(() => {
      this.#ticking = undefined;
    });
    return this.#ticking;
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#ticking;
  }

  /**
   * Activates the prepared authority now instead of at 5/6 of the active one's life (`tessera ca
   * activate`): the same step, under the same lock, written the same way. Throws 409
   * ca_state_conflict when nothing is prepared.
   */
  async activateNow(): Promise<AuthorityRecord> {
    await this.#ticking;
    const store = this.#opts.store;
    // Another owner than this replica's ticks, so the lock keeps them apart too.
    const owner = `${this.#opts.owner}:admin`;
    for (let attempt = 0; !(await store.tryLock(LOCK, owner, LOCK_TTL_MS)); attempt++) {
      if (attempt >= 50) throw new BrokerError('ca_unavailable', 'another replica holds the ca-rotation lock; retry');
      await new Promise((r) => setTimeout(r, 100));
    }
    try {
      await this.#refresh();
      const prepared = preparedOf(this.#live.state);
      if (prepared === undefined) throw new BrokerError('ca_state_conflict', 'no authority is prepared, so there is nothing to activate');
      const now = this.#opts.clock.now();
      if (now < prepared.notBefore) throw new BrokerError('ca_state_conflict', `the prepared authority ${prepared.id} is not valid before ${new Date(prepared.notBefore).toISOString()}`);
      await this.#write({ kind: 'activate', id: prepared.id }, now);
      return activeOf(this.#live.state);
    } finally {
      await store.unlock(LOCK, owner);
    }
  }

  async #tick(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.#refresh();
      if (dueStep(this.#live.state, this.#opts.clock.now()) === undefined) return;
      const { store, owner } = this.#opts;
      if (!(await store.tryLock(LOCK, owner, LOCK_TTL_MS))) return; // another replica is at it
      try {
        await this.#refresh();
        const now = this.#opts.clock.now();
        const step = dueStep(this.#live.state, now);
        if (step !== undefined && !this.#closed) await this.#write(step, now);
      } finally {
        await store.unlock(LOCK, owner);
      }
    } catch (err) {
      this.#opts.onError(err, 'CA rotation');
    }
  }

  async #refresh(): Promise<void> {
    const text = await this.#opts.store.kvGet(CA_STATE_SPACE, CA_STATE_KEY);
    if (text === undefined) throw new BrokerError('internal', 'the CA state disappeared from the store');
    if (text !== this.#storedText) await this.#switch(text, CaRotation.parse(text));
  }

  async #switch(text: string, state: CaState): Promise<void> {
    const previous = this.#live;
    // Building first: a state this replica cannot load (a KEK it lacks) leaves it on the old one, loudly.
    const live = activeOf(state).id === previous.ca.authorityId && previous.jwt.kid === activeOf(state).jwtKid
      ? { ...previous, state, bundle: (await CaRotation.build(this.#opts, state)).bundle }
      : await CaRotation.build(this.#opts, state);
    this.#live = live;
    this.#storedText = text;
    this.#opts.onChange(live, previous);
  }

  async #write(step: RotationStep, now: number): Promise<void> {
    const opts = this.#opts;
    const state = this.#live.state;
    let record: AuthorityRecord | undefined;
    if (step.kind === 'prepare') {
      const material = await mintNextAuthority(opts.root, opts.trustDomain, opts.caTtlMs, now);
      record = await authorityRecord(material, 'prepared', now, opts.ring, opts.rootsPem);
    }
    const next = applyStep(state, step, now, opts.limits, record);
    const text = JSON.stringify(next);
    await opts.store.kvPut(CA_STATE_SPACE, CA_STATE_KEY, text);
    await this.#switch(text, next);
    const subject = record ?? state.authorities.find((a) => a.id === (step as { id: string }).id);
    if (subject !== undefined && opts.onStep !== undefined) {
      await opts.onStep(step, subject, next).catch((err: unknown) => opts.onError(err, `recording CA rotation step ${step.kind}`));
    }
  }
}

/** An id for audit entries of rotation steps. */
export const rotationRequestId = (): string => randomUUID();
