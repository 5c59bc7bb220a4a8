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
 * sealed with the secrets KEK (secrets/envelope.ts) before they reach the store — or, with `ca.pkcs11`
 * / `ca.jwtPkcs11`, made inside the token (keys.ts, pkcs11-keygen.ts) and recorded by label only. A
 * token key is labelled after its step (the active authority it follows), so a crash between making
 * it and writing the state finds the same pair again; a dropped authority's generated pairs are
 * destroyed (best effort), never the operator's configured ones.
 *
 * Without the root's key (an upstream or offline root) nothing prepares by itself: `ca prepare` stores
 * the next authority's keys (sealed, or token labels) as `pending` and returns a CSR; `ca import` checks the certificate
 * the root signed and turns them into the prepared authority — one write each.
 */
import { createPublicKey, createPrivateKey, randomBytes, randomUUID, X509Certificate, type KeyObject } from 'node:crypto';
import Type, { type Static } from 'typebox';
import type { Clock } from '../clock.js';
import { BrokerError } from '../errors.js';
import { recordParser, SafeInteger } from '../records.js';
import { open as openSealed, seal, SealedRecordSchema, type KeyRing } from '../secrets/envelope.js';
import { buildBundle, type SpiffeBundle } from '../spiffe/bundle.js';
import type { Store } from '../store/store.js';
import type { CertificateAuthority } from './authority.js';
import { toPem } from './der.js';
import type { JwtSvidSigner } from './jwt-svid.js';
import {
  authorityFromKey,
  AuthorityKeys,
  jwtSignerFromKey,
  publicKeyOf,
  signerOf,
  type AuthorityKey,
  type AuthorityKeyKind,
  type StoredAuthorityKey,
} from './keys.js';
import { caConstraintsOf, issuerFromPem, issuerFromSigner, mintCa, mintCaCsrWith, splitPemCertificates, type IssuerMaterial } from './x509.js';

/** A key pair in the PKCS#11 token of ca.pkcs11 / ca.jwtPkcs11, named by its CKA_LABEL: the private key never leaves it. */
const TokenKeyRecordSchema = Type.Object({ token: Type.Object({ keyLabel: Type.String({ minLength: 1, maxLength: 256 }) }, { additionalProperties: false }) }, { additionalProperties: false });
/** Where an authority's key is: sealed in the record (a PEM), or in the token. */
const AuthorityKeyRecordSchema = Type.Union([SealedRecordSchema, TokenKeyRecordSchema]);
type AuthorityKeyRecord = Static<typeof AuthorityKeyRecordSchema>;

