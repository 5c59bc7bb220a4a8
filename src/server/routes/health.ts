/** GET /healthz: the process answers. GET /readyz: the store and audit log take writes and the CA is in date. */
import type { FastifyInstance } from 'fastify';
import type { Broker } from '../../broker.js';
import { BrokerError } from '../../errors.js';

export function healthRoutes(app: FastifyInstance, broker: Broker): void {
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async () => {
    const checks: Record<string, string> = {};
    let ready = true;
    const check = async (name: string, probe: () => Promise<void> | void): Promise<void> => {
      try {
        await probe();
        checks[name] = 'ok';
      } catch (err) {
        ready = false;
        checks[name] = err instanceof BrokerError ? err.message : 'failed';
      }
    };
    await check('store', () => broker.store.checkWritable());
    await check('audit', () => broker.audit.checkWritable());
    await check('ca', () => {
      if (broker.ca.signingCertNotAfter <= broker.clock.now()) throw new BrokerError('not_ready', 'the signing CA has expired');
    });
    if (!ready) {
      throw new BrokerError('not_ready', `not ready: ${Object.entries(checks).map(([k, v]) => `${k}: ${v}`).join('; ')}`);
    }
    return { status: 'ready', checks };
  });
}
