/**
 * Strict PKCS#10 (RFC 2986) parsing. Tessera takes exactly one thing from a CSR: its public key,
 * after proving possession by verifying the CSR signature over the raw CertificationRequestInfo
 * bytes. Subject, attributes and requested extensions are checked for well-formed DER and then
 * ignored; the certificate profile is decided by policy, never by the requester.
 */
import { createPublicKey, verify as cryptoVerify, constants as cryptoConstants, KeyObject, webcrypto, type JsonWebKey } from 'node:crypto';
import { BrokerError } from '../errors.js';
import {
  DerError,
  TAG,
  child,
  expectTag,
  readBitString,
  readDer,
  readInteger,
  readNull,
  readOid,
  readUnsignedIntegerBytes,
  sequenceOf,
  type DerNode,
} from './der.js';

export type KeyKind = 'ec-p256' | 'ec-p384' | 'rsa' | 'ed25519';

export interface ParsedCsr {
  readonly publicKey: KeyObject;
  /** DER SubjectPublicKeyInfo exactly as it appeared in the CSR. */
  readonly spki: Buffer;
  readonly keyKind: KeyKind;
}

export const MAX_CSR_PEM_BYTES = 16 * 1024;

const RSA_MIN_BITS = 2048;
// Upper bound keeps verification cost per request bounded (RSA verify grows ~quadratically).
const RSA_MAX_BITS = 8192;

type SigFamily = 'ecdsa' | 'rsa' | 'ed25519';
interface SigAlg {
  readonly family: SigFamily;
  readonly hash: string | null;
}

// Only modern, unambiguous algorithms: no MD5/SHA-1, no RSASSA-PSS (parameter-heavy, unneeded).
const SIGNATURE_ALGORITHMS: ReadonlyMap<string, SigAlg> = new Map([
  ['1.2.840.10045.4.3.2', { family: 'ecdsa', hash: 'sha256' }],
  ['1.2.840.10045.4.3.3', { family: 'ecdsa', hash: 'sha384' }],
  ['1.2.840.10045.4.3.4', { family: 'ecdsa', hash: 'sha512' }],
  ['1.2.840.113549.1.1.11', { family: 'rsa', hash: 'sha256' }],
  ['1.2.840.113549.1.1.12', { family: 'rsa', hash: 'sha384' }],
  ['1.2.840.113549.1.1.13', { family: 'rsa', hash: 'sha512' }],
  ['1.3.101.112', { family: 'ed25519', hash: null }],
]);

const invalidCsr = (message: string, cause?: unknown): BrokerError =>
  new BrokerError('invalid_csr', message, cause === undefined ? undefined : { cause });
const weakKey = (message: string): BrokerError => new BrokerError('weak_key', message);

// Per-KeyObject memo of what OpenSSL 3 makes expensive: exporting an SPKI (~110 µs) and the first
// read of asymmetricKeyDetails (~30 µs) each cost more than signing a certificate. KeyObjects are
// immutable, so the memo can never go stale.
interface KeyInfo {
  kind?: KeyKind;
  spki?: Buffer;
}
const keyInfo = new WeakMap<KeyObject, KeyInfo>();

function infoFor(key: KeyObject): KeyInfo {
  let info = keyInfo.get(key);
  if (info === undefined) {
    info = {};
    keyInfo.set(key, info);
  }
  return info;
}

function checkRsa(bits: number, e: bigint): void {
  if (bits < RSA_MIN_BITS) throw weakKey(`RSA key of ${bits} bits is too small; at least ${RSA_MIN_BITS} required`);
  if (bits > RSA_MAX_BITS) throw weakKey(`RSA key of ${bits} bits is too large; at most ${RSA_MAX_BITS} allowed`);
  if (e < 65537n || e % 2n === 0n) throw weakKey('RSA public exponent must be odd and at least 65537');
}

const notAllowed = (what: string): BrokerError =>
  weakKey(`${what} is not allowed; use EC P-256/P-384, RSA ≥ 2048 or Ed25519`);

