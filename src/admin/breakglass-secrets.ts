/**
 * Break-glass secret grants, through the secrets module: the secret is read (decrypted, integrity
 * checked) and handed out under a lease held by the break-glass ID, bypassing the workload grants —
 * which is the point of break-glass, and why the use is audited as critical and alerted.
 */
import { BrokerError } from '../errors.js';
import { EnvelopeError } from '../secrets/envelope.js';
import type { SecretsService } from '../secrets/service.js';
import type { BreakGlassSecrets } from './breakglass.js';

export function breakGlassSecrets(secrets: SecretsService): BreakGlassSecrets {
  return {
    async issue(name, holder, ttlMs) {
      let value: Buffer | undefined;
      try {
        value = await secrets.kv.get(name);
      } catch (err) {
        if (!(err instanceof EnvelopeError)) throw err;
        if (err.reason === 'unknown-kek') throw new BrokerError('kek_unavailable', err.message, { cause: err });
        throw new BrokerError('secret_integrity_failed', `secret "${name}" failed its integrity check and is not served`, { cause: err });
      }
      if (value === undefined) throw new BrokerError('not_found', `no secret named "${name}"`);
      try {
        const lease = await secrets.leases.create({ kind: 'kv', identity: holder, secret: name, ttlMs, maxTtlMs: ttlMs });
        return { value, leaseId: lease.id, expiresAt: lease.expiresAt };
      } catch (err) {
        value.fill(0);
        throw err;
      }
    },
    discard: (leaseId) => secrets.leases.discard(leaseId),
  };
}
