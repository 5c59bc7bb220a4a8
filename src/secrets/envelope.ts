/**
 * Envelope encryption for secrets at rest, AES-256-GCM throughout.
 *
 *   secret value ──AES-256-GCM(DEK, iv, aad = "tessera/secret/v1\0" ‖ context)──► ct, tag
 *   DEK (32 random bytes, one per secret) ──AES-256-GCM(KEK, iv', aad = "tessera/dek/v1\0" ‖ kekId ‖ "\0" ‖ context)──► wrapped DEK
 *
 * `context` is the secret's name, so a record copied under another name does not open. The record names
 * its KEK by id (derived from the key itself, so an id can never point at the wrong key). Rotating the
 * KEK re-wraps only the DEKs: ciphertexts are never touched, so rotation cannot damage a value.
 * Any change to any byte — ciphertext, tag, iv, wrapped key, KEK id, context — fails authentication
 * and throws EnvelopeError('integrity'): nothing is ever returned from a record that does not verify.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import Type, { type Static } from 'typebox';
import { recordParser } from '../records.js';

export const KEK_BYTES = 32;
const DEK_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const WRAPPED_DEK_BYTES = IV_BYTES + DEK_BYTES + TAG_BYTES;
const ALG = 'A256GCM';

export type EnvelopeFailure = 'integrity' | 'unknown-kek' | 'malformed';

/** Decryption or parsing refused a record. Messages name the record's context, never key or value bytes. */
export class EnvelopeError extends Error {
  readonly reason: EnvelopeFailure;
  /** For 'unknown-kek': the KEK id the record needs. */
  readonly kekId?: string;
  constructor(reason: EnvelopeFailure, message: string, kekId?: string) {
    super(message);
    this.name = 'EnvelopeError';
    this.reason = reason;
    if (kekId !== undefined) this.kekId = kekId;
  }
}

export interface Kek {
  readonly id: string;
  readonly key: Buffer;
}

/** A stable, non-reversible name for a KEK: "kek-" + 16 hex of SHA-256 over a domain tag and the key. */
export function kekIdOf(key: Buffer): string {
  return `kek-${createHash('sha256').update('tessera/kek-id/v1\0').update(key).digest('hex').slice(0, 16)}`;
}

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict base64: Buffer.from(…, 'base64') silently skips garbage, so check the alphabet and padding first. */
function b64decode(text: string): Buffer | undefined {
  if (typeof text !== 'string' || !B64.test(text)) return undefined;
  return Buffer.from(text, 'base64');
}

/** A KEK from its file text: base64 of exactly 32 bytes (surrounding whitespace ignored). */
export function parseKek(text: string, where: string): Kek {
  const key = b64decode(text.trim());
  if (key === undefined || key.length !== KEK_BYTES) {
    throw new EnvelopeError('malformed', `${where}: a KEK file holds base64 of exactly ${KEK_BYTES} random bytes`);
  }
  return { id: kekIdOf(key), key };
}

