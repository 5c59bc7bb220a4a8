/** GET /healthz: the process answers. GET /readyz: the store and audit log take writes and the CA is in date. */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import { type CaExpiry, describeCaExpiry } from '../../ca/expiry.js';
import { BrokerError } from '../../errors.js';
import { described, ErrorBody, StringEnum } from '../schemas.js';

const Health = Type.Object({ status: StringEnum(['ok']) }, { title: 'Health' });

const DeviceLag = Type.Object(
  {
    name: Type.String(),
    type: StringEnum(['file', 'syslog', 'socket']),
    required: Type.Boolean(),
    shipping: Type.Boolean({ description: 'This replica holds the device lease and ships it.' }),
    position: Type.Integer({ minimum: 0, description: 'Stored position: entries [0, position) were delivered.' }),
    lagEntries: Type.Integer({ minimum: 0 }),
    lagSeconds: Type.Integer({ minimum: 0 }),
  },
  { title: 'AuditDeviceLag' },
);

const Ready = Type.Object(
  {
    status: StringEnum(['ready', 'degraded'], {
      description: 'degraded: a secrets engine cannot reach its backend (checks "engine:<name>" says why); everything else, other engines included, serves.',
    }),
    checks: Type.Object({}, { additionalProperties: Type.String() }),
    devices: Type.Array(DeviceLag, { description: 'Each audit device and how far behind the log it is.' }),
  },
  { title: 'Ready' },
);

export interface DeviceLagSource {
  status(): readonly { name: string; type: 'file' | 'syslog' | 'socket'; required: boolean; shipping: boolean; position: number; lagEntries: number; lagSeconds: number }[];
  /** Throws while a required device is beyond its bounds. */
  assertCaughtUp(): void;
}

export interface HealthOptions {
  readonly store: { checkWritable(): Promise<void> };
  readonly audit: { checkWritable(): Promise<void> };
  /** Where the signing CA stands against its expiry (ca/expiry.ts): expiring is still ready, expired is not. */
  readonly caExpiry: () => CaExpiry;
  /** Secrets engines' health by name: a failing engine makes the broker degraded, not unready. */
  readonly engines?: { health(now?: number): Promise<Record<string, { ok: boolean; error?: string }>> };
  readonly devices?: DeviceLagSource;
}

export const healthRoutes: FastifyPluginAsyncTypebox<HealthOptions> = async (app, { store, audit, caExpiry, engines, devices }) => {
  app.get(
    '/healthz',
    { schema: { operationId: 'getHealth', summary: 'Liveness — the process answers.', response: { 200: described('Up.', Health) } } },
    async () => ({ status: 'ok' as const }),
  );
  app.get(
    '/readyz',
    {
      schema: {
        operationId: 'getReadiness',
        summary: 'Readiness — store and audit log take durable writes, the signing CA is in date, and no required audit device lags; lists each audit device and its lag.',
        response: { 200: described('Ready.', Ready), 503: described('Not ready; the message names the failing check.', ErrorBody) },
      },
    },
    async () => {
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
    await check('store', () => store.checkWritable());
    await check('audit', () => audit.checkWritable());
    await check('ca', () => {
      const ca = caExpiry();
      if (ca.state === 'expired') throw new BrokerError('not_ready', describeCaExpiry(ca));
    });
    const lags = (devices?.status() ?? []).map(({ name, type, required, shipping, position, lagEntries, lagSeconds }) => ({ name, type, required, shipping, position, lagEntries, lagSeconds }));
    for (const d of lags) checks[`device:${d.name}`] = `${d.lagEntries} entries / ${d.lagSeconds} s behind`;
    if (devices !== undefined) await check('devices', () => devices.assertCaughtUp());
    const ca = caExpiry();
    if (ready && ca.state === 'expiring') checks.ca = `expiring: ${describeCaExpiry(ca)}`;
    if (!ready) {
      throw new BrokerError('not_ready', `not ready: ${Object.entries(checks).map(([k, v]) => `${k}: ${v}`).join('; ')}`);
    }
    let degraded = false;
    for (const [name, h] of Object.entries((await engines?.health()) ?? {})) {
      checks[`engine:${name}`] = h.ok ? 'ok' : (h.error ?? 'failed');
      degraded ||= !h.ok;
    }
    return { status: degraded ? ('degraded' as const) : ('ready' as const), checks, devices: lags };
    },
  );
};
