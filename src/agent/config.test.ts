import { describe, expect, it } from 'vitest';
import { parseAgentConfig } from './config.js';

describe('parseAgentConfig', () => {
  it('reads the settings, workloadApi included; an empty file is no settings', () => {
    expect(parseAgentConfig('broker: https://b:8443\nworkloadApi:\n  socket: unix:///run/spiffe/agent.sock\n  maxStreams: 64\nfileNames: spiffe-helper\n')).toEqual({
      broker: 'https://b:8443',
      workloadApi: { socket: 'unix:///run/spiffe/agent.sock', maxStreams: 64 },
      fileNames: 'spiffe-helper',
    });
    expect(parseAgentConfig('')).toEqual({});
  });

  it.each([
    ['workloadApi:\n  sockett: x\n', /workloadApi\.sockett: unknown setting/],
    ['workloadApi:\n  socket: x\n  maxStreams: 0\n', /workloadApi\.maxStreams: /],
    ['healthPort: 70000\n', /healthPort: /],
    ['fileNames: other\n', /fileNames/],
    ['brokr: x\n', /brokr: unknown setting/],
    ['a: [\n', /not valid YAML/],
  ])('refuses %j naming the setting', (text, why) => {
    expect(() => parseAgentConfig(text)).toThrow(why);
  });
});
