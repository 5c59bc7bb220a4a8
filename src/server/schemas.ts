/** JSON schemas shared by several routes (response serialization is schema-driven for speed). */
export const errorBodySchema = {
  type: 'object',
  required: ['error', 'message'],
  properties: { error: { type: 'string' }, message: { type: 'string' } },
} as const;

export const errorResponses = { '4xx': errorBodySchema, '5xx': errorBodySchema } as const;

export const auditReceiptSchema = {
  type: 'object',
  required: ['index', 'treeSize', 'rootHash', 'leafHash', 'inclusionProof', 'checkpoint'],
  properties: {
    index: { type: 'integer' },
    treeSize: { type: 'integer' },
    rootHash: { type: 'string' },
    leafHash: { type: 'string' },
    inclusionProof: { type: 'array', items: { type: 'string' } },
    /** The signed checkpoint note (C2SP tlog-checkpoint) of size treeSize the proof is against. */
    checkpoint: { type: 'string' },
  },
} as const;
