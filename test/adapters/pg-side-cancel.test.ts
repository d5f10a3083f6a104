/**
 * Found in review (failed before the fix): the side connection is "never trusted", but only in the sense that a use which finds
 * it dead FAILS (and the next use reconnects). For `cancel` that means the first cancel after
 * the side backend went away (idle_session_timeout, a proxy or firewall dropping idle
 * connections, an admin's pg_terminate_backend) is lost: it rejects instead of reconnecting and
 * cancelling, so the guard has to wait out cancelTimeout and abandon a healthy handle.
 */
import { pgGuardOptions, pgQuery } from 'engine-guard/pg';
import { describe, expect, it, onTestFinished } from 'vitest';
import { adminQuery, clientConfig } from '../support/pg.js';

async function waitFor(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('pg cancel over a side connection that died while idle', () => {
  it('cancel reconnects and cancels the running query instead of failing once', async () => {
    const app = `rv-side-${process.pid}-${Date.now()}`;
    const options = pgGuardOptions({
      config: clientConfig(),
      sideConfig: clientConfig({ application_name: app }),
    });
    const handle = await options.create({ signal: new AbortController().signal, generation: 1 });
    onTestFinished(() => options.destroy?.(handle, { reason: 'test' }));
    const sidePids = async () =>
      (
        await adminQuery<{ pid: number }>(
          'SELECT pid FROM pg_stat_activity WHERE application_name = $1',
          [app],
        )
      ).rows.map((r) => r.pid);
    // `create` warms the side connection; wait until it is there, then kill it while idle.
    await waitFor(async () => (await sidePids()).length === 1, 5_000, 'the side connection');
    const [side] = await sidePids();
    await adminQuery('SELECT pg_terminate_backend($1)', [side]);
    await waitFor(async () => (await sidePids()).length === 0, 5_000, 'the side backend to go');

    const ctx = { signal: new AbortController().signal, heartbeat() {} };
    const running = pgQuery(handle, ctx, 'SELECT pg_sleep(20)').catch((e: unknown) => e);
    await waitFor(
      async () =>
        (
          await adminQuery<{ state: string }>('SELECT state FROM pg_stat_activity WHERE pid = $1', [
            handle.pid,
          ])
        ).rows[0]?.state === 'active',
      5_000,
      'the query to run',
    );
    const op = { id: 1, kind: 'read' as const, label: undefined, generation: 1, startedAt: 0 };
    const cancelled = await Promise.resolve()
      .then(() => options.cancel?.(handle, { op, reason: new Error('caller gave up') }))
      .then(
        (value: unknown) => ({ value }),
        (error: Error) => ({ error: error.message }),
      );
    expect(cancelled).toEqual({ value: true });
    expect(await running).toMatchObject({ code: '57014' });
  }, 30_000);
});
