/**
 * A `Signer` whose private key stays in a PKCS#11 token (an HSM, or SoftHSM2 in tests), through
 * pkcs11js (PeculiarVentures' N-API binding; chosen by measurement, docs/ca.md "Keys in an HSM").
 *
 * - The key is found by label; it must be sensitive and not extractable (generated in the token, or
 *   imported as such). Tessera reads only the public key (the public-key object with the same label)
 *   and proves at open that the two belong together by signing and verifying a probe.
 * - Signing runs on libuv's pool (C_SignAsync), over a small pool of sessions so concurrent callers
 *   do not serialize on one session (a session runs one operation at a time).
 * - ECDSA in PKCS#11 (CKM_ECDSA over a digest computed here) returns r ‖ s; `sign` returns DER, as
 *   `Signer` promises. Ed25519 uses CKM_EDDSA, RSA CKM_SHA256_RSA_PKCS.
 * - Every failure to open names its cause (module, token, PIN, key label, key type) as a
 *   `Pkcs11KeyError`; a failed signature is a 503 `ca_unavailable` (nothing was issued).
 */
import { createHash, createPublicKey, verify, type KeyObject } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import type Pkcs11Module from 'pkcs11js';
import { BrokerError } from '../errors.js';
import { sequence, integerFromBytes } from './der.js';
import type { SignatureAlgorithm, Signer } from './signer.js';

/** Where a key lives: the config's `pkcs11` mapping. */
export interface Pkcs11KeyRef {
  /** Path of the PKCS#11 module (shared library), e.g. /usr/lib/softhsm/libsofthsm2.so. */
  readonly module: string;
  readonly tokenLabel: string;
  /** File holding the user PIN (one line); must not be readable by group or others. */
  readonly pinFile: string;
  /** CKA_LABEL of the private key (and of its public key). */
  readonly keyLabel: string;
  /** Sessions signing in parallel (default 4). */
  readonly sessions?: number | undefined;
}

/** A key that cannot be used; the message says why (module, token, PIN, label, key type). */
export class Pkcs11KeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'Pkcs11KeyError';
  }
}

// Mechanism and key-type numbers pkcs11js does not name (PKCS#11 v3.0).
const CKM_EDDSA = 0x1057;
const CKK_EC_EDWARDS = 0x40;

const CURVE_PARAMS: ReadonlyMap<string, 'P-256' | 'P-384' | 'Ed25519'> = new Map([
  ['06082a8648ce3d030107', 'P-256'],
  ['06052b81040022', 'P-384'],
  ['06032b6570', 'Ed25519'],
  // PrintableString "edwards25519" (what SoftHSM2 and OpenSC write for Ed25519 keys).
  ['130c656477617264733235353139', 'Ed25519'],
]);

// The native binding, loaded on first use: a broker without PKCS#11 keys never needs it (nor its build).
let pkcs11js!: typeof Pkcs11Module;

/** Loads the binding (once) and returns it: its constants and classes, for pkcs11-keygen.ts. */
export async function loadBinding(): Promise<typeof Pkcs11Module> {
  await loadBindingOnce();
  return pkcs11js;
}

async function loadBindingOnce(): Promise<void> {
  if ((pkcs11js as typeof Pkcs11Module | undefined) !== undefined) return;
  try {
    pkcs11js = (await import('pkcs11js')).default;
  } catch (err) {
    throw new Pkcs11KeyError(`the PKCS#11 binding (npm package pkcs11js, a native addon) cannot be loaded: ${describe(err).split('\n')[0] ?? ''} (build it for this Node: npm rebuild pkcs11js)`);
  }
}

interface LoadedModule {
  readonly lib: Pkcs11Module.PKCS11;
  refs: number;
}
// One load and C_Initialize per module per process, shared by every key in it.
const modules = new Map<string, LoadedModule>();

export function codeOf(err: unknown): number | undefined {
  return err instanceof pkcs11js.Pkcs11Error ? err.code : undefined;
}

