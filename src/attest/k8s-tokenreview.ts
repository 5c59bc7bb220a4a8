/**
 * Kubernetes as the source of truth (issuers[].kubernetes): after the token's signature and claims
 * check out (the JWKS attestor, so junk never reaches the API server), the API server confirms it with
 * a TokenReview — a token of a deleted pod or service account is refused at once, not at expiry — and
 * the pod named by the token's bound-pod claim is read for its labels, annotations, node and images,
 * which become selectors. Results are cached per token (bounded LRU, at most cacheSeconds and never past
 * the token's expiry). A failed API server call is a 503 `attestation_unavailable` (fail closed) unless
 * the operator opted in to jwksFallback. The API server is reached only at the configured address, TLS
 * verified against the configured CA, answers size-bounded and parsed defensively.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import type { Clock } from '../clock.js';
import { BrokerError } from '../errors.js';
import { isRecord } from '../is-record.js';
import type { TokenAttestor } from './attestor.js';
import { type Identity, selectorText } from './identity.js';

export interface KubernetesApiConfig {
  /** https://host:port of the API server. */
  readonly apiServer: string;
  /** CA bundle (PEM) the API server's certificate must chain to. */
  readonly caFile: string;
  /** The broker's own service-account token (re-read on every call: kubelet rotates it). */
  readonly tokenFile: string;
  readonly cacheSeconds: number;
  readonly jwksFallback: boolean;
  readonly timeoutMs: number;
}

export const MAX_API_RESPONSE_BYTES = 1024 * 1024;
export const MAX_CACHE_ENTRIES = 10_000;
/** Labels / annotations / containers taken from one pod (more is not a workload, it is an attack). */
const MAX_METADATA_ITEMS = 256;

const invalidToken = (message: string): BrokerError => new BrokerError('invalid_token', message);
const unavailable = (message: string): BrokerError => new BrokerError('attestation_unavailable', message);

interface ApiAnswer {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

/** One Kubernetes API server, as the broker uses it: TokenReview and pod GET. */
export class KubernetesApi {
  readonly #url: URL;
  readonly #ca: string;

  constructor(readonly config: KubernetesApiConfig) {
    this.#url = new URL(config.apiServer);
    if (this.#url.protocol !== 'https:') throw new Error(`kubernetes.apiServer ${config.apiServer}: https:// only`);
    this.#ca = readFileSync(config.caFile, 'utf8');
  }

  /** One call; any transport failure, non-JSON or oversized answer is a 503. */
  #call(method: 'GET' | 'POST', path: string, payload?: unknown): Promise<ApiAnswer> {
    let bearer: string;
    try {
      bearer = readFileSync(this.config.tokenFile, 'utf8').trim();
    } catch (err) {
      return Promise.reject(unavailable(`cannot read the broker's API token (${(err as NodeJS.ErrnoException).code ?? 'error'})`));
    }
    const body = payload === undefined ? undefined : JSON.stringify(payload);
    return new Promise((resolve, reject) => {
      const req = https.request(
        new URL(path, this.#url),
        {
          method,
          ca: this.#ca,
          agent: false,
          timeout: this.config.timeoutMs,
          headers: {
            authorization: `Bearer ${bearer}`,
            accept: 'application/json',
            ...(body !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } : {}),
          },
        },
        (res) => {
          const declared = Number(res.headers['content-length'] ?? '0');
          if (declared > MAX_API_RESPONSE_BYTES) {
            req.destroy(unavailable('the API server answer is too large'));
            return;
          }
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            if (size > MAX_API_RESPONSE_BYTES) req.destroy(unavailable('the API server answer is too large'));
            else chunks.push(c);
          });
          res.on('end', () => {
            let parsed: unknown;
            try {
              parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
            } catch {
              reject(unavailable(`the API server answered HTTP ${res.statusCode ?? 0} with no JSON`));
              return;
            }
            if (!isRecord(parsed)) reject(unavailable('the API server answer is not a JSON object'));
            else resolve({ status: res.statusCode ?? 0, body: parsed });
          });
          res.on('error', (err) => reject(err instanceof BrokerError ? err : unavailable(`the API server connection failed: ${err.message}`)));
        },
      );
      req.on('timeout', () => req.destroy(unavailable(`the API server did not answer within ${this.config.timeoutMs} ms`)));
      req.on('error', (err) => reject(err instanceof BrokerError ? err : unavailable(`the API server cannot be reached: ${err.message}`)));
      req.end(body);
    });
  }

  /** TokenReview: 401 unless the API server authenticates the token as this identity's service account. */
  async review(token: string, identity: Identity, audiences: readonly string[]): Promise<void> {
    const { status, body } = await this.#call('POST', '/apis/authentication.k8s.io/v1/tokenreviews', {
      apiVersion: 'authentication.k8s.io/v1',
      kind: 'TokenReview',
      spec: { token, audiences: [...audiences] },
    });
    if (status !== 200 && status !== 201) throw unavailable(`TokenReview answered HTTP ${status}`);
    const st = body.status;
    if (!isRecord(st)) throw unavailable('TokenReview answer has no status');
    if (st.authenticated !== true) {
      const why = typeof st.error === 'string' && st.error !== '' ? `: ${st.error.slice(0, 200)}` : '';
      throw invalidToken(`the Kubernetes API server does not accept this token (its pod or service account may be gone)${why}`);
    }
    const user = st.user;
    const expected = `system:serviceaccount:${identity.claims.namespace}:${identity.claims.serviceAccount}`;
    if (!isRecord(user) || user.username !== expected) throw invalidToken('the Kubernetes API server names another user for this token');
    const extra = isRecord(user.extra) ? user.extra['authentication.kubernetes.io/pod-uid'] : undefined;
    if (identity.claims.podUid !== undefined && Array.isArray(extra) && extra.length > 0 && extra[0] !== identity.claims.podUid) {
      throw invalidToken('the Kubernetes API server binds this token to another pod');
    }
  }

  /** The pod the token is bound to, as selectors: 401 if it is gone or was replaced. */
  async podSelectors(identity: Identity): Promise<string[]> {
    const { namespace, serviceAccount, podName, podUid } = identity.claims;
    if (podName === undefined) return [];
    const { status, body } = await this.#call('GET', `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(podName)}`);
    if (status === 404) throw invalidToken(`pod ${namespace}/${podName} no longer exists`);
    if (status !== 200) throw unavailable(`reading pod ${namespace}/${podName} answered HTTP ${status}`);
    const metadata = isRecord(body.metadata) ? body.metadata : {};
    const spec = isRecord(body.spec) ? body.spec : {};
    if (podUid !== undefined && metadata.uid !== podUid) throw invalidToken(`pod ${namespace}/${podName} was replaced (another uid)`);
    if (typeof spec.serviceAccountName === 'string' && spec.serviceAccountName !== serviceAccount) {
      throw invalidToken(`pod ${namespace}/${podName} runs as another service account`);
    }
    const out: string[] = [];
    const pairs = (m: unknown, key: 'pod-label' | 'pod-annotation'): void => {
      if (!isRecord(m)) return;
      for (const [k, v] of Object.entries(m).slice(0, MAX_METADATA_ITEMS)) if (typeof v === 'string') out.push(selectorText(key, `${k}:${v}`));
    };
    pairs(metadata.labels, 'pod-label');
    pairs(metadata.annotations, 'pod-annotation');
    if (typeof spec.nodeName === 'string' && spec.nodeName !== '') out.push(selectorText('node-name', spec.nodeName));
    const images = new Set<string>();
    for (const list of [spec.containers, spec.initContainers]) {
      if (!Array.isArray(list)) continue;
      for (const c of list.slice(0, MAX_METADATA_ITEMS)) if (isRecord(c) && typeof c.image === 'string' && c.image !== '') images.add(c.image);
    }
    for (const image of images) out.push(selectorText('container-image', image));
    return out;
  }
}

