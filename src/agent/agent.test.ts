import { describe, expect, it } from 'vitest';
import { audienceFileName } from './agent.js';

describe('audienceFileName', () => {
  it('keeps simple audiences readable', () => {
    expect(audienceFileName('payments')).toBe('payments.token');
    expect(audienceFileName('api.v2_x-y')).toBe('api.v2_x-y.token');
  });

  it('%-encodes everything that is not a safe file-name character, and a leading dot', () => {
    expect(audienceFileName('https://api.example.com/x')).toBe('https%3A%2F%2Fapi.example.com%2Fx.token');
    expect(audienceFileName('..')).toBe('%2E..token');
    expect(audienceFileName('.hidden')).toBe('%2Ehidden.token');
    expect(audienceFileName('a b*é')).toBe('a%20b%2A%C3%A9.token');
  });

  it('never produces a path separator or a hidden name', () => {
    for (const aud of ['/', '../../etc/passwd', '.', 'a/b', '\\x']) {
      const name = audienceFileName(aud);
      expect(name).not.toMatch(/[/\\]/);
      expect(name.startsWith('.')).toBe(false);
    }
  });
});