export function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Loads and initialises a module, or takes one more reference on the loaded one (release with unloadModule). */
export function loadModule(path: string): LoadedModule {
  const known = modules.get(path);
  if (known !== undefined) {
    known.refs++;
    return known;
  }
  const lib = new pkcs11js.PKCS11();
  try {
    lib.load(path);
  } catch (err) {
    throw new Pkcs11KeyError(`cannot load PKCS#11 module ${path}: ${describe(err)}`);
  }
  try {
    // OS locking: sessions are used from libuv's threads at once.
    lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (err) {
    if (codeOf(err) !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
      lib.close();
      throw new Pkcs11KeyError(`PKCS#11 module ${path} failed to initialise: ${describe(err)}`);
    }
  }
  const loaded = { lib, refs: 1 };
  modules.set(path, loaded);
  return loaded;
}

export function unloadModule(path: string): void {
  const m = modules.get(path);
  if (m === undefined || --m.refs > 0) return;
  modules.delete(path);
  try {
    m.lib.C_Finalize();
  } catch {
    // Finalizing a module that already failed is not worth a second error.
  }
  m.lib.close();
}

/** The user PIN from `file`: one line, the file private to its owner. */
export function readPinFile(file: string): string {
  let text: string;
  try {
    if ((statSync(file).mode & 0o077) !== 0) throw new Pkcs11KeyError(`PIN file ${file} is readable by group or others; chmod 600 it`);
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof Pkcs11KeyError) throw err;
    throw new Pkcs11KeyError(`cannot read PIN file ${file}: ${(err as NodeJS.ErrnoException).code ?? describe(err)}`);
  }
  const pin = text.replace(/\r?\n$/, '');
  if (pin.length === 0 || /[\r\n]/.test(pin)) throw new Pkcs11KeyError(`PIN file ${file} must hold the PIN on one line`);
  return pin;
}

export function findSlot(lib: Pkcs11Module.PKCS11, ref: Pkcs11KeyRef): Buffer {
  const labels: string[] = [];
  for (const slot of lib.C_GetSlotList(true)) {
    const label = lib.C_GetTokenInfo(slot).label.trimEnd();
    if (label === ref.tokenLabel) return slot;
    labels.push(JSON.stringify(label));
  }
  throw new Pkcs11KeyError(
    `no token labelled "${ref.tokenLabel}" in PKCS#11 module ${ref.module} (tokens present: ${labels.length > 0 ? labels.join(', ') : 'none'})`,
  );
}

export function login(lib: Pkcs11Module.PKCS11, session: Buffer, ref: Pkcs11KeyRef, pin: string): void {
  try {
    lib.C_Login(session, pkcs11js.CKU_USER, pin);
  } catch (err) {
    const code = codeOf(err);
    if (code === pkcs11js.CKR_USER_ALREADY_LOGGED_IN) return;
    if (code === pkcs11js.CKR_PIN_INCORRECT) throw new Pkcs11KeyError(`wrong PIN for token "${ref.tokenLabel}" (CKR_PIN_INCORRECT; PIN from ${ref.pinFile})`);
    if (code === pkcs11js.CKR_PIN_LOCKED) throw new Pkcs11KeyError(`the user PIN of token "${ref.tokenLabel}" is locked (CKR_PIN_LOCKED)`);
    throw new Pkcs11KeyError(`cannot log in to token "${ref.tokenLabel}": ${describe(err)}`);
  }
}

/** Objects of class `cls` labelled `label` (up to 4: more than one is already an error for callers). */
export function findObjects(lib: Pkcs11Module.PKCS11, session: Buffer, cls: number, label: string): Buffer[] {
  lib.C_FindObjectsInit(session, [
    { type: pkcs11js.CKA_CLASS, value: cls },
    { type: pkcs11js.CKA_LABEL, value: label },
  ]);
  try {
    return lib.C_FindObjects(session, 4);
  } finally {
    lib.C_FindObjectsFinal(session);
  }
}

export function attribute(lib: Pkcs11Module.PKCS11, session: Buffer, object: Buffer, type: number): Buffer {
  const [attr] = lib.C_GetAttributeValue(session, object, [{ type }]);
  const value = attr?.value;
  if (!Buffer.isBuffer(value)) throw new Pkcs11KeyError(`PKCS#11 attribute 0x${type.toString(16)} could not be read`);
  return value;
}

