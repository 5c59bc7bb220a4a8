/**
 * The deployment files, checked without a cluster or a Docker daemon (neither is available here):
 *
 * - deploy/k8s is a kustomize base with two overlays (single, ha) and an optional component
 *   (servicemonitor). Each is rendered with `kubectl kustomize` (Debian's kubectl; .ci/run installs it),
 *   and every rendered object is validated against the Kubernetes JSON schemas of the npm package
 *   kubernetes-models (and @kubernetes-models/prometheus-operator for the ServiceMonitor). Those
 *   schemas accept unknown fields, so pod and container fields are also checked against the field
 *   names the package declares.
 * - The manifests must match the code: the tessera image tag is package.json's version, container
 *   ports are the ports the config listens on, probe paths are routes in openapi.yaml, and every env
 *   variable is one the code reads. The overlays' tessera.yaml load with the real config loader; the
 *   ha Redis's settings pass the broker's real persistence check.
 * - workload-example.yaml: the agent arguments through the real flag parser.
 * - The Dockerfile's key properties (multi-stage, non-root, no dev keys).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import { Deployment, StatefulSet } from 'kubernetes-models/apps/v1';
import { ConfigMap, Namespace, PersistentVolumeClaim, Service, ServiceAccount } from 'kubernetes-models/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ClusterRole, ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { parseAgentFlags } from '../../src/cli/agent.js';
import type { Config } from '../../src/config/config.js';
import { loadConfig } from '../../src/config/load.js';
import { judgePersistence } from '../../src/store/redis-persistence.js';
import { inCi } from '../helpers/redis.js';

type Obj = Record<string, unknown>;
const ROOT = path.resolve('.');
const K8S = path.join(ROOT, 'deploy/k8s');
const VERSION = (JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

/** The schema of each kind the manifests use (apiVersion/kind → a kubernetes-models class). */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'v1/Namespace': Namespace,
  'v1/ServiceAccount': ServiceAccount,
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
  'v1/PersistentVolumeClaim': PersistentVolumeClaim,
  'apps/v1/Deployment': Deployment,
  'apps/v1/StatefulSet': StatefulSet,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'rbac.authorization.k8s.io/v1/ClusterRole': ClusterRole,
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': ClusterRoleBinding,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
};

/** Field names an interface of kubernetes-models declares (its .d.ts), for the unknown-field check. */
function declaredFields(file: string, iface: string): Set<string> {
  const text = readFileSync(path.join(ROOT, 'node_modules/kubernetes-models', file), 'utf8');
  const start = text.indexOf(`export interface ${iface} {`);
  if (start < 0) throw new Error(`no interface ${iface} in kubernetes-models/${file}`);
  const body = text.slice(start, text.indexOf('\n}', start));
  return new Set([...body.matchAll(/^ {4}"([A-Za-z0-9]+)"\??:/gm)].map((m) => m[1] as string));
}
const POD_FIELDS = declaredFields('v1/PodSpec.d.ts', 'IPodSpec');
const CONTAINER_FIELDS = declaredFields('v1/Container.d.ts', 'IContainer');

const kubectl = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' });
const haveKubectl = kubectl.status === 0;
const kubectlMissing = `kubectl is not installed (${kubectl.error?.message ?? kubectl.stderr?.trim() ?? 'not found'}); apt-get install -y kubectl`;
if (!haveKubectl) console.warn(`[deploy] kustomize rendering SKIPPED: ${kubectlMissing}`);

/** `kubectl kustomize DIR`, parsed. */
function render(dir: string): Obj[] {
  const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`kubectl kustomize ${dir} failed: ${r.stderr}`);
  return parseAllDocuments(r.stdout).map((d) => d.toJS() as Obj).filter((o) => o !== null);
}

