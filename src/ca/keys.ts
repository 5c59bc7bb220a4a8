/**
 * Where the broker's three signing keys live — the one place that picks a key's backend from the
 * config: a PEM file (a local `KeySigner`) or a PKCS#11 token (`Pkcs11Signer`). A cloud KMS is one
 * more `KeyRef` case and one more branch in `openSigner`.
 *
 * A key that cannot be used is a `ConfigError` naming the setting and the cause (module, token, PIN,
 * label, key type), so the broker refuses to start with one line, never a stack trace.
 */
import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { loadNoteSigner, NoteError, NoteSigner } from '../audit/note.js';
import { ConfigError } from '../config/load.js';
import type { AuditConfig, CaConfig, Pkcs11KeyConfig } from '../config/config.js';
import { BrokerError } from '../errors.js';
import { CertificateAuthority } from './authority.js';
import { JwtSvidSigner } from './jwt-svid.js';
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

export interface OpenedAuthority {
  readonly ca: CertificateAuthority;
  readonly close: () => void;
}

/** The signing CA from `ca.certFile` (+ intermediates, bundle) and `ca.keyFile` or `ca.pkcs11`. */
export async function openCertificateAuthority(ca: CaConfig): Promise<OpenedAuthority> {
  const intermediates = ca.intermediatesFile !== undefined ? { intermediatesFile: ca.intermediatesFile } : {};
  const ref = keyRef(ca.keyFile, ca.pkcs11, 'config.ca.keyFile');
  // A PEM key stays on the fast path: synchronous signatures, a copy per minting thread.
  if ('file' in ref) return { ca: CertificateAuthority.fromFiles({ certFile: ca.certFile, keyFile: ref.file, rootsFile: ca.bundleFile, ...intermediates }), close: () => {} };
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
    return { ca: authority, close: opened.close };
  } catch (err) {
    opened.close();
    throw failure('config.ca.pkcs11', err);
  }
}

/** The JWT-SVID signer from `ca.jwtKeyFile` or `ca.jwtPkcs11` (EC P-256). */
export async function openJwtSigner(ca: CaConfig): Promise<{ readonly jwt: JwtSvidSigner; readonly close: () => void }> {
  const ref = keyRef(ca.jwtKeyFile, ca.jwtPkcs11, 'config.ca.jwtKeyFile');
  if ('file' in ref) return { jwt: await JwtSvidSigner.fromFile(ref.file), close: () => {} };
  const opened = await openSigner(ref, 'config.ca.jwtPkcs11');
  try {
    return { jwt: await JwtSvidSigner.create(opened.signer), close: opened.close };
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
