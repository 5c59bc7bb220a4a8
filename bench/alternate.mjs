// Side-by-side measurement for rows whose ratio is a target: every side is already running, and the
// rounds alternate which side goes first, so a slow spell of the shared machine falls on both. Measured
// one after the other, the same code's ratios swung by a third (docs/performance.md).

/**
 * Runs `measure(side, round)` for each side in each of `rounds` rounds (order alternating) and returns,
 * per side in the order given, its median run by rate with `rounds` and `rpsByRound` added.
 */
export async function alternatingRounds(sides, rounds, measure) {
  const runs = sides.map(() => []);
  for (let i = 0; i < rounds; i++) {
    const order = sides.map((_, k) => k);
    if (i % 2 === 1) order.reverse();
    for (const k of order) runs[k].push(await measure(sides[k], i));
  }
  return runs.map((rs) => {
    const median = [...rs].sort((x, y) => x.rps - y.rps)[Math.floor((rs.length - 1) / 2)];
    return { ...median, rounds, rpsByRound: rs.map((r) => r.rps) };
  });
}
