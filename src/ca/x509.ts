/**
 * Certificate minting for Tessera's two fixed profiles (SPIFFE X509-SVID leaf and signing CA),
 * written directly with the DER helpers and signed with node:crypto. Everything that does not vary
 * per certificate (issuer Name, signature AlgorithmIdentifier, AKI, constant extensions) is encoded
 * once, so an issuance is: export SPKI, SHA-1 it, concatenate, sign.
 */
import {
  createHash,
  createPrivateKey,
  randomFillSync,
  X509Certificate,
  type KeyObject,
} from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import { BrokerError } from '../errors.js';
import { parseSpiffeId, validateTrustDomain, type SpiffeId } from '../spiffe/id.js';
import { keyKindOf, spkiOf, type KeyKind } from './csr.js';
import { KeySigner, signatureAlgorithmOf, type SignatureAlgorithm, type Signer } from './signer.js';
import {
  DerError,
  TAG,
  bitString,
  boolean,
  child,
  explicit,
  expectTag,
  implicit,
  integer,
  integerFromBytes,
  octetString,
  oid,
  readBitString,
  readBoolean,
  readDer,
  readInteger,
  readOctetString,
  readOid,
  readTime,
  sequence,
  set,
  time,
  toPem,
  utf8String,
  type DerNode,
} from './der.js';