/**
 * Classifies a key Tessera will certify, or throws weak_key. Allowed: EC P-256/P-384,
 * RSA 2048..8192 bits with an odd exponent ≥ 65537, Ed25519.
 */
export function keyKindOf(key: KeyObject): KeyKind {
  const cached = keyInfo.get(key)?.kind;
  if (cached !== undefined) return cached;
  if (key.type === 'secret') throw weakKey('a symmetric key cannot be certified');
  const details = key.asymmetricKeyDetails ?? {};
  let kind: KeyKind;
  switch (key.asymmetricKeyType) {
    case 'ec':
      if (details.namedCurve === 'prime256v1') kind = 'ec-p256';
      else if (details.namedCurve === 'secp384r1') kind = 'ec-p384';
      else throw notAllowed(`EC curve ${details.namedCurve ?? '(explicit parameters)'}`);
      break;
    case 'rsa':
      checkRsa(details.modulusLength ?? 0, details.publicExponent ?? 0n);
      kind = 'rsa';
      break;
    case 'ed25519':
      kind = 'ed25519';
      break;
    default:
      throw notAllowed(`key type ${key.asymmetricKeyType ?? 'unknown'}`);
  }
  infoFor(key).kind = kind;
  return kind;
}

/**
 * DER SubjectPublicKeyInfo of a key (public, or the public half of a private key), memoised per
 * KeyObject. The returned Buffer is shared: never mutate it.
 */
export function spkiOf(key: KeyObject): Buffer {
  const info = infoFor(key);
  if (info.spki === undefined) {
    const pub = key.type === 'private' ? createPublicKey(key) : key;
    info.spki = pub.export({ type: 'spki', format: 'der' });
  }
  return info.spki;
}

const OID_EC_PUBLIC_KEY = '1.2.840.10045.2.1';
const OID_RSA_ENCRYPTION = '1.2.840.113549.1.1.1';
const OID_ED25519 = '1.3.101.112';
const EC_CURVES: ReadonlyMap<string, { kind: KeyKind; pointLength: number }> = new Map([
  ['1.2.840.10045.3.1.7', { kind: 'ec-p256', pointLength: 65 }],
  ['1.3.132.0.34', { kind: 'ec-p384', pointLength: 97 }],
]);
// Names for the refusal message of common disallowed algorithms.
const KNOWN_KEY_ALGORITHMS: ReadonlyMap<string, string> = new Map([
  ['1.2.840.10040.4.1', 'DSA'],
  ['1.2.840.113549.1.1.10', 'RSASSA-PSS'],
  ['1.3.101.110', 'X25519'],
  ['1.3.101.111', 'X448'],
  ['1.3.101.113', 'Ed448'],
]);
const OPENSSL_TYPE: Readonly<Record<KeyKind, string>> = { 'ec-p256': 'ec', 'ec-p384': 'ec', rsa: 'rsa', ed25519: 'ed25519' };

/**
 * Classifies the CSR's key from its SPKI bytes (cheaper than asking OpenSSL) and insists on the
 * canonical encoding, because the SPKI is copied into the certificate verbatim: named curve and
 * uncompressed point for EC (Go rejects compressed points), NULL parameters for RSA, none for
 * Ed25519. Throws weak_key for disallowed keys, DerError for non-canonical encodings.
 */
