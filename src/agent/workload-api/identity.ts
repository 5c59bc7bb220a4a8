/**
 * What the Workload API and SDS serve, kept current from the agent's TesseraClient: the X.509-SVID
 * (DER and PEM forms, computed once per rotation), the X.509 and JWT bundles, and JWT-SVIDs fetched
 * on demand through the broker's JWT-SVID route. Emits 'x509' on every new SVID or when the current
 * one expires unrenewed (then x509() is undefined), and 'jwtBundles' when the JWT keys change.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { JwtSvid, SpiffeBundleDocument, TesseraClient, X509Svid } from '../../sdk/client.js';
import { splitPem } from '../../sdk/x509.js';
import { parseSpiffeId } from '../../spiffe/id.js';

export interface X509Identity {
  readonly spiffeId: string;
  /** The trust domain's SPIFFE ID, e.g. spiffe://example.org: the key of bundle maps. */
  readonly trustDomainId: string;
  readonly serial: string;
  readonly expiresAt: Date;
  readonly chainDer: Buffer;
  readonly keyDer: Buffer;
  readonly bundleDer: Buffer;
  readonly chainPem: string;
  readonly keyPem: string;
  readonly bundlePem: string;
  /** Federated trust domains' X.509 authorities (concatenated DER), keyed by trust-domain SPIFFE ID. */
  readonly federatedDer: ReadonlyMap<string, Buffer>;
}

/** One trust domain's JWT-SVID signing keys as a JWK Set, plus the same document serialised. */
export interface JwtBundle {
  readonly keys: readonly Record<string, unknown>[];
  readonly json: Buffer;
}

export interface IdentityEvents {
  x509: [X509Identity | undefined];
  jwtBundles: [ReadonlyMap<string, JwtBundle>];
}

/** What the servers need from the agent; a seam so tests can drive rotations without a broker. */
export interface IdentitySource extends EventEmitter<IdentityEvents> {
  /** The current, unexpired X.509-SVID, or undefined (none yet, or expired and not renewed). */
  x509(): X509Identity | undefined;
  /** JWT bundles keyed by trust-domain SPIFFE ID, or undefined before the first fetch. */
  jwtBundles(): ReadonlyMap<string, JwtBundle> | undefined;
  /** A JWT-SVID for these audiences from the broker (cached by the client); throws TesseraError. */
  jwtSvid(audience: readonly string[]): Promise<JwtSvid>;
}

const JWK_MEMBERS = ['kty', 'kid', 'alg', 'crv', 'x', 'y', 'n', 'e'] as const;

/** The jwt-svid keys of a SPIFFE bundle, without `use` (the set holds nothing else) or private members. */
export function jwtKeysOf(bundle: SpiffeBundleDocument): Record<string, unknown>[] {
  return bundle.keys
    .filter((k) => k.use === 'jwt-svid' && typeof k.kid === 'string')
    .map((k) => Object.fromEntries(JWK_MEMBERS.filter((m) => typeof k[m] === 'string').map((m) => [m, k[m]])));
}

/** DER and PEM forms of an SVID, computed once. */
export function x509Identity(svid: X509Svid, bundlePem: string): X509Identity {
  const chain = svid.certificates.map((pem) => new X509Certificate(pem));
  const roots = splitPem(bundlePem).map((pem) => new X509Certificate(pem));
  const keyDer = createPrivateKey(svid.privateKeyPem).export({ type: 'pkcs8', format: 'der' });
  const id: Omit<X509Identity, 'keyPem'> = {
    spiffeId: svid.spiffeId,
    trustDomainId: `spiffe://${parseSpiffeId(svid.spiffeId).trustDomain}`,
    serial: svid.serial,
    expiresAt: svid.expiresAt,
    chainDer: Buffer.concat(chain.map((c) => c.raw)),
    keyDer,
    bundleDer: Buffer.concat(roots.map((c) => c.raw)),
    chainPem: svid.chainPem,
    bundlePem: roots.map((r) => r.toString()).join(''),
    federatedDer: new Map(
      svid.federatedBundles.map((b) => [`spiffe://${b.trustDomain}`, Buffer.concat(splitPem(b.bundlePem).map((pem) => new X509Certificate(pem).raw))]),
    ),
  };
  // Not enumerable: logging or serialising the object does not leak the key.
  Object.defineProperty(id, 'keyPem', { value: svid.privateKeyPem, enumerable: false });
  Object.defineProperty(id, 'keyDer', { value: keyDer, enumerable: false });
  return id as X509Identity;
}

