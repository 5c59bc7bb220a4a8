/**
 * The agent's optional config file (`tessera agent --config FILE`, YAML): the same settings as the
 * flags, which win over it. One TypeBox schema gives the type and the check; an unknown or mistyped
 * setting is refused with its name.
 */
import Type, { type Static } from 'typebox';
import { Compile } from 'typebox/compile';
import { parse as parseYaml } from 'yaml';

export const FILE_NAME_LAYOUTS = ['tessera', 'spiffe-helper'] as const;
export type FileNameLayout = (typeof FILE_NAME_LAYOUTS)[number];

export const AgentConfigFileSchema = Type.Object(
  {
    broker: Type.Optional(Type.String({ minLength: 1 })),
    bundle: Type.Optional(Type.String({ minLength: 1 })),
    tokenFile: Type.Optional(Type.String({ minLength: 1 })),
    out: Type.Optional(Type.String({ minLength: 1 })),
    fileNames: Type.Optional(Type.Union(FILE_NAME_LAYOUTS.map((l) => Type.Literal(l)))),
    jwtAudiences: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { maxItems: 64 })),
    onRotate: Type.Optional(Type.String({ minLength: 1 })),
    healthPort: Type.Optional(Type.Integer({ minimum: 0, maximum: 65_535 })),
    deadline: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400 })),
    workloadApi: Type.Optional(
      Type.Object(
        {
          /** unix:///absolute/path of the socket. */
          socket: Type.String({ minLength: 1 }),
          /** Open streams, all clients together, before new ones get ResourceExhausted. */
          maxStreams: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000 })),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);

export type AgentConfigFile = Static<typeof AgentConfigFileSchema>;

const validator = Compile(AgentConfigFileSchema);

/** Parses and checks the file's text; throws Error naming the setting (`workloadApi.socket: …`). */
export function parseAgentConfig(text: string): AgentConfigFile {
  let value: unknown;
  try {
    value = parseYaml(text);
  } catch (err) {
    throw new Error(`not valid YAML: ${(err as Error).message.split('\n')[0] ?? ''}`, { cause: err });
  }
  value ??= {};
  if (validator.Check(value)) return value;
  const first = [...validator.Errors(value)].sort((a, b) => b.instancePath.length - a.instancePath.length)[0];
  if (first === undefined) throw new Error('not a valid agent config');
  const extra = (first.params as { additionalProperties?: string[] }).additionalProperties?.[0];
  const pointer = extra !== undefined ? `${first.instancePath}/${extra}` : first.instancePath;
  const name = pointer.split('/').filter((p) => p !== '').join('.') || '(top level)';
  throw new Error(`${name}: ${extra !== undefined || first.keyword === 'boolean' ? 'unknown setting' : first.message}`);
}