export interface IssuerMaterial {
  readonly certDer: Buffer;
  readonly certPem: string;
  /**
   * A local key (KeySigner) signs certificates synchronously, on the event loop or in a minting thread;
   * any other Signer (a PKCS#11 token) only through mintLeafAsync.
   */
  readonly signer: Signer;
  readonly subjectNameDer: Buffer;
  readonly subjectKeyId: Buffer;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

export interface LeafProfile {
  spiffeId: string;
  dnsNames: readonly string[];
  ipAddresses?: readonly string[] | undefined;
  subjectPublicKey: KeyObject;
  notBefore: Date;
  notAfter: Date;
  /** Unsigned big-endian serial (1..20 bytes, non-zero); random 128-bit when omitted. */
  serial?: Buffer;
}

export interface CaProfile {
  commonName: string;
  trustDomain: string;
  subjectPublicKey: KeyObject;
  notBefore: Date;
  notAfter: Date;
  pathLen: number;
}

export interface MintedCertificate {
  der: Buffer;
  pem: string;
  serialHex: string;
}

/** Upper bound on DNS + IP SANs per leaf: keeps certificates (and handshakes) small. */
export const MAX_LEAF_SANS = 100;

const OID = {
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectAltName: '2.5.29.17',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
  organizationName: '2.5.4.10',
  commonName: '2.5.4.3',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ecdsaWithSha384: '1.2.840.10045.4.3.3',
  sha256WithRsa: '1.2.840.113549.1.1.11',
  ed25519: '1.3.101.112',
} as const;

const internal = (message: string, cause?: unknown): BrokerError =>
  new BrokerError('internal', message, cause === undefined ? undefined : { cause });

// --- constant encodings ------------------------------------------------------------------------

const VERSION_V3 = explicit(0, integer(2));
const TRUE = boolean(true);

function extension(extnId: string, critical: boolean, value: Uint8Array): Buffer {
  return critical ? sequence(oid(extnId), TRUE, octetString(value)) : sequence(oid(extnId), octetString(value));
}

function rdn(attrOid: string, value: Buffer): Buffer {
  return set(sequence(oid(attrOid), value));
}

// Leaf subject carries nothing request-specific: the identity lives in the URI SAN only.
const LEAF_SUBJECT = sequence(rdn(OID.organizationName, utf8String('Tessera')));

// KeyUsage bits (RFC 5280 §4.2.1.3) as DER named-bit BIT STRINGs, trailing zero bits dropped.
const KU_DIGITAL_SIGNATURE = bitString(Buffer.from([0x80]), 7);
const KU_DIGITAL_SIGNATURE_KEY_ENCIPHERMENT = bitString(Buffer.from([0xa0]), 5);
const KU_CERT_SIGN_CRL_SIGN = bitString(Buffer.from([0x06]), 1);

const EXT_LEAF_BASIC_CONSTRAINTS = extension(OID.basicConstraints, true, sequence());
const EXT_LEAF_KU = extension(OID.keyUsage, true, KU_DIGITAL_SIGNATURE);
const EXT_LEAF_KU_RSA = extension(OID.keyUsage, true, KU_DIGITAL_SIGNATURE_KEY_ENCIPHERMENT);
const EXT_LEAF_EKU = extension(OID.extKeyUsage, false, sequence(oid(OID.serverAuth), oid(OID.clientAuth)));
const EXT_CA_KU = extension(OID.keyUsage, true, KU_CERT_SIGN_CRL_SIGN);

// --- signing -----------------------------------------------------------------------------------

interface SignatureSpec {
  readonly algorithmId: Buffer;
  /** Absent for a signer that is not local: such an issuer mints only through mintLeafAsync. */
  readonly sign: ((tbs: Buffer) => Buffer) | undefined;
  readonly signAsync: (tbs: Buffer) => Promise<Buffer>;
}

const ALGORITHM_ID: Record<SignatureAlgorithm, Buffer> = {
  ES256: sequence(oid(OID.ecdsaWithSha256)),
  ES384: sequence(oid(OID.ecdsaWithSha384)),
  EdDSA: sequence(oid(OID.ed25519)),
  RS256: sequence(oid(OID.sha256WithRsa), Buffer.from([TAG.NULL, 0])),
};

/** An issuer key as a local Signer, refused here (at load) when Tessera cannot sign certificates with it. */
function issuerSigner(key: KeyObject): KeySigner {
  if (key.type !== 'private') throw internal('issuer key must be a private key');
  if (signatureAlgorithmOf(key) === undefined) {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    throw internal(`unsupported issuer key (${key.asymmetricKeyType ?? 'unknown'}${curve ? ` ${curve}` : ''}); use EC P-256/P-384, Ed25519 or RSA ≥ 2048`);
  }
  return new KeySigner(key);
}

/** The certificate signature of a signer: synchronous for a local key (the minting fast path). */
function signatureSpecFor(signer: Signer): SignatureSpec {
  return {
    algorithmId: ALGORITHM_ID[signer.algorithm],
    sign: signer instanceof KeySigner ? (tbs) => signer.signSync(tbs) : undefined,
    signAsync: (tbs) => signer.sign(tbs),
  };
}

interface IssuerCache {
  readonly spec: SignatureSpec;
  readonly akiExtension: Buffer;
}

// Per-issuer precomputation, keyed by the material object so IssuerMaterial stays a plain shape.
const issuerCache = new WeakMap<IssuerMaterial, IssuerCache>();

function cacheFor(issuer: IssuerMaterial): IssuerCache {
  let c = issuerCache.get(issuer);
  if (c === undefined) {
    if (issuer.subjectNameDer.equals(LEAF_SUBJECT)) {
      // Leaves would look self-issued to path builders; refuse such an issuer outright.
      throw internal('issuer subject must differ from the leaf subject (O=Tessera)');
    }
    c = { spec: signatureSpecFor(issuer.signer), akiExtension: akiExtension(issuer.subjectKeyId) };
    issuerCache.set(issuer, c);
  }
  return c;
}

function akiExtension(keyId: Buffer): Buffer {
  return extension(OID.authorityKeyIdentifier, false, sequence(implicit(0, keyId)));
}

// --- per-certificate pieces --------------------------------------------------------------------

// Serial entropy comes from a pooled CSPRNG buffer to avoid a syscall + allocation per issuance.
const SERIAL_LEN = 16;
const serialPool = Buffer.alloc(SERIAL_LEN * 256);
let serialPoolPos = serialPool.length;

function randomSerial(): Buffer {
  for (;;) {
    if (serialPoolPos + SERIAL_LEN > serialPool.length) {
      randomFillSync(serialPool);
      serialPoolPos = 0;
    }
    const s = Buffer.from(serialPool.subarray(serialPoolPos, serialPoolPos + SERIAL_LEN));
    serialPoolPos += SERIAL_LEN;
    // Redraw a leading zero byte (p = 1/256) so every serial has a full 16-byte magnitude.
    if (s[0] !== 0) return s;
  }
}

function serialFor(given: Buffer | undefined): { der: Buffer; hex: string } {
  let bytes = given ?? randomSerial();
  if (given !== undefined) {
    let start = 0;
    while (start < given.length - 1 && given[start] === 0) start++;
    bytes = given.subarray(start);
    if (bytes.length === 0 || bytes.length > 20 || (bytes.length === 1 && bytes[0] === 0)) {
      throw internal('serial must be a positive integer of at most 20 bytes');
    }
  }
  // INTEGER encoding adds a 0x00 when the high bit is set, keeping the serial positive.
  return { der: integerFromBytes(bytes), hex: bytes.toString('hex') };
}

/** RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING value (no tag, length, unused-bits octet). */
export function subjectKeyIdOf(spkiDer: Buffer): Buffer {
  return createHash('sha1').update(subjectPublicKeyBits(spkiDer)).digest();
}

function subjectPublicKeyBits(spkiDer: Buffer): Buffer {
  try {
    return readBitString(child(readDer(spkiDer), 1, 'subjectPublicKey')).bytes;
  } catch (err) {
    throw internal('malformed SubjectPublicKeyInfo', err);
  }
}

/** SPKI and SKI of a subject key, refusing EC points that are not uncompressed (Go cannot parse those). */
function subjectKeyMaterial(key: KeyObject, kind: KeyKind): { spki: Buffer; ski: Buffer } {
  const spki = spkiOf(key);
  const bits = subjectPublicKeyBits(spki);
  if ((kind === 'ec-p256' || kind === 'ec-p384') && bits[0] !== 0x04) throw internal('EC subject key must be an uncompressed point');
  return { spki, ski: createHash('sha1').update(bits).digest() };
}

function truncateToSeconds(d: Date, what: string): Date {
  const t = d instanceof Date ? d.getTime() : Number.NaN;
  if (!Number.isFinite(t)) throw internal(`${what} is not a valid date`);
  return new Date(Math.floor(t / 1000) * 1000);
}

function validity(notBefore: Date, notAfter: Date): { der: Buffer; notBefore: Date; notAfter: Date } {
  const nb = truncateToSeconds(notBefore, 'notBefore');
  const na = truncateToSeconds(notAfter, 'notAfter');
  if (na.getTime() < nb.getTime()) throw internal('notAfter is before notBefore');
  if (nb.getUTCFullYear() < 1950 || na.getUTCFullYear() > 9999) throw internal('validity outside 1950..9999');
  return { der: sequence(time(nb), time(na)), notBefore: nb, notAfter: na };
}

const DNS_LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

function checkDnsName(name: string): void {
  if (typeof name !== 'string' || name.length === 0 || name.length > 253) throw internal(`invalid DNS SAN "${String(name)}"`);
  const labels = name.split('.');
  labels.forEach((label, i) => {
    // A wildcard is allowed only as the whole left-most label, over at least two more labels.
    if (i === 0 && label === '*' && labels.length >= 3) return;
    if (!DNS_LABEL.test(label)) throw internal(`invalid DNS SAN "${name}"`);
  });
}

/** 4 or 16 network-order bytes for an IPv4/IPv6 literal (no zone IDs). */
export function ipAddressBytes(ip: string): Buffer {
  if (isIPv4(ip)) return Buffer.from(ip.split('.').map(Number));
  if (!isIPv6(ip) || ip.includes('%')) throw internal(`invalid IP SAN "${ip}"`);
  const groups = (part: string): number[] => {
    if (part === '') return [];
    const out: number[] = [];
    for (const g of part.split(':')) {
      if (g.includes('.')) {
        const [a, b, c, d] = g.split('.').map(Number) as [number, number, number, number];
        out.push((a << 8) | b, (c << 8) | d);
      } else {
        out.push(parseInt(g, 16));
      }
    }
    return out;
  };
  const dbl = ip.indexOf('::');
  let words: number[];
  if (dbl === -1) {
    words = groups(ip);
  } else {
    const head = groups(ip.slice(0, dbl));
    const tail = groups(ip.slice(dbl + 2));
    words = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  }
  if (words.length !== 8) throw internal(`invalid IP SAN "${ip}"`);
  const out = Buffer.alloc(16);
  words.forEach((w, i) => out.writeUInt16BE(w, i * 2));
  return out;
}

function leafSpiffeUri(spiffeId: string): Buffer {
  let parsed: SpiffeId;
  try {
    parsed = parseSpiffeId(spiffeId);
  } catch (err) {
    throw internal(`leaf SPIFFE ID is invalid: ${err instanceof Error ? err.message : String(err)}`, err);
  }
  if (parsed.path === '') throw internal('a leaf SVID needs a workload path, not a bare trust-domain ID');
  return Buffer.from(spiffeId, 'latin1');
}

function sign(spec: SignatureSpec, tbs: Buffer): Buffer {
  if (spec.sign === undefined) throw internal('this issuer key is not local (PKCS#11): certificates are signed through mintLeafAsync');
  const signature = spec.sign(tbs);
  return sequence(tbs, spec.algorithmId, bitString(signature));
}

// --- public API --------------------------------------------------------------------------------

/** Mints an X509-SVID leaf (SPIFFE profile) signed by `issuer`'s local key. */
export function mintLeaf(issuer: IssuerMaterial, profile: LeafProfile): MintedCertificate {
  const { spec, tbs, serialHex } = leafToBeSigned(issuer, profile);
  const der = sign(spec, tbs);
  return { der, pem: toPem('CERTIFICATE', der), serialHex };
}

/** mintLeaf for any Signer: the same certificate, its signature awaited (a PKCS#11 token signs off the event loop). */
export async function mintLeafAsync(issuer: IssuerMaterial, profile: LeafProfile): Promise<MintedCertificate> {
  const { spec, tbs, serialHex } = leafToBeSigned(issuer, profile);
  const der = sequence(tbs, spec.algorithmId, bitString(await spec.signAsync(tbs)));
  return { der, pem: toPem('CERTIFICATE', der), serialHex };
}

function leafToBeSigned(issuer: IssuerMaterial, profile: LeafProfile): { spec: SignatureSpec; tbs: Buffer; serialHex: string } {
  const cache = cacheFor(issuer);
  const keyKind = keyKindOf(profile.subjectPublicKey);
  const uri = leafSpiffeUri(profile.spiffeId);
  const ips = profile.ipAddresses ?? [];
  if (profile.dnsNames.length + ips.length > MAX_LEAF_SANS) throw internal(`more than ${MAX_LEAF_SANS} DNS/IP SANs`);

  const sans: Buffer[] = [implicit(6, uri)];
  for (const name of profile.dnsNames) {
    checkDnsName(name);
    sans.push(implicit(2, Buffer.from(name, 'latin1')));
  }
  for (const ip of ips) sans.push(implicit(7, ipAddressBytes(ip)));

  const { spki, ski } = subjectKeyMaterial(profile.subjectPublicKey, keyKind);
  const serial = serialFor(profile.serial);
  const v = validity(profile.notBefore, profile.notAfter);

  const tbs = sequence(
    VERSION_V3,
    serial.der,
    cache.spec.algorithmId,
    issuer.subjectNameDer,
    v.der,
    LEAF_SUBJECT,
    spki,
    explicit(
      3,
      sequence(
        EXT_LEAF_BASIC_CONSTRAINTS,
        keyKind === 'rsa' ? EXT_LEAF_KU_RSA : EXT_LEAF_KU,
        EXT_LEAF_EKU,
        // Subject is non-empty, so the SAN extension is non-critical (RFC 5280 §4.2.1.6).
        extension(OID.subjectAltName, false, sequence(...sans)),
        extension(OID.subjectKeyIdentifier, false, octetString(ski)),
        cache.akiExtension,
      ),
    ),
  );
  return { spec: cache.spec, tbs, serialHex: serial.hex };
}

/**
 * Mints a SPIFFE signing CA: self-signed (root) when given `{ selfSignedKey }`, else signed by
 * `issuer` with its validity clamped into the issuer's.
 */
export function mintCa(profile: CaProfile, issuer: IssuerMaterial | { selfSignedKey: KeyObject }): MintedCertificate {
  if (typeof profile.commonName !== 'string' || profile.commonName.length === 0 || profile.commonName.length > 64) {
    throw internal('CA commonName must be 1..64 characters');
  }
  try {
    validateTrustDomain(profile.trustDomain);
  } catch (err) {
    throw internal(`invalid trust domain for CA: ${err instanceof Error ? err.message : String(err)}`, err);
  }
  if (!Number.isSafeInteger(profile.pathLen) || profile.pathLen < 0) throw internal('pathLen must be a non-negative integer');
  const { spki, ski } = subjectKeyMaterial(profile.subjectPublicKey, keyKindOf(profile.subjectPublicKey));
  const subject = sequence(
    rdn(OID.organizationName, utf8String('Tessera')),
    rdn(OID.commonName, utf8String(profile.commonName)),
  );

  let spec: SignatureSpec;
  let issuerName: Buffer;
  let aki: Buffer | undefined;
  let notBefore = profile.notBefore;
  let notAfter = profile.notAfter;
  if ('selfSignedKey' in issuer) {
    spec = signatureSpecFor(issuerSigner(issuer.selfSignedKey));
    if (!spkiOf(issuer.selfSignedKey).equals(spki)) throw internal('selfSignedKey does not match subjectPublicKey');
    issuerName = subject;
  } else {
    const cache = cacheFor(issuer);
    spec = cache.spec;
    issuerName = issuer.subjectNameDer;
    aki = cache.akiExtension;
    if (notBefore.getTime() < issuer.notBefore.getTime()) notBefore = issuer.notBefore;
    if (notAfter.getTime() > issuer.notAfter.getTime()) notAfter = issuer.notAfter;
  }

  const serial = serialFor(undefined);
  const v = validity(notBefore, notAfter);
  const extensions = [
    extension(OID.basicConstraints, true, sequence(TRUE, integer(profile.pathLen))),
    EXT_CA_KU,
    extension(OID.subjectAltName, false, sequence(implicit(6, Buffer.from(`spiffe://${profile.trustDomain}`, 'latin1')))),
    extension(OID.subjectKeyIdentifier, false, octetString(ski)),
  ];
  if (aki !== undefined) extensions.push(aki);

  const tbs = sequence(
    VERSION_V3,
    serial.der,
    spec.algorithmId,
    issuerName,
    v.der,
    subject,
    spki,
    explicit(3, sequence(...extensions)),
  );
  const der = sign(spec, tbs);
  return { der, pem: toPem('CERTIFICATE', der), serialHex: serial.hex };
}

/** PKCS#9 extensionRequest: the extensions a CSR asks its signer to put in the certificate. */
const OID_EXTENSION_REQUEST = '1.2.840.113549.1.9.14';

/**
 * A PKCS#10 certificate signing request (RFC 2986) for a signing CA, for an upstream or offline root
 * to sign (`tessera ca prepare`): subject `O=Tessera, CN=<commonName>`, `key`'s public key, and an
 * extensionRequest for what the certificate must carry — basicConstraints cA (pathLen 0), keyUsage
 * keyCertSign + cRLSign, and the trust domain's SPIFFE ID. Signed with `key` (proof of possession).
 */
export function mintCaCsr(profile: { commonName: string; trustDomain: string }, key: KeyObject): string {
  const signer = issuerSigner(key);
  const { spec, info } = caCsrInfo(profile, signer);
  return toPem('CERTIFICATE REQUEST', sign(spec, info));
}

/** mintCaCsr for a key behind any Signer (a key pair in a PKCS#11 token): the same CSR, its signature awaited. */
export async function mintCaCsrWith(profile: { commonName: string; trustDomain: string }, signer: Signer): Promise<string> {
  const { spec, info } = caCsrInfo(profile, signer);
  return toPem('CERTIFICATE REQUEST', sequence(info, spec.algorithmId, bitString(await spec.signAsync(info))));
}

/** The CertificationRequestInfo of a signing-CA CSR for `signer`'s public key. */
function caCsrInfo(profile: { commonName: string; trustDomain: string }, signer: Signer): { spec: SignatureSpec; info: Buffer } {
  if (typeof profile.commonName !== 'string' || profile.commonName.length === 0 || profile.commonName.length > 64) {
    throw internal('CA commonName must be 1..64 characters');
  }
  validateTrustDomain(profile.trustDomain);
  const { spki } = subjectKeyMaterial(signer.publicKey, keyKindOf(signer.publicKey));
  const subject = sequence(rdn(OID.organizationName, utf8String('Tessera')), rdn(OID.commonName, utf8String(profile.commonName)));
  const requested = sequence(
    extension(OID.basicConstraints, true, sequence(TRUE, integer(0))),
    EXT_CA_KU,
    extension(OID.subjectAltName, false, sequence(implicit(6, Buffer.from(`spiffe://${profile.trustDomain}`, 'latin1')))),
  );
  const attributes = implicit(0, sequence(oid(OID_EXTENSION_REQUEST), set(requested)), true);
  return { spec: signatureSpecFor(signer), info: sequence(integer(0), subject, spki, attributes) };
}

const CERT_PEM_RE = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----/g;

/**
 * DER of every CERTIFICATE block in `pem`. Only whitespace may appear between blocks; anything
 * else (keys, garbage, other labels) is a misconfiguration.
 */
export function splitPemCertificates(pem: string, what = 'certificate PEM'): Buffer[] {
  const out: Buffer[] = [];
  let last = 0;
  for (const m of pem.matchAll(CERT_PEM_RE)) {
    if (pem.slice(last, m.index).trim() !== '') throw internal(`${what} contains non-certificate content`);
    const body = (m[1] ?? '').replace(/\s+/g, '');
    const der = Buffer.from(body, 'base64');
    if (der.length === 0 || der.toString('base64') !== body) throw internal(`${what} has an invalid base64 body`);
    out.push(der);
    last = (m.index ?? 0) + m[0].length;
  }
  if (pem.slice(last).trim() !== '') throw internal(`${what} contains non-certificate content`);
  return out;
}

interface CertFields {
  readonly subject: Buffer;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly spki: Buffer;
  readonly extensions: ReadonlyMap<string, { critical: boolean; value: Buffer }>;
}

/** Just enough of an X.509 certificate to act as its issuer. */
function parseCertFields(der: Buffer): CertFields {
  const cert = readDer(der, { maxDepth: 32 });
  const tbs = expectTag(child(cert, 0, 'tbsCertificate'), TAG.SEQUENCE, 'tbsCertificate');
  let i = tbs.children[0]?.tag === 0xa0 ? 1 : 0; // optional [0] version
  const at = (what: string): DerNode => child(tbs, i++, what);
  at('serialNumber');
  at('signature');
  at('issuer');
  const validityNode = expectTag(at('validity'), TAG.SEQUENCE, 'validity');
  const subject = expectTag(at('subject'), TAG.SEQUENCE, 'subject');
  const spki = expectTag(at('subjectPublicKeyInfo'), TAG.SEQUENCE, 'subjectPublicKeyInfo');
  const extensions = new Map<string, { critical: boolean; value: Buffer }>();
  for (const rest of tbs.children.slice(i)) {
    if (rest.tag !== 0xa3) continue; // issuer/subjectUniqueID
    for (const ext of expectTag(child(rest, 0, 'extensions'), TAG.SEQUENCE, 'extensions').children) {
      const id = readOid(child(ext, 0, 'extnID'));
      const hasCritical = ext.children.length === 3;
      const critical = hasCritical ? readBoolean(child(ext, 1, 'critical')) : false;
      extensions.set(id, { critical, value: readOctetString(child(ext, hasCritical ? 2 : 1, 'extnValue')) });
    }
  }
  return {
    subject: Buffer.from(subject.raw),
    notBefore: readTime(child(validityNode, 0, 'notBefore')),
    notAfter: readTime(child(validityNode, 1, 'notAfter')),
    spki: Buffer.from(spki.raw),
    extensions,
  };
}

/**
 * What a certificate says about being a CA, read from its extensions: basicConstraints cA, and whether
 * keyUsage allows keyCertSign (`undefined` when it has no keyUsage). Throws DerError when malformed.
 */
export function caConstraintsOf(certDer: Buffer): { readonly ca: boolean; readonly keyCertSign: boolean | undefined; readonly pathLen: number | undefined } {
  const fields = parseCertFields(certDer);
  const bc = fields.extensions.get(OID.basicConstraints);
  let ca = false;
  let pathLen: number | undefined;
  if (bc !== undefined) {
    const [first, second] = readDer(bc.value).children;
    ca = first !== undefined && first.tag === TAG.BOOLEAN && readBoolean(first);
    const lenNode = first?.tag === TAG.INTEGER ? first : second;
    if (lenNode !== undefined && lenNode.tag === TAG.INTEGER) pathLen = Number(readInteger(lenNode));
  }
  const ku = fields.extensions.get(OID.keyUsage);
  const keyCertSign = ku === undefined ? undefined : ((readBitString(readDer(ku.value)).bytes[0] ?? 0) & 0x04) !== 0;
  return { ca, keyCertSign, pathLen };
}

/**
 * Loads a signing CA from PEM: exactly one certificate, a private key that matches it, and a
 * certificate that is a CA allowed to sign certificates.
 */
export function issuerFromPem(certPem: string, keyPem: string): IssuerMaterial {
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw internal('issuer private key cannot be loaded (encrypted keys are not supported)', err);
  }
  return issuerFrom(certPem, issuerSigner(key), (x509) => x509.checkPrivateKey(key));
}

