import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { aclPatternProblem, aclRuleProblem, aclSetuserArgs } from './redis-acl.js';

describe('aclRuleProblem', () => {
  it('accepts categories and commands a role may use', () => {
    for (const r of ['+@read', '+@write', '-@dangerous', '-@all', '+get', '-set', '+object|encoding', '+publish']) expect(aclRuleProblem(r), r).toBeUndefined();
  });

  it.each([
    ['+@all', /manage the server/],
    ['+@admin', /manage the server/],
    ['+@dangerous', /manage the server/],
    ['+@nosuch', /unknown ACL category/],
    ['+acl', /manage the server/],
    ['+config', /manage the server/],
    ['+client', /manage the server/],
    ['+eval', /manage the server/],
    ['allcommands', /expected/],
    ['on', /expected/],
    ['>password', /expected/],
    ['~*', /expected/],
    ['+get ~*', /expected/],
    ['+get\r\n', /expected/],
    ['nopass', /expected/],
  ])('refuses %j', (rule, why) => {
    expect(aclRuleProblem(rule)).toMatch(why);
  });

  it('never accepts a rule with whitespace, a password, a key or a flag (fuzz)', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), (rule) => {
        if (aclRuleProblem(rule) === undefined) expect(rule).toMatch(/^[+-](@[a-z]+|[a-z][a-z0-9_-]*(\|[a-z][a-z0-9_-]*)?)$/);
      }),
    );
  });
});

describe('aclPatternProblem', () => {
  it('accepts glob patterns and refuses spaces, control characters and empties', () => {
    for (const p of ['cache:*', 'app:{user}:?', 'a[bc]*']) expect(aclPatternProblem(p), p).toBeUndefined();
    for (const p of ['', 'a b', 'a\r\nFLUSHALL', '~x'.padEnd(300, 'x'), 'a\u0000']) expect(aclPatternProblem(p), JSON.stringify(p)).toBeDefined();
  });
});

describe('aclSetuserArgs', () => {
  it('starts from reset, switches the user on with its password and adds only the role', () => {
    expect(aclSetuserArgs('pw', { keys: ['cache:*'], channels: ['ev:*'], commands: ['+@read', '-keys'] })).toEqual([
      'reset', 'on', '>pw', '~cache:*', '&ev:*', '+@read', '-keys',
    ]);
  });
});
