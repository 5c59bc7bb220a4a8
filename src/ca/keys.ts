/**
 * Where the broker's three signing keys live — the one place that picks a key's backend from the
 * config: a PEM file (a local `KeySigner`) or a PKCS#11 token (`Pkcs11Signer`). A cloud KMS is one
 * more `KeyRef` case and one more branch in `openSigner`.
 *
 * CA rotation's keys are picked here too (`AuthorityKeys`): each next authority's keys are made in the
 * token of `ca.pkcs11` / `ca.jwtPkcs11` when one is configured (pkcs11-keygen.ts), else as PEMs that
 * rotation.ts seals into the store.
 *
 * A key that cannot be used is a `ConfigError` naming the setting and the cause (module, token, PIN,
 * label, key type), so the broker refuses to start with one line, never a stack trace.
 */
import { createPrivateKey, createPublicKey, generateKeyPair, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { loadNoteSigner, NoteError, NoteSigner } from '../audit/note.js';
import { ConfigError } from '../config/load.js';
import type { AuditConfig, CaConfig, Pkcs11KeyConfig } from '../config/config.js';
import { BrokerError } from '../errors.js';
import { CertificateAuthority, type CaSource } from './authority.js';
import { JwtSvidSigner } from './jwt-svid.js';
import { destroyKeyPair, generateOrReuseKeyPair } from './pkcs11-keygen.js';
import { Pkcs11KeyError, Pkcs11Signer } from './pkcs11-signer.js';
import { KeySigner, type Signer } from './signer.js';

/** A signing key: a PEM file, or a key pair in a PKCS#11 token. */
export type KeyRef = { readonly file: string } | { readonly pkcs11: Pkcs11KeyConfig };

/** A Signer and how to let go of what it holds (token sessions); a no-op for a file key. */
export interface OpenedSigner {
  readonly signer: Signer;
  readonly close: () => void;
}

/** The KeyRef of a setting pair such as `keyFile` / `pkcs11` (config load checked that exactly one is set). */
export function keyRef(file: string | undefined, pkcs11: Pkcs11KeyConfig | undefined, where: string): KeyRef {
  if (pkcs11 !== undefined) return { pkcs11 };
  if (file !== undefined) return { file };
  throw new ConfigError(`${where}: no key configured`);
}

const failure = (where: string, err: unknown): ConfigError =>
  new ConfigError(`${where}: ${err instanceof Error ? err.message : String(err)}`);

/** Opens a key as a Signer. `where` names the setting in errors (`config.ca.jwtPkcs11`). */
export async function openSigner(ref: KeyRef, where: string): Promise<OpenedSigner> {
  if ('pkcs11' in ref) {
    try {
      const signer = await Pkcs11Signer.open(ref.pkcs11);
      return { signer, close: () => signer.close() };
    } catch (err) {
      if (err instanceof Pkcs11KeyError) throw failure(where, err);
      throw err;
    }
  }
  let signer: KeySigner;
  try {
    signer = new KeySigner(createPrivateKey(readFileSync(ref.file, 'utf8')));
  } catch (err) {
    throw failure(where, err instanceof TypeError ? err : new Error(`cannot load the private key in ${ref.file}: ${(err as Error).message}`));
  }
  return { signer, close: () => {} };
}

/**
 * A CA authority's key (rotation.ts): a PEM (kept sealed in the store), or a key pair in the configured
 * token, named by its label, with its open Signer.
 */
export type AuthorityKey = { readonly pem: string } | { readonly token: { readonly keyLabel: string }; readonly signer: Signer };
/** An authority key as the CA state records it: the PEM (unsealed), or the label of the pair in the token. */
export type StoredAuthorityKey = { readonly pem: string } | { readonly token: { readonly keyLabel: string } };
/** Which key of an authority: the X.509 signing CA's or the JWT-SVID key. */
export type AuthorityKeyKind = 'x509' | 'jwt';

/** The Signer of an authority key (a PEM signs in this process). */
export const signerOf = (key: AuthorityKey): Signer => ('pem' in key ? new KeySigner(createPrivateKey(key.pem)) : key.signer);

export const publicKeyOf = (key: AuthorityKey): KeyObject => ('pem' in key ? createPublicKey(key.pem) : key.signer.publicKey);

/**
 * The signing CA for `key`: from a PEM on the fast path (synchronous signatures, copies on minting
 * threads), from a token key through its Signer (minted inline, signatures awaited).
 */
export function authorityFromKey(chain: Omit<CaSource, 'keyPem'>, key: AuthorityKey): CertificateAuthority {
  return 'pem' in key ? CertificateAuthority.fromPem({ ...chain, keyPem: key.pem }) : CertificateAuthority.fromSigner(chain, key.signer);
}

export function jwtSignerFromKey(key: AuthorityKey): Promise<JwtSvidSigner> {
  return 'pem' in key ? JwtSvidSigner.fromPem(key.pem) : JwtSvidSigner.create(key.signer);
}

export interface OpenedAuthority {
  readonly ca: CertificateAuthority;
  /** The key it signs with (the initial authority of CA rotation). */
  readonly key: AuthorityKey;
  readonly close: () => void;
}

/** The signing CA from `ca.certFile` (+ intermediates, bundle) and `ca.keyFile` or `ca.pkcs11`. */
export async function openCertificateAuthority(ca: CaConfig): Promise<OpenedAuthority> {
  const intermediates = ca.intermediatesFile !== undefined ? { intermediatesFile: ca.intermediatesFile } : {};
  const ref = keyRef(ca.keyFile, ca.pkcs11, 'config.ca.keyFile');
  // A PEM key stays on the fast path: synchronous signatures, a copy per minting thread.
  if ('file' in ref) {
    const authority = CertificateAuthority.fromFiles({ certFile: ca.certFile, keyFile: ref.file, rootsFile: ca.bundleFile, ...intermediates });
    return { ca: authority, key: { pem: authority.source.keyPem }, close: () => {} };
  }
  const read = (file: string, what: string): string => {
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      throw new BrokerError('internal', `cannot read CA ${what} file ${file}`, { cause: err });
    }
  };
  const opened = await openSigner(ref, 'config.ca.pkcs11');
  try {
    const authority = CertificateAuthority.fromSigner(
      {
        certPem: read(ca.certFile, 'certificate'),
        rootsPem: read(ca.bundleFile, 'roots'),
        intermediatesPem: ca.intermediatesFile !== undefined ? read(ca.intermediatesFile, 'intermediates') : undefined,
      },
      opened.signer,
    );
    return { ca: authority, key: { token: { keyLabel: ref.pkcs11.keyLabel }, signer: opened.signer }, close: opened.close };
  } catch (err) {
    opened.close();
    throw failure('config.ca.pkcs11', err);
  }
}

