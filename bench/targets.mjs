// Issue 19's targets, judged from one full `npm run bench` result (bench/results/latest.json): each with
// what was measured and whether it is met. Pure: it reads the result and computes nothing new, so the
// table printed at the end of a run and the one kept in latest.json say what the rows above them say.

const peerRow = (result, key, concurrency) => result.peers?.rows?.find((r) => r.key === key && r.concurrency === concurrency);

const round2 = (x) => Number(x.toFixed(2));

/**
 * Redis commands the client sent per issuance, split into those every issuance sent (each command's
 * count divided by the issuances, rounded down) and the occasional ones (background checkpoint rounds,
 * a one-off read) that the sequential MONITOR window also caught.
 */
export function redisRoundTrips(roundTrips) {
  if (!roundTrips?.issuances || !roundTrips.byCommand) return undefined;
  let perIssuance = 0;
  let occasional = 0;
  for (const count of Object.values(roundTrips.byCommand)) {
    perIssuance += Math.floor(count / roundTrips.issuances);
    occasional += count % roundTrips.issuances;
  }
  return { perIssuance, occasional, issuances: roundTrips.issuances };
}

/**
 * One entry per target: `measured` is a number (or undefined when its row did not run), `met` is
 * true/false, or null when the target only asks for the figure to be reported or the row is missing.
 */
export function issue19Targets(result) {
  const fresh1 = peerRow(result, 'tessera-fresh', 1);
  const fresh32 = peerRow(result, 'tessera-fresh', 32);
  const jwt1 = peerRow(result, 'tessera-jwt', 1);
  const certdb1 = peerRow(result, 'cfssl-certdb', 1);
  const authsign32 = peerRow(result, 'cfssl-authsign', 32);
  const trips = redisRoundTrips(result.redis?.roundTrips);
  const big = result.scale?.rows?.at(-1);
  const atLeast = (v, t) => (v === undefined ? null : v >= t);
  const atMost = (v, t) => (v === undefined ? null : v <= t);
  const ratio = (a, b) => (a?.rps > 0 && b?.rps > 0 ? round2(a.rps / b.rps) : undefined);
  const restart = big === undefined ? undefined : Math.max(big.restartMs, big.restartAfterRunMs ?? 0);
  const targets = [
    { id: 'x509-c1-vs-certdb', target: 'X.509 from CSR (fresh token + key), c=1 ≥ 1.0× cfssl TLS + authsign + certdb', unit: '×', measured: ratio(fresh1, certdb1), threshold: 1.0, cmp: atLeast },
    { id: 'x509-c1-p50', target: 'X.509 from CSR (fresh), p50 at c=1 ≤ 0.8 ms', unit: 'ms', measured: fresh1?.p50Ms, threshold: 0.8, cmp: atMost },
    { id: 'jwt-c1-p50', target: 'JWT-SVID p50 at c=1 ≤ 0.6 ms', unit: 'ms', measured: jwt1?.p50Ms, threshold: 0.6, cmp: atMost },
    { id: 'x509-c32-cpu', target: 'server CPU per X.509 issuance (fresh), c=32 ≤ 400 µs', unit: 'µs', measured: fresh32?.serverCpuUs, threshold: 400, cmp: atMost },
    { id: 'x509-c32-vs-authsign', target: 'X.509 from CSR (fresh), c=32 ≥ 0.7× cfssl TLS + authsign', unit: '×', measured: ratio(fresh32, authsign32), threshold: 0.7, cmp: atLeast },
    { id: 'redis-vs-embedded', target: 'one broker on Redis ≥ 0.8× the embedded store, c=32', unit: '×', measured: result.redis?.ratios?.oneRedisOverEmbeddedC32, threshold: 0.8, cmp: atLeast },
    {
      id: 'redis-round-trips',
      target: 'Redis round trips per X.509 issuance ≤ 3',
      unit: '',
      measured: trips?.perIssuance,
      note: trips === undefined ? undefined : `${trips.occasional} occasional commands in ${trips.issuances} issuances besides`,
      threshold: 3,
      cmp: atMost,
    },
    {
      id: 'fresh-mtls',
      target: 'renewals over fresh mTLS connections ≥ 0.8× keep-alive, c=32',
      unit: '×',
      measured: result.tlsFloor?.tessera?.ratio,
      note:
        result.tlsFloor?.ratio === undefined
          ? undefined
          : `on Redis ${result.redis?.freshOverKeepAlive ?? 'n/a'}×; a bare Node HTTPS server ${result.tlsFloor.ratio}×, which caps Tessera at ${result.tlsFloor.tessera?.ceiling}×`,
      threshold: 0.8,
      cmp: atLeast,
    },
    { id: 'log-rate', target: 'issuance rate at 10^7 audit entries within 10 % of 10^3', unit: '×', measured: result.scale?.ratio, threshold: 0.9, cmp: atLeast },
    { id: 'log-restart', target: 'restart at 10^7 audit entries < 5 s', unit: 'ms', measured: restart, threshold: 5000, cmp: (v, t) => (v === undefined ? null : v < t) },
    {
      id: 'log-memory',
      target: 'resident memory at 10^7 audit entries: reported',
      unit: 'MiB',
      measured: big?.serverPeakRssMiB,
      note: big === undefined ? undefined : `RSS ${big.rssStartMiB} MiB at start, ${big.serverPeakRssMiB} MiB peak`,
      threshold: undefined,
      cmp: () => null,
    },
  ];
  return targets.map(({ cmp, threshold, ...t }) => ({ ...t, met: cmp(t.measured, threshold) }));
}

export function printTargets(targets) {
  console.log('\nIssue 19 targets, from the rows above:\n');
  console.log('| target | measured | met |\n|---|---:|:---:|');
  for (const t of targets) {
    const value =
      t.measured === undefined ? 'not measured' : t.unit === '×' ? `${t.measured.toFixed(2)}×` : `${t.measured.toLocaleString('en')}${t.unit ? ` ${t.unit}` : ''}`;
    const met = t.met === null ? (t.measured === undefined ? '—' : 'reported') : t.met ? 'yes' : 'no';
    console.log(`| ${t.target} | ${value}${t.note ? ` (${t.note})` : ''} | ${met} |`);
  }
}