const AuthorityRecordSchema = Type.Object({
  /** The signing certificate's subject key identifier (hex), as in metrics and logs. */
  id: Type.String({ pattern: '^[0-9a-f]{2,128}$' }),
  state: Type.Enum(['prepared', 'active', 'old']),
  certPem: Type.String({ minLength: 1 }),
  /** Certificates between the signing CA and the root ('' when the root signed it). */
  intermediatesPem: Type.String(),
  key: AuthorityKeyRecordSchema,
  jwtKey: AuthorityKeyRecordSchema,
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

/**
 * `tessera ca prepare`: the next authority's keys, made by the broker, waiting for a certificate from an
 * upstream or offline root (`tessera ca import`). Not in the bundle; the keys never leave the store.
 */
const PendingRecordSchema = Type.Object({
  /** Random; names the sealing context of the keys until the certificate gives the authority its id. */
  id: Type.String({ pattern: '^[0-9a-f]{32}$' }),
  key: AuthorityKeyRecordSchema,
  jwtKey: AuthorityKeyRecordSchema,
  csrPem: Type.String({ minLength: 1, maxLength: 16_384 }),
  createdAt: SafeInteger(),
});
export type PendingRecord = Static<typeof PendingRecordSchema>;

const CaStateSchema = Type.Object({
  version: Type.Literal(1),
  pending: Type.Optional(PendingRecordSchema),
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

/** One authority's certificates and keys, before its keys are sealed (or named by label) into a record. */
export interface AuthorityMaterial {
  readonly certPem: string;
  readonly intermediatesPem: string;
  readonly key: AuthorityKey;
  readonly jwtKey: AuthorityKey;
}

const keyContext = (id: string, which: AuthorityKeyKind): string => `ca-authority/${id}/${which}`;
const pendingContext = (id: string, which: AuthorityKeyKind): string => `ca-pending/${id}/${which}`;

/** A key as the record keeps it: a PEM sealed under `context`, a token key by its label. */
/** A key held as a PEM is sealed with the secrets KEK; with both keys in a token there is none to seal. */
function kekFor(ring: KeyRing | undefined): KeyRing {
  if (ring === undefined) throw new BrokerError('ca_unavailable', 'a CA or JWT-SVID key held as a PEM is sealed in the store with the secrets KEK: set secrets.kekFile');
  return ring;
}

function recordKey(key: AuthorityKey, ring: KeyRing | undefined, context: string): AuthorityKeyRecord {
  return 'pem' in key ? seal(kekFor(ring), Buffer.from(key.pem, 'utf8'), context) : { token: { keyLabel: key.token.keyLabel } };
}

function storedKey(record: AuthorityKeyRecord, ring: KeyRing | undefined, context: string): StoredAuthorityKey {
  return 'token' in record ? { token: { keyLabel: record.token.keyLabel } } : { pem: openSealed(kekFor(ring), record, context).toString('utf8') };
}

/**
 * The step a next authority's keys are made for, which names them in a token: the authority it will
 * follow. One next authority is made per active one (prepare, or `ca prepare`), so the name is unique,
 * and a retry of the same step after a crash finds the same pair.
 */
export const nextKeyStep = (active: AuthorityRecord): string => `next-${active.id.slice(0, 16)}`;

/** The labels of token keys `state` names, per kind (what stays open). */
function tokenLabels(state: CaState): Record<AuthorityKeyKind, Set<string>> {
  const labels = { x509: new Set<string>(), jwt: new Set<string>() };
  for (const a of [...state.authorities, ...(state.pending !== undefined ? [state.pending] : [])]) {
    if ('token' in a.key) labels.x509.add(a.key.token.keyLabel);
    if ('token' in a.jwtKey) labels.jwt.add(a.jwtKey.token.keyLabel);
  }
  return labels;
}

/** Bounds of what `ca import` accepts. */
export const MAX_IMPORT_CERT_PEM = 16_384;
export const MAX_IMPORT_CHAIN_PEM = 65_536;

const rejected = (message: string): BrokerError => new BrokerError('bad_request', message);

/**
 * Checks a certificate from an upstream root for the pending key, each cause with its own message:
 * one certificate, for the key `ca prepare` made, a CA allowed to sign certificates, valid now and for
 * at least the longest X.509-SVID, chaining through `chainPem` to a root of `rootsPem`.
 */
export function checkImportedCa(certPem: string, chainPem: string, key: AuthorityKey, rootsPem: string, now: number, limits: RotationLimits): void {
  let ders: Buffer[];
  try {
    ders = splitPemCertificates(certPem, 'the certificate');
  } catch (err) {
    throw rejected(`${err instanceof Error ? err.message : String(err)}: expected one PEM CERTIFICATE block`);
  }
  if (ders.length !== 1) throw rejected(`the certificate PEM must hold exactly one certificate (found ${ders.length}); put the ones above it in the chain`);
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(ders[0] as Buffer);
  } catch {
    throw rejected('the certificate is malformed');
  }
  const spki = (k: KeyObject): Buffer => k.export({ type: 'spki', format: 'der' });
  if (!spki(cert.publicKey).equals(spki(publicKeyOf(key)))) {
    throw rejected('the certificate does not match the prepared key: sign the CSR that `tessera ca prepare` wrote (run it again to get the same CSR)');
  }
  let constraints: ReturnType<typeof caConstraintsOf>;
  try {
    constraints = caConstraintsOf(cert.raw);
  } catch {
    throw rejected('the certificate has a malformed basicConstraints or keyUsage extension');
  }
  if (!constraints.ca) throw rejected('the certificate is not a CA: basicConstraints cA:TRUE is missing');
  if (constraints.keyCertSign !== true) throw rejected('the certificate cannot sign certificates: its keyUsage lacks keyCertSign');
  try {
    if ('pem' in key) issuerFromPem(certPem, key.pem);
    else issuerFromSigner(certPem, key.signer);
  } catch (err) {
    throw rejected(`the certificate cannot be used as a signing CA: ${err instanceof Error ? err.message : String(err)}`);
  }
  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  if (now < notBefore) throw rejected(`the certificate is not valid yet (notBefore ${new Date(notBefore).toISOString()})`);
  if (now >= notAfter) throw rejected(`the certificate expired at ${new Date(notAfter).toISOString()}`);
  if (notAfter - now < limits.maxX509TtlMs) {
    throw rejected(`the certificate ends at ${new Date(notAfter).toISOString()}, sooner than the longest X.509-SVID (svid.x509MaxTtlSeconds) from now`);
  }
  try {
    authorityFromKey({ certPem, intermediatesPem: chainPem, rootsPem }, key);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw rejected(`the certificate does not chain to a root in ca.bundleFile (${why}); pass the certificates between it and the root with --chain`);
  }
  checkPathLengths(cert, chainPem, rootsPem, now);
}

/**
 * The path root → … → this CA → SVID must respect every CA's pathLenConstraint (RFC 5280 4.2.1.9), and
 * every certificate above the new CA must be valid now — else relying parties reject what it signs.
 */
function checkPathLengths(cert: X509Certificate, chainPem: string, rootsPem: string, now: number): void {
  const parse = (pem: string, what: string): X509Certificate[] => splitPemCertificates(pem, what).map((d) => new X509Certificate(d));
  const intermediates = parse(chainPem, 'the chain');
  const roots = parse(rootsPem, 'ca.bundleFile');
  const issuedBy = (child: X509Certificate, parent: X509Certificate): boolean => child.checkIssued(parent) && child.verify(parent.publicKey);
  // fromPem has checked that this walk ends at a root.
  const path: X509Certificate[] = [cert];
  for (let current = cert; path.length <= 9; ) {
    const root = roots.find((r) => issuedBy(current, r));
    if (root !== undefined) {
      if (!root.raw.equals(current.raw)) path.push(root);
      break;
    }
    const parent = intermediates.find((c) => !path.includes(c) && issuedBy(current, c));
    if (parent === undefined) break;
    path.push(parent);
    current = parent;
  }
  path.forEach((c, below) => {
    const name = below === 0 ? 'the certificate' : `"${c.subject.replace(/\n/g, ', ')}"`;
    if (below > 0 && (now < Date.parse(c.validFrom) || now >= Date.parse(c.validTo))) throw rejected(`${name} in its chain is not valid now (${c.validFrom} to ${c.validTo})`);
    const { pathLen } = caConstraintsOf(Buffer.from(c.raw));
    if (pathLen !== undefined && pathLen < below) {
      throw rejected(`${name} allows ${pathLen} CA certificate(s) below it (pathLenConstraint) but the path to the SVIDs has ${below}: have the root sign the CSR directly, or use a root that allows more`);
    }
  });
}

/** Seals an authority's keys into a record (the certificate is checked against `rootsPem` first). */
export async function authorityRecord(
  material: AuthorityMaterial,
  state: AuthorityState,
  now: number,
  ring: KeyRing | undefined,
  rootsPem: string,
): Promise<AuthorityRecord> {
  const ca = authorityFromKey({ certPem: material.certPem, intermediatesPem: material.intermediatesPem, rootsPem }, material.key);
  const jwt = await jwtSignerFromKey(material.jwtKey);
  const cert = new X509Certificate(material.certPem);
  const { kty, crv, x, y } = jwt.publicJwk;
  if (kty !== 'EC' || crv === undefined || x === undefined || y === undefined) throw new BrokerError('internal', 'the JWT-SVID key is not an EC key');
  return {
    id: ca.authorityId,
    state,
    certPem: material.certPem,
    intermediatesPem: material.intermediatesPem,
    key: recordKey(material.key, ring, keyContext(ca.authorityId, 'x509')),
    jwtKey: recordKey(material.jwtKey, ring, keyContext(ca.authorityId, 'jwt')),
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

/**
 * Makes the next authority: new CA and JWT keys (`makeKey`: PEMs, or pairs in the token), a CA
 * certificate from the root for the new CA key, valid `ttlMs` from now.
 */
export async function mintNextAuthority(
  root: IssuerMaterial,
  trustDomain: string,
  ttlMs: number,
  now: number,
  makeKey: (kind: AuthorityKeyKind) => Promise<AuthorityKey>,
): Promise<AuthorityMaterial> {
  // Backdated a little (clock skew), never before the root; never past the root's end.
  const notBefore = Math.max(now - Math.min(60_000, Math.floor(ttlMs / 20)), root.notBefore.getTime());
  const notAfter = Math.min(now + ttlMs, root.notAfter.getTime());
  if (notAfter - now < ttlMs / 2) {
    throw new BrokerError('ca_expired', `the root CA expires at ${root.notAfter.toISOString()}: too soon to make a next signing CA; replace the root`);
  }
  const [key, jwtKey] = await Promise.all([makeKey('x509'), makeKey('jwt')]);
  const cert = mintCa(
    { commonName: 'Tessera Signing CA', trustDomain, subjectPublicKey: publicKeyOf(key), notBefore: new Date(notBefore), notAfter: new Date(notAfter), pathLen: 0 },
    root,
  );
  return { certPem: cert.pem, intermediatesPem: '', key, jwtKey };
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
  /** Seals keys held as PEMs (secrets.kekFile); absent when both keys are in a token (nothing is sealed). */
  readonly ring: KeyRing | undefined;
  readonly rootsPem: string;
  /** Signs next signing CAs. Absent (upstream or offline root): authorities come from `ca prepare` / `ca import`. */
  readonly root?: IssuerMaterial | undefined;
  readonly trustDomain: string;
  /**
   * Where next authorities' keys are made and token keys opened (keys.ts): default, PEMs only.
   * CaRotation owns it: close() closes its token keys.
   */
  readonly keys?: AuthorityKeys | undefined;
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
  readonly #keys: AuthorityKeys;
  #live: LiveAuthorities;
  #storedText: string;
  #timer: NodeJS.Timeout | undefined;
  #ticking: Promise<void> | undefined;
  #closed = false;

  private constructor(opts: CaRotationOptions, keys: AuthorityKeys, live: LiveAuthorities, storedText: string) {
    this.#opts = opts;
    this.#keys = keys;
    this.#live = live;
    this.#storedText = storedText;
  }

  /**
   * Loads the stored state; on a store that has none, one replica (under the lock) writes the first:
   * `initial` (the CA and JWT key of the config) as the active authority, bundle sequence 1 — a key in
   * the token recorded by its configured label.
   */
  static async open(opts: CaRotationOptions, initial: AuthorityMaterial): Promise<CaRotation> {
    const keys = opts.keys ?? new AuthorityKeys();
    try {
      return await CaRotation.#open(opts, keys, initial);
    } catch (err) {
      keys.close();
      throw err;
    }
  }

  static async #open(opts: CaRotationOptions, keys: AuthorityKeys, initial: AuthorityMaterial): Promise<CaRotation> {
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
    const live = await CaRotation.build(opts, keys, state);
    keys.retain(tokenLabels(state));
    return new CaRotation(opts, keys, live, text);
  }

  static parse(text: string): CaState {
    const parsed = parseCaState(text);
    if (!parsed.ok) throw new BrokerError('internal', `the stored CA state is unreadable (${parsed.why})`);
    activeOf(parsed.value);
    return parsed.value;
  }

  /** What the active authority of `state` signs with (its keys unsealed, or opened in the token), and the bundle. */
  static async build(opts: Pick<CaRotationOptions, 'ring' | 'rootsPem' | 'refreshHintSeconds'>, keys: AuthorityKeys, state: CaState): Promise<LiveAuthorities> {
    const active = activeOf(state);
    const [key, jwtKey] = await Promise.all([
      keys.open('x509', storedKey(active.key, opts.ring, keyContext(active.id, 'x509'))),
      keys.open('jwt', storedKey(active.jwtKey, opts.ring, keyContext(active.id, 'jwt'))),
    ]);
    const ca = authorityFromKey({ certPem: active.certPem, intermediatesPem: active.intermediatesPem, rootsPem: opts.rootsPem }, key);
    if (ca.authorityId !== active.id) throw new BrokerError('internal', `the stored authority ${active.id} holds another certificate`);
    const jwt = await jwtSignerFromKey(jwtKey);
    if (jwt.kid !== active.jwtKid) throw new BrokerError('internal', `the JWT-SVID key of stored authority ${active.id} is not the one its kid ${active.jwtKid} names`);
    return { state, ca, jwt, bundle: CaRotation.#bundle(opts, ca, state) };
  }

  /** The trust bundle of `state`: the roots, and the JWT key of every authority in it. */
  static #bundle(opts: Pick<CaRotationOptions, 'refreshHintSeconds'>, ca: CertificateAuthority, state: CaState): SpiffeBundle {
    return buildBundle({
      rootCertsDer: ca.rootCertsDer,
      jwtKeys: state.authorities.map((a) => ({ kid: a.jwtKid, jwk: a.jwtPublic })),
      sequence: state.sequence,
      refreshHintSeconds: opts.refreshHintSeconds,
    });
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
    this.#keys.close();
  }

  /**
   * Activates the prepared authority now instead of at 5/6 of the active one's life (`tessera ca
   * activate`): the same step, under the same lock, written the same way. Throws 409
   * ca_state_conflict when nothing is prepared.
   */
  async activateNow(): Promise<AuthorityRecord> {
    return this.#underLock(async () => {
      const prepared = preparedOf(this.#live.state);
      if (prepared === undefined) throw new BrokerError('ca_state_conflict', 'no authority is prepared, so there is nothing to activate');
      const now = this.#opts.clock.now();
      if (now < prepared.notBefore) throw new BrokerError('ca_state_conflict', `the prepared authority ${prepared.id} is not valid before ${new Date(prepared.notBefore).toISOString()}`);
      await this.#write({ kind: 'activate', id: prepared.id }, now);
      return activeOf(this.#live.state);
    });
  }

  /**
   * `tessera ca prepare`: makes the next authority's keys (sealed in the store, or made in the token;
   * one write) and returns a PKCS#10 CSR for its signing CA, signed by that key, for an upstream or
   * offline root to sign. Asked again before the import, it returns the same CSR (`created: false`).
   * 409 ca_state_conflict when an authority is already prepared.
   */
  async prepareCsr(): Promise<{ readonly csrPem: string; readonly createdAt: number; readonly created: boolean }> {
    return this.#underLock(async () => {
      const state = this.#live.state;
      if (preparedOf(state) !== undefined) {
        throw new BrokerError('ca_state_conflict', `authority ${preparedOf(state)?.id ?? ''} is already prepared: activate it (tessera ca activate) before preparing another`);
      }
      if (state.pending !== undefined) return { csrPem: state.pending.csrPem, createdAt: state.pending.createdAt, created: false };
      const step = nextKeyStep(activeOf(state));
      const [key, jwtKey] = await Promise.all([this.#keys.make('x509', step), this.#keys.make('jwt', step)]);
      const id = randomBytes(16).toString('hex');
      const now = this.#opts.clock.now();
      const pending: PendingRecord = {
        id,
        key: recordKey(key, this.#opts.ring, pendingContext(id, 'x509')),
        jwtKey: recordKey(jwtKey, this.#opts.ring, pendingContext(id, 'jwt')),
        csrPem: await mintCaCsrWith({ commonName: 'Tessera Signing CA', trustDomain: this.#opts.trustDomain }, signerOf(key)),
        createdAt: now,
      };
      const next: CaState = { ...state, pending };
      const text = JSON.stringify(next);
      await this.#opts.store.kvPut(CA_STATE_SPACE, CA_STATE_KEY, text);
      await this.#switch(text, next);
      return { csrPem: pending.csrPem, createdAt: now, created: true };
    });
  }

  /**
   * `tessera ca import`: installs the certificate an upstream root signed for the pending key as the
   * prepared authority — published in the bundle (sequence + 1) in the same single write that clears
   * the pending keys. Every check comes first (400 bad_request naming the cause); nothing is written
   * unless all pass. 409 ca_state_conflict when no `ca prepare` is pending.
   */
  async importCertificate(certPem: string, chainPem: string): Promise<AuthorityRecord> {
    await this.checkImport(certPem, chainPem);
    return this.#underLock(async () => {
      const opts = this.#opts;
      const state = this.#live.state;
      const { key, jwtKey, now } = await this.#importChecks(state, certPem, chainPem);
      const certOnly = toPem('CERTIFICATE', splitPemCertificates(certPem)[0] as Buffer);
      const record = await authorityRecord({ certPem: certOnly, intermediatesPem: chainPem, key, jwtKey }, 'prepared', now, opts.ring, opts.rootsPem);
      if (state.authorities.some((a) => a.id === record.id)) throw new BrokerError('ca_state_conflict', `authority ${record.id} is already installed`);
      await this.#write({ kind: 'prepare' }, now, record, { version: state.version, sequence: state.sequence, authorities: state.authorities });
      return record;
    });
  }

  /** The checks of importCertificate on the current state, without writing (the admin route runs them before it audits). */
  async checkImport(certPem: string, chainPem: string): Promise<void> {
    await this.#importChecks(this.#live.state, certPem, chainPem);
  }

  async #importChecks(state: CaState, certPem: string, chainPem: string): Promise<{ key: AuthorityKey; jwtKey: AuthorityKey; now: number }> {
    if (certPem.length > MAX_IMPORT_CERT_PEM) throw rejected(`the certificate PEM is longer than ${MAX_IMPORT_CERT_PEM} characters`);
    if (chainPem.length > MAX_IMPORT_CHAIN_PEM) throw rejected(`the chain PEM is longer than ${MAX_IMPORT_CHAIN_PEM} characters`);
    const opts = this.#opts;
    const pending = state.pending;
    if (pending === undefined) throw new BrokerError('ca_state_conflict', 'no `tessera ca prepare` is pending: there is no key for this certificate');
    if (preparedOf(state) !== undefined) throw new BrokerError('ca_state_conflict', 'an authority is already prepared: activate it before importing another');
    const [key, jwtKey] = await Promise.all([
      this.#keys.open('x509', storedKey(pending.key, opts.ring, pendingContext(pending.id, 'x509'))),
      this.#keys.open('jwt', storedKey(pending.jwtKey, opts.ring, pendingContext(pending.id, 'jwt'))),
    ]);
    const now = opts.clock.now();
    checkImportedCa(certPem, chainPem, key, opts.rootsPem, now, opts.limits);
    return { key, jwtKey, now };
  }

  /** Runs `fn` holding the ca-rotation lock, on the state re-read under it (admin steps). */
  async #underLock<T>(fn: () => Promise<T>): Promise<T> {
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
      return await fn();
    } finally {
      await store.unlock(LOCK, owner);
    }
  }

  async #tick(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.#refresh();
      const due = dueStep(this.#live.state, this.#opts.clock.now());
      if (due === undefined || !this.#canTake(due)) return;
      const { store, owner } = this.#opts;
      if (!(await store.tryLock(LOCK, owner, LOCK_TTL_MS))) return; // another replica is at it
      try {
        await this.#refresh();
        const now = this.#opts.clock.now();
        const step = dueStep(this.#live.state, now);
        if (step !== undefined && !this.#closed && this.#canTake(step)) await this.#write(step, now);
      } finally {
        await store.unlock(LOCK, owner);
      }
    } catch (err) {
      this.#opts.onError(err, 'CA rotation');
    }
  }

  /**
   * Without the root's key nothing prepares by itself (an upstream root signs: `ca prepare`/`ca import`);
   * with it, an operator's pending `ca prepare` is not overtaken by an automatic one.
   */
  #canTake(step: RotationStep): boolean {
    return step.kind !== 'prepare' || (this.#opts.root !== undefined && this.#live.state.pending === undefined);
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
      ? { ...previous, state, bundle: CaRotation.#bundle(this.#opts, previous.ca, state) }
      : await CaRotation.build(this.#opts, this.#keys, state);
    this.#live = live;
    this.#storedText = text;
    // Token keys of dropped authorities are closed (old ones stay open: signatures may be in flight).
    this.#keys.retain(tokenLabels(state));
    this.#opts.onChange(live, previous);
  }

  /** After a drop: the token pairs Tessera generated for that authority go (best effort; a failure is reported). */
  async #destroyKeys(dropped: AuthorityRecord): Promise<void> {
    for (const [kind, key] of [['x509', dropped.key], ['jwt', dropped.jwtKey]] as const) {
      if (!('token' in key)) continue;
      await this.#keys.destroy(kind, key.token.keyLabel).catch((err: unknown) =>
        this.#opts.onError(err, `destroying token key pair "${key.token.keyLabel}" of dropped CA authority ${dropped.id}`),
      );
    }
  }

  async #write(step: RotationStep, now: number, imported?: AuthorityRecord, base?: CaState): Promise<void> {
    const opts = this.#opts;
    const state = base ?? this.#live.state;
    let record: AuthorityRecord | undefined = imported;
    if (step.kind === 'prepare' && record === undefined) {
      if (opts.root === undefined) throw new Error('no root key to prepare with');
      const keyStep = nextKeyStep(activeOf(state));
      const material = await mintNextAuthority(opts.root, opts.trustDomain, opts.caTtlMs, now, (kind) => this.#keys.make(kind, keyStep));
      record = await authorityRecord(material, 'prepared', now, opts.ring, opts.rootsPem);
    }
    const next = applyStep(state, step, now, opts.limits, record);
    const text = JSON.stringify(next);
    await opts.store.kvPut(CA_STATE_SPACE, CA_STATE_KEY, text);
    await this.#switch(text, next);
    const subject = record ?? state.authorities.find((a) => a.id === (step as { id: string }).id);
    if (step.kind === 'drop' && subject !== undefined) await this.#destroyKeys(subject);
    if (subject !== undefined && opts.onStep !== undefined) {
      await opts.onStep(step, subject, next).catch((err: unknown) => opts.onError(err, `recording CA rotation step ${step.kind}`));
    }
  }
}

/** An id for audit entries of rotation steps. */
export const rotationRequestId = (): string => randomUUID();
