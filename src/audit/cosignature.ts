/**
 * Witness cosignatures (c2sp.org/tlog-cosignature, the Ed25519 "cosignature/v1" type): a note signature
 * line on a checkpoint by a witness that checked the checkpoint is consistent with every earlier one it saw.
 *
 *   — <witness name> base64(4-byte key ID ‖ 8-byte big-endian POSIX seconds ‖ 64-byte Ed25519 signature)
 *
 *   signed message = "cosignature/v1\n" ‖ "time <seconds>\n" ‖ checkpoint note text (final newline included)
 *   key ID         = SHA-256(name ‖ 0x0A ‖ 0x04 ‖ 32-byte public key)[:4]
 *   verifier key   = <name>+<hex key ID>+base64(0x04 ‖ public key)
 *
 * The message does not commit to the witness name, so one key must serve one witness name only.
 * Parsing the note and its lines is audit/note.ts's; this module adds the cosignature's own rules.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, sign, verify } from 'node:crypto';
import {
  ed25519PrivateKeyFromSeed,
  formatVerifierKey,
  keyId,
  NoteError,
  type ParsedNote,
  parseNote,
  parseVerifierKey,
  rawEd25519PublicKey,
  SIG_TYPE_ED25519,
  validateKeyName,
} from './note.js';

/** Signature type byte of a timestamped Ed25519 cosignature (signed-note §Signature types). */
export const SIG_TYPE_COSIGNATURE_V1 = 0x04;
const BLOB_BYTES = 4 + 8 + 64;
/** timestamps are u64 on the wire but must not exceed 2^63 - 1; we also need them exact as JS numbers. */
const MAX_TIMESTAMP = BigInt(Number.MAX_SAFE_INTEGER);

/** A witness public key: what a verifier is configured with. */
export interface CosignerKey {
  readonly name: string;
  readonly keyId: number;
  readonly publicKey: KeyObject;
  readonly rawPublicKey: Buffer;
  /** The verifier key text (type 0x04). */
  readonly vkey: string;
}

/** Parses a witness verifier key `<name>+<hex id>+base64(0x04 ‖ key)`; other types are refused. */
export function parseCosignerKey(vkey: string): CosignerKey {
  const v = parseVerifierKey(vkey, SIG_TYPE_COSIGNATURE_V1);
  const name = v.name as string;
  return { name, keyId: keyId(name, v.rawPublicKey, SIG_TYPE_COSIGNATURE_V1), publicKey: v.publicKey, rawPublicKey: v.rawPublicKey, vkey: vkey.trim() };
}

/** The bytes a cosigner signs for note text `text` at `timestamp` (POSIX seconds). */
export function cosignatureMessage(text: string, timestamp: number): Buffer {
  if (!Number.isSafeInteger(timestamp) || timestamp < 0) throw new NoteError('cosignature timestamp must be a non-negative integer');
  return Buffer.from(`cosignature/v1\ntime ${timestamp}\n${text}`, 'utf8');
}

/** A witness's signing key and name. */
export class Cosigner {
  readonly name: string;
  readonly keyId: number;
  readonly publicKey: KeyObject;
  readonly #key: KeyObject;

  constructor(name: string, privateKey: KeyObject) {
    validateKeyName(name);
    if (privateKey.type !== 'private' || privateKey.asymmetricKeyType !== 'ed25519') throw new NoteError('a witness key must be an Ed25519 private key');
    this.name = name;
    this.#key = privateKey;
    this.publicKey = createPublicKey(privateKey);
    this.keyId = keyId(name, rawEd25519PublicKey(this.publicKey), SIG_TYPE_COSIGNATURE_V1);
  }

  get verifierKey(): string {
    return formatVerifierKey(this.name, this.publicKey, SIG_TYPE_COSIGNATURE_V1);
  }

  get key(): CosignerKey {
    return parseCosignerKey(this.verifierKey);
  }