interface Cached {
  readonly identity: Identity;
  readonly expiresAt: number;
}

/** The JWKS attestor's verdict, confirmed (and enriched) by the API server of the token's issuer. */
export class TokenReviewAttestor implements TokenAttestor {
  readonly #cache = new Map<string, Cached>();
  #calls = 0;

  constructor(
    private readonly inner: TokenAttestor,
    private readonly apis: ReadonlyMap<string, { readonly api: KubernetesApi; readonly audiences: readonly string[] }>,
    private readonly clock: Clock,
    private readonly maxEntries = MAX_CACHE_ENTRIES,
  ) {}

  /** The signature-checking attestor this one confirms. */
  get verifier(): TokenAttestor {
    return this.inner;
  }

  /** API server round trips so far (tests, metrics). */
  get apiCalls(): number {
    return this.#calls;
  }

  async attest(token: string): Promise<Identity> {
    const identity = await this.inner.attest(token);
    const issuer = identity.claims.issuer;
    const target = issuer !== undefined ? this.apis.get(issuer) : undefined;
    if (target === undefined) return identity;
    const now = this.clock.now();
    const key = createHash('sha256').update(token).digest('hex');
    const hit = this.#cache.get(key);
    if (hit !== undefined) {
      this.#cache.delete(key);
      if (hit.expiresAt > now) {
        this.#cache.set(key, hit); // most recently used last
        return hit.identity;
      }
    }
    let extra: string[];
    try {
      this.#calls += 1;
      await target.api.review(token, identity, target.audiences);
      extra = await target.api.podSelectors(identity);
    } catch (err) {
      if (err instanceof BrokerError && err.code === 'attestation_unavailable' && target.api.config.jwksFallback) return identity;
      throw err;
    }
    const confirmed: Identity = { ...identity, selectors: [...(identity.selectors ?? []), ...extra] };
    const expiresAt = Math.min(now + target.api.config.cacheSeconds * 1000, identity.claims.credentialExpiresAt ?? now);
    if (expiresAt > now) {
      this.#cache.set(key, { identity: confirmed, expiresAt });
      while (this.#cache.size > this.maxEntries) {
        const oldest = this.#cache.keys().next().value as string;
        this.#cache.delete(oldest);
      }
    }
    return confirmed;
  }
}
