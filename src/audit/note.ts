/**
 * C2SP signed notes (c2sp.org/signed-note) with Ed25519 signatures, and the tlog checkpoint body
 * (c2sp.org/tlog-checkpoint) they carry.
 *
 *   <origin>\n<tree size>\n<base64 root hash>\n          ← note text (what is signed, final newline included)
 *   \n                                                  ← the separating blank line
 *   — <key name> <base64(4-byte key ID ‖ 64-byte Ed25519 signature)>\n
 *
 *   key ID = SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte Ed25519 public key)[:4]   (signed-note §Ed25519)
 *
 * Public keys travel as "verifier keys" in the format of Go's golang.org/x/mod/sumdb/note, which every
 * C2SP tool reads:  <name>+<8 hex digits key ID>+<base64(0x01 ‖ public key)>.
 *
 * Verification follows the spec: signature lines from unknown keys (name or ID differ) are ignored; a
 * line from the known key that fails to verify rejects the whole note; no verified line rejects it.
 */
import { createHash, createPrivateKey, createPublicKey, KeyObject, verify } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { KeySigner, signatureAlgorithmOf, type Signer } from '../ca/signer.js';
import { BrokerError } from '../errors.js';
import { HASH_SIZE } from './merkle.js';

/** Signature type byte for Ed25519 (signed-note §Signature types). */
export const SIG_TYPE_ED25519 = 0x01;
/** U+2014 EM DASH, then a space: how every signature line starts. */
const SIG_PREFIX = '\u2014 ';
/** Notes larger than this are refused before any parsing (ours are ~250 bytes). */
export const MAX_NOTE_BYTES = 64 * 1024;
/** Verifiers must accept at least 16 signatures; more than this is refused as abuse. */
const MAX_SIGNATURES = 100;
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

export class NoteError extends BrokerError {
  constructor(message: string) {
    super('bad_request', message);
    this.name = 'NoteError';
  }
}

/** Key names (and checkpoint origins): non-empty, no Unicode space, no '+', no control characters. */
export function validateKeyName(name: string): void {
  if (typeof name !== 'string' || name.length === 0) throw new NoteError('key name must be non-empty');
  if (/[\s+\p{Cc}]/u.test(name)) {
    throw new NoteError(`key name ${JSON.stringify(name)} must not contain spaces, "+" or control characters`);
  }
  // A lone surrogate has no UTF-8 encoding.
  if (/\p{Cs}/u.test(name)) throw new NoteError('key name must be valid UTF-8');
}

/** The 32 raw bytes of an Ed25519 public key. */
export function rawEd25519PublicKey(key: KeyObject): Buffer {
  if (key.asymmetricKeyType !== 'ed25519') throw new NoteError(`expected an Ed25519 key, got ${key.asymmetricKeyType ?? key.type}`);
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  const jwk = pub.export({ format: 'jwk' });
  const raw = Buffer.from(jwk.x ?? '', 'base64url');
  if (raw.length !== 32) throw new NoteError('Ed25519 public key is not 32 bytes');
  return raw;
}

function ed25519PublicKeyFromRaw(raw: Uint8Array): KeyObject {
  if (raw.length !== 32) throw new NoteError('Ed25519 public key must be 32 bytes');
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw).toString('base64url') }, format: 'jwk' });
}

/** An Ed25519 private key from its 32-byte RFC 8032 seed (used for published test vectors). */
export function ed25519PrivateKeyFromSeed(seed: Uint8Array): KeyObject {
  if (seed.length !== 32) throw new NoteError('Ed25519 seed must be 32 bytes');
  return createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
}

/**
 * key ID = SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4], as a big-endian uint32. The type is 0x01 for a
 * note signature, 0x04 for a timestamped Ed25519 cosignature (audit/cosignature.ts).
 */
export function keyId(name: string, rawPublicKey: Uint8Array, type: number = SIG_TYPE_ED25519): number {
  validateKeyName(name);
  if (rawPublicKey.length !== 32) throw new NoteError('Ed25519 public key must be 32 bytes');
  const h = createHash('sha256')
    .update(Buffer.from(name, 'utf8'))
    .update(Buffer.from([0x0a, type]))
    .update(rawPublicKey)
    .digest();
  return h.readUInt32BE(0);
}

