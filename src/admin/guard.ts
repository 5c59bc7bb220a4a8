/**
 * The one gate every credential path calls: revocations (SPIFFE ID, namespace, certificate serial)
 * and the issuance freeze. server/auth.ts checks every caller here; the issuer checks the credential it
 * is about to mint; the secrets routes check before handing out a lease.
 */
import type { Identity } from '../attest/identity.js';
import type { AppendCondition } from '../audit/log.js';
import { BrokerError } from '../errors.js';
import { namespaceOfSpiffeId } from '../spiffe/id.js';
import { IssuanceFreeze } from './freeze.js';
import { Revocations } from './revocation.js';

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
  /**
   * What must hold for a credential for `subject` to be handed out, as a condition on its audit append
   * (AuditLog.append): no revocation of its SPIFFE ID or namespace and no freeze (global or of the
   * namespace), checked by the store in the same atomic step that records the credential — so the check
   * is at the moment of issue, and on Redis it costs no round trip of its own. A revocation (403) is
   * reported before a freeze (503). Throws at once if the CA cannot issue (`issuable`).
   */
  issuanceCondition(subject: { spiffeId: string; namespace?: string }): AppendCondition {
    this.issuable();
    const namespace = AccessGuard.#namespaceOf(subject);
    const revocation = Revocations.lookup({ spiffeIds: [subject.spiffeId], namespaces: [namespace] });
    const freeze = IssuanceFreeze.refs(namespace);
    const n = revocation.refs.length;
    return {
      unless: [...revocation.refs, ...freeze],
      refusal: (values) => {
        const r = revocation.judge(values.slice(0, n));
        if (r !== undefined) return Revocations.refusal(r);
        return IssuanceFreeze.refusal(namespace, values.slice(n)) ?? new BrokerError('internal', 'an issuance condition refused without a reason');
      },
    };
  }

  static #namespaceOf(subject: { spiffeId: string; namespace?: string }): string | undefined {
    return subject.namespace !== undefined && subject.namespace !== '' && subject.namespace !== '*'
      ? subject.namespace
      : namespaceOfSpiffeId(subject.spiffeId);
  }

  async assertMayIssue(subject: { spiffeId: string; namespace?: string }): Promise<void> {
    this.issuable();
    const namespace = AccessGuard.#namespaceOf(subject);
    // Revocations and the freeze in one store read (one Redis command); a revocation (403) is reported
    // before a freeze (503).
    const { revocation, extra } = await this.revocations.findWith({ spiffeIds: [subject.spiffeId], namespaces: [namespace] }, IssuanceFreeze.refs(namespace));
    if (revocation !== undefined) throw Revocations.refusal(revocation);
    const frozen = IssuanceFreeze.refusal(namespace, extra);
    if (frozen !== undefined) throw frozen;
  }

  /** For routes that hand out secrets: the caller was checked by authenticate(); this adds the freeze. */
  async assertNotFrozen(identity: Identity): Promise<void> {
    this.issuable();
    return this.freeze.assertNotFrozen(this.#namespaces(identity).find((n) => n !== undefined));
  }
}
