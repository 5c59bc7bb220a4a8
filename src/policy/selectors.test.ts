import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BrokerError } from '../errors.js';
import { checkEntry } from './entry.js';
import { MAX_SELECTORS, isBroad, parseSelector, parseSelectors, SELECTOR_KEYS } from './selectors.js';

function refusal(fn: () => unknown): BrokerError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(BrokerError);
    expect((err as BrokerError).status).toBe(400);
    return err as BrokerError;
  }
  throw new Error('expected a 400');
}

describe('parseSelector', () => {
  it('accepts every documented key and keeps the canonical text', () => {
    for (const text of [
      'k8s:ns:shop',
      'k8s:sa:web',
      'k8s:pod-name:web-7d9f8-abcde',
      'k8s:pod-uid:0f7c6a2e-1b1d-4c44-9d7e-6a1f6a1e2b3c',
      'k8s:pod-label:app:web',
      'k8s:pod-label:app.kubernetes.io/name:web',
      'k8s:pod-label:tier:',
      'k8s:pod-annotation:example.com/team:payments: core, EU',
      'k8s:node-name:node-1.example',
      'k8s:container-image:registry.example/shop/web@sha256:0123abcd',
    ]) {
      expect(parseSelector(text).text).toBe(text);
    }
    expect(parseSelector('k8s:pod-label:app:web')).toEqual({ key: 'pod-label', value: 'app:web', text: 'k8s:pod-label:app:web' });
  });

  it('refuses, naming the field and what is wrong', () => {
    const cases: [string, RegExp][] = [
      ['unix:uid:0', /selectors\[0\]: unknown selector type "unix"/],
      [':ns:shop', /type is empty/],
      ['k8s::shop', /key is empty/],
      ['k8s:namespace:shop', /unknown selector key "namespace"/],
      ['k8s:ns:', /value is empty/],
      ['k8s:ns', /expected k8s:<key>:<value>/],
      ['k8s', /expected k8s:<key>:<value>/],
      ['k8s:ns:Shop', /DNS label/],
      ['k8s:ns:shop\n', /control character/],
      ['k8s:pod-annotation:a:b\u0000', /control character/],
      ['k8s:pod-label::web', /label key is empty/],
      ['k8s:pod-label:app', /expected k8s:pod-label:<key>:<value>/],
      ['k8s:pod-label:-app:web', /not a Kubernetes label key/],
      ['k8s:pod-label:app:we b', /label value/],
      ['k8s:container-image:a b', /no spaces/],
      ['k8s:pod-uid:../../x', /pod uid/],
      [`k8s:pod-annotation:a:${'x'.repeat(2000)}`, /longer than/],
    ];
    for (const [text, message] of cases) {
      expect(refusal(() => parseSelector(text, 'selectors[0]')).message, text).toMatch(message);
    }
  });

  it('never throws anything but a 400, and what it accepts round-trips (fuzz)', () => {
    const piece = fc.oneof(fc.constantFrom('k8s', 'ns', 'sa', 'pod-label', 'pod-uid', 'app', 'web', '', ':', 'a/b', '\u0007', 'é'), fc.string({ maxLength: 8 }));
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 6 }), (parts) => {
        const text = parts.join(':');
        try {
          const s = parseSelector(text);
          expect(s.text).toBe(text);
          expect(SELECTOR_KEYS).toContain(s.key);
          // eslint-disable-next-line no-control-regex
          expect(text).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
          expect(parseSelector(s.text)).toEqual(s);
        } catch (err) {
          expect(err).toBeInstanceOf(BrokerError);
          expect((err as BrokerError).status).toBe(400);
        }
      }),
      { numRuns: 3000 },
    );
  });
});