export const bool = (value: Buffer): boolean => value.length > 0 && value[0] !== 0;
const ulong = (value: Buffer): number => (value.length >= 8 ? Number(value.readBigUInt64LE(0)) : value.readUInt32LE(0));

/** CKA_EC_POINT is a DER OCTET STRING around the point (some modules give the bare point). */
function ecPoint(value: Buffer): Buffer {
  if (value[0] === 0x04 && value.length > 2) {
    const len = value[1] ?? 0;
    if (len < 0x80 && len === value.length - 2) return value.subarray(2);
    if (len === 0x81 && value[2] === value.length - 3) return value.subarray(3);
  }
  return value;
}

interface KeyShape {
  readonly algorithm: SignatureAlgorithm;
  readonly publicKey: KeyObject;
}

function keyShape(lib: Pkcs11Module.PKCS11, session: Buffer, pub: Buffer, keyType: number, ref: Pkcs11KeyRef): KeyShape {
  const where = `key "${ref.keyLabel}" in token "${ref.tokenLabel}"`;
  if (keyType === pkcs11js.CKK_EC || keyType === CKK_EC_EDWARDS) {
    const curve = CURVE_PARAMS.get(attribute(lib, session, pub, pkcs11js.CKA_EC_PARAMS).toString('hex'));
    if (curve === undefined || (keyType === CKK_EC_EDWARDS) !== (curve === 'Ed25519')) {
      throw new Pkcs11KeyError(`${where} is on an unsupported curve; use EC P-256, P-384 or Ed25519`);
    }
    const point = ecPoint(attribute(lib, session, pub, pkcs11js.CKA_EC_POINT));
    if (curve === 'Ed25519') {
      if (point.length !== 32) throw new Pkcs11KeyError(`${where} has a malformed Ed25519 public key`);
      return { algorithm: 'EdDSA', publicKey: createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: point.toString('base64url') }, format: 'jwk' }) };
    }
    const size = curve === 'P-256' ? 32 : 48;
    if (point.length !== 1 + 2 * size || point[0] !== 0x04) throw new Pkcs11KeyError(`${where} has a malformed EC public key`);
    const jwk = { kty: 'EC', crv: curve, x: point.subarray(1, 1 + size).toString('base64url'), y: point.subarray(1 + size).toString('base64url') };
    return { algorithm: curve === 'P-256' ? 'ES256' : 'ES384', publicKey: createPublicKey({ key: jwk, format: 'jwk' }) };
  }
  if (keyType === pkcs11js.CKK_RSA) {
    const n = attribute(lib, session, pub, pkcs11js.CKA_MODULUS);
    const e = attribute(lib, session, pub, pkcs11js.CKA_PUBLIC_EXPONENT);
    const publicKey = createPublicKey({ key: { kty: 'RSA', n: n.toString('base64url'), e: e.toString('base64url') }, format: 'jwk' });
    if ((publicKey.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) throw new Pkcs11KeyError(`${where} is an RSA key under 2048 bits`);
    return { algorithm: 'RS256', publicKey };
  }
  throw new Pkcs11KeyError(`${where} has an unsupported key type (CKK 0x${keyType.toString(16)}); use EC P-256/P-384, Ed25519 or RSA ≥ 2048`);
}

/** r ‖ s (each `size` bytes) as DER SEQUENCE { INTEGER r, INTEGER s }, the form `Signer` promises. */
export function ecdsaRawToDer(raw: Buffer): Buffer {
  if (raw.length === 0 || raw.length % 2 !== 0) throw new BrokerError('ca_unavailable', 'the HSM returned a malformed ECDSA signature; nothing was signed');
  const half = raw.length / 2;
  return sequence(integerFromBytes(raw.subarray(0, half)), integerFromBytes(raw.subarray(half)));
}

const NODE_DIGEST: Record<SignatureAlgorithm, string | null> = { ES256: 'sha256', ES384: 'sha384', EdDSA: null, RS256: 'sha256' };

