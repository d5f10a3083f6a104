/**
 * Server-side cost of engine-guard/pg's busy-handle probes, for docs/design.md: a throwaway
 * PostgreSQL cluster, `ROUNDS` probes of each kind, the server's CPU time (postmaster plus its
 * reaped children, plus the kept side connection's backend) and wall time per probe. Pool 8
 * with the adapter's 1 s interval is 8 busy-handle probes per second. Then the time from a
 * half-open link (FaultProxy blackhole) to EngineStalledError with the adapter's default
 * liveness, `DETECTIONS` times, on a local link and on a slow one (a remote engine), with what a
 * passing probe took on each.
 *
 *   npx tsx examples/pg-probe-cost.ts
 */
import { readFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { EngineGuard, EngineStalledError } from 'engine-guard';
import { PG_LIVENESS, pgGuardOptions, pgQuery } from 'engine-guard/pg';
import { FaultProxy } from 'engine-guard/testing';
import pg from 'pg';
import { startPgCluster } from '../test/support/pg-cluster.js';

const ROUNDS = Number(process.env.ROUNDS ?? 400);
let round = 0;
const TICKS = 100; // clock ticks per second on Linux
const STATE_SQL = 'SELECT state FROM pg_stat_activity WHERE pid = $1';

/** utime + stime + cutime + cstime of `pid`, in ms. */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  const sum = [11, 12, 13, 14].reduce((total, i) => total + Number(fields[i]), 0);
  return (sum * 1000) / TICKS;
}

async function measure(
  name: string,
  startups: string,
  serverPids: () => number[],
  probe: () => Promise<void>,
) {
  const before = serverPids().map(cpuMs);
  const started = performance.now();
  for (let i = 0; i < ROUNDS; i++) await probe();
  const wall = performance.now() - started;
  const after = serverPids().map(cpuMs);
  const cpu = after.reduce((t, v, i) => t + v - (before[i] ?? 0), 0);
  console.log(
    `${name}: ${(cpu / ROUNDS).toFixed(2)} ms server CPU per probe, ${(wall / ROUNDS).toFixed(2)} ms wall; ` +
      `at pool 8 and 1 probe/s per handle: ${((8 * cpu) / ROUNDS / 10).toFixed(2)} % of one core, ` +
      `${startups}`,
  );
}

const cluster = await startPgCluster();
try {
  const config = {
    host: cluster.host,
    port: cluster.port,
    user: cluster.user,
    database: cluster.database,
  };
  const target = new pg.Client(config);
  await target.connect();
  const { rows } = await target.query('SELECT pg_backend_pid() AS pid');
  const pid = rows[0].pid as number;

  await measure(
    'fresh connection per probe',
    '8 authenticated backend start-ups/s',
    () => [cluster.pid],
    async () => {
      const client = new pg.Client(config);
      await client.connect();
      await client.query(STATE_SQL, [pid]);
      await client.end();
    },
  );

  const side = new pg.Client(config);
  await side.connect();
  const sidePid = (await side.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  await measure(
    'kept side connection (state query only)',
    'no start-up',
    () => [cluster.pid, sidePid],
    async () => {
      await side.query(STATE_SQL, [pid]);
    },
  );

  const ping = () =>
    new Promise<void>((resolve, reject) => {
      const socket = netConnect({ host: cluster.host, port: cluster.port });
      socket.once('connect', () => socket.write(Buffer.from([0, 0, 0, 8, 4, 210, 22, 48])));
      socket.once('data', () => {
        socket.destroy();
        resolve();
      });
      socket.once('error', reject);
    });
  await measure(
    'login-free accept check (GSSENCRequest)',
    '8 login-free forks/s',
    () => [cluster.pid],
    ping,
  );
  await measure(
    'kept side connection + one accept check per 8 probes (the adapter at pool 8)',
    '1 login-free fork/s',
    () => [cluster.pid, sidePid],
    async () => {
      round++;
      await Promise.all([side.query(STATE_SQL, [pid]), round % 8 === 0 ? ping() : undefined]);
    },
  );
  await side.end();
  await target.end();

  const bound = PG_LIVENESS.interval * PG_LIVENESS.failures + PG_LIVENESS.timeout;
  /**
   * `DETECTIONS` times: a `pg_sleep(30)` through a FaultProxy whose link goes half-open
   * (`blackhole()`) 1.5 s in, to the caller's `EngineStalledError`, with the pg defaults.
   * `latency`: the link's one-way delay and jitter (a remote engine), none for a local one.
   */
  async function detections(link: string, latency?: [number, number]): Promise<void> {
    const times: number[] = [];
    let probes = 0;
    let probeMs = 0;
    for (let i = 0; i < Number(process.env.DETECTIONS ?? 5); i++) {
      const proxy = await FaultProxy.start({ target: { host: cluster.host, port: cluster.port } });
      if (latency !== undefined) proxy.latency(...latency);
      const guard = new EngineGuard(
        pgGuardOptions(
          { config: { ...config, host: proxy.host, port: proxy.port } },
          { cancelTimeout: 500 },
        ),
      );
      const long = guard.read((handle, ctx) => pgQuery(handle, ctx, 'SELECT pg_sleep(30)'));
      const outcome = long.then(
        () => undefined,
        (error: unknown) => error,
      );
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      // What the passing probes of the healthy query took, over this link.
      const last = guard.status().lastProbe;
      if (last?.ok === true) {
        probes++;
        probeMs += last.durationMs;
      }
      const at = performance.now();
      proxy.blackhole();
      const error = await outcome;
      if (!(error instanceof EngineStalledError))
        throw new Error(`expected a stall, got ${String(error)}`);
      times.push(performance.now() - at);
      await proxy.close();
      await guard.close();
    }
    console.log(
      `${link}: half-open link to EngineStalledError with the pg defaults (bound ${bound} ms): ` +
        `${times.map((ms) => `${Math.round(ms)} ms`).join(', ')}` +
        (probes === 0
          ? ''
          : `; a passing busy-handle probe took ${(probeMs / probes).toFixed(1)} ms`),
    );
  }
  await detections('local link');
  // A remote engine: 50 ± 25 ms each way, about 100 ms a round trip.
  await detections('remote link (50 ± 25 ms each way)', [50, 25]);
} finally {
  await cluster.stop();
}