/** An overlay plus the servicemonitor component, through a kustomization in a temp folder. */
function renderWithServiceMonitor(overlay: string): Obj[] {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-kustomize-'));
  try {
    const rel = (p: string): string => path.relative(dir, p);
    writeFileSync(
      path.join(dir, 'kustomization.yaml'),
      `apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ${rel(path.join(K8S, 'overlays', overlay))}\ncomponents:\n  - ${rel(path.join(K8S, 'components/servicemonitor'))}\n`,
    );
    return render(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const kindOf = (o: Obj): string => `${String(o.apiVersion)}/${String(o.kind)}`;
const meta = (o: Obj): Obj => (o.metadata ?? {}) as Obj;
const nameOf = (o: Obj): string => `${String(o.kind)}/${String(meta(o).name)}`;
const find = (objs: Obj[], kind: string, name: string): Obj => {
  const o = objs.find((x) => x.kind === kind && meta(x).name === name);
  if (o === undefined) throw new Error(`no ${kind} ${name}`);
  return o;
};
const findPrefix = (objs: Obj[], kind: string, prefix: string): Obj => {
  const o = objs.find((x) => x.kind === kind && String(meta(x).name).startsWith(prefix));
  if (o === undefined) throw new Error(`no ${kind} ${prefix}*`);
  return o;
};
const workloads = (objs: Obj[]): Obj[] => objs.filter((o) => o.kind === 'Deployment' || o.kind === 'StatefulSet');
const podSpec = (o: Obj): Obj => ((o.spec as Obj).template as Obj).spec as Obj;
const containers = (spec: Obj): Obj[] => [...((spec.initContainers as Obj[] | undefined) ?? []), ...(spec.containers as Obj[])];
const volumes = (spec: Obj): Obj[] => (spec.volumes as Obj[] | undefined) ?? [];
const mountOf = (c: Obj, volume: string): Obj | undefined => ((c.volumeMounts as Obj[] | undefined) ?? []).find((m) => m.name === volume);
const broker = (objs: Obj[]): Obj => (podSpec(find(objs, 'Deployment', 'tessera')).containers as Obj[]).find((c) => c.name === 'tessera') as Obj;

/** Every schema violation and unknown pod/container field of the rendered objects. */
function schemaProblems(objs: Obj[]): string[] {
  const problems: string[] = [];
  for (const o of objs) {
    const Model = MODELS[kindOf(o)];
    if (Model === undefined) {
      problems.push(`${nameOf(o)}: no schema for ${kindOf(o)}`);
      continue;
    }
    try {
      new Model(o as never).validate();
    } catch (err) {
      problems.push(`${nameOf(o)}: ${(err as Error).message}`);
    }
    if (o.kind === 'Deployment' || o.kind === 'StatefulSet') {
      const spec = podSpec(o);
      for (const k of Object.keys(spec)) if (!POD_FIELDS.has(k)) problems.push(`${nameOf(o)}: unknown pod field ${k}`);
      for (const c of containers(spec)) {
        for (const k of Object.keys(c)) if (!CONTAINER_FIELDS.has(k)) problems.push(`${nameOf(o)}/${String(c.name)}: unknown container field ${k}`);
      }
    }
  }
  return problems;
}

const SRC_TEXT = (function readSources(dir: string): string {
  let text = '';
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) text += readSources(p);
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.test.ts')) text += readFileSync(p, 'utf8');
  }
  return text;
})(path.join(ROOT, 'src'));
const OPENAPI_PATHS = new Set(Object.keys((parse(readFileSync(path.join(ROOT, 'openapi.yaml'), 'utf8')) as { paths: Obj }).paths));

/**
 * Where the manifests name something the code does not have: a tessera image tag other than
 * package.json's version, a container port the config does not listen on, a probe path that is no
 * route, an env variable no source file reads, a Service port naming no container port.
 */
function codeProblems(objs: Obj[], config: Config): string[] {
  const problems: string[] = [];
  const ports: Record<string, number> = { https: config.listen.port, ...(config.metrics.enabled ? { metrics: config.metrics.port } : {}) };
  for (const w of workloads(objs)) {
    for (const c of containers(podSpec(w))) {
      const where = `${nameOf(w)}/${String(c.name)}`;
      const image = String(c.image);
      const tessera = /^(?:.*\/)?tessera:(.+)$/.exec(image);
      if (tessera !== null && tessera[1] !== VERSION) problems.push(`${where}: image ${image}, but package.json's version is ${VERSION}`);
      if (!/:[A-Za-z0-9._-]+$/.test(image) || image.endsWith(':latest')) problems.push(`${where}: image ${image} is not pinned to a tag`);
      if (tessera === null) continue;
      for (const p of (c.ports as Obj[] | undefined) ?? []) {
        const want = ports[String(p.name)];
        if (want === undefined) problems.push(`${where}: port ${String(p.name)} is no port the broker listens on`);
        else if (p.containerPort !== want) problems.push(`${where}: port ${String(p.name)} is ${String(p.containerPort)}, the config listens on ${want}`);
      }
      for (const e of (c.env as Obj[] | undefined) ?? []) {
        if (!new RegExp(`\\b${String(e.name)}\\b`).test(SRC_TEXT)) problems.push(`${where}: env ${String(e.name)} is read nowhere in src/`);
      }
      for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
        const get = (c[probe] as Obj | undefined)?.httpGet as Obj | undefined;
        if (get === undefined) continue;
        if (!OPENAPI_PATHS.has(String(get.path))) problems.push(`${where}: ${probe} path ${String(get.path)} is no route`);
        if (!((c.ports as Obj[] | undefined) ?? []).some((p) => p.name === get.port)) problems.push(`${where}: ${probe} port ${String(get.port)} is no container port`);
      }
    }
  }
  for (const s of objs.filter((o) => o.kind === 'Service')) {
    const selector = (s.spec as Obj).selector as Record<string, string>;
    const pods = workloads(objs).filter((w) => Object.entries(selector).every(([k, v]) => (((w.spec as Obj).template as Obj).metadata as Obj & { labels: Record<string, string> }).labels[k] === v));
    if (pods.length === 0) problems.push(`${nameOf(s)}: selects no pods`);
    for (const p of ((s.spec as Obj).ports as Obj[]) ?? []) {
      const named = pods.some((w) => containers(podSpec(w)).some((c) => ((c.ports as Obj[] | undefined) ?? []).some((cp) => cp.name === p.targetPort)));
      if (!named) problems.push(`${nameOf(s)}: targetPort ${String(p.targetPort)} names no container port`);
    }
  }
  return problems;
}