describe('parseSelectors', () => {
  it('needs 1 to 32 distinct selectors', () => {
    expect(refusal(() => parseSelectors([], false)).message).toMatch(/selectors: at least one/);
    const many = Array.from({ length: MAX_SELECTORS + 1 }, (_, i) => `k8s:pod-label:l${i}:v`);
    expect(refusal(() => parseSelectors(['k8s:ns:shop', ...many.slice(1)], false)).message).toMatch(/selectors: at most 32 selectors \(got 33\)/);
    expect(parseSelectors(['k8s:ns:shop', ...many.slice(2)], false)).toHaveLength(32);
    expect(refusal(() => parseSelectors(['k8s:ns:shop', 'k8s:ns:shop'], false)).message).toMatch(/selectors\[1\]: "k8s:ns:shop" is given twice/);
    expect(refusal(() => parseSelectors(['k8s:ns:shop', 'k8s:bad:x'], false)).message).toMatch(/^selectors\[1\]:/);
  });

  it('refuses an entry that could match every namespace unless allowBroad', () => {
    expect(refusal(() => parseSelectors(['k8s:sa:default'], false)).message).toMatch(/every namespace.*--allow-broad/);
    expect(refusal(() => parseSelectors(['k8s:pod-label:app:web', 'k8s:container-image:nginx'], false)).message).toMatch(/allowBroad/);
    expect(parseSelectors(['k8s:sa:default'], true)).toHaveLength(1);
    expect(isBroad(parseSelectors(['k8s:pod-uid:abc-1'], false))).toBe(false);
    expect(isBroad(parseSelectors(['k8s:ns:shop', 'k8s:pod-label:app:web'], false))).toBe(false);
  });

  it('property: a set of valid selectors is accepted in any order iff it names a namespace or pod uid (or allowBroad)', () => {
    const valid = fc.constantFrom('k8s:ns:shop', 'k8s:sa:web', 'k8s:pod-label:app:web', 'k8s:node-name:n1', 'k8s:pod-uid:u-1', 'k8s:container-image:nginx:1.27');
    fc.assert(
      fc.property(fc.uniqueArray(valid, { minLength: 1, maxLength: 6 }), fc.boolean(), (texts, allowBroad) => {
        const narrow = texts.some((t) => t.startsWith('k8s:ns:') || t.startsWith('k8s:pod-uid:'));
        if (narrow || allowBroad) expect(parseSelectors(texts, allowBroad).map((s) => s.text)).toEqual(texts);
        else refusal(() => parseSelectors(texts, allowBroad));
      }),
    );
  });
});

describe('checkEntry', () => {
  const base: { spiffeId: string; selectors: string[]; dnsNames: string[]; jwtAudiences: string[]; allowBroad: boolean } = {
    spiffeId: 'spiffe://example.org/shop/web',
    selectors: ['k8s:ns:shop'],
    dnsNames: [],
    jwtAudiences: [],
    allowBroad: false,
  };

  it('accepts a workload SPIFFE ID of our trust domain', () => {
    expect(checkEntry(base, 'example.org').spiffeId).toBe('spiffe://example.org/shop/web');
  });

  it('refuses other trust domains, admin IDs, bad DNS names and repeats, naming the field', () => {
    const cases: [Partial<typeof base>, RegExp][] = [
      [{ spiffeId: 'spiffe://evil.org/shop/web' }, /^spiffeId: .*not in trust domain example.org/],
      [{ spiffeId: 'spiffe://example.org' }, /^spiffeId: .*needs a path/],
      [{ spiffeId: 'spiffe://example.org/admin/dev' }, /^spiffeId: \/admin\/ is reserved/],
      [{ spiffeId: 'https://example.org/x' }, /^spiffeId:/],
      [{ dnsNames: ['Web.Shop'] }, /^dnsNames\[0\]: "Web.Shop" is not a lowercase DNS name/],
      [{ dnsNames: ['a.b', 'a.b'] }, /^dnsNames: a name is given twice/],
      [{ jwtAudiences: ['x', 'x'] }, /^jwtAudiences: an audience is given twice/],
      [{ selectors: ['k8s:sa:web'] }, /^selectors: .*every namespace/],
    ];
    for (const [patch, message] of cases) {
      expect(refusal(() => checkEntry({ ...base, ...patch }, 'example.org')).message).toMatch(message);
    }
  });
});
