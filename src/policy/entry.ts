/**
 * A registration entry as data: selectors → one SPIFFE ID, with its DNS names, TTLs and JWT audiences.
 * One TypeBox schema per shape (what an admin sends, what the store keeps, what the API shows), and the
 * checks a schema cannot say (selector rules, SPIFFE ID in our trust domain, DNS names), each a 400
 * that names the field.
 */
import Type, { type Static } from 'typebox';
import { badRequest } from '../errors.js';
import { recordParser, SafeInteger } from '../records.js';
import { parseSpiffeId, validateTrustDomain } from '../spiffe/id.js';
import { MAX_SELECTORS, parseSelectors, type Selector } from './selectors.js';

export const MAX_DNS_NAMES = 32;
export const MAX_AUDIENCES = 16;

const SelectorText = Type.String({ minLength: 1, maxLength: 1024, description: 'type:key:value, e.g. k8s:ns:shop or k8s:pod-label:app:web.' });
const DnsNames = Type.Array(Type.String({ minLength: 1, maxLength: 253 }), { maxItems: MAX_DNS_NAMES, description: 'DNS SANs of the X.509-SVID.' });
const Audiences = Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { maxItems: MAX_AUDIENCES, description: 'Audiences JWT-SVIDs may be asked for.' });
const X509Ttl = Type.Integer({ minimum: 5, maximum: 30 * 86_400, description: 'Longest X.509-SVID lifetime (s); capped by svid.x509MaxTtlSeconds.' });
const JwtTtl = Type.Integer({ minimum: 30, maximum: 86_400, description: 'Longest JWT-SVID lifetime (s); capped by svid.jwtMaxTtlSeconds.' });
const AllowBroad = Type.Boolean({ description: 'Required for selectors that name neither a namespace (k8s:ns) nor a pod uid: such an entry could match workloads in every namespace.' });
export const MAX_FEDERATES_WITH = 32;
const FederatesWith = Type.Array(Type.String({ minLength: 1, maxLength: 255 }), {
  maxItems: MAX_FEDERATES_WITH,
  description: 'Foreign trust domains (federated with this broker) whose bundles this workload receives and may trust.',
});
const SpiffeIdText = Type.String({ minLength: 1, maxLength: 2048, examples: ['spiffe://example.org/shop/web'] });

/** POST /v1/admin/entries. */
export const EntryInputSchema = Type.Object(
  {
    spiffeId: SpiffeIdText,
    // Bounded here; parseSelectors says "at most 32" with the field named.
    selectors: Type.Array(SelectorText, { maxItems: 256, description: `1 to ${MAX_SELECTORS}; an entry matches a workload that has all of them.` }),
    dnsNames: Type.Optional(DnsNames),
    jwtAudiences: Type.Optional(Audiences),
    x509TtlSeconds: Type.Optional(X509Ttl),
    jwtTtlSeconds: Type.Optional(JwtTtl),
    allowBroad: Type.Optional(AllowBroad),
    federatesWith: Type.Optional(FederatesWith),
  },
  { additionalProperties: false, title: 'RegistrationEntryRequest' },
);
export type EntryInput = Static<typeof EntryInputSchema>;

/** PATCH /v1/admin/entries/{id}: each field given replaces the stored one. */
export const EntryPatchSchema = Type.Object(
  {
    spiffeId: Type.Optional(SpiffeIdText),
    selectors: Type.Optional(Type.Array(SelectorText, { maxItems: 256 })),
    dnsNames: Type.Optional(DnsNames),
    jwtAudiences: Type.Optional(Audiences),
    x509TtlSeconds: Type.Optional(Type.Union([X509Ttl, Type.Null()], { description: 'null removes the entry TTL (the global default applies).' })),
    jwtTtlSeconds: Type.Optional(Type.Union([JwtTtl, Type.Null()])),
    allowBroad: Type.Optional(AllowBroad),
    federatesWith: Type.Optional(FederatesWith),
  },
  { additionalProperties: false, title: 'RegistrationEntryUpdate' },
);
export type EntryPatch = Static<typeof EntryPatchSchema>;

