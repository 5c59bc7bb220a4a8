/**
 * Generates openapi.yaml from the route schemas (`npm run openapi`; a test fails when the committed file
 * differs). Not loaded by the broker: @fastify/swagger is a dev dependency and only this module imports it.
 * Here: the document-level parts (info, servers, security schemes, shared error responses) and the few
 * rules that turn fastify's route table into the spec's shape.
 */
import { readFileSync } from 'node:fs';
import swagger, { type FastifyDynamicSwaggerOptions } from '@fastify/swagger';
import Fastify from 'fastify';
import { stringify } from 'yaml';
import type { Broker } from '../broker.js';
import { registerRoutes } from './app.js';
import type { AuthRequirement } from './auth.js';
import { ErrorBody, SHARED_ERRORS } from './schemas.js';
import { emptyBodyIsObject } from './routes/secrets.js';

type Json = Record<string, unknown>;

const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const info = {
  title: 'Tessera broker API',
  version,
  license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
  description: `Tessera is a short-lived credential broker. Workloads authenticate with a Kubernetes
service-account token (\`Authorization: Bearer\`) or, to renew, with their current X.509-SVID as
the TLS client certificate. Every issuance and every refusal is appended to the audit log before
the response is sent; if the audit log cannot record it, the answer is 503 and nothing is issued.

Every error has the body \`{ "error": "<stable code>", "message": "<human text>" }\`.
`,
};

const securitySchemes = {
  serviceAccountToken: {
    type: 'http',
    scheme: 'bearer',
    bearerFormat: 'JWT',
    description: 'Kubernetes projected service-account token (RS256 or ES256) with audience `tessera`.',
  },
  svid: { type: 'mutualTLS', description: 'An X.509-SVID issued by this broker, presented as the TLS client certificate.' },
  adminCertificate: {
    type: 'mutualTLS',
    description: `An admin client certificate from the separate admin CA (config admin.caBundleFile) whose URI SAN
(e.g. spiffe://example.org/admin/alice) is listed in admin.principals with roles, or a live
break-glass certificate. A workload SVID is never accepted on admin routes, nor an admin
certificate on workload routes.
`,
  },
} as const;

type Security = Record<string, readonly string[]>[];

const WORKLOAD: Security = [{ serviceAccountToken: [] }, { svid: [] }];

/** What a caller presents, from the route's `config.auth` (the one thing the auth hook reads). */
function securityOf(auth: AuthRequirement | undefined): Security {
  if (auth === undefined) return [];
  if (auth === 'workload') return WORKLOAD;
  if (auth === 'auditor-or-workload') return [{ adminCertificate: [] }, ...WORKLOAD];
  return [{ adminCertificate: [] }];
}

/** components.responses: the shared refusals, each an Error body. */
const sharedResponses = Object.fromEntries(
  Object.entries(SHARED_ERRORS).map(([name, { status: _status, ...response }]) => [
    name,
    { ...response, content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
  ]),
);

const isObject = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value);

/** Every schema with a `title` becomes the component of that name (the same title must mean the same schema). */
function hoistTitled(node: unknown, schemas: Json): unknown {
  if (Array.isArray(node)) return node.map((item) => hoistTitled(item, schemas));
  if (!isObject(node)) return node;
  const out = Object.fromEntries(Object.entries(node).map(([key, value]) => [key, hoistTitled(value, schemas)]));
  const { title, ...schema } = out;
  if (typeof title !== 'string') return out;
  const known = schemas[title];
  if (known !== undefined && JSON.stringify(known) !== JSON.stringify(schema)) throw new Error(`two different schemas are titled ${title}`);
  schemas[title] = schema;
  return { $ref: `#/components/schemas/${title}` };
}

interface Operation {
  requestBody?: { required?: boolean; description?: string };
  responses: Record<string, Json>;
}

