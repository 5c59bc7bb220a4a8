/**
 * Dynamic RabbitMQ users, through the management HTTP API. For each request the engine creates
 *
 *   PUT /api/users/<prefix><role>_<16 hex>           {password, tags}
 *   PUT /api/permissions/<vhost>/<user>              {configure, write, read}   (per vhost of the role)
 *
 * User names and vhosts only ever reach a URL path through encodeURIComponent, and bodies are JSON;
 * vhost names, permission regexes and tags are checked at config load (rabbitRoleProblem: no
 * "administrator" tag, regexes that compile, bounded). Revoking deletes the user (no new logins),
 * then closes every connection it still has (DELETE /api/connections/<name>). A user already gone is
 * success. The admin user needs the "administrator" tag.
 *
 * Errors: the API unreachable, timing out, 5xx, or refusing the admin (401: a rotated password) →
 * engine_unavailable (503). A revoke refused with 403 → revoke_failed (502).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { RabbitmqEngineConfig, RabbitmqRoleConfig } from '../config/config.js';
import { BrokerError } from '../errors.js';
import type { AdminPasswordSource, EngineCredential, EngineLeases, SecretEngine } from './engine.js';
import type { Lease } from './leases.js';
import { randomPassword } from './postgres.js';

export const RABBIT_TAGS: ReadonlySet<string> = new Set(['management', 'monitoring', 'policymaker']);
const VHOST = /^[A-Za-z0-9/_.-]{1,64}$/;

/** Why a role's vhosts / permissions / tags are unusable (with the field), or undefined. */
export function rabbitRoleProblem(role: Pick<RabbitmqRoleConfig, 'vhosts' | 'tags'>): { field: string; problem: string } | undefined {
  for (const t of role.tags) if (!RABBIT_TAGS.has(t)) return { field: 'tags', problem: `"${t}" is not one of ${[...RABBIT_TAGS].join(', ')}` };
  const vhosts = Object.entries(role.vhosts);
  if (vhosts.length === 0) return { field: 'vhosts', problem: 'name at least one vhost' };
  for (const [vhost, p] of vhosts) {
    // "." and ".." would be dot-segments of the API path (URL normalization), whatever the encoding.
    if (!VHOST.test(vhost) || vhost === '.' || vhost.includes('..')) {
      return { field: `vhosts["${vhost.slice(0, 64)}"]`, problem: 'a vhost is 1-64 of A-Z a-z 0-9 / _ . - (not "." and no "..")' };
    }
    for (const k of ['configure', 'write', 'read'] as const) {
      const re = p[k];
      // eslint-disable-next-line no-control-regex
      if (re.length > 256 || /[\u0000-\u001f]/.test(re)) return { field: `vhosts["${vhost}"].${k}`, problem: 'at most 256 printable characters' };
      try {
        new RegExp(re);
      } catch {
        return { field: `vhosts["${vhost}"].${k}`, problem: 'not a valid regular expression' };
      }
    }
  }
  return undefined;
}

export class RabbitmqEngine implements SecretEngine {
  readonly kind = 'rabbitmq' as const;
  readonly name: string;
  readonly #config: RabbitmqEngineConfig;
  readonly #leases: EngineLeases;
  readonly #usernamePattern: RegExp;
  readonly #base: string;
  readonly #admin: string;
  readonly #configPassword: string;
  readonly #source: AdminPasswordSource | undefined;

  constructor(config: RabbitmqEngineConfig, leases: EngineLeases, opts: { adminPassword?: AdminPasswordSource } = {}) {
    this.name = config.name;
    this.#config = config;
    this.#leases = leases;
    this.#source = opts.adminPassword;
    const u = new URL(config.url);
    this.#configPassword = config.passwordFile !== undefined ? readFileSync(config.passwordFile, 'utf8').replace(/\r?\n$/, '') : decodeURIComponent(u.password);
    this.#admin = decodeURIComponent(u.username);
    this.#base = `${u.protocol}//${u.host}${u.pathname.replace(/\/$/, '')}/api`;
    this.#usernamePattern = new RegExp(`^${config.usernamePrefix}[a-z][a-z0-9_]{0,30}_[0-9a-f]{16}$`);
  }

  role(role: string): RabbitmqRoleConfig | undefined {
    return Object.hasOwn(this.#config.roles, role) ? this.#config.roles[role] : undefined;
  }

  #checkUsername(username: string): string {
    if (!this.#usernamePattern.test(username)) {
      throw new BrokerError('bad_request', `"${username}" is not a user engine ${this.name} created; refusing to touch it`);
    }
    return username;
  }

