/** The example server's session and liveness flags, as `parseCli` reads them. */
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_SESSION_IDLE_TIMEOUT,
  describeLiveness,
  PG_LIVENESS_TEXT,
  parseCli,
  USAGE,
  UsageError,
} from '../../examples/mcp-server/cli.js';
import { PG_LIVENESS } from '../../src/adapters/pg.js';
import { DEFAULT_LIVENESS } from '../../src/index.js';

describe('example server flags: sessions', () => {
  it('defaults: the engine picks --max-sessions; sessions expire after 5 minutes idle', () => {
    const options = parseCli([], {});
    expect(options.maxSessions).toBeUndefined();
    expect(options.sessionIdleTimeout).toBe(DEFAULT_SESSION_IDLE_TIMEOUT);
    expect(DEFAULT_SESSION_IDLE_TIMEOUT).toBe(300_000);
    expect(USAGE).toContain('--max-sessions <n>');
    expect(USAGE).toContain('--session-idle-timeout <ms>');
  });

  it('reads --max-sessions (0 turns sessions off) and --session-idle-timeout', () => {
    expect(parseCli(['--max-sessions', '0'], {}).maxSessions).toBe(0);
    expect(parseCli(['--max-sessions', '12'], {}).maxSessions).toBe(12);
    expect(parseCli(['--session-idle-timeout', '1500'], {}).sessionIdleTimeout).toBe(1500);
  });

  it('refuses bad values, naming the flag', () => {
    for (const [flag, value] of [
      ['--max-sessions', '-1'],
      ['--max-sessions', 'many'],
      ['--max-sessions', '1.5'],
      ['--session-idle-timeout', '0'],
      ['--session-idle-timeout', '5m'],
    ] as const) {
      expect(() => parseCli([flag, value], {}), `${flag} ${value}`).toThrow(UsageError);
      expect(() => parseCli([flag, value], {}), `${flag} ${value}`).toThrow(flag);
    }
  });
});

describe('example server flags: liveness', () => {
  it('without flags, every setting is left to the engine adapter', () => {
    expect(parseCli([], {}).liveness).toEqual({
      interval: undefined,
      timeout: undefined,
      failures: undefined,
    });
    expect(parseCli(['--liveness-timeout', '900'], {}).liveness).toEqual({
      interval: undefined,
      timeout: 900,
      failures: undefined,
    });
  });

  it("the usage states each adapter's defaults as they are", () => {
    expect(PG_LIVENESS_TEXT).toBe(describeLiveness(PG_LIVENESS));
    expect(USAGE).toContain(`${describeLiveness(PG_LIVENESS)} with --pg`);
    expect(USAGE).toContain(`${describeLiveness(DEFAULT_LIVENESS)} for DuckDB`);
  });
});
