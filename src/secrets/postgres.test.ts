import { describe, expect, it } from 'vitest';
import { createRoleStatements, isPermanentPgError } from './postgres.js';

describe('isPermanentPgError', () => {
  it('treats privilege, missing-object and dependency refusals as permanent', () => {
    // insufficient_privilege, undefined_object, dependent_objects_still_exist, invalid_grantor, invalid_role_specification
    for (const code of ['42501', '42704', '2BP01', '0L000', '0LP01', '0P000']) expect(isPermanentPgError(code), code).toBe(true);
  });

  it('treats connection, auth, resource, timeout, lock and unknown failures as transient', () => {
    for (const code of ['08006', '08001', '28P01', '53300', '57P01', '57014', '40001', '40P01', '55P03', '55006', 'XX000', 'ECONNREFUSED', '', undefined]) {
      expect(isPermanentPgError(code), String(code)).toBe(false);
    }
  });
});

describe('createRoleStatements', () => {
  it('grants the new role to the admin right after creating it, before the template grants', () => {
    const s = createRoleStatements('tessera_ro_0123456789abcdef', 'SCRAM-SHA-256$4096:c2FsdA==$a:b', 0, ['GRANT CONNECT ON DATABASE app TO {{name}}']);
    expect(s).toHaveLength(3);
    expect(s[0]).toMatch(/^CREATE ROLE "tessera_ro_0123456789abcdef" WITH LOGIN NOSUPERUSER/);
    expect(s[1]).toBe('GRANT "tessera_ro_0123456789abcdef" TO CURRENT_USER');
    expect(s[2]).toBe('GRANT CONNECT ON DATABASE app TO "tessera_ro_0123456789abcdef"');
  });
});