/** What the store keeps per entry (space 'registration-entry', key = id). */
const StoredEntrySchema = Type.Object({
  id: Type.String(),
  spiffeId: Type.String(),
  selectors: Type.Array(Type.String()),
  dnsNames: Type.Array(Type.String()),
  jwtAudiences: Type.Array(Type.String()),
  x509TtlSeconds: Type.Optional(Type.Integer()),
  jwtTtlSeconds: Type.Optional(Type.Integer()),
  allowBroad: Type.Boolean(),
  /** Absent in records written before federation. */
  federatesWith: Type.Optional(Type.Array(Type.String())),
  revision: SafeInteger(),
  createdAt: SafeInteger(),
  createdBy: Type.String(),
  updatedAt: SafeInteger(),
  updatedBy: Type.String(),
});
export type StoredEntry = Static<typeof StoredEntrySchema>;
export const parseStoredEntry = recordParser(StoredEntrySchema);

/** The API's view of an entry: stored ones and the config file's read-only seed alike. */
export const EntryViewSchema = Type.Object(
  {
    id: Type.String({ description: 'Assigned by the broker; config entries are config-<index>.' }),
    source: Type.Union([Type.Literal('api'), Type.Literal('config')], { description: 'config: from the config file (read-only; change the file and reload).' }),
    spiffeId: Type.String({ description: 'Config entries may hold {namespace} and {serviceAccount} placeholders.' }),
    selectors: Type.Array(Type.String()),
    dnsNames: Type.Array(Type.String()),
    jwtAudiences: Type.Array(Type.String()),
    x509TtlSeconds: Type.Optional(Type.Integer()),
    jwtTtlSeconds: Type.Optional(Type.Integer()),
    allowBroad: Type.Boolean(),
    federatesWith: Type.Array(Type.String(), { description: 'Foreign trust domains whose bundles this workload receives.' }),
    revision: Type.Integer(),
    createdAt: Type.Optional(Type.String({ format: 'date-time' })),
    createdBy: Type.Optional(Type.String()),
    updatedAt: Type.Optional(Type.String({ format: 'date-time' })),
    updatedBy: Type.Optional(Type.String()),
  },
  { title: 'RegistrationEntry' },
);
export type EntryView = Static<typeof EntryViewSchema>;

const DNS_NAME = /^(?=.{1,253}$)(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

/** The checked parts of an entry a policy needs. */
export interface CheckedEntry {
  readonly spiffeId: string;
  readonly selectors: readonly Selector[];
}

/**
 * Checks what the schema cannot: the selectors (strict, see selectors.ts), a workload SPIFFE ID in our
 * trust domain (never an admin ID), lowercase DNS names, no repeated audience. 400s name the field.
 */
export function checkEntry(e: Omit<StoredEntry, 'id' | 'revision' | 'createdAt' | 'createdBy' | 'updatedAt' | 'updatedBy'>, trustDomain: string): CheckedEntry {
  let id;
  try {
    id = parseSpiffeId(e.spiffeId);
  } catch (err) {
    throw badRequest(`spiffeId: ${(err as Error).message}`);
  }
  if (id.trustDomain !== trustDomain) throw badRequest(`spiffeId: ${e.spiffeId} is not in trust domain ${trustDomain}`);
  if (id.path === '') throw badRequest('spiffeId: a workload SPIFFE ID needs a path (e.g. spiffe://example.org/shop/web)');
  if (id.path === '/admin' || id.path.startsWith('/admin/')) throw badRequest('spiffeId: /admin/ is reserved for admin identities');
  const selectors = parseSelectors(e.selectors, e.allowBroad);
  e.dnsNames.forEach((d, i) => {
    if (!DNS_NAME.test(d)) throw badRequest(`dnsNames[${i}]: "${d}" is not a lowercase DNS name`);
  });
  if (new Set(e.dnsNames).size !== e.dnsNames.length) throw badRequest('dnsNames: a name is given twice');
  if (new Set(e.jwtAudiences).size !== e.jwtAudiences.length) throw badRequest('jwtAudiences: an audience is given twice');
  const federatesWith = e.federatesWith ?? [];
  federatesWith.forEach((td, i) => {
    try {
      validateTrustDomain(td);
    } catch (err) {
      throw badRequest(`federatesWith[${i}]: ${(err as Error).message}`);
    }
    if (td === trustDomain) throw badRequest(`federatesWith[${i}]: ${td} is this broker's own trust domain`);
  });
  if (new Set(federatesWith).size !== federatesWith.length) throw badRequest('federatesWith: a trust domain is given twice');
  return { spiffeId: id.uri, selectors };
}