const BUNDLE_RETRY_MIN_MS = 1_000;
const BUNDLE_RETRY_MAX_MS = 30_000;

export interface ClientIdentityLogger {
  warn(fields: Record<string, unknown>, msg: string): void;
}

/** The IdentitySource of a running agent. */
export class ClientIdentity extends EventEmitter<IdentityEvents> implements IdentitySource {
  readonly #client: TesseraClient;
  readonly #log: ClientIdentityLogger;
  #x509: X509Identity | undefined;
  #jwtBundles: ReadonlyMap<string, JwtBundle> | undefined;
  #expiryTimer: NodeJS.Timeout | undefined;
  #bundleTimer: NodeJS.Timeout | undefined;
  #bundleRetryMs = BUNDLE_RETRY_MIN_MS;
  #fetchingBundle = false;
  #closed = false;

  constructor(client: TesseraClient, log: ClientIdentityLogger) {
    super();
    this.#client = client;
    this.#log = log;
  }

  x509(): X509Identity | undefined {
    const id = this.#x509;
    return id !== undefined && id.expiresAt.getTime() > Date.now() ? id : undefined;
  }

  jwtBundles(): ReadonlyMap<string, JwtBundle> | undefined {
    return this.#jwtBundles;
  }

  jwtSvid(audience: readonly string[]): Promise<JwtSvid> {
    return this.#client.jwtSvid(audience);
  }

  /** A new SVID from the client: install it, tell every stream, refresh the JWT bundle. */
  installX509(svid: X509Svid): void {
    if (this.#closed) return;
    this.#x509 = x509Identity(svid, svid.bundlePem);
    if (this.#expiryTimer !== undefined) clearTimeout(this.#expiryTimer);
    const ms = svid.expiresAt.getTime() - Date.now();
    // setTimeout caps at 2^31-1 ms; an SVID living longer than ~24 days is re-armed on rotation anyway.
    this.#expiryTimer = setTimeout(() => this.emit('x509', undefined), Math.min(Math.max(ms + 1, 0), 2 ** 31 - 1));
    this.#expiryTimer.unref();
    this.emit('x509', this.#x509);
    void this.refreshJwtBundles();
  }

  /** Fetches the broker's bundle; on failure retries with backoff. Emits only on a change. */
  async refreshJwtBundles(): Promise<void> {
    if (this.#closed || this.#fetchingBundle) return;
    const td = this.#x509?.trustDomainId;
    if (td === undefined) return;
    this.#fetchingBundle = true;
    try {
      const keys = jwtKeysOf(await this.#client.spiffeBundle());
      this.#bundleRetryMs = BUNDLE_RETRY_MIN_MS;
      const json = Buffer.from(JSON.stringify({ keys }));
      // Federated trust domains' JWT keys (delivered with the X.509-SVID), each under its own trust domain.
      const next = new Map<string, JwtBundle>([[td, { keys, json }]]);
      for (const b of this.#client.federatedBundles()) {
        const fkeys = jwtKeysOf({ keys: b.jwtKeys });
        next.set(`spiffe://${b.trustDomain}`, { keys: fkeys, json: Buffer.from(JSON.stringify({ keys: fkeys })) });
      }
      const previous = this.#jwtBundles;
      const same = previous !== undefined && previous.size === next.size && [...next].every(([k, v]) => previous.get(k)?.json.equals(v.json) === true);
      if (!same) {
        this.#jwtBundles = next;
        this.emit('jwtBundles', this.#jwtBundles);
      }
    } catch (err) {
      if (this.#closed) return;
      this.#log.warn({ error: (err as Error).message, retryMs: this.#bundleRetryMs }, 'could not fetch the JWT bundle; will retry');
      if (this.#bundleTimer !== undefined) clearTimeout(this.#bundleTimer);
      this.#bundleTimer = setTimeout(() => void this.refreshJwtBundles(), this.#bundleRetryMs);
      this.#bundleTimer.unref();
      this.#bundleRetryMs = Math.min(this.#bundleRetryMs * 2, BUNDLE_RETRY_MAX_MS);
    } finally {
      this.#fetchingBundle = false;
    }
  }

  close(): void {
    this.#closed = true;
    if (this.#expiryTimer !== undefined) clearTimeout(this.#expiryTimer);
    if (this.#bundleTimer !== undefined) clearTimeout(this.#bundleTimer);
  }
}
