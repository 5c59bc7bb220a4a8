// What the issuer tells the minter about load: a lone issuance is `alone` (it may mint on the event
// loop, ca/idle-inline-minter.ts); overlapping ones, X.509 or JWT, are not; and the count never leaks
// when an issuance fails.
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Identity } from '../attest/identity.js';
import { Checkpointer } from '../audit/checkpointer.js';
import { AuditLog } from '../audit/log.js';
import { NoteSigner } from '../audit/note.js';
import type { JwtSvidSigner } from '../ca/jwt-svid.js';
import type { MintHint, X509MintRequest, X509Minted, X509Minter } from '../ca/minter.js';
import { systemClock } from '../clock.js';
import { BrokerError } from '../errors.js';
import { RegistrationPolicy } from '../policy/registration.js';
import { EmbeddedStore } from '../store/embedded.js';
import { Issuer } from './issuer.js';

/** Records the hint of every job; answers when the test says so (or at once). */
class RecordingMinter implements X509Minter {
  readonly hints: (MintHint | undefined)[] = [];
  hold = false;
  readonly #held: (() => void)[] = [];
  fail = false;

  async mint(req: X509MintRequest, hint?: MintHint): Promise<X509Minted> {
    this.hints.push(hint);
    if (this.hold) await new Promise<void>((r) => this.#held.push(r));
    if (this.fail) throw new BrokerError('invalid_csr', 'bad CSR');
    return {
      spiffeId: req.spiffeId,
      serialHex: '01',
      certPem: 'leaf',
      chainPem: ['leaf', 'intermediate'],
      notBefore: req.now,
      notAfter: req.now + req.ttlMs,
      keyFingerprint: `sha256:${'ab'.repeat(32)}`,
    };
  }

  release(): void {
    for (const r of this.#held.splice(0)) r();
  }

  setAuthority(): void {}
  async close(): Promise<void> {}
}

const web: Identity = { spiffeId: 'spiffe://example.org/ns/shop/sa/web', trustDomain: 'example.org', source: 'k8s-sa-token', claims: { namespace: 'shop', serviceAccount: 'web' } };
const jwtSigner: Pick<JwtSvidSigner, 'sign'> = {
  sign: async (r) => ({ token: 'a.b.c', jti: 'j', issuedAt: r.now, expiresAt: r.now + r.ttlMs }),
};

let dir: string;
let close: () => Promise<void>;
let minter: RecordingMinter;
let issuer: Issuer;

beforeEach(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'tessera-issuer-'));
  const store = await EmbeddedStore.open(dir, { fsync: false });
  const audit = await AuditLog.open(store);
  const checkpoints = await Checkpointer.start({
    store, audit, signer: new NoteSigner('example.org/tessera/audit', generateKeyPairSync('ed25519').privateKey), intervalMs: 60_000, replicaId: 'test',
  });
  close = async () => {
    await checkpoints.close();
    await store.close();
  };
  minter = new RecordingMinter();
  const policy = new RegistrationPolicy(
    'example.org',
    [{ selector: { namespace: 'shop', serviceAccount: '*' }, dnsNames: [], jwtAudiences: ['payments'], federatesWith: [] }],
    { x509DefaultTtlSeconds: 3600, x509MaxTtlSeconds: 7200, jwtDefaultTtlSeconds: 300, jwtMaxTtlSeconds: 900 },
  );
  issuer = new Issuer({ minter, jwt: jwtSigner, policy, audit, checkpoints, clock: systemClock, replicaId: 'test' });
});
afterEach(async () => {
  await close();
  rmSync(dir, { recursive: true, force: true });
});

describe('Issuer: the load hint for minting', () => {
  it('one issuance at a time is alone, every time', async () => {
    for (let i = 0; i < 3; i++) await issuer.x509(web, { csr: 'csr' }, `r${i}`);
    expect(minter.hints).toEqual([{ alone: true }, { alone: true }, { alone: true }]);
  });

  it('overlapping issuances are not alone, whether X.509 or JWT', async () => {
    // Nothing is awaited before minting (the revocation and freeze check rides on the audit append), so
    // the first call reaches the minter before the second has begun: only the second is not alone.
    await Promise.all([issuer.x509(web, { csr: 'csr' }, 'a'), issuer.x509(web, { csr: 'csr' }, 'b')]);
    expect(minter.hints).toEqual([{ alone: true }, { alone: false }]);
    minter.hints.length = 0;
    await Promise.all([issuer.jwt(web, { audience: ['payments'] }, 'j'), issuer.x509(web, { csr: 'csr' }, 'c')]);
    expect(minter.hints).toEqual([{ alone: false }]);
  });

  it('counts an issuance until its answer (receipt included), and not after it failed', async () => {
    minter.hold = true;
    const first = issuer.x509(web, { csr: 'csr' }, 'a');
    await new Promise((r) => setImmediate(r));
    const second = issuer.x509(web, { csr: 'csr' }, 'b');
    await new Promise((r) => setImmediate(r));
    minter.release();
    await new Promise((r) => setImmediate(r));
    minter.release();
    await Promise.all([first, second]);
    expect(minter.hints).toEqual([{ alone: true }, { alone: false }]);
    minter.hold = false;
    minter.fail = true;
    await expect(issuer.x509(web, { csr: 'csr' }, 'f')).rejects.toMatchObject({ code: 'invalid_csr' });
    await expect(issuer.x509(web, { csr: 'csr' }, 'g')).rejects.toMatchObject({ code: 'invalid_csr' });
    expect(minter.hints.slice(2)).toEqual([{ alone: true }, { alone: true }]);
  });
});
