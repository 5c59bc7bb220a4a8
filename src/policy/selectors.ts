/**
 * Workload selectors, SPIRE-style `type:key:value`. Only the `k8s` type exists:
 *
 *   k8s:ns:<namespace>                k8s:sa:<service account>
 *   k8s:pod-name:<name>               k8s:pod-uid:<uid>
 *   k8s:pod-label:<key>:<value>       k8s:pod-annotation:<key>:<value>
 *   k8s:node-name:<node>              k8s:container-image:<image>   (any container of the pod)
 *
 * Parsing is strict and names what is wrong: an unknown type or key, an empty key or value, a control
 * character, a value Kubernetes would never produce. A parsed selector is kept in its canonical text
 * form, so "does the workload have it" is a set lookup.
 */
import { selectorText } from '../attest/identity.js';
import { badRequest } from '../errors.js';

export const MAX_SELECTORS = 32;
/** Longest selector text accepted (an annotation value may be long; nothing legitimate is longer). */
export const MAX_SELECTOR_LENGTH = 1024;

export const SELECTOR_KEYS = ['ns', 'sa', 'pod-name', 'pod-uid', 'pod-label', 'pod-annotation', 'node-name', 'container-image'] as const;
export type SelectorKey = (typeof SELECTOR_KEYS)[number];

export interface Selector {
  readonly key: SelectorKey;
  /** For pod-label / pod-annotation: `<key>:<value>`; otherwise the value itself. */
  readonly value: string;
  /** Canonical text, `k8s:<key>:<value>`. */
  readonly text: string;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const UID = /^[A-Za-z0-9-]{1,64}$/;
/** Kubernetes qualified name: optional DNS-subdomain prefix and "/", then a name of at most 63 characters. */
const LABEL_NAME = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$/;
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;
// Control characters (C0, DEL, C1) and lone surrogates, anywhere in a selector.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]|[\ud800-\udfff]/u;

function qualifiedName(name: string): boolean {
  const slash = name.indexOf('/');
  if (slash === -1) return LABEL_NAME.test(name);
  const prefix = name.slice(0, slash);
  return DNS_SUBDOMAIN.test(prefix) && LABEL_NAME.test(name.slice(slash + 1));
}

/** Why `value` is not a valid value for `key`, or undefined. */
function valueProblem(key: SelectorKey, value: string): string | undefined {
  switch (key) {
    case 'ns':
      return DNS_LABEL.test(value) ? undefined : 'a namespace is a DNS label (a-z 0-9 -, at most 63)';
    case 'sa':
    case 'pod-name':
    case 'node-name':
      return DNS_SUBDOMAIN.test(value) ? undefined : `a ${key === 'sa' ? 'service account' : key === 'pod-name' ? 'pod' : 'node'} name is a DNS subdomain (a-z 0-9 - .)`;
    case 'pod-uid':
      return UID.test(value) ? undefined : 'a pod uid is 1-64 of A-Z a-z 0-9 -';
    case 'container-image':
      return /\s/.test(value) ? 'an image reference has no spaces' : undefined;
    case 'pod-label':
    case 'pod-annotation': {
      const colon = value.indexOf(':');
      if (colon === -1) return `expected k8s:${key}:<key>:<value>`;
      const name = value.slice(0, colon);
      if (name === '') return `the ${key === 'pod-label' ? 'label' : 'annotation'} key is empty`;
      if (!qualifiedName(name)) return `"${name}" is not a Kubernetes ${key === 'pod-label' ? 'label' : 'annotation'} key`;
      if (key === 'pod-label' && !LABEL_VALUE.test(value.slice(colon + 1))) return 'a label value is at most 63 of A-Z a-z 0-9 - _ . (alphanumeric at both ends)';
      return undefined;
    }
  }
}

/** Parses one selector; throws a 400 that names `field` (e.g. "selectors[2]"). */
export function parseSelector(text: string, field = 'selector'): Selector {
  const fail = (why: string): never => {
    throw badRequest(`${field}: ${why}`);
  };
  if (typeof text !== 'string' || text === '') fail('a selector is type:key:value, e.g. k8s:ns:shop');
  if (text.length > MAX_SELECTOR_LENGTH) fail(`longer than ${MAX_SELECTOR_LENGTH} characters`);
  if (CONTROL.test(text)) fail('contains a control character');
  const first = text.indexOf(':');
  const type = first === -1 ? text : text.slice(0, first);
  if (type === '') fail('the selector type is empty (expected k8s:key:value)');
  if (type !== 'k8s') fail(`unknown selector type "${type}" (known: k8s)`);
  const rest = text.slice(first + 1);
  const second = rest.indexOf(':');
  if (first === -1 || second === -1) fail(`expected k8s:<key>:<value> (keys: ${SELECTOR_KEYS.join(', ')})`);
  const key = rest.slice(0, second);
  if (key === '') fail('the selector key is empty');
  if (!(SELECTOR_KEYS as readonly string[]).includes(key)) fail(`unknown selector key "${key}" (known: ${SELECTOR_KEYS.join(', ')})`);
  const value = rest.slice(second + 1);
  if (value === '') fail('the selector value is empty');
  const problem = valueProblem(key as SelectorKey, value);
  if (problem !== undefined) fail(problem);
  return { key: key as SelectorKey, value, text };
}

/**
 * Parses an entry's selectors: 1 to 32, no repeats. `allowBroad` must be set for an entry that could
 * match any workload in the cluster (one that names neither a namespace nor a pod uid).
 */
export function parseSelectors(texts: readonly string[], allowBroad: boolean, field = 'selectors'): Selector[] {
  if (texts.length === 0) throw badRequest(`${field}: at least one selector is required (e.g. k8s:ns:shop)`);
  if (texts.length > MAX_SELECTORS) throw badRequest(`${field}: at most ${MAX_SELECTORS} selectors (got ${texts.length})`);
  const out: Selector[] = [];
  const seen = new Set<string>();
  texts.forEach((t, i) => {
    const s = parseSelector(t, `${field}[${i}]`);
    if (seen.has(s.text)) throw badRequest(`${field}[${i}]: "${s.text}" is given twice`);
    seen.add(s.text);
    out.push(s);
  });
  if (!allowBroad && isBroad(out)) {
    throw badRequest(`${field}: these selectors could match workloads in every namespace; add k8s:ns:<namespace> (or k8s:pod-uid), or set allowBroad (--allow-broad)`);
  }
  return out;
}

/** True when nothing confines the selectors to one namespace or one pod. */
export function isBroad(selectors: readonly Selector[]): boolean {
  return !selectors.some((s) => s.key === 'ns' || s.key === 'pod-uid');
}

export { selectorText };