/** The JWT-SVID signer from `ca.jwtKeyFile` or `ca.jwtPkcs11` (EC P-256). */
export async function openJwtSigner(ca: CaConfig): Promise<{ readonly jwt: JwtSvidSigner; readonly key: AuthorityKey; readonly close: () => void }> {
  const ref = keyRef(ca.jwtKeyFile, ca.jwtPkcs11, 'config.ca.jwtKeyFile');
  if ('file' in ref) {
    const pem = readFileSync(ref.file, 'utf8');
    return { jwt: await JwtSvidSigner.fromPem(pem), key: { pem }, close: () => {} };
  }
  const opened = await openSigner(ref, 'config.ca.jwtPkcs11');
  try {
    return { jwt: await JwtSvidSigner.create(opened.signer), key: { token: { keyLabel: ref.pkcs11.keyLabel }, signer: opened.signer }, close: opened.close };
  } catch (err) {
    opened.close();
    throw failure('config.ca.jwtPkcs11', err);
  }
}

/** The audit checkpoint signer from `audit.signingKeyFile` or `audit.signingPkcs11` (Ed25519). */
export async function openAuditSigner(audit: AuditConfig): Promise<{ readonly signer: NoteSigner; readonly close: () => void }> {
  const ref = keyRef(audit.signingKeyFile, audit.signingPkcs11, 'config.audit.signingKeyFile');
  if ('file' in ref) return { signer: loadNoteSigner(ref.file, audit.origin), close: () => {} };
  const opened = await openSigner(ref, 'config.audit.signingPkcs11');
  try {
    return { signer: new NoteSigner(audit.origin, opened.signer), close: opened.close };
  } catch (err) {
    opened.close();
    if (err instanceof NoteError) throw failure('config.audit.signingPkcs11', err);
    throw err;
  }
}

const generateKeyPairAsync = promisify(generateKeyPair);

const TOKEN_SETTING: Record<AuthorityKeyKind, string> = { x509: 'config.ca.pkcs11', jwt: 'config.ca.jwtPkcs11' };

interface TokenKeyEntry {
  readonly kind: AuthorityKeyKind;
  readonly keyLabel: string;
  readonly opened: Promise<OpenedSigner>;
  /** Named by a stored CA state once: closed when a later state no longer names it. */
  referenced: boolean;
}

