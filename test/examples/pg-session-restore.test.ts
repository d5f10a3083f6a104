/**
 * examples/pg-session-restore.ts on the real PostgreSQL: after its backend is killed, the
 * session's next op runs `restore` on a new handle and finds its settings and its temporary
 * table as they were; a stateless read never saw them.
 */
import { describe, expect, it } from 'vitest';
import { restoreDemo } from '../../examples/pg-session-restore.js';
import { clientConfig } from '../support/pg.js';

describe('example: a PostgreSQL session with a restore hook', () => {
  it('comes back after its backend dies, with its SETs and its temporary table', async () => {
    const lines: string[] = [];
    const { before, after, statelessSawPicks } = await restoreDemo(
      clientConfig({ application_name: 'engine-guard-test' }),
      (line) => lines.push(line),
    );
    expect(before).toMatchObject({ restored: false, timeout: '30s', app: 'analyst-7' });
    expect(before.picks).toEqual([3, 14, 15]);
    expect(after).toMatchObject({ restored: true, timeout: '30s', app: 'analyst-7' });
    expect(after.picks).toEqual([3, 14, 15]);
    expect(after.generation).toBeGreaterThan(before.generation);
    expect(after.pid).not.toBe(before.pid);
    expect(statelessSawPicks).toBe(false);
    expect(lines).toHaveLength(3);
  });
});
