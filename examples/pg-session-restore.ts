/**
 * A PostgreSQL session whose state outlives its connection. The session keeps what it needs to
 * rebuild itself (its settings, the rows of its temporary workspace table) on the application
 * side, and gives the guard a `restore` hook that re-applies the `SET`s and re-creates the
 * workspace on a new handle. When its backend dies (here: `pg_terminate_backend`, as a failover
 * or an administrator would), the next op runs `restore` first, sees `ctx.restored === true`, and
 * finds the session as it was. Without `restore`, that op would reject with `SessionLostError`.
 *
 * Stateless reads (`guard.read`) never see the session's state: their handles are reset between
 * callers by the adapter's default `reset` (`pgReset`).
 *
 *   npx tsx examples/pg-session-restore.ts                       (a throwaway local cluster)
 *   DATABASE_URL=postgres://user@host/db npx tsx examples/pg-session-restore.ts
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { EngineGuard, type OpContext } from 'engine-guard';
import { type PgClientConfig, type PgHandle, pgGuardOptions, pgQuery } from 'engine-guard/pg';

/** The session's state, kept by the application so that it can be rebuilt on any handle. */
interface Workspace {
  /** Settings the session works with, re-applied on every new handle. */
  settings: Record<string, string>;
  /** Rows of its temporary table `picks`. */
  picks: number[];
}

/** The session's state on `pg`: settings with `set_config`, the workspace table and its rows. */
async function apply(pg: PgHandle, ctx: OpContext, workspace: Workspace): Promise<void> {
  for (const [name, value] of Object.entries(workspace.settings)) {
    await pgQuery(pg, ctx, 'SELECT set_config($1, $2, false)', [name, value]);
  }
  await pgQuery(pg, ctx, 'CREATE TEMPORARY TABLE IF NOT EXISTS picks (id int PRIMARY KEY)');
  await pgQuery(pg, ctx, 'INSERT INTO picks SELECT unnest($1::int[]) ON CONFLICT DO NOTHING', [
    workspace.picks,
  ]);
}

/** What the session sees: its settings and its workspace. */
async function look(pg: PgHandle, ctx: OpContext) {
  const { rows } = await pgQuery<{ timeout: string; app: string; picks: number[] }>(
    pg,
    ctx,
    "SELECT current_setting('statement_timeout') AS timeout," +
      " current_setting('application_name') AS app," +
      ' (SELECT coalesce(array_agg(id ORDER BY id), ARRAY[]::int[]) FROM picks) AS picks',
  );
  return { ...rows[0], generation: ctx.generation, restored: ctx.restored, pid: pg.pid };
}

/** What the example shows, for its test. */
export interface RestoreDemoResult {
  before: Awaited<ReturnType<typeof look>>;
  after: Awaited<ReturnType<typeof look>>;
  /** Whether a stateless read saw the session's `picks` table. */
  statelessSawPicks: boolean;
}

/** Runs the example against the server `config` points to; `log` narrates. */
export async function restoreDemo(
  config: PgClientConfig,
  log: (line: string) => void = console.log,
): Promise<RestoreDemoResult> {
  const guard = new EngineGuard(pgGuardOptions({ config }, { pool: 2, maxSessions: 4 }));
  try {
    const workspace: Workspace = {
      settings: { statement_timeout: '30s', application_name: 'analyst-7' },
      picks: [],
    };
    await using session = guard.session({
      label: 'analyst 7',
      restore: (pg, ctx) => apply(pg, ctx, workspace),
    });

    // First op: the session's handle is new; build its state (as restore would).
    await session.write(async (pg, ctx) => {
      await apply(pg, ctx, workspace);
      await pgQuery(pg, ctx, 'INSERT INTO picks VALUES (3), (14), (15)');
      workspace.picks.push(3, 14, 15);
    });
    const before = await session.read(look);
    log(
      `before: generation ${before.generation}, picks ${before.picks}, timeout ${before.timeout}`,
    );

    const statelessSawPicks = await guard.read(
      async (pg, ctx) =>
        (await pgQuery<{ t: string | null }>(pg, ctx, "SELECT to_regclass('pg_temp.picks') AS t"))
          .rows[0]?.t != null,
    );
    log(`a stateless read sees the session's table: ${statelessSawPicks}`);

    // The session's backend dies, as in a failover.
    await guard.read((pg, ctx) =>
      pgQuery(pg, ctx, 'SELECT pg_terminate_backend($1)', [before.pid]),
    );
    while (session.status().state === 'open' && (await stillAlive(guard, before.pid))) {
      await sleep(10);
    }
    const after = await session.read(look);
    log(
      `after the loss: generation ${after.generation} (restored: ${after.restored}), ` +
        `picks ${after.picks}, timeout ${after.timeout}, application_name ${after.app}`,
    );
    return { before, after, statelessSawPicks };
  } finally {
    await guard.close();
  }
}

/** Whether backend `pid` is still listed by the server. */
async function stillAlive(guard: EngineGuard<PgHandle>, pid: number): Promise<boolean> {
  return guard.read(
    async (pg, ctx) =>
      (await pgQuery(pg, ctx, 'SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid])).rows.length >
      0,
  );
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const url = process.env.DATABASE_URL;
  if (url !== undefined) {
    await restoreDemo({ connectionString: url });
  } else {
    const { startPgCluster } = await import('../test/support/pg-cluster.js');
    const cluster = await startPgCluster();
    try {
      const { host, port, user, database } = cluster;
      await restoreDemo({ host, port, user, database });
    } finally {
      await cluster.stop();
    }
  }
}
