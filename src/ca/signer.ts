/**
 * The signing seam for the broker's three keys (CA, JWT-SVID, audit checkpoints): a `Signer` holds a
 * private key somewhere and signs bytes. Asynchronous, so a key in an HSM or a cloud KMS can sit behind
 * it. Two kinds exist, picked from the config in one place (keys.ts): a local `KeyObject` (`KeySigner`,
 * a PEM file), which also signs synchronously — the fast path of X.509 minting, on the event loop or in
 * a minting thread (each thread loads its own copy of the CA key from the PEMs, minter-pool.ts) — and a
 * key pair in a PKCS#11 token (`Pkcs11Signer`, pkcs11-signer.ts), whose X.509 minting runs inline and
 * awaits `sign`. A cloud KMS is one more Signer file and one more case in keys.ts.
 */
import { createPublicKey, sign, constants as cryptoConstants, type KeyObject, type SignKeyObjectInput } from 'node:crypto';

/** JOSE names of the algorithms Tessera signs with (the key decides; there is no implicit choice). */
export type SignatureAlgorithm = 'ES256' | 'ES384' | 'EdDSA' | 'RS256';

export interface Signer {
  readonly algorithm: SignatureAlgorithm;
  readonly publicKey: KeyObject;
  /** The signature over `data` (ECDSA as DER, the form X.509 carries; RSA PKCS#1 v1.5). */
  sign(data: Buffer): Promise<Buffer>;
}

/** The algorithm for a private key, or undefined when Tessera does not sign with such keys. */
export function signatureAlgorithmOf(key: KeyObject): SignatureAlgorithm | undefined {
  if (key.type !== 'private') return undefined;
  const curve = key.asymmetricKeyDetails?.namedCurve;
  switch (key.asymmetricKeyType) {
    case 'ec':
      return curve === 'prime256v1' ? 'ES256' : curve === 'secp384r1' ? 'ES384' : undefined;
    case 'ed25519':
      return 'EdDSA';
    case 'rsa':
      return (key.asymmetricKeyDetails?.modulusLength ?? 0) >= 2048 ? 'RS256' : undefined;
    default:
      return undefined;
  }
}

const DIGEST: Record<SignatureAlgorithm, string | null> = { ES256: 'sha256', ES384: 'sha384', EdDSA: null, RS256: 'sha256' };

/** A private key held in this process. */
export class KeySigner implements Signer {
  readonly algorithm: SignatureAlgorithm;
  readonly publicKey: KeyObject;
  readonly #digest: string | null;
  readonly #key: KeyObject | SignKeyObjectInput;

  constructor(privateKey: KeyObject) {
    const algorithm = signatureAlgorithmOf(privateKey);
    if (algorithm === undefined) throw new TypeError('unsupported signing key; use EC P-256/P-384, Ed25519 or RSA ≥ 2048');
    this.algorithm = algorithm;
    this.publicKey = createPublicKey(privateKey);
    this.#digest = DIGEST[algorithm];
    this.#key = algorithm === 'RS256' ? { key: privateKey, padding: cryptoConstants.RSA_PKCS1_PADDING } : privateKey;
  }

  /** The fast path: no promise, for the minting step. */
  signSync(data: Buffer): Buffer {
    return sign(this.#digest, data, this.#key);
  }

  async sign(data: Buffer): Promise<Buffer> {
    return this.signSync(data);
  }
}

