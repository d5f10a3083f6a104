/**
 * pgCoordinator's refusals of servers it cannot work on (no real pooler or old server here: the
 * checks are fed what those would answer).
 */
import { describe, expect, it } from 'vitest';
import { PgCoordinatorError } from '../../src/adapters/pg.js';
import {
  checkServerVersion,
  checkSessionPinned,
} from '../../src/adapters/pg-coordinator-settings.js';

describe('pgCoordinator server checks', () => {
  it('refuses a server older than PostgreSQL 14, naming the version', () => {
    const error = (() => {
      try {
        checkServerVersion({ version: 130_011, pid: 1 });
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(PgCoordinatorError);
    expect(error).toMatchObject({ code: 'ERR_PG_COORDINATOR', reason: 'server-version' });
    expect((error as Error).message).toMatch(/PostgreSQL 14 or later.*130011/);
    expect(checkServerVersion({ version: 140_000, pid: 1 })).toEqual({ version: 140_000, pid: 1 });
  });

  it('refuses a transaction-mode pooler: another backend, or the session setting gone', () => {
    const first = { version: 150_000, pid: 10 };
    expect(() => checkSessionPinned(first, { pid: 11, token: 't' }, 't')).toThrow(
      expect.objectContaining({
        reason: 'pooler',
        message: expect.stringMatching(/transaction-mode pooler/),
      }),
    );
    expect(() => checkSessionPinned(first, { pid: 10, token: null }, 't')).toThrow(
      expect.objectContaining({ reason: 'pooler' }),
    );
    expect(() => checkSessionPinned(first, undefined, 't')).toThrow(PgCoordinatorError);
    expect(() => checkSessionPinned(first, { pid: 10, token: 't' }, 't')).not.toThrow();
  });
});
