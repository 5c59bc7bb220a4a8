/**
 * The one gate every credential path calls: revocations (SPIFFE ID, namespace, certificate serial)
 * and the issuance freeze. server/auth.ts checks every caller here; the issuer checks the credential it
 * is about to mint; the secrets routes check before handing out a lease.
 */
import type { Identity } from '../attest/identity.js';
import { namespaceOfSpiffeId } from '../spiffe/id.js';
import type { IssuanceFreeze } from './freeze.js';
import type { Revocations } from './revocation.js';

// Parsed by the SPIFFE ID parser; re-exported for broker.ts and the admin routes, which import it from here.
export { namespaceOfSpiffeId };

export class AccessGuard {
  /**
   * `namespaceOf` asks the registration policy which namespace an identity belongs to (an SVID with a
   * custom spiffePath carries none in its ID); undefined when it cannot tell.
   */
  constructor(
    readonly revocations: Revocations,
    readonly freeze: IssuanceFreeze,
    private readonly namespaceOf: (identity: Identity) => string | undefined = () => undefined,
    /** Throws (503) while nothing may be issued at all: a required audit device lags (audit/devices/devices.ts). */
    private readonly issuable: () => void = () => {},
  ) {}

  #namespaces(identity: Identity): (string | undefined)[] {
    const fromClaims = identity.claims.namespace !== '' ? identity.claims.namespace : undefined;
    const fromId = namespaceOfSpiffeId(identity.spiffeId);
    return [fromClaims, fromId, fromClaims === undefined && fromId === undefined ? this.namespaceOf(identity) : undefined];
  }

  /** A caller (token or mTLS): refused (403 `revoked`) if its ID, namespace or presented serial is revoked. */
  assertCallerAllowed(identity: Identity): Promise<void> {
    return this.revocations.assertNotRevoked({
      spiffeIds: [identity.spiffeId],
      namespaces: this.#namespaces(identity),
      serials: [identity.claims.presentedSerial],
    });
  }

  /**
   * A credential about to be issued for `spiffeId` (which may differ from the caller's ID when a
   * registration entry sets spiffePath): refused if revoked (403) or if issuance is frozen (503).
   */
  async assertMayIssue(subject: { spiffeId: string; namespace?: string }): Promise<void> {
    this.issuable();
    const namespace = subject.namespace !== undefined && subject.namespace !== '' && subject.namespace !== '*'
      ? subject.namespace
      : namespaceOfSpiffeId(subject.spiffeId);
    const revoked = this.revocations.assertNotRevoked({ spiffeIds: [subject.spiffeId], namespaces: [namespace] });
    const frozen = this.freeze.assertNotFrozen(namespace);
    // Both reads go out together; a revocation (403) is reported before a freeze (503).
    const [r, f] = await Promise.allSettled([revoked, frozen]);
    if (r.status === 'rejected') throw r.reason;
    if (f.status === 'rejected') throw f.reason;
  }

  /** For routes that hand out secrets: the caller was checked by authenticate(); this adds the freeze. */
  async assertNotFrozen(identity: Identity): Promise<void> {
    this.issuable();
    return this.freeze.assertNotFrozen(this.#namespaces(identity).find((n) => n !== undefined));
  }
}