const hex8 = (id: number): string => id.toString(16).padStart(8, '0');

/** The verifier key text: <name>+<hex key ID>+<base64(type ‖ public key)> (type 0x01 unless given). */
export function formatVerifierKey(name: string, publicKey: KeyObject, type: number = SIG_TYPE_ED25519): string {
  const raw = rawEd25519PublicKey(publicKey);
  return `${name}+${hex8(keyId(name, raw, type))}+${Buffer.concat([Buffer.from([type]), raw]).toString('base64')}`;
}

/** A public key that can check note signatures. */
export interface NoteVerifier {
  /** Key name, or undefined for a bare key (PEM) that accepts any name whose key ID matches. */
  readonly name: string | undefined;
  readonly publicKey: KeyObject;
  readonly rawPublicKey: Buffer;
}

const STRICT_B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function decodeBase64Strict(s: string, what: string): Buffer {
  if (!STRICT_B64.test(s)) throw new NoteError(`${what} is not standard base64`);
  const b = Buffer.from(s, 'base64');
  // Canonical encoding only: no non-zero padding bits that would give two spellings of one value.
  if (b.toString('base64') !== s) throw new NoteError(`${what} is not canonical base64`);
  return b;
}

/**
 * Parses a verifier key (the vkey text). Refuses anything malformed, a type other than `type` (0x01, a
 * note signature key, unless given), or a wrong key ID.
 */
export function parseVerifierKey(vkey: string, type: number = SIG_TYPE_ED25519): NoteVerifier {
  const text = vkey.trim();
  // Split at the first two '+' only: base64 uses '+' too.
  const a = text.indexOf('+');
  const b = a < 0 ? -1 : text.indexOf('+', a + 1);
  if (a <= 0 || b < 0) throw new NoteError('verifier key must be <name>+<hex key ID>+<base64 key>');
  const name = text.slice(0, a);
  const idHex = text.slice(a + 1, b);
  const keyB64 = text.slice(b + 1);
  validateKeyName(name);
  if (!/^[0-9a-f]{8}$/.test(idHex)) throw new NoteError('verifier key ID must be 8 lowercase hex digits');
  const key = decodeBase64Strict(keyB64, 'verifier key');
  if (key.length !== 33 || key[0] !== type) {
    throw new NoteError(`verifier key is not an Ed25519 ${type === SIG_TYPE_ED25519 ? 'note' : 'cosignature'} (type 0x0${type.toString(16)}) key`);
  }
  const raw = key.subarray(1);
  if (keyId(name, raw, type) !== Number.parseInt(idHex, 16)) throw new NoteError('verifier key ID does not match its name and key');
  return { name, publicKey: ed25519PublicKeyFromRaw(raw), rawPublicKey: Buffer.from(raw) };
}

/**
 * Reads a public key file: a verifier key line, or an SPKI PEM Ed25519 public key (then any
 * signature line whose name and key ID match this key counts as ours).
 */
export function parseVerifierKeyFile(text: string): NoteVerifier {
  if (text.includes('-----BEGIN')) {
    let key: KeyObject;
    try {
      key = createPublicKey({ key: text, format: 'pem' });
    } catch (err) {
      throw new NoteError(`not a PEM public key: ${(err as Error).message}`);
    }
    const raw = rawEd25519PublicKey(key);
    return { name: undefined, publicKey: key, rawPublicKey: raw };
  }
  return parseVerifierKey(text);
}

/** Signs note text with one Ed25519 key (a Signer, or a local private key) under one name. */
export class NoteSigner {
  readonly name: string;
  readonly keyId: number;
  readonly publicKey: KeyObject;
  readonly #signer: Signer;

  constructor(name: string, key: Signer | KeyObject) {
    validateKeyName(name);
    if ((key instanceof KeyObject ? signatureAlgorithmOf(key) : key.algorithm) !== 'EdDSA') {
      throw new NoteError('the audit signing key must be an Ed25519 private key');
    }
    this.name = name;
    this.#signer = key instanceof KeyObject ? new KeySigner(key) : key;
    this.publicKey = this.#signer.publicKey;
    this.keyId = keyId(name, rawEd25519PublicKey(this.publicKey));
  }