/**
 * The keys of CA rotation's authorities. New keys go into the token of `ca.pkcs11` (X.509) /
 * `ca.jwtPkcs11` (JWT) when configured — same module, token, PIN file and sessions, a label derived from
 * the configured one and the step — else they are fresh EC P-256 PEMs. Token keys are opened once per
 * label and kept open while a stored state names them (old authorities included: their last signatures
 * may still be in flight), then closed (`retain`). Only pairs Tessera generated are ever destroyed.
 */
export class AuthorityKeys {
  readonly #tokens: Readonly<Partial<Record<AuthorityKeyKind, Pkcs11KeyConfig>>>;
  readonly #entries = new Map<string, TokenKeyEntry>();

  constructor(tokens: { readonly x509?: Pkcs11KeyConfig | undefined; readonly jwt?: Pkcs11KeyConfig | undefined } = {}) {
    this.#tokens = {
      ...(tokens.x509 !== undefined ? { x509: tokens.x509 } : {}),
      ...(tokens.jwt !== undefined ? { jwt: tokens.jwt } : {}),
    };
  }

  /**
   * A new key for the next authority. In a token its label is `<configured keyLabel>.<step>`: the same
   * step asked again (after a crash before the state was written) gets the same pair back.
   */
  async make(kind: AuthorityKeyKind, step: string): Promise<AuthorityKey> {
    const token = this.#tokens[kind];
    if (token === undefined) {
      const { privateKey } = await generateKeyPairAsync('ec', { namedCurve: 'P-256' });
      return { pem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
    }
    const keyLabel = `${token.keyLabel}.${step}`;
    return { token: { keyLabel }, signer: await this.#signer(kind, keyLabel, 'make') };
  }

  /** A stored key ready to sign: a PEM as it is, a token key opened (once) by its label. */
  async open(kind: AuthorityKeyKind, stored: StoredAuthorityKey): Promise<AuthorityKey> {
    if ('pem' in stored) return stored;
    const keyLabel = stored.token.keyLabel;
    return { token: { keyLabel }, signer: await this.#signer(kind, keyLabel, 'open') };
  }

  /** Closes the open token keys that a previous state named and `labels` (the current state's) no longer does. */
  retain(labels: Readonly<Record<AuthorityKeyKind, ReadonlySet<string>>>): void {
    for (const [id, entry] of this.#entries) {
      if (labels[entry.kind].has(entry.keyLabel)) entry.referenced = true;
      else if (entry.referenced) this.#close(id);
    }
  }

  /**
   * Destroys the token pair of a dropped authority: true when destroyed, false when it is not one
   * Tessera generated (a PEM, or the operator's configured label — never destroyed).
   */
  async destroy(kind: AuthorityKeyKind, keyLabel: string): Promise<boolean> {
    const token = this.#tokens[kind];
    if (token === undefined || !keyLabel.startsWith(`${token.keyLabel}.`)) return false;
    this.#close(entryId(kind, keyLabel));
    try {
      await destroyKeyPair({ ...token, keyLabel });
    } catch (err) {
      throw failure(TOKEN_SETTING[kind], err);
    }
    return true;
  }

  /** Closes every open token key (the broker is stopping). */
  close(): void {
    for (const id of [...this.#entries.keys()]) this.#close(id);
  }

  async #signer(kind: AuthorityKeyKind, keyLabel: string, how: 'make' | 'open'): Promise<Signer> {
    const id = entryId(kind, keyLabel);
    let entry = this.#entries.get(id);
    if (entry === undefined) {
      const token = this.#tokens[kind];
      if (token === undefined) {
        throw new ConfigError(`${TOKEN_SETTING[kind]}: the CA state names a key pair "${keyLabel}" in a PKCS#11 token, but ${TOKEN_SETTING[kind]} is not configured`);
      }
      const ref = { ...token, keyLabel };
      const opened =
        how === 'make'
          ? generateOrReuseKeyPair(ref).then(({ signer }) => ({ signer, close: () => signer.close() }), (err: unknown) => Promise.reject(failure(TOKEN_SETTING[kind], err)))
          : openSigner({ pkcs11: ref }, TOKEN_SETTING[kind]);
      entry = { kind, keyLabel, opened, referenced: false };
      this.#entries.set(id, entry);
      // A key that failed to open is tried afresh next time.
      opened.catch(() => {
        if (this.#entries.get(id) === entry) this.#entries.delete(id);
      });
    }
    return (await entry.opened).signer;
  }

  #close(id: string): void {
    const entry = this.#entries.get(id);
    if (entry === undefined) return;
    this.#entries.delete(id);
    entry.opened.then((o) => o.close(), () => {});
  }
}

const entryId = (kind: AuthorityKeyKind, keyLabel: string): string => `${kind}/${keyLabel}`;