  /** One management API call; `path` segments must already be encoded. Resolves the status (and JSON body). */
  async #call(action: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
    let res: Response;
    try {
      // The admin password in force now: a rotated one from the store, else the config's.
      const password = (this.#source !== undefined ? await this.#source() : undefined) ?? this.#configPassword;
      const auth = `Basic ${Buffer.from(`${this.#admin}:${password}`).toString('base64')}`;
      res = await fetch(`${this.#base}${path}`, {
        method,
        headers: { authorization: auth, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), 'x-reason': 'tessera lease revoked' },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(this.#config.connectTimeoutMs * 2),
        redirect: 'error',
      });
    } catch (err) {
      if (err instanceof BrokerError) throw err;
      const code = (err as { cause?: { code?: string } }).cause?.code;
      throw new BrokerError('engine_unavailable', `RabbitMQ engine "${this.name}" could not ${action}${typeof code === 'string' && /^E[A-Z]+$/.test(code) ? ` (${code})` : ''}`, { cause: err });
    }
    const text = await res.text().catch(() => '');
    let json: unknown;
    try {
      json = text === '' ? undefined : JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (res.status === 401 || res.status >= 500) {
      throw new BrokerError('engine_unavailable', `RabbitMQ engine "${this.name}" could not ${action} (HTTP ${res.status})`);
    }
    return { status: res.status, json };
  }

  #ok(action: string, r: { status: number }, also: readonly number[] = []): void {
    if ((r.status >= 200 && r.status < 300) || also.includes(r.status)) return;
    if (r.status === 403) throw new BrokerError('revoke_failed', `RabbitMQ engine "${this.name}" was refused to ${action} (HTTP 403); the admin user needs the administrator tag`);
    throw new BrokerError('engine_unavailable', `RabbitMQ engine "${this.name}" could not ${action} (HTTP ${r.status})`);
  }

  async issue(role: string, identity: string, ttlSeconds: number): Promise<{ credential: EngineCredential; lease: Lease }> {
    const cfg = this.role(role);
    if (cfg === undefined) throw new BrokerError('not_found', `engine ${this.name} has no role ${role}`);
    const credential = { username: this.#checkUsername(`${this.#config.usernamePrefix}${role}_${randomBytes(8).toString('hex')}`), password: randomPassword() };
    const lease = await this.#leases.create({
      kind: 'rabbitmq',
      identity,
      secret: `rabbitmq/${role}`,
      engine: this.name,
      role,
      username: credential.username,
      ttlMs: ttlSeconds * 1000,
      maxTtlMs: cfg.maxTtlSeconds * 1000,
    });
    const user = encodeURIComponent(credential.username);
    try {
      this.#ok('create a user', await this.#call('create a user', 'PUT', `/users/${user}`, { password: credential.password, tags: cfg.tags.join(',') }));
      try {
        for (const [vhost, p] of Object.entries(cfg.vhosts)) {
          const r = await this.#call('set permissions', 'PUT', `/permissions/${encodeURIComponent(vhost)}/${user}`, { configure: p.configure, write: p.write, read: p.read });
          this.#ok(`set permissions on vhost ${vhost}`, r);
        }
      } catch (err) {
        await this.#call('delete a user', 'DELETE', `/users/${user}`).catch(() => undefined);
        throw err;
      }
    } catch (err) {
      await this.#leases.discard(lease.id);
      if (err instanceof BrokerError && err.code === 'revoke_failed') throw new BrokerError('engine_unavailable', err.message);
      throw err;
    }
    return { credential, lease };
  }

  /** RabbitMQ users have no expiry of their own; the user must still exist (404 if not). */
  async renew(lease: Lease): Promise<void> {
    const username = this.#checkUsername(lease.username ?? '');
    const r = await this.#call('renew a user', 'GET', `/users/${encodeURIComponent(username)}`);
    if (r.status === 404) throw new BrokerError('not_found', `user ${username} no longer exists`);
    this.#ok('renew a user', r);
  }

  async revoke(lease: Lease): Promise<void> {
    const username = this.#checkUsername(lease.username ?? '');
    this.#ok(`delete user ${username}`, await this.#call(`delete user ${username}`, 'DELETE', `/users/${encodeURIComponent(username)}`), [404]);
    const list = await this.#call('list connections', 'GET', '/connections?columns=name,user');
    this.#ok('list connections', list);
    const conns = Array.isArray(list.json) ? (list.json as { name?: unknown; user?: unknown }[]) : [];
    for (const c of conns) {
      if (c.user !== username || typeof c.name !== 'string') continue;
      this.#ok(`close a connection of ${username}`, await this.#call('close a connection', 'DELETE', `/connections/${encodeURIComponent(c.name)}`), [404]);
    }
  }

  /** PUT /api/users/<admin> with the new password and the tags it has now (read first, so it stays an administrator). */
  async rotateRoot(newPassword: string): Promise<void> {
    const path = `/users/${encodeURIComponent(this.#admin)}`;
    const me = await this.#call('read the admin user', 'GET', path);
    this.#ok('read the admin user', me);
    const raw = (me.json as { tags?: unknown } | undefined)?.tags;
    const tags = Array.isArray(raw) ? raw.filter((t): t is string => typeof t === 'string') : typeof raw === 'string' ? raw.split(',').filter((t) => t !== '') : [];
    if (!tags.includes('administrator')) {
      throw new BrokerError('root_rotation_refused', `RabbitMQ engine "${this.name}": admin user ${this.#admin} has no administrator tag; refusing to rewrite it`);
    }
    const r = await this.#call('rotate the admin password', 'PUT', path, { password: newPassword, tags: tags.join(',') });
    if (r.status === 403) throw new BrokerError('root_rotation_refused', `RabbitMQ engine "${this.name}" was refused to change the admin password (HTTP 403)`);
    this.#ok('rotate the admin password', r);
  }

  async health(): Promise<{ ok: true } | { ok: false; error: string }> {
    try {
      const r = await this.#call('check health', 'GET', '/whoami');
      this.#ok('check health', r);
      return { ok: true };
    } catch (err) {
      return { ok: false, error: (err as Error).message };
    }
  }

  async close(): Promise<void> {
    // HTTP calls hold nothing open.
  }
}