  get verifierKey(): string {
    return formatVerifierKey(this.name, this.publicKey);
  }

  get verifier(): NoteVerifier {
    return { name: this.name, publicKey: this.publicKey, rawPublicKey: rawEd25519PublicKey(this.publicKey) };
  }

  /** The signature line (with its final newline) for `text`. */
  async signatureLine(text: string): Promise<string> {
    checkNoteText(text);
    const sig = await this.#signer.sign(Buffer.from(text, 'utf8'));
    const blob = Buffer.alloc(4 + sig.length);
    blob.writeUInt32BE(this.keyId, 0);
    sig.copy(blob, 4);
    return `${SIG_PREFIX}${this.name} ${blob.toString('base64')}\n`;
  }

  /** The complete signed note: text, blank line, one signature line. */
  async sign(text: string): Promise<string> {
    return `${text}\n${await this.signatureLine(text)}`;
  }
}

function checkNoteText(text: string): void {
  if (typeof text !== 'string' || text.length === 0 || !text.endsWith('\n')) throw new NoteError('note text must end with a newline');
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u0009\u000b-\u001f]/.test(text)) throw new NoteError('note text must not contain control characters other than newline');
  if (/\p{Cs}/u.test(text)) throw new NoteError('note text must be valid UTF-8');
}

export interface NoteSignature {
  readonly name: string;
  readonly keyId: number;
  /** The signature bytes after the 4-byte key ID. */
  readonly signature: Buffer;
}

export interface ParsedNote {
  /** The signed text, final newline included. */
  readonly text: string;
  readonly signatures: readonly NoteSignature[];
}

/** Splits a signed note into text and signature lines, checking the syntax only (no crypto). */
export function parseNote(note: string | Uint8Array): ParsedNote {
  const bytes = typeof note === 'string' ? Buffer.from(note, 'utf8') : Buffer.from(note);
  if (bytes.length > MAX_NOTE_BYTES) throw new NoteError(`note is larger than ${MAX_NOTE_BYTES} bytes`);
  const s = bytes.toString('utf8');
  if (!Buffer.from(s, 'utf8').equals(bytes)) throw new NoteError('note is not valid UTF-8');
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u0009\u000b-\u001f]/.test(s)) throw new NoteError('note contains control characters other than newline');
  // The text ends at the LAST blank line (the text itself may contain blank lines).
  const split = s.lastIndexOf('\n\n');
  if (split < 0) throw new NoteError('note has no blank line before its signatures');
  const text = s.slice(0, split + 1);
  const sigBlock = s.slice(split + 2);
  if (!sigBlock.endsWith('\n')) throw new NoteError('note must end with a newline');
  const lines = sigBlock.slice(0, -1).split('\n');
  if (lines.length === 0 || (lines.length === 1 && lines[0] === '')) throw new NoteError('note has no signatures');
  if (lines.length > MAX_SIGNATURES) throw new NoteError(`note has more than ${MAX_SIGNATURES} signatures`);
  const signatures: NoteSignature[] = lines.map((line) => {
    if (!line.startsWith(SIG_PREFIX)) throw new NoteError('malformed signature line (expected "— <name> <base64>")');
    const rest = line.slice(SIG_PREFIX.length);
    const sp = rest.indexOf(' ');
    if (sp <= 0 || rest.indexOf(' ', sp + 1) !== -1) throw new NoteError('malformed signature line');
    const name = rest.slice(0, sp);
    validateKeyName(name);
    const blob = decodeBase64Strict(rest.slice(sp + 1), 'signature');
    if (blob.length < 5) throw new NoteError('signature is too short');
    return { name, keyId: blob.readUInt32BE(0), signature: blob.subarray(4) };
  });
  return { text, signatures };
}

/**
 * Verifies `note` with `verifier` and returns its text. Throws NoteError if no signature from the
 * key verifies, or if one from the key fails (the whole note is then rejected).
 */