export class Pkcs11Signer implements Signer {
  readonly algorithm: SignatureAlgorithm;
  readonly publicKey: KeyObject;
  readonly #ref: Pkcs11KeyRef;
  readonly #lib: Pkcs11Module.PKCS11;
  readonly #slot: Buffer;
  readonly #key: Buffer;
  readonly #idle: Buffer[];
  readonly #waiting: { resolve: (session: Buffer) => void; reject: (err: unknown) => void }[] = [];
  readonly #all: Set<Buffer>;
  readonly #size: number;
  #closed = false;

  private constructor(ref: Pkcs11KeyRef, lib: Pkcs11Module.PKCS11, slot: Buffer, key: Buffer, sessions: Buffer[], shape: KeyShape) {
    this.#ref = ref;
    this.#lib = lib;
    this.#slot = slot;
    this.#key = key;
    this.#idle = [...sessions];
    this.#all = new Set(sessions);
    this.#size = sessions.length;
    this.algorithm = shape.algorithm;
    this.publicKey = shape.publicKey;
  }

  /** Opens the key: loads the module, finds the token, logs in, finds and checks the key, signs a probe. */
  static async open(ref: Pkcs11KeyRef): Promise<Pkcs11Signer> {
    const count = ref.sessions ?? 4;
    if (!Number.isInteger(count) || count < 1 || count > 64) throw new Pkcs11KeyError('sessions must be an integer in [1, 64]');
    const pin = readPinFile(ref.pinFile);
    await loadBindingOnce();
    const { lib } = loadModule(ref.module);
    const sessions: Buffer[] = [];
    try {
      const slot = findSlot(lib, ref);
      for (let i = 0; i < count; i++) sessions.push(lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION));
      const first = sessions[0] as Buffer;
      login(lib, first, ref, pin);
      const where = `in token "${ref.tokenLabel}"`;
      const keys = findObjects(lib, first, pkcs11js.CKO_PRIVATE_KEY, ref.keyLabel);
      if (keys.length === 0) throw new Pkcs11KeyError(`no private key labelled "${ref.keyLabel}" ${where}`);
      if (keys.length > 1) throw new Pkcs11KeyError(`more than one private key labelled "${ref.keyLabel}" ${where}; labels must be unique`);
      const key = keys[0] as Buffer;
      if (!bool(attribute(lib, first, key, pkcs11js.CKA_SENSITIVE)) || bool(attribute(lib, first, key, pkcs11js.CKA_EXTRACTABLE))) {
        throw new Pkcs11KeyError(`private key "${ref.keyLabel}" ${where} can leave the token (CKA_SENSITIVE false or CKA_EXTRACTABLE true); use a sensitive, non-extractable key`);
      }
      if (!bool(attribute(lib, first, key, pkcs11js.CKA_SIGN))) throw new Pkcs11KeyError(`private key "${ref.keyLabel}" ${where} may not sign (CKA_SIGN false)`);
      const pubs = findObjects(lib, first, pkcs11js.CKO_PUBLIC_KEY, ref.keyLabel);
      if (pubs.length !== 1) throw new Pkcs11KeyError(`no single public key labelled "${ref.keyLabel}" ${where}; Tessera reads the key pair's public half from it`);
      const shape = keyShape(lib, first, pubs[0] as Buffer, ulong(attribute(lib, first, key, pkcs11js.CKA_KEY_TYPE)), ref);
      const signer = new Pkcs11Signer(ref, lib, slot, key, sessions, shape);
      await signer.#probe();
      return signer;
    } catch (err) {
      for (const s of sessions) {
        try {
          lib.C_CloseSession(s);
        } catch {
          // closing what failed to open is best effort
        }
      }
      unloadModule(ref.module);
      if (err instanceof Pkcs11KeyError) throw err;
      throw new Pkcs11KeyError(`key "${ref.keyLabel}" in token "${ref.tokenLabel}" cannot be used: ${describe(err)}`);
    }
  }

  /** The private key and the public key read beside it are one pair. */
  async #probe(): Promise<void> {
    const probe = Buffer.from(`tessera pkcs11 probe ${this.#ref.keyLabel}`);
    let signature: Buffer;
    try {
      signature = await this.sign(probe);
    } catch (err) {
      throw new Pkcs11KeyError(`private key "${this.#ref.keyLabel}" in token "${this.#ref.tokenLabel}" cannot sign: ${describe(err)}`);
    }
    const digest = NODE_DIGEST[this.algorithm];
    if (!verify(digest, probe, this.publicKey, signature)) {
      throw new Pkcs11KeyError(`the public key labelled "${this.#ref.keyLabel}" in token "${this.#ref.tokenLabel}" is not the private key's pair`);
    }
  }

  async sign(data: Buffer): Promise<Buffer> {
    const session = await this.#acquire();
    let ok = false;
    try {
      const out = await this.#signWith(session, data);
      ok = true;
      return out;
    } catch (err) {
      throw new BrokerError('ca_unavailable', `the PKCS#11 token "${this.#ref.tokenLabel}" did not sign (${describe(err)}); nothing was issued`);
    } finally {
      this.#release(session, ok);
    }
  }

  async #signWith(session: Buffer, data: Buffer): Promise<Buffer> {
    const lib = this.#lib;
    switch (this.algorithm) {
      case 'ES256':
      case 'ES384': {
        const digest = createHash(this.algorithm === 'ES256' ? 'sha256' : 'sha384').update(data).digest();
        lib.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, this.#key);
        return ecdsaRawToDer(await lib.C_SignAsync(session, digest, Buffer.alloc(digest.length * 2)));
      }
      case 'EdDSA':
        lib.C_SignInit(session, { mechanism: CKM_EDDSA }, this.#key);
        return lib.C_SignAsync(session, data, Buffer.alloc(64));
      case 'RS256':
        lib.C_SignInit(session, { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS }, this.#key);
        return lib.C_SignAsync(session, data, Buffer.alloc(((this.publicKey.asymmetricKeyDetails?.modulusLength ?? 4096) + 7) >> 3));
    }
  }

  #acquire(): Promise<Buffer> {
    if (this.#closed) return Promise.reject(new BrokerError('ca_unavailable', 'the broker is shutting down; nothing was signed'));
    const session = this.#idle.pop();
    if (session !== undefined) return Promise.resolve(session);
    // The pool shrank (a session failed and could not be replaced at once): try to grow it back.
    if (this.#all.size < this.#size) {
      try {
        const fresh = this.#lib.C_OpenSession(this.#slot, pkcs11js.CKF_SERIAL_SESSION);
        this.#all.add(fresh);
        return Promise.resolve(fresh);
      } catch (err) {
        if (this.#all.size === 0) {
          return Promise.reject(new BrokerError('ca_unavailable', `the PKCS#11 token "${this.#ref.tokenLabel}" is unreachable (${describe(err)}); nothing was issued`));
        }
      }
    }
    return new Promise((resolve, reject) => this.#waiting.push({ resolve, reject }));
  }

  /** A session whose operation failed is replaced by a fresh one (the token may have reset it). */
  #release(session: Buffer, ok: boolean): void {
    if (!ok || this.#closed) this.#closeSession(session);
    if (this.#closed) {
      if (this.#all.size === 0) unloadModule(this.#ref.module);
      return;
    }
    const waiter = this.#waiting.shift();
    if (waiter === undefined) {
      if (ok) this.#idle.push(session);
      return;
    }
    if (ok) {
      waiter.resolve(session);
      return;
    }
    // Hand the waiter a fresh session, or the error that says why there is none.
    this.#acquire().then(waiter.resolve, waiter.reject);
  }

  #closeSession(session: Buffer): void {
    this.#all.delete(session);
    try {
      this.#lib.C_CloseSession(session);
    } catch {
      // best effort at shutdown
    }
  }

  /** Closes the idle sessions (busy ones close as they finish) and releases the module. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.#idle.splice(0)) this.#closeSession(s);
    // Sessions still signing close when they finish; the module is released after the last one.
    if (this.#all.size === 0) unloadModule(this.#ref.module);
  }
}
