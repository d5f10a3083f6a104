/**
 * What engine-guard/duckdb's busy-handle probe costs, and when it stops answering, for
 * docs/design.md ("Choosing liveness settings"). The probe is the adapter's own (the `probe`
 * hook of `duckdbGuardOptions`, called as the watchdog calls it for a running op: a fresh
 * connection of the instance, `select 1`, closed). `ROUNDS` probes one after another, each
 * bounded by the library's default probe timeout, on an idle in-memory instance and then with
 * 1 to 4 long queries running on connections of their own: each DuckDB call holds a libuv thread
 * (`UV_THREADPOOL_SIZE`, default 4) while it runs, and so does the probe's `connect()`.
 *
 *   npx tsx examples/duckdb-probe-cost.ts
 */
import { type DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import { DEFAULT_LIVENESS, type OpInfo } from 'engine-guard';
import { duckdbGuardOptions } from 'engine-guard/duckdb';

const ROUNDS = Number(process.env.ROUNDS ?? 200);
/** Keeps DuckDB busy for hours without a result chunk: only side probes can vouch for it. */
const LONG_QUERY = 'SELECT count(*) AS n FROM range(1000000000000) t(i) WHERE hash(i) % 7 = 3';

const instance = await DuckDBInstance.create(':memory:');
const probe = duckdbGuardOptions(instance).probe!;
/** The op the watchdog would pass for a running read. */
const op: OpInfo = {
  id: 1,
  kind: 'read',
  label: 'long query',
  generation: 1,
  startedAt: performance.now(),
};

/** Runs the long query on `n` connections of their own; resolves to a function that stops them. */
async function busy(n: number): Promise<() => Promise<void>> {
  const conns: DuckDBConnection[] = [];
  const running: Promise<unknown>[] = [];
  for (let i = 0; i < n; i++) {
    const conn = await instance.connect();
    conns.push(conn);
    running.push(conn.run(LONG_QUERY).catch(() => undefined));
  }
  await new Promise((resolve) => setTimeout(resolve, 300)); // let them get going
  return async () => {
    // Interrupt until each call settled (an interrupt before the query started is lost).
    let stop = false;
    const settled = Promise.all(running).then(() => {
      stop = true;
    });
    while (!stop) {
      for (const conn of conns) conn.interrupt();
      await Promise.race([settled, new Promise((resolve) => setTimeout(resolve, 25))]);
    }
    for (const conn of conns) conn.closeSync();
  };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

console.log(
  `engine-guard/duckdb busy-handle probe, ${ROUNDS} probes per row, each bounded by ` +
    `${DEFAULT_LIVENESS.timeout} ms (the default liveness.timeout); UV_THREADPOOL_SIZE ` +
    `${process.env.UV_THREADPOOL_SIZE ?? '4 (default)'}, DuckDB in memory`,
);
for (const longQueries of [0, 1, 2, 3, 4]) {
  const stop = await busy(longQueries);
  const times: number[] = [];
  let failed = 0;
  const cpuBefore = process.cpuUsage();
  for (let i = 0; i < ROUNDS; i++) {
    const t0 = performance.now();
    const signal = AbortSignal.timeout(DEFAULT_LIVENESS.timeout);
    try {
      // As the watchdog does: the probe is over when its signal aborts, answer or not (a
      // `connect()` waiting for a libuv thread ignores the signal).
      await Promise.race([
        probe(undefined as unknown as DuckDBConnection, { signal, op }),
        new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason))),
      ]);
      times.push(performance.now() - t0);
    } catch {
      failed++;
      // Every later probe would wait just as long: one failure tells the story.
      break;
    }
  }
  const cpu = process.cpuUsage(cpuBefore);
  await stop();
  const sorted = times.sort((a, b) => a - b);
  console.log(
    failed > 0
      ? `${longQueries} long queries: the probe did not answer within ${DEFAULT_LIVENESS.timeout} ms ` +
          `(after ${times.length} that did): a healthy query would be convicted`
      : `${longQueries} long queries: median ${percentile(sorted, 50).toFixed(2)} ms, p95 ` +
          `${percentile(sorted, 95).toFixed(2)} ms, max ${percentile(sorted, 100).toFixed(2)} ms per ` +
          'probe' +
          // With long queries running, the process's CPU is theirs: only the idle row says what
          // a probe costs (client and engine are one process).
          (longQueries === 0
            ? `; ${((cpu.user + cpu.system) / 1000 / ROUNDS).toFixed(2)} ms CPU per probe`
            : ''),
  );
}
instance.closeSync();
