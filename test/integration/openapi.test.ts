/**
 * openapi.yaml is the contract, generated from the route schemas (`npm run openapi`): the committed file
 * is what the code generates, every route the server registers is in the spec and the reverse, and
 * real responses (success and error) validate against the spec's schemas.
 */
import { readFileSync } from 'node:fs';
import { Ajv, type ValidateFunction } from 'ajv';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_STATUS } from '../../src/errors.js';
import { buildServer } from '../../src/server/app.js';
import { generateOpenapi } from '../../src/server/openapi.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { opensslKeyAndCsr } from '../helpers/openssl.js';

interface Spec {
  paths: Record<string, Record<string, { operationId?: string; responses: Record<string, { $ref?: string; content?: Record<string, { schema: unknown }> }> }>>;
  components: { schemas: Record<string, unknown>; responses: Record<string, { content?: Record<string, { schema: unknown }> }> };
}

const committed = readFileSync(new URL('../../openapi.yaml', import.meta.url), 'utf8');
const spec = parse(committed) as Spec;
const ajv = new Ajv({ strict: false, validateFormats: false });
ajv.addSchema({ components: spec.components }, 'openapi');

function schemaFor(path: string, method: string, status: number): ValidateFunction {
  const op = spec.paths[path]?.[method.toLowerCase()];
  if (op === undefined) throw new Error(`spec has no ${method} ${path}`);
  let response = op.responses[String(status)];
  if (response === undefined) throw new Error(`spec has no ${status} for ${method} ${path}`);
  if (response.$ref !== undefined) {
    const shared = spec.components.responses[response.$ref.split('/').pop() as string];
    if (shared === undefined) throw new Error(`spec has no shared response ${response.$ref}`);
    response = shared;
  }
  const schema = Object.values(response.content ?? {})[0]?.schema;
  const rewritten = JSON.parse(JSON.stringify(schema ?? {}).replaceAll('"#/components/', '"openapi#/components/')) as object;
  return ajv.compile(rewritten);
}

describe('generation', () => {
  it('the committed openapi.yaml is what the route schemas generate', async () => {
    expect(committed, 'openapi.yaml differs from the route schemas: run `npm run openapi` and commit it').toBe(await generateOpenapi());
  });
});

describe('error codes', () => {
  it('the spec lists exactly the codes the broker can answer with', () => {
    const listed = (spec.components.schemas.Error as { properties: { error: { enum: string[] } } }).properties.error.enum;
    expect([...listed].sort()).toEqual(Object.keys(ERROR_STATUS).sort());
  });
});

let b: TestBroker;
beforeAll(async () => {
  b = await startBroker();
});
afterAll(async () => {
  await b?.close();
});

describe('openapi.yaml', () => {
  it('lists exactly the routes the server registers', () => {
    const served = new Set(b.routes.filter((r) => r.method !== 'HEAD').map((r) => `${r.method} ${r.url}`));
    const documented = new Set(
      Object.entries(spec.paths).flatMap(([path, ops]) => {
        // A path whose last parameter spans segments (a secret name "a/b/c") is served by a fastify
        // wildcard route, named in the spec's `x-fastify-url` extension.
        const route = (ops as { 'x-fastify-url'?: string })['x-fastify-url'] ?? path.replace(/\{(\w+)\}/g, ':$1');
        return Object.keys(ops).filter((m) => !m.startsWith('x-')).map((m) => `${m.toUpperCase()} ${route}`);
      }),
    );
    expect([...served].sort()).toEqual([...documented].sort());
  });

  it('names every operation by the operationId of its route', async () => {
    const routed: Record<string, string | undefined> = {};
    const app = await buildServer(b.broker, {
      logger: false,
      onRoute: (method, url, operationId) => {
        if (method !== 'HEAD') routed[`${method} ${url}`] = operationId;
      },
    });
    await app.ready();
    await app.close();
    const documented = Object.fromEntries(
      Object.entries(spec.paths).flatMap(([path, ops]) => {
        const route = (ops as { 'x-fastify-url'?: string })['x-fastify-url'] ?? path.replace(/\{(\w+)\}/g, ':$1');
        return Object.entries(ops)
          .filter(([m]) => !m.startsWith('x-'))
          .map(([m, op]) => [`${m.toUpperCase()} ${route}`, op.operationId]);
      }),
    );
    expect(Object.values(routed).every((id) => id !== undefined)).toBe(true);
    expect(routed).toEqual(documented);
  });

  it('matches real responses, success and error', async () => {
    const token = await b.token();
    const cases: { path: string; method: string; res: Awaited<ReturnType<TestBroker['call']>> }[] = [
      { path: '/v1/svid/x509', method: 'POST', res: await b.call({ path: '/v1/svid/x509', token, body: { csr: opensslKeyAndCsr('ec-p256').csrPem } }) },
      { path: '/v1/svid/x509', method: 'POST', res: await b.call({ path: '/v1/svid/x509', token, body: { keyType: 'ec-p256' } }) },
      { path: '/v1/svid/x509', method: 'POST', res: await b.call({ path: '/v1/svid/x509', body: { keyType: 'ec-p256' } }) },
      { path: '/v1/svid/x509', method: 'POST', res: await b.call({ path: '/v1/svid/x509', token, body: { csr: 'nope' } }) },
      { path: '/v1/svid/jwt', method: 'POST', res: await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } }) },
      { path: '/v1/svid/jwt', method: 'POST', res: await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['bank'] } }) },
      { path: '/v1/bundle', method: 'GET', res: await b.call({ path: '/v1/bundle' }) },
      { path: '/healthz', method: 'GET', res: await b.call({ path: '/healthz' }) },
      { path: '/readyz', method: 'GET', res: await b.call({ path: '/readyz' }) },
    ];
    expect(cases.map((c) => c.res.status)).toEqual([200, 200, 401, 400, 200, 403, 200, 200, 200]);
    for (const c of cases) {
      const validate = schemaFor(c.path, c.method, c.res.status);
      expect(validate(c.res.json), `${c.method} ${c.path} ${c.res.status}: ${ajv.errorsText(validate.errors)}`).toBe(true);
    }
  });
});