  /** The cosignature line (final newline included) on checkpoint note text `text` at `timestamp` seconds. */
  cosign(text: string, timestamp: number): string {
    const sig = sign(null, cosignatureMessage(text, timestamp), this.#key);
    const blob = Buffer.alloc(BLOB_BYTES);
    blob.writeUInt32BE(this.keyId, 0);
    blob.writeBigUInt64BE(BigInt(timestamp), 4);
    sig.copy(blob, 12);
    return `\u2014 ${this.name} ${blob.toString('base64')}\n`;
  }
}

export interface Cosignature {
  /** The witness name (its key's name). */
  readonly name: string;
  /** POSIX seconds at which the witness cosigned. */
  readonly timestamp: number;
}

export interface VerifyCosignaturesOptions {
  /** Cosignatures dated after this (POSIX seconds) are refused: a witness does not sign in the future. */
  readonly maxTimestamp?: number;
}

/**
 * The cosignatures on `note` that verify with `keys`, one per witness (the newest if a witness signed
 * twice). Lines of unknown keys are ignored, as the spec says; a line whose name and key ID match a key
 * but whose signature does not verify rejects the note (NoteError), as signed-note says.
 */
export function verifyCosignatures(note: string | ParsedNote, keys: readonly CosignerKey[], opts: VerifyCosignaturesOptions = {}): Cosignature[] {
  const parsed = typeof note === 'string' ? parseNote(note) : note;
  const found = new Map<string, Cosignature>();
  for (const sig of parsed.signatures) {
    const key = keys.find((k) => k.name === sig.name && k.keyId === sig.keyId);
    if (key === undefined) continue;
    // parseNote strips the 4-byte key ID: what is left is the timestamp and the signature.
    if (sig.signature.length !== BLOB_BYTES - 4) throw new NoteError(`the cosignature by ${sig.name} is ${sig.signature.length + 4} bytes, not ${BLOB_BYTES}`);
    const ts = sig.signature.readBigUInt64BE(0);
    if (ts > MAX_TIMESTAMP) throw new NoteError(`the cosignature by ${sig.name} has an impossible timestamp`);
    const timestamp = Number(ts);
    if (!verify(null, cosignatureMessage(parsed.text, timestamp), key.publicKey, sig.signature.subarray(8))) {
      throw new NoteError(`the cosignature by ${sig.name} does not verify`);
    }
    if (opts.maxTimestamp !== undefined && timestamp > opts.maxTimestamp) throw new NoteError(`the cosignature by ${sig.name} is dated in the future`);
    const prev = found.get(key.name);
    if (prev === undefined || prev.timestamp < timestamp) found.set(key.name, { name: key.name, timestamp });
  }
  return [...found.values()];
}

const SKEY_PREFIX = 'PRIVATE+KEY+';

/**
 * A witness key file: the Go note "skey" text `PRIVATE+KEY+<name>+<hex key ID>+base64(type ‖ 32-byte seed)`,
 * type 0x04 as `tessera witness keygen` writes it, or 0x01 as golang.org/x/mod/sumdb/note.GenerateKey
 * writes it (the same Ed25519 key; cosignatures always carry the 0x04 key ID).
 */
export function parseCosignerSecretKey(text: string): Cosigner {
  const skey = text.trim();
  if (!skey.startsWith(SKEY_PREFIX)) throw new NoteError('witness key must be PRIVATE+KEY+<name>+<hex key ID>+<base64 key>');
  const rest = skey.slice(SKEY_PREFIX.length);
  const a = rest.indexOf('+');
  const b = a < 0 ? -1 : rest.indexOf('+', a + 1);
  if (a <= 0 || b < 0) throw new NoteError('witness key must be PRIVATE+KEY+<name>+<hex key ID>+<base64 key>');
  const name = rest.slice(0, a);
  validateKeyName(name);
  const idHex = rest.slice(a + 1, b);
  if (!/^[0-9a-f]{8}$/.test(idHex)) throw new NoteError('witness key ID must be 8 lowercase hex digits');
  const blob = Buffer.from(rest.slice(b + 1), 'base64');
  if (blob.toString('base64') !== rest.slice(b + 1)) throw new NoteError('witness key is not canonical base64');
  const type = blob[0];
  if (blob.length !== 33 || (type !== SIG_TYPE_COSIGNATURE_V1 && type !== SIG_TYPE_ED25519)) throw new NoteError('witness key is not an Ed25519 key (type 0x04 or 0x01)');
  let priv: KeyObject;
  try {
    priv = ed25519PrivateKeyFromSeed(blob.subarray(1));
  } catch (err) {
    throw new NoteError(`witness key: ${(err as Error).message}`);
  }
  if (keyId(name, rawEd25519PublicKey(priv), type) !== Number.parseInt(idHex, 16)) throw new NoteError('witness key ID does not match its name and key');
  return new Cosigner(name, priv);
}

/** A new witness key: the secret key text (keep it 0600) and the verifier key to hand to the log operator. */
export function generateCosignerKey(name: string): { skey: string; vkey: string } {
  validateKeyName(name);
  const { privateKey } = generateKeyPairSync('ed25519');
  const seed = Buffer.from(privateKey.export({ format: 'jwk' }).d ?? '', 'base64url');
  const cosigner = new Cosigner(name, createPrivateKey(privateKey.export({ format: 'pem', type: 'pkcs8' })));
  const id = cosigner.keyId.toString(16).padStart(8, '0');
  const skey = `${SKEY_PREFIX}${name}+${id}+${Buffer.concat([Buffer.from([SIG_TYPE_COSIGNATURE_V1]), seed]).toString('base64')}`;
  seed.fill(0);
  return { skey, vkey: cosigner.verifierKey };
}