/** The overlay's tessera.yaml, through the real config loader. */
function overlayConfig(objs: Obj[]): Config {
  const yamlText = (findPrefix(objs, 'ConfigMap', 'tessera-config-').data as Record<string, string>)['tessera.yaml'] as string;
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-deploy-'));
  try {
    writeFileSync(path.join(dir, 'tessera.yaml'), yamlText);
    return loadConfig({ file: path.join(dir, 'tessera.yaml'), env: {} });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('kubectl for deploy/k8s', () => {
  it(`is installed${inCi ? ' (required: CI=true)' : ' (or the kustomize tests are skipped)'}`, () => {
    if (inCi) expect(haveKubectl, kubectlMissing).toBe(true);
  });
});

describe.skipIf(!haveKubectl)('deploy/k8s, rendered with kubectl kustomize', () => {
  const overlays = { single: render(path.join(K8S, 'overlays/single')), ha: render(path.join(K8S, 'overlays/ha')) };
  const configs = { single: overlayConfig(overlays.single), ha: overlayConfig(overlays.ha) };

  it('the base alone is not an install: it has no config (an overlay adds it)', () => {
    expect(render(path.join(K8S, 'base')).some((o) => o.kind === 'ConfigMap')).toBe(false);
  });

  for (const [name, objs] of Object.entries(overlays)) {
    it(`${name}: every object validates against the Kubernetes schemas; no unknown pod or container field`, () => {
      expect(objs.length).toBeGreaterThanOrEqual(10);
      expect(schemaProblems(objs)).toEqual([]);
      const seen = new Set<string>();
      for (const o of objs) {
        const key = `${nameOf(o)}@${String(meta(o).namespace ?? '')}`;
        expect(seen.has(key), `duplicate ${key}`).toBe(false);
        seen.add(key);
        if (o.kind !== 'Namespace' && !String(o.kind).startsWith('Cluster')) expect(meta(o).namespace, nameOf(o)).toBe('tessera');
      }
    });

    it(`${name}: names only images, ports, probe paths and env variables the code has`, () => {
      expect(codeProblems(objs, configs[name as keyof typeof configs])).toEqual([]);
    });

    it(`${name}: every pod runs non-root, read-only, without privilege escalation, all capabilities dropped, with resources`, () => {
      for (const w of workloads(objs)) {
        const spec = podSpec(w);
        const podSc = (spec.securityContext ?? {}) as Obj;
        expect(podSc.runAsNonRoot, nameOf(w)).toBe(true);
        expect(podSc.runAsUser, nameOf(w)).toBeGreaterThan(0);
        expect((podSc.seccompProfile as Obj | undefined)?.type).toBe('RuntimeDefault');
        const selector = ((w.spec as Obj).selector as Obj).matchLabels as Record<string, string>;
        const labels = ((((w.spec as Obj).template as Obj).metadata as Obj).labels ?? {}) as Record<string, string>;
        for (const [k, v] of Object.entries(selector)) expect(labels[k], `${nameOf(w)}: selector ${k}`).toBe(v);
        for (const c of containers(spec)) {
          const sc = (c.securityContext ?? {}) as Obj;
          const where = `${nameOf(w)}/${String(c.name)}`;
          expect(sc.allowPrivilegeEscalation, where).toBe(false);
          expect(sc.privileged ?? false, where).toBe(false);
          expect(sc.readOnlyRootFilesystem, where).toBe(true);
          expect((sc.capabilities as Obj | undefined)?.drop, where).toEqual(['ALL']);
          expect(((c.resources as Obj | undefined)?.requests as Obj | undefined)?.memory, `${where}: memory request`).toBeDefined();
          expect(((c.resources as Obj | undefined)?.limits as Obj | undefined)?.memory, `${where}: memory limit`).toBeDefined();
          for (const m of (c.volumeMounts as Obj[] | undefined) ?? []) {
            const claimed = ((w.spec as Obj).volumeClaimTemplates as Obj[] | undefined)?.some((t) => meta(t).name === m.name) ?? false;
            expect(claimed || volumes(spec).some((v) => v.name === m.name), `${where}: mount ${String(m.name)} has a volume`).toBe(true);
          }
        }
      }
    });

    it(`${name}: the broker has a startupProbe, readiness on /readyz, the metrics port, the ConfigMap where --config points`, () => {
      const c = broker(objs);
      expect(c.args).toEqual(['serve', '--config', '/etc/tessera/config/tessera.yaml']);
      expect(((c.startupProbe as Obj).httpGet as Obj).path).toBe('/healthz');
      expect(((c.readinessProbe as Obj).httpGet as Obj).path).toBe('/readyz');
      expect((c.ports as Obj[]).map((p) => p.name)).toEqual(['https', 'metrics']);
      const spec = podSpec(find(objs, 'Deployment', 'tessera'));
      const configMap = String(meta(findPrefix(objs, 'ConfigMap', 'tessera-config-')).name);
      const configVolume = volumes(spec).find((v) => (v.configMap as Obj | undefined)?.name === configMap) as Obj;
      expect(mountOf(c, String(configVolume.name))?.mountPath).toBe('/etc/tessera/config');
      const config = configs[name as keyof typeof configs];
      expect(config.dev).toBe(false);
      expect(config.metrics).toEqual({ enabled: true, host: '0.0.0.0', port: 9464 });
      // Every file the config names is under a mounted volume; keys come from the 0600 memory copy.
      const mounts = ((c.volumeMounts as Obj[]) ?? []).map((m) => String(m.mountPath));
      for (const file of [config.tls.certFile, config.tls.keyFile, config.ca.certFile, config.ca.keyFile ?? '', config.ca.bundleFile, config.ca.jwtKeyFile ?? '', config.audit.signingKeyFile ?? '', config.issuers[0]?.jwksFile ?? '']) {
        expect(mounts.some((m) => file.startsWith(`${m}/`)), file).toBe(true);
      }
      expect(volumes(spec).find((v) => v.name === 'pki')?.emptyDir).toMatchObject({ medium: 'Memory' });
      expect(config.issuers[0]).toMatchObject({ issuer: 'https://kubernetes.default.svc.cluster.local', audiences: ['tessera'], requirePodBinding: true });
    });

    it(`${name}: RBAC is exactly tokenreviews create and pods get, bound to the broker's service account`, () => {
      expect((find(objs, 'ClusterRole', 'tessera-attestor').rules as Obj[]).map((r) => ({ ...r }))).toEqual([
        { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
        { apiGroups: [''], resources: ['pods'], verbs: ['get'] },
      ]);
      const binding = find(objs, 'ClusterRoleBinding', 'tessera-attestor');
      expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: 'tessera', namespace: 'tessera' }]);
      expect(podSpec(find(objs, 'Deployment', 'tessera')).serviceAccountName).toBe('tessera');
      find(objs, 'ServiceAccount', 'tessera');
    });

    it(`${name}: the NetworkPolicy admits workloads and the admin network on 8443, Prometheus on 9464, nothing else`, () => {
      const spec = find(objs, 'NetworkPolicy', 'tessera').spec as Obj;
      expect(spec.podSelector).toEqual({ matchLabels: { 'app.kubernetes.io/name': 'tessera' } });
      expect(spec.policyTypes).toEqual(['Ingress']);
      const rules = spec.ingress as Obj[];
      const portsOf = (r: Obj): unknown[] => ((r.ports as Obj[]) ?? []).map((p) => p.port);
      expect(rules.map(portsOf)).toEqual([[8443], [8443], [9464]]);
      expect(rules.every((r) => Array.isArray(r.from) && (r.from as unknown[]).length > 0)).toBe(true);
      expect(JSON.stringify(rules[0])).toContain('"tessera.dev/workloads":"true"');
      expect(JSON.stringify(rules[1])).toContain('ipBlock');
      expect(JSON.stringify(rules[2])).toContain('"app.kubernetes.io/name":"prometheus"');
    });
  }

  it('single: one broker, Recreate, the embedded store on a PersistentVolumeClaim', () => {
    const objs = overlays.single;
    const d = find(objs, 'Deployment', 'tessera');
    expect((d.spec as Obj).replicas).toBe(1);
    expect((d.spec as Obj).strategy).toEqual({ type: 'Recreate' });
    const config = configs.single;
    expect(config.store.redis).toBeUndefined();
    const data = volumes(podSpec(d)).find((v) => v.persistentVolumeClaim !== undefined) as Obj;
    const claim = String((data.persistentVolumeClaim as Obj).claimName);
    expect(((find(objs, 'PersistentVolumeClaim', claim).spec as Obj).accessModes as string[])).toEqual(['ReadWriteOnce']);
    expect(mountOf(broker(objs), String(data.name))?.mountPath).toBe(config.store.embedded.dir);
    expect(config.store.embedded.fsync).toBe(true);
    expect(objs.some((o) => o.kind === 'StatefulSet')).toBe(false);
  });

  it('ha: two replicas on Redis; Redis a StatefulSet with its AOF on a PVC that passes the broker persistence check', () => {
    const objs = overlays.ha;
    const d = find(objs, 'Deployment', 'tessera');
    expect((d.spec as Obj).replicas).toBe(2);
    expect(((d.spec as Obj).strategy as Obj).rollingUpdate).toEqual({ maxUnavailable: 0, maxSurge: 1 });
    expect(((find(objs, 'PodDisruptionBudget', 'tessera').spec as Obj).minAvailable)).toBe(1);
    expect(volumes(podSpec(d)).some((v) => v.persistentVolumeClaim !== undefined)).toBe(false);
    expect(broker(objs).env).toEqual([{ name: 'TESSERA_REPLICA_ID', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } }]);

    const redis = find(objs, 'StatefulSet', 'tessera-redis');
    const template = ((redis.spec as Obj).volumeClaimTemplates as Obj[])[0] as Obj;
    const redisContainer = (podSpec(redis).containers as Obj[])[0] as Obj;
    expect(mountOf(redisContainer, String(meta(template).name))?.mountPath).toBe('/data');
    expect(volumes(podSpec(redis)).some((v) => v.emptyDir !== undefined), 'no emptyDir: the log must survive rescheduling').toBe(false);
    const args = redisContainer.args as string[];
    const arg = (flag: string): string | undefined => args[args.indexOf(flag) + 1];
    expect(args.indexOf('--dir')).toBeGreaterThan(0);
    expect(arg('--dir')).toBe('/data');
    expect(judgePersistence({ appendonly: arg('--appendonly') ?? 'no', appendfsync: arg('--appendfsync') ?? 'everysec', save: arg('--save') ?? '3600 1' })).toEqual({ kind: 'durable' });

    const service = find(objs, 'Service', 'tessera-redis');
    expect((service.spec as Obj).selector).toEqual(((redis.spec as Obj).selector as Obj).matchLabels);
    expect((redis.spec as Obj).serviceName).toBe('tessera-redis');
    const port = (((service.spec as Obj).ports as Obj[])[0] as Obj).port;
    expect(configs.ha.store.redis).toMatchObject({ url: `redis://tessera-redis.tessera.svc:${String(port)}`, allowVolatile: false });
    expect(JSON.stringify((find(objs, 'NetworkPolicy', 'tessera-redis').spec as Obj).ingress)).toContain('"app.kubernetes.io/name":"tessera"');
    // The same Redis image as docker-compose.yml.
    const compose = parse(readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8')) as { services: { redis: { image: string } } };
    expect(redisContainer.image).toBe(compose.services.redis.image);
  });

  it('the servicemonitor component adds a ServiceMonitor that selects the metrics Service and its port', () => {
    const objs = renderWithServiceMonitor('ha');
    expect(schemaProblems(objs)).toEqual([]);
    const sm = find(objs, 'ServiceMonitor', 'tessera');
    const spec = sm.spec as Obj;
    const selector = (spec.selector as Obj).matchLabels as Record<string, string>;
    const selected = objs.filter((o) => o.kind === 'Service' && Object.entries(selector).every(([k, v]) => (meta(o).labels as Record<string, string>)[k] === v));
    expect(selected.map((s) => meta(s).name)).toEqual(['tessera-metrics']);
    const endpoint = (spec.endpoints as Obj[])[0] as Obj;
    expect((((selected[0] as Obj).spec as Obj).ports as Obj[]).map((p) => p.name)).toContain(endpoint.port);
    expect(endpoint.path).toBe('/metrics');
    expect(overlays.ha.some((o) => o.kind === 'ServiceMonitor')).toBe(false);
  });

  it('the checks can fail: a wrong tag, port, env variable, probe path, unknown field or bad type is reported', () => {
    const objs = structuredClone(overlays.ha);
    const c = broker(objs);
    c.image = 'tessera:9.9.9';
    (c.env as Obj[]).push({ name: 'TESSERA_NO_SUCH_SETTING', value: '1' });
    ((c.ports as Obj[])[1] as Obj).containerPort = 9999;
    ((c.readinessProbe as Obj).httpGet as Obj).path = '/ready';
    c.startupProbes = {};
    (((podSpec(find(objs, 'Deployment', 'tessera')).containers as Obj[])[0] as Obj).ports as Obj[]).push({ name: 'extra', containerPort: 'x' });
    const code = codeProblems(objs, configs.ha).join('\n');
    expect(code).toMatch(/image tessera:9\.9\.9, but package\.json's version is/);
    expect(code).toMatch(/env TESSERA_NO_SUCH_SETTING is read nowhere in src/);
    expect(code).toMatch(/port metrics is 9999, the config listens on 9464/);
    expect(code).toMatch(/readinessProbe path \/ready is no route/);
    expect(code).toMatch(/port extra is no port the broker listens on/);
    const schema = schemaProblems(objs).join('\n');
    expect(schema).toMatch(/unknown container field startupProbes/);
    expect(schema).toMatch(/containerPort must be integer/);
    expect(schemaProblems([{ apiVersion: 'example.com/v1', kind: 'Thing', metadata: { name: 'x' } }])).toEqual(['Thing/x: no schema for example.com/v1/Thing']);
  });
});

describe('deploy/k8s/workload-example.yaml', () => {
  const docs: Obj[] = parseAllDocuments(readFileSync(path.join(K8S, 'workload-example.yaml'), 'utf8'))
    .map((d) => d.toJS() as Obj)
    .filter((o) => o !== null);

  it('validates against the Kubernetes schemas and names the image the code builds', () => {
    expect(schemaProblems(docs)).toEqual([]);
    for (const c of containers(podSpec(find(docs, 'Deployment', 'web')))) {
      if (String(c.image).includes('tessera')) expect(c.image).toBe(`tessera:${VERSION}`);
    }
  });

  it('its namespace is admitted by the broker NetworkPolicy (tessera.dev/workloads)', () => {
    expect((meta(find(docs, 'Namespace', 'shop')).labels as Record<string, string>)['tessera.dev/workloads']).toBe('true');
  });

  it('projected token for audience "tessera", the agent as init container (--once) and native sidecar', () => {
    const web = find(docs, 'Deployment', 'web');
    const spec = podSpec(web);
    expect(spec.serviceAccountName).toBe('web');
    expect(spec.automountServiceAccountToken).toBe(false);
    expect(docs.some((d) => d.kind === 'ServiceAccount' && meta(d).name === 'web' && meta(d).namespace === meta(web).namespace)).toBe(true);

    const tokenVolume = volumes(spec).find((v) => v.projected !== undefined) as Obj;
    const source = (((tokenVolume.projected as Obj).sources as Obj[])[0] as Obj).serviceAccountToken as Obj;
    expect(source.audience).toBe('tessera');
    expect(source.expirationSeconds).toBeGreaterThanOrEqual(600); // Kubernetes' minimum
    const svidVolume = volumes(spec).find((v) => v.name === 'svid') as Obj;
    expect((svidVolume.emptyDir as Obj).medium).toBe('Memory');

    const inits = spec.initContainers as Obj[];
    const agents = inits.map((c) => ({ c, opts: parseAgentFlags((c.args as string[]).slice(1)) }));
    for (const { c } of agents) expect((c.args as string[])[0]).toBe('agent');
    const init = agents.find((a) => a.opts.once);
    const sidecar = agents.find((a) => !a.opts.once);
    expect(init, 'an init container with --once').toBeDefined();
    expect(sidecar, 'a sidecar agent').toBeDefined();
    // Order matters: the one-shot init container first, then the sidecar, then the app.
    expect(inits.indexOf(init?.c as Obj)).toBeLessThan(inits.indexOf(sidecar?.c as Obj));
    expect(init?.c.restartPolicy).toBeUndefined();
    expect(sidecar?.c.restartPolicy).toBe('Always'); // native sidecar
    expect(sidecar?.opts.healthPort).toBeDefined();
    expect(JSON.stringify(sidecar?.c.startupProbe)).toContain(`127.0.0.1:${String(sidecar?.opts.healthPort)}/healthz`);
    for (const { c, opts } of [init, sidecar] as { c: Obj; opts: ReturnType<typeof parseAgentFlags> }[]) {
      expect(opts.broker).toBe('https://tessera.tessera.svc:8443');
      const tokenMount = mountOf(c, String(tokenVolume.name)) as Obj;
      expect(opts.tokenFile).toBe(`${String(tokenMount.mountPath)}/${String(source.path)}`);
      expect(mountOf(c, 'svid')?.mountPath).toBe(opts.outDir);
      const bundleVolume = volumes(spec).find((v) => (v.configMap as Obj | undefined)?.name === 'tessera-bundle') as Obj;
      expect(opts.bundleFile.startsWith(`${String(mountOf(c, String(bundleVolume.name))?.mountPath)}/`)).toBe(true);
      expect(opts.jwtAudiences).toEqual(['payments']);
    }
    // The app reads the files, read-only, from the same volume.
    const app = (spec.containers as Obj[])[0] as Obj;
    expect(mountOf(app, 'svid')).toMatchObject({ mountPath: '/run/tessera', readOnly: true });
    expect(JSON.stringify(app.env)).toContain('/run/tessera/svid.key');
  });
});

describe('Dockerfile', () => {
  const text = readFileSync('Dockerfile', 'utf8');
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  const stages: { name: string; lines: string[] }[] = [];
  for (const l of lines) {
    const from = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?$/i.exec(l);
    if (from) stages.push({ name: from[2] ?? from[1] ?? '', lines: [] });
    else stages.at(-1)?.lines.push(l);
  }
  const runtime = stages.at(-1) as { name: string; lines: string[] };

  it('is multi-stage: builds with npm ci + npm run build, ships production dependencies and dist/ only', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const build = stages[0] as { name: string; lines: string[] };
    expect(build.lines.some((l) => /^RUN npm ci\b/.test(l))).toBe(true);
    expect(build.lines.some((l) => /^RUN npm run build\b/.test(l))).toBe(true);
    expect(runtime.lines.some((l) => /^RUN npm ci .*--omit=dev/.test(l))).toBe(true);
    expect(runtime.lines).toContain(`COPY --from=${build.name} /src/dist ./dist`);
    expect(runtime.lines.some((l) => /^ENTRYPOINT \["node", "\/app\/dist\/cli\/main\.js"\]$/.test(l))).toBe(true);
    // Nothing is copied wholesale from the build context into the runtime image.
    expect(runtime.lines.filter((l) => /^COPY\s+(\.|\.\/)\s/.test(l))).toEqual([]);
  });

  it('builds the PKCS#11 addon in the build stage and ships only the built binding', () => {
    const build = stages[0] as { name: string; lines: string[] };
    // The runtime installs with --ignore-scripts, so without this copy a pkcs11 key could never load.
    expect(build.lines.some((l) => /npm rebuild pkcs11js\b/.test(l))).toBe(true);
    const addon = 'node_modules/pkcs11js/build/Release/pkcs11.node';
    expect(runtime.lines).toContain(`COPY --from=${build.name} /src/${addon} ./${addon}`);
    // The file the binding loads is the one copied (pkcs11js' own entry point names it).
    expect(readFileSync('node_modules/pkcs11js/index.js', 'utf8')).toContain('./build/Release/pkcs11.node');
    // No compiler in the runtime stage.
    expect(runtime.lines.filter((l) => /\b(g\+\+|gcc|make|python3)\b/.test(l))).toEqual([]);
  });

  it('runs as a numeric non-root user', () => {
    const users = runtime.lines.filter((l) => l.startsWith('USER '));
    expect(users.length).toBeGreaterThanOrEqual(1);
    const user = (users.at(-1) as string).slice(5).split(':')[0] as string;
    expect(user).toMatch(/^\d+$/);
    expect(Number(user)).toBeGreaterThan(0);
  });

  it('never puts dev keys or local state in the image', () => {
    for (const l of lines.filter((x) => /^(COPY|ADD)\s/.test(x))) {
      expect(l).not.toMatch(/certs-dev|data\/|\.key\b|\.pem\b/);
      // Every source copied from the context exists in the repository.
      const parts = l.split(/\s+/).slice(1).filter((p) => !p.startsWith('--'));
      if (!l.includes('--from=')) for (const src of parts.slice(0, -1)) expect(existsSync(src), src).toBe(true);
    }
    expect(lines.some((l) => /^ADD\s/.test(l))).toBe(false);
    expect(lines.filter((l) => /^(ENV|ARG)\s/.test(l) && /KEY|TOKEN|PASSWORD|SECRET/i.test(l))).toEqual([]);
    const ignore = readFileSync('.dockerignore', 'utf8').split('\n').map((l) => l.trim());
    for (const entry of ['certs-dev/*', 'data/', 'node_modules', 'dist']) expect(ignore).toContain(entry);
  });
});