/**
 * Loads a signing CA whose key is behind a Signer (a PKCS#11 token): the certificate must certify the
 * signer's public key. Certificates it signs go through mintLeafAsync.
 */
export function issuerFromSigner(certPem: string, signer: Signer): IssuerMaterial {
  return issuerFrom(certPem, signer, (x509) => spkiOf(x509.publicKey).equals(spkiOf(signer.publicKey)));
}

function issuerFrom(certPem: string, signer: Signer, keyMatches: (cert: X509Certificate) => boolean): IssuerMaterial {
  const ders = splitPemCertificates(certPem, 'issuer certificate PEM');
  if (ders.length !== 1) throw internal(`issuer certificate PEM must hold exactly one certificate, found ${ders.length}`);
  const certDer = ders[0] as Buffer;
  let x509: X509Certificate;
  let fields: CertFields;
  try {
    x509 = new X509Certificate(certDer);
    fields = parseCertFields(certDer);
  } catch (err) {
    throw internal(`issuer certificate is malformed${err instanceof DerError ? `: ${err.message}` : ''}`, err);
  }
  if (!keyMatches(x509)) throw internal('issuer private key does not match the issuer certificate');
  if (!x509.ca) throw internal('issuer certificate is not a CA (basicConstraints CA:true missing)');
  const ku = fields.extensions.get(OID.keyUsage);
  if (ku !== undefined) {
    let bits: Buffer;
    try {
      bits = readBitString(readDer(ku.value)).bytes;
    } catch (err) {
      throw internal('issuer keyUsage extension is malformed', err);
    }
    if (((bits[0] ?? 0) & 0x04) === 0) throw internal('issuer certificate keyUsage lacks keyCertSign');
  }
  let subjectKeyId: Buffer;
  const skiExt = fields.extensions.get(OID.subjectKeyIdentifier);
  try {
    subjectKeyId = skiExt !== undefined ? Buffer.from(readOctetString(readDer(skiExt.value))) : subjectKeyIdOf(fields.spki);
  } catch (err) {
    throw internal('issuer subjectKeyIdentifier extension is malformed', err);
  }
  const material: IssuerMaterial = {
    certDer,
    certPem: toPem('CERTIFICATE', certDer),
    signer,
    subjectNameDer: fields.subject,
    subjectKeyId,
    notBefore: fields.notBefore,
    notAfter: fields.notAfter,
  };
  cacheFor(material); // fail fast on an unsupported key or clashing subject
  return material;
}
