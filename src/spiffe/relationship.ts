/**
 * A federation relationship: which foreign trust domain, where its bundle endpoint is, and how that
 * endpoint authenticates (SPIFFE_Federation.md §5). One TypeBox schema for what an admin sends and one for
 * what the store keeps; `relationshipProblem` holds the rules both the config file and the admin API obey.
 */
import Type, { type Static } from 'typebox';
import { recordParser, SafeInteger } from '../records.js';
import { parseSpiffeId, validateTrustDomain } from './id.js';

export const PROFILES = ['https_web', 'https_spiffe'] as const;
export type Profile = (typeof PROFILES)[number];

const TrustDomainText = Type.String({ minLength: 1, maxLength: 255, examples: ['partner.test'] });

/** POST /v1/admin/federation. */
export const RelationshipInputSchema = Type.Object(
  {
    trustDomain: TrustDomainText,
    bundleEndpointUrl: Type.String({ minLength: 1, maxLength: 2048, examples: ['https://tessera.partner.test:8444/'] }),
    profile: Type.Union([Type.Literal('https_web'), Type.Literal('https_spiffe')]),
    endpointSpiffeId: Type.Optional(Type.String({ minLength: 1, maxLength: 2048, description: 'https_spiffe: the SPIFFE ID of the endpoint (in the foreign trust domain).' })),
    bootstrapBundle: Type.Optional(Type.String({ minLength: 1, maxLength: 256 * 1024, description: 'The foreign bundle to start from (SPIFFE bundle JSON or PEM roots); required for https_spiffe.' })),
    caPem: Type.Optional(Type.String({ minLength: 1, maxLength: 256 * 1024, description: 'https_web: roots (PEM) that verify the endpoint instead of the system CAs.' })),
    minRefreshSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400 })),
    maxRefreshSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 7 * 86_400 })),
    staleAfterSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 30 * 86_400 })),
  },
  { additionalProperties: false, title: 'FederationRequest' },
);
export type RelationshipInput = Static<typeof RelationshipInputSchema>;

/** What the store keeps per relationship added at run time (space 'federation-relationship', key = trust domain). */
const StoredRelationshipSchema = Type.Object({
  trustDomain: Type.String(),
  bundleEndpointUrl: Type.String(),
  profile: Type.Union([Type.Literal('https_web'), Type.Literal('https_spiffe')]),
  endpointSpiffeId: Type.Optional(Type.String()),
  bootstrapBundle: Type.Optional(Type.String()),
  caPem: Type.Optional(Type.String()),
  minRefreshSeconds: Type.Integer(),
  maxRefreshSeconds: Type.Integer(),
  staleAfterSeconds: Type.Integer(),
  createdAt: SafeInteger(),
  createdBy: Type.String(),
});
export type StoredRelationship = Static<typeof StoredRelationshipSchema>;
export const parseStoredRelationship = recordParser(StoredRelationshipSchema);

/** The last good bundle of a trust domain, shared by replicas (space 'federation-bundle', key = trust domain). */
const StoredBundleSchema = Type.Object({
  /** SPIFFE bundle JSON, re-serialised after parsing. */
  json: Type.String(),
  /** When it was fetched and authenticated (ms); bootstrap bundles carry 0. */
  fetchedAt: SafeInteger(),
  /** When the next fetch is due (ms). */
  nextRefreshAt: SafeInteger(),
});
export type StoredBundle = Static<typeof StoredBundleSchema>;
export const parseStoredBundle = recordParser(StoredBundleSchema);

/** A relationship in force (config or api). */
export interface Relationship {
  readonly trustDomain: string;
  readonly bundleEndpointUrl: string;
  readonly profile: Profile;
  readonly endpointSpiffeId?: string | undefined;
  /** Bootstrap bundle text (config: the file's content). */
  readonly bootstrapBundle?: string | undefined;
  readonly caPem?: string | undefined;
  readonly minRefreshSeconds: number;
  readonly maxRefreshSeconds: number;
  readonly staleAfterSeconds: number;
  readonly source: 'config' | 'api';
  readonly createdAt?: number;
  readonly createdBy?: string;
}

/** The rules of a relationship; returns "<field>: <problem>" or undefined. */
export function relationshipProblem(r: {
  readonly trustDomain: string;
  readonly bundleEndpointUrl: string;
  readonly profile: string;
  readonly endpointSpiffeId?: string | undefined;
  readonly minRefreshSeconds?: number | undefined;
  readonly maxRefreshSeconds?: number | undefined;
  readonly ownTrustDomain: string;
  readonly hasBootstrap: boolean;
  readonly caPem?: string | undefined;
  readonly caFile?: string | undefined;
}): string | undefined {
  try {
    validateTrustDomain(r.trustDomain);
  } catch (err) {
    return `trustDomain: ${(err as Error).message}`;
  }
  if (r.trustDomain === r.ownTrustDomain) return `trustDomain: ${r.trustDomain} is this broker's own trust domain`;
  let url: URL;
  try {
    url = new URL(r.bundleEndpointUrl);
  } catch {
    return 'bundleEndpointUrl: not a URL';
  }
  if (url.protocol !== 'https:') return 'bundleEndpointUrl: must be https://';
  if (url.username !== '' || url.password !== '') return 'bundleEndpointUrl: may not carry credentials';
  if (r.profile === 'https_spiffe') {
    if (r.endpointSpiffeId === undefined) return 'endpointSpiffeId: required for profile https_spiffe';
    let id;
    try {
      id = parseSpiffeId(r.endpointSpiffeId);
    } catch (err) {
      return `endpointSpiffeId: ${(err as Error).message}`;
    }
    if (id.trustDomain !== r.trustDomain) return `endpointSpiffeId: must be in trust domain ${r.trustDomain}`;
    if (!r.hasBootstrap) return 'bootstrapBundleFile: required for profile https_spiffe (the first fetch is authenticated with it)';
    if (r.caPem !== undefined || r.caFile !== undefined) return 'caFile: only used with profile https_web';
  } else if (r.profile === 'https_web') {
    if (r.endpointSpiffeId !== undefined) return 'endpointSpiffeId: only used with profile https_spiffe';
  } else {
    return 'profile: expected https_web or https_spiffe';
  }
  if (r.minRefreshSeconds !== undefined && r.maxRefreshSeconds !== undefined && r.minRefreshSeconds > r.maxRefreshSeconds) {
    return 'minRefreshSeconds: exceeds maxRefreshSeconds';
  }
  return undefined;
}