function kindFromSpki(spki: DerNode): { kind: KeyKind; point: Buffer | undefined; jwk: () => JsonWebKey } {
  const alg = child(spki, 0, 'SPKI algorithm');
  const key = readBitString(child(spki, 1, 'subjectPublicKey')).bytes;
  const algOid = readOid(child(alg, 0, 'SPKI algorithm OID'));
  let kind: KeyKind;
  let jwk: () => JsonWebKey;
  let point: Buffer | undefined;
  switch (algOid) {
    case OID_EC_PUBLIC_KEY: {
      const params = child(alg, 1, 'EC parameters');
      if (params.tag !== TAG.OID || alg.children.length !== 2) throw new DerError('EC key must use a named curve');
      const curveOid = readOid(params);
      const curve = EC_CURVES.get(curveOid);
      if (curve === undefined) throw notAllowed(`EC curve ${curveOid}`);
      if (key.length !== curve.pointLength || key[0] !== 0x04) throw new DerError('EC public key must be an uncompressed point');
      kind = curve.kind;
      point = key;
      const half = (curve.pointLength - 1) / 2;
      const crv = kind === 'ec-p256' ? 'P-256' : 'P-384';
      // Only the reference path (parseCsrPem) imports an EC key as a JWK; the hot path takes the raw point.
      jwk = () => ({
        kty: 'EC',
        crv,
        x: Buffer.from(key.subarray(1, 1 + half)).toString('base64url'),
        y: Buffer.from(key.subarray(1 + half)).toString('base64url'),
      });
      break;
    }
    case OID_RSA_ENCRYPTION: {
      if (alg.children.length !== 2) throw new DerError('RSA key parameters must be NULL');
      readNull(child(alg, 1, 'RSA parameters'));
      const rsaKey = readDer(key);
      sequenceOf(rsaKey, 'RSAPublicKey', 2);
      const n = readUnsignedIntegerBytes(child(rsaKey, 0, 'modulus'));
      const e = readUnsignedIntegerBytes(child(rsaKey, 1, 'publicExponent'));
      checkRsa((n.length - 1) * 8 + (32 - Math.clz32(n[0] ?? 0)), BigInt(`0x${e.toString('hex')}`));
      kind = 'rsa';
      const rsaJwk: JsonWebKey = { kty: 'RSA', n: n.toString('base64url'), e: e.toString('base64url') };
      jwk = () => rsaJwk;
      break;
    }
    case OID_ED25519:
      if (alg.children.length !== 1 || key.length !== 32) throw new DerError('malformed Ed25519 key');
      kind = 'ed25519';
      jwk = () => ({ kty: 'OKP', crv: 'Ed25519', x: Buffer.from(key).toString('base64url') });
      break;
    default:
      throw notAllowed(`key algorithm ${KNOWN_KEY_ALGORITHMS.get(algOid) ?? algOid}`);
  }
  return { kind, point, jwk };
}

const PEM_RE = /^-----BEGIN ((?:NEW )?CERTIFICATE REQUEST)-----([\s\S]*?)-----END ((?:NEW )?CERTIFICATE REQUEST)-----$/;
const BASE64_RE = /^[A-Za-z0-9+/]+={0,2}$/;

/** Exactly one CSR PEM block, surrounded by whitespace only, with a canonical base64 body. */
function pemToDer(pem: string): Buffer {
  if (typeof pem !== 'string') throw invalidCsr('CSR must be a PEM string');
  if (pem.length > MAX_CSR_PEM_BYTES || Buffer.byteLength(pem, 'utf8') > MAX_CSR_PEM_BYTES) {
    throw invalidCsr(`CSR PEM exceeds ${MAX_CSR_PEM_BYTES} bytes`);
  }
  const m = PEM_RE.exec(pem.trim());
  if (m === null || m[1] !== m[3]) throw invalidCsr('expected exactly one "CERTIFICATE REQUEST" PEM block');
  // A second block or PEM headers would leave "-" or ":" in the body, which base64 rejects.
  const body = (m[2] ?? '').replace(/\s+/g, '');
  if (body.length % 4 !== 0 || !BASE64_RE.test(body)) throw invalidCsr('CSR PEM body is not valid base64');
  const der = Buffer.from(body, 'base64');
  if (der.toString('base64') !== body) throw invalidCsr('CSR PEM body is not canonical base64');
  return der;
}

interface CsrParts {
  readonly criRaw: Buffer;
  readonly spkiNode: DerNode;
  readonly spki: Buffer;
  readonly sigAlgOid: string;
  readonly signature: Buffer;
}