export function openNote(note: string | Uint8Array, verifier: NoteVerifier): string {
  const parsed = parseNote(note);
  let verified = false;
  for (const sig of parsed.signatures) {
    if (verifier.name !== undefined && sig.name !== verifier.name) continue;
    if (sig.keyId !== keyId(sig.name, verifier.rawPublicKey)) continue;
    const ok = sig.signature.length === 64 && verify(null, Buffer.from(parsed.text, 'utf8'), verifier.publicKey, sig.signature);
    if (!ok) throw new NoteError(`the signature by ${sig.name} does not verify`);
    verified = true;
  }
  if (!verified) throw new NoteError('the note carries no signature from the audit key');
  return parsed.text;
}

export interface Checkpoint {
  readonly origin: string;
  readonly size: number;
  /** 32-byte root hash. */
  readonly rootHash: Buffer;
  readonly extensions: readonly string[];
}

/** The checkpoint note text: origin, decimal size, base64 root, each on its own line. */
export function formatCheckpoint(cp: { origin: string; size: number; rootHash: Uint8Array; extensions?: readonly string[] }): string {
  validateKeyName(cp.origin);
  if (!Number.isSafeInteger(cp.size) || cp.size < 0) throw new NoteError('checkpoint size must be a non-negative integer');
  if (cp.rootHash.length !== HASH_SIZE) throw new NoteError('checkpoint root hash must be 32 bytes');
  const ext = cp.extensions ?? [];
  for (const e of ext) if (e.length === 0 || e.includes('\n')) throw new NoteError('checkpoint extension lines must be non-empty single lines');
  return [cp.origin, String(cp.size), Buffer.from(cp.rootHash).toString('base64'), ...ext].join('\n') + '\n';
}

/** Parses checkpoint note text (tlog-checkpoint §Note text). */
export function parseCheckpoint(text: string): Checkpoint {
  if (!text.endsWith('\n')) throw new NoteError('checkpoint text must end with a newline');
  const lines = text.slice(0, -1).split('\n');
  if (lines.length < 3) throw new NoteError('checkpoint needs origin, size and root hash lines');
  const [origin, sizeLine, rootLine, ...extensions] = lines as [string, string, string, ...string[]];
  if (origin.length === 0) throw new NoteError('checkpoint origin is empty');
  if (!/^(0|[1-9][0-9]{0,15})$/.test(sizeLine) || !Number.isSafeInteger(Number(sizeLine))) {
    throw new NoteError('checkpoint tree size must be a decimal integer without leading zeroes');
  }
  const rootHash = decodeBase64Strict(rootLine, 'checkpoint root hash');
  if (rootHash.length !== HASH_SIZE) throw new NoteError('checkpoint root hash must be 32 bytes');
  for (const e of extensions) if (e.length === 0) throw new NoteError('checkpoint extension lines must be non-empty');
  return { origin, size: Number(sizeLine), rootHash, extensions };
}

/** A signed checkpoint as the log keeps and serves it. */
export interface SignedCheckpoint extends Checkpoint {
  /** The full signed note text. */
  readonly note: string;
}

export async function signCheckpoint(signer: NoteSigner, size: number, rootHash: Uint8Array): Promise<SignedCheckpoint> {
  const text = formatCheckpoint({ origin: signer.name, size, rootHash });
  return { origin: signer.name, size, rootHash: Buffer.from(rootHash), extensions: [], note: await signer.sign(text) };
}

/** Verifies a checkpoint note's signature, then parses its text. */
export function openCheckpoint(note: string, verifier: NoteVerifier): SignedCheckpoint {
  const text = openNote(note, verifier);
  return { ...parseCheckpoint(text), note };
}

/**
 * Loads the audit signing key (Ed25519, PKCS#8 PEM) for key name `name`. The file must not be
 * readable by group or others: whoever reads it can sign checkpoints for this log.
 */
export function loadNoteSigner(file: string, name: string): NoteSigner {
  let pem: string;
  try {
    const mode = statSync(file).mode & 0o077;
    if (mode !== 0) throw new NoteError(`audit signing key ${file} is readable by group or others; chmod 600 it`);
    pem = readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof NoteError) throw err;
    throw new NoteError(`cannot read audit signing key ${file}: ${(err as Error).message}`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw new NoteError(`audit signing key ${file} is not a PEM private key: ${(err as Error).message}`);
  }
  return new NoteSigner(name, key);
}