/** Reads a KEK file, refusing one that group or others may read or write (keys are 0600). */
export function readKekFile(file: string): Kek {
  let mode: number;
  let text: string;
  try {
    mode = statSync(file).mode;
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new EnvelopeError('malformed', `cannot read KEK file ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if (process.platform !== 'win32' && (mode & 0o077) !== 0) {
    throw new EnvelopeError('malformed', `KEK file ${file} is accessible to group/others (mode ${(mode & 0o777).toString(8)}); chmod 600 it`);
  }
  return parseKek(text, `KEK file ${file}`);
}

/** Creates a new KEK file (mode 0600, never overwriting) and returns the key. */
export async function writeNewKekFile(file: string): Promise<Kek> {
  const key = randomBytes(KEK_BYTES);
  await writeFile(file, `${key.toString('base64')}\n`, { mode: 0o600, flag: 'wx' });
  return { id: kekIdOf(key), key };
}

/** The KEKs a process holds: one active (wraps new DEKs) and any older ones (still unwrap). */
export class KeyRing {
  readonly #active: Kek;
  readonly #byId: ReadonlyMap<string, Kek>;

  private constructor(active: Kek, all: readonly Kek[]) {
    this.#active = active;
    this.#byId = new Map(all.map((k) => [k.id, k]));
  }

  static of(active: Kek, older: readonly Kek[] = []): KeyRing {
    return new KeyRing(active, [...older, active]);
  }

  static fromFiles(activeFile: string, olderFiles: readonly string[] = []): KeyRing {
    return KeyRing.of(readKekFile(activeFile), olderFiles.map(readKekFile));
  }

  get activeId(): string {
    return this.#active.id;
  }

  ids(): string[] {
    return [...this.#byId.keys()];
  }

  has(id: string): boolean {
    return this.#byId.has(id);
  }

  /** A ring where `kek` is active and every key of this one still unwraps. */
  withActive(kek: Kek): KeyRing {
    return new KeyRing(kek, [...this.#byId.values(), kek]);
  }

  /** @internal */ active(): Kek {
    return this.#active;
  }

  /** @internal */ get(id: string): Kek | undefined {
    return this.#byId.get(id);
  }
}

/** What is stored: every field is needed to decrypt, and every byte is authenticated. Nothing else is accepted. */
export const SealedRecordSchema = Type.Object(
  {
    v: Type.Literal(1),
    alg: Type.Literal(ALG),
    /** Id of the KEK that wrapped the DEK. */
    kek: Type.String({ pattern: '^kek-[0-9a-f]{16}$' }),
    /** base64(iv ‖ wrapped DEK ‖ tag) */
    dek: Type.String(),
    /** base64 of the value's iv, ciphertext and tag. */
    iv: Type.String(),
    ct: Type.String(),
    tag: Type.String(),
  },
  { additionalProperties: false },
);
export type SealedRecord = Readonly<Static<typeof SealedRecordSchema>>;

const dataAad = (context: string): Buffer => Buffer.from(`tessera/secret/v1\0${context}`, 'utf8');
const dekAad = (kekId: string, context: string): Buffer => Buffer.from(`tessera/dek/v1\0${kekId}\0${context}`, 'utf8');

function gcmEncrypt(key: Buffer, plaintext: Buffer, aad: Buffer): { iv: Buffer; ct: Buffer; tag: Buffer } {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
  cipher.setAAD(aad);
  const ct = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return { iv, ct, tag: cipher.getAuthTag() };
}

/** Throws EnvelopeError('integrity') on any authentication failure. */
function gcmDecrypt(key: Buffer, iv: Buffer, ct: Buffer, tag: Buffer, aad: Buffer, what: string): Buffer {
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
    decipher.setAAD(aad);
    decipher.setAuthTag(tag);
    return Buffer.concat([decipher.update(ct), decipher.final()]);
  } catch {
    throw new EnvelopeError('integrity', `${what} failed authentication: the stored record was modified or is corrupt`);
  }
}

function wrapDek(kek: Kek, dek: Buffer, context: string): string {
  const w = gcmEncrypt(kek.key, dek, dekAad(kek.id, context));
  return Buffer.concat([w.iv, w.ct, w.tag]).toString('base64');
}

function unwrapDek(ring: KeyRing, record: SealedRecord, context: string): Buffer {
  const kek = ring.get(record.kek);
  if (kek === undefined) {
    throw new EnvelopeError('unknown-kek', `secret "${context}" is wrapped under ${record.kek}, which is not configured here`, record.kek);
  }
  const raw = b64decode(record.dek);
  if (raw === undefined || raw.length !== WRAPPED_DEK_BYTES) {
    throw new EnvelopeError('integrity', `the data key of secret "${context}" is malformed: the stored record was modified or is corrupt`);
  }
  return gcmDecrypt(
    kek.key,
    raw.subarray(0, IV_BYTES),
    raw.subarray(IV_BYTES, IV_BYTES + DEK_BYTES),
    raw.subarray(IV_BYTES + DEK_BYTES),
    dekAad(kek.id, context),
    `the data key of secret "${context}"`,
  );
}

/** Encrypts `plaintext` under a fresh DEK, wrapped by the ring's active KEK. */
export function seal(ring: KeyRing, plaintext: Buffer, context: string): SealedRecord {
  const dek = randomBytes(DEK_BYTES);
  try {
    const data = gcmEncrypt(dek, plaintext, dataAad(context));
    const kek = ring.active();
    return {
      v: 1,
      alg: ALG,
      kek: kek.id,
      dek: wrapDek(kek, dek, context),
      iv: data.iv.toString('base64'),
      ct: data.ct.toString('base64'),
      tag: data.tag.toString('base64'),
    };
  } finally {
    dek.fill(0);
  }
}

/** Decrypts a record. Throws EnvelopeError: 'unknown-kek' (not configured here) or 'integrity' (tampered/corrupt). */
export function open(ring: KeyRing, record: SealedRecord, context: string): Buffer {
  const dek = unwrapDek(ring, record, context);
  try {
    const iv = b64decode(record.iv);
    const ct = b64decode(record.ct);
    const tag = b64decode(record.tag);
    if (iv === undefined || iv.length !== IV_BYTES || ct === undefined || tag === undefined || tag.length !== TAG_BYTES) {
      throw new EnvelopeError('integrity', `secret "${context}" is malformed: the stored record was modified or is corrupt`);
    }
    return gcmDecrypt(dek, iv, ct, tag, dataAad(context), `secret "${context}"`);
  } finally {
    dek.fill(0);
  }
}

/**
 * The same record with its DEK re-wrapped under the ring's active KEK; iv, ciphertext and tag are
 * unchanged. The old wrapping is verified first, so a tampered record is refused, not laundered.
 */
export function rewrap(ring: KeyRing, record: SealedRecord, context: string): SealedRecord {
  if (record.kek === ring.activeId) return record;
  const dek = unwrapDek(ring, record, context);
  try {
    return { ...record, kek: ring.activeId, dek: wrapDek(ring.active(), dek, context) };
  } finally {
    dek.fill(0);
  }
}

const parseSealedRecord = recordParser(SealedRecordSchema);

/** Parses stored JSON into a SealedRecord, refusing anything but the exact expected shape. */
export function parseSealed(text: string, context: string): SealedRecord {
  const parsed = parseSealedRecord(text);
  if (!parsed.ok) {
    throw new EnvelopeError('integrity', `secret "${context}" is malformed (${parsed.why}): the stored record was modified or is corrupt`);
  }
  return parsed.value;
}

export function serializeSealed(record: SealedRecord): string {
  return JSON.stringify({ v: record.v, alg: record.alg, kek: record.kek, dek: record.dek, iv: record.iv, ct: record.ct, tag: record.tag });
}