/** AlgorithmIdentifier: OID plus optional parameters node. */
function algorithmIdentifier(node: DerNode, what: string): { oid: string; params: DerNode | undefined } {
  const parts = sequenceOf(node, what, 1, 2);
  return { oid: readOid(child(node, 0, `${what} OID`)), params: parts[1] };
}

function splitCsr(der: Buffer): CsrParts {
  const root = readDer(der, { maxDepth: 24, maxNodes: 4096 });
  const [cri, sigAlg, sig] = sequenceOf(root, 'CertificationRequest', 3) as [DerNode, DerNode, DerNode];
  const criParts = sequenceOf(cri, 'CertificationRequestInfo', 3, 4);
  if (readInteger(child(cri, 0, 'version')) !== 0n) throw new DerError('unsupported CSR version');
  expectTag(child(cri, 1, 'subject'), TAG.SEQUENCE, 'subject');
  const spkiNode = child(cri, 2, 'subjectPKInfo');
  sequenceOf(spkiNode, 'SubjectPublicKeyInfo', 2);
  algorithmIdentifier(child(spkiNode, 0, 'SPKI algorithm'), 'SPKI algorithm');
  if (readBitString(child(spkiNode, 1, 'subjectPublicKey')).unusedBits !== 0) throw new DerError('subjectPublicKey has unused bits');
  // attributes [0] IMPLICIT SET OF Attribute; contents ignored (tolerated when absent).
  const attrs = criParts[3];
  if (attrs !== undefined) expectTag(attrs, 0xa0, 'attributes');

  const alg = algorithmIdentifier(sigAlg, 'signatureAlgorithm');
  const sigBits = readBitString(sig);
  if (sigBits.unusedBits !== 0) throw new DerError('signature has unused bits');
  const family = SIGNATURE_ALGORITHMS.get(alg.oid)?.family;
  // RFC 4055 says NULL for PKCS#1 v1.5; ECDSA (RFC 5758) and Ed25519 (RFC 8410) have none.
  if (alg.params !== undefined) {
    if (family === 'rsa') readNull(alg.params);
    else if (family !== undefined) throw new DerError('signature algorithm must not have parameters');
  }
  return { criRaw: cri.raw, spkiNode, spki: spkiNode.raw, sigAlgOid: alg.oid, signature: sigBits.bytes };
}

/** A CSR parsed and classified, its key not yet imported into OpenSSL nor its signature checked. */
interface PreparedCsr {
  readonly parts: CsrParts;
  readonly keyKind: KeyKind;
  /** The uncompressed EC point (EC keys only). */
  readonly point: Buffer | undefined;
  readonly jwk: () => JsonWebKey;
  readonly alg: SigAlg;
}

function prepareCsr(pem: string): PreparedCsr {
  const der = pemToDer(pem);
  let parts: CsrParts;
  try {
    parts = splitCsr(der);
  } catch (err) {
    if (err instanceof DerError) throw invalidCsr(`malformed CSR: ${err.message}`);
    throw err;
  }

  // Cheap checks first: OpenSSL's key decoder is the most expensive step after verify. The key
  // verdict (weak_key) precedes the algorithm one, since e.g. a DSA key implies a DSA signature.
  let keyKind: KeyKind;
  let point: Buffer | undefined;
  let jwk: () => JsonWebKey;
  try {
    ({ kind: keyKind, point, jwk } = kindFromSpki(parts.spkiNode));
  } catch (err) {
    if (err instanceof DerError) throw invalidCsr(`CSR public key encoding is not canonical: ${err.message}`);
    throw err;
  }
  const alg = SIGNATURE_ALGORITHMS.get(parts.sigAlgOid);
  if (alg === undefined) throw invalidCsr(`CSR signature algorithm ${parts.sigAlgOid} is not allowed`);
  const keyFamily: SigFamily = keyKind === 'rsa' ? 'rsa' : keyKind === 'ed25519' ? 'ed25519' : 'ecdsa';
  if (alg.family !== keyFamily) throw invalidCsr('CSR signature algorithm does not match its key type');
  return { parts, keyKind, point, jwk, alg };
}