/** One response: a shared refusal by reference; otherwise its description only on the response. */
function finishResponse(status: string, response: Json): Json {
  const shared = Object.entries(SHARED_ERRORS).find(([, e]) => String(e.status) === status && e.description === response.description);
  if (shared !== undefined) return { $ref: `#/components/responses/${shared[0]}` };
  for (const media of Object.values((response.content ?? {}) as Record<string, Json>)) {
    if (isObject(media.schema) && media.schema.description === response.description) delete media.schema.description;
  }
  return response;
}

export async function generateOpenapi(): Promise<string> {
  const app = Fastify({ logger: false });
  /** Wildcard routes (a secret name "a/b/c"): spec path → fastify url (the `x-fastify-url` extension). */
  const wildcards = new Map<string, string>();
  const optionalBodies = new Set<string>();
  const options: FastifyDynamicSwaggerOptions = {
    // openapi-types lacks OpenAPI 3.1's mutualTLS scheme.
    openapi: { openapi: '3.1.0', info, servers: [{ url: 'https://127.0.0.1:8443' }], components: { securitySchemes } } as unknown as NonNullable<FastifyDynamicSwaggerOptions['openapi']>,
    transform: ({ schema, url, route }) => {
      const documented = { ...schema, security: securityOf(route.config?.auth) };
      if (route.preValidation === emptyBodyIsObject) optionalBodies.add(`${String(route.method).toLowerCase()} ${url.replace(/:(\w+)/g, '{$1}')}`);
      if (!url.endsWith('/*')) return { schema: documented, url };
      const prefix = url.slice(0, -1);
      wildcards.set(`${prefix}{name}`, url);
      const params = schema.params as { properties: Record<string, unknown> };
      return { schema: { ...documented, params: { type: 'object', properties: { name: params.properties['*'] }, required: ['name'] } }, url: `${prefix}:name` };
    },
    transformObject: (documentObject) => {
      const doc = (documentObject as unknown as { openapiObject: Json & { paths: Record<string, Record<string, unknown>>; components: Json } }).openapiObject;
      for (const [path, ops] of Object.entries(doc.paths)) {
        for (const [method, op] of Object.entries(ops as Record<string, Operation>)) {
          // The catch-all 4xx/5xx serializers of every route are not part of the contract.
          op.responses = Object.fromEntries(
            Object.entries(op.responses).filter(([status]) => /^\d+$/.test(status)).map(([status, r]) => [status, finishResponse(status, r)]),
          );
          if (op.requestBody !== undefined) {
            delete op.requestBody.description; // swagger copies the body schema's own description here
            if (optionalBodies.has(`${method} ${path}`)) op.requestBody.required = false;
          }
        }
        const fastifyUrl = wildcards.get(path);
        if (fastifyUrl !== undefined) doc.paths[path] = { 'x-fastify-url': fastifyUrl, ...ops };
      }
      const schemas: Json = {};
      hoistTitled(ErrorBody, schemas); // what the shared responses refer to
      const paths = hoistTitled(doc.paths, schemas);
      const { openapi, servers } = doc;
      return { openapi, info: doc.info, servers, components: { ...doc.components, schemas, responses: sharedResponses }, paths } as ReturnType<NonNullable<FastifyDynamicSwaggerOptions['transformObject']>>;
    },
  };
  await app.register(swagger, options);
  // Registering the routes runs none of their handlers: every part of the broker can be inert.
  await registerRoutes(app, inert() as Broker);
  await app.ready();
  const document = app.swagger();
  await app.close();
  // Long lines stay whole, multi-line descriptions are literal blocks: the file reads like the prose.
  return stringify(document, { lineWidth: 0, aliasDuplicateObjects: false });
}

/** An object whose every property is another such object; not a thenable, and '' as a string. */
function inert(): unknown {
  const toString = (): string => '';
  const proxy: object = new Proxy({}, {
    get: (_target, key) => (key === Symbol.toPrimitive ? toString : key === 'then' || key === 'toJSON' ? undefined : proxy),
  });
  return proxy;
}