const malformedKey = (err: unknown): BrokerError => invalidCsr('CSR public key is malformed (e.g. not a point on the curve)', err);

/** Proof of possession: the CSR's signature over its CertificationRequestInfo, with the imported key. */
function finishCsr(csr: PreparedCsr, publicKey: KeyObject): ParsedCsr {
  const { parts, keyKind, alg } = csr;
  // OpenSSL parsed the same bytes; disagreeing with our classification would be a parser bug.
  if (publicKey.asymmetricKeyType !== OPENSSL_TYPE[keyKind]) throw invalidCsr('CSR public key type is inconsistent');

  let ok: boolean;
  try {
    ok =
      alg.family === 'rsa'
        ? cryptoVerify(alg.hash, parts.criRaw, { key: publicKey, padding: cryptoConstants.RSA_PKCS1_PADDING }, parts.signature)
        : alg.family === 'ecdsa'
          ? cryptoVerify(alg.hash, parts.criRaw, { key: publicKey, dsaEncoding: 'der' }, parts.signature)
          : cryptoVerify(null, parts.criRaw, publicKey, parts.signature);
  } catch {
    ok = false;
  }
  if (!ok) throw invalidCsr('CSR signature does not verify');
  // One copy, shared by the memo and the answer (the memo's Buffer is never mutated; see spkiOf).
  const spki = Buffer.from(parts.spki);
  keyInfo.set(publicKey, { kind: keyKind, spki });
  return { publicKey, spki, keyKind };
}

/** Parses a PEM CSR, verifies its self-signature and returns only its public key. */
export function parseCsrPem(pem: string): ParsedCsr {
  const csr = prepareCsr(pem);
  // Imported from the components we already parsed: OpenSSL 3's SPKI decoder costs about twice a JWK
  // import. The import still checks that an EC point is on the curve.
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: csr.jwk(), format: 'jwk' });
  } catch (err) {
    throw malformedKey(err);
  }
  return finishCsr(csr, publicKey);
}

/**
 * parseCsrPem for the issuance hot path: the same checks and answers, but an EC key is imported as a
 * raw point through WebCrypto. That import is partial public-key validation (NIST SP 800-56A rev. 3
 * §5.6.2.3.4; SEC 1 §3.2.3.1): EC_POINT_oct2point refuses a point off the curve or with a coordinate
 * ≥ p, and Node runs EVP_PKEY_public_check_quick. It skips the multiplication by the group order that a
 * JWK import runs (EC_KEY_check_key), redundant on a prime-order curve (cofactor 1). Yet per CSR the two
 * cost the same CPU once the signature check is counted (bench/csr-key-import.mjs, median of 15
 * rounds: 197 vs 198 µs): the raw path pays instead for WebCrypto's JS layer and garbage, and OpenSSL
 * 3.0 builds the P-256 group twice per key (EC_KEY_new_by_curve_name, then the provider import).
 * The work is synchronous under the promise.
 */
export async function verifyCsrPem(pem: string): Promise<ParsedCsr> {
  const csr = prepareCsr(pem);
  let publicKey: KeyObject;
  try {
    if (csr.point !== undefined && (csr.keyKind === 'ec-p256' || csr.keyKind === 'ec-p384')) {
      const namedCurve = csr.keyKind === 'ec-p256' ? 'P-256' : 'P-384';
      publicKey = KeyObject.from(await webcrypto.subtle.importKey('raw', csr.point, { name: 'ECDSA', namedCurve }, true, ['verify']));
    } else {
      publicKey = createPublicKey({ key: csr.jwk(), format: 'jwk' });
    }
  } catch (err) {
    throw malformedKey(err);
  }
  return finishCsr(csr, publicKey);
}
