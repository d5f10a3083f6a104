/**
 * EngineGuard on the FakeEngine (no real server). Bad input throws at the call, naming the option.
 * Timing margins are generous on purpose (noisy 2-core machines); assertions are on behaviour.
 */
import { describe, expect, it } from 'vitest';
import { EngineGuard } from '../../src/index.js';
import { FakeEngine } from '../../src/testing/index.js';
import { captureWarnings, type FakeGuardOptions as Options, queued } from '../support/guard.js';

describe('k. bad input', () => {
  const create = () => new FakeEngine();
  const cases: [string, unknown, ErrorConstructor, RegExp][] = [
    ['pool 0', { create, pool: 0 }, RangeError, /"pool"/],
    ['pool 1.5', { create, pool: 1.5 }, RangeError, /"pool"/],
    ['pool "2"', { create, pool: '2' }, TypeError, /"pool"/],
    [
      'liveness.interval -1',
      { create, liveness: { interval: -1 } },
      RangeError,
      /"liveness\.interval"/,
    ],
    ['liveness.timeout 0', { create, liveness: { timeout: 0 } }, RangeError, /"liveness\.timeout"/],
    [
      'liveness.failures 0',
      { create, liveness: { failures: 0 } },
      RangeError,
      /"liveness\.failures"/,
    ],
    ['liveness "fast"', { create, liveness: 'fast' }, TypeError, /"liveness"/],
    [
      'liveness.pauseThreshold NaN',
      { create, liveness: { pauseThreshold: Number.NaN } },
      TypeError,
      /"liveness\.pauseThreshold"/,
    ],
    [
      'liveness.idleCheckAfter -1 (with a probe)',
      { create, probe: async () => {}, liveness: { idleCheckAfter: -1 } },
      RangeError,
      /"liveness\.idleCheckAfter"/,
    ],
    [
      'liveness.idleCheckAfter -1 (without a probe)',
      { create, liveness: { idleCheckAfter: -1 } },
      RangeError,
      /"liveness\.idleCheckAfter"/,
    ],
    ['reconnect.jitter 2', { create, reconnect: { jitter: 2 } }, RangeError, /"reconnect\.jitter"/],
    [
      'reconnect.factor 0.5',
      { create, reconnect: { factor: 0.5 } },
      RangeError,
      /"reconnect\.factor"/,
    ],
    [
      'reconnect.initialDelay -5',
      { create, reconnect: { initialDelay: -5 } },
      RangeError,
      /"reconnect\.initialDelay"/,
    ],
    [
      'reconnect.failFastAfter 0',
      { create, reconnect: { failFastAfter: 0 } },
      RangeError,
      /"reconnect\.failFastAfter"/,
    ],
    ['reconnect 3', { create, reconnect: 3 }, TypeError, /"reconnect"/],
    ['create missing', {}, TypeError, /"create"/],
    ['create not a function', { create: 'connect' }, TypeError, /"create"/],
    ['destroy not a function', { create, destroy: 1 }, TypeError, /"destroy"/],
    ['setup not a function', { create, setup: {} }, TypeError, /"setup"/],
    ['probe not a function', { create, probe: true }, TypeError, /"probe"/],
    ['cancel not a function', { create, cancel: 'x' }, TypeError, /"cancel"/],
    ['isFatal not a function', { create, isFatal: 0 }, TypeError, /"isFatal"/],
    ['acquireTimeout NaN', { create, acquireTimeout: Number.NaN }, TypeError, /"acquireTimeout"/],
    ['acquireTimeout -1', { create, acquireTimeout: -1 }, RangeError, /"acquireTimeout"/],
    ['cancelTimeout 0', { create, cancelTimeout: 0 }, RangeError, /"cancelTimeout"/],
    ['closeTimeout Infinity', { create, closeTimeout: Infinity }, RangeError, /"closeTimeout"/],
    ['connectTimeout "1s"', { create, connectTimeout: '1s' }, TypeError, /"connectTimeout"/],
    ['destroyTimeout 2**31', { create, destroyTimeout: 2 ** 31 }, RangeError, /"destroyTimeout"/],
    ['maxQueue -1', { create, maxQueue: -1 }, RangeError, /"maxQueue"/],
    ['name 5', { create, name: 5 }, TypeError, /"name"/],
    ['waitForReady "yes"', { create, waitForReady: 'yes' }, TypeError, /"waitForReady"/],
    // Misspelled options: named, with the option probably meant.
    ['unknown "pol"', { create, pol: 4 }, TypeError, /"pol"; did you mean "pool"\?/],
    [
      'unknown "liveness.intervall"',
      { create, liveness: { intervall: 50 } },
      TypeError,
      /"liveness\.intervall"; did you mean "liveness\.interval"\?/,
    ],
    [
      'unknown "reconnect.failfastafter"',
      { create, reconnect: { failfastafter: 2 } },
      TypeError,
      /"reconnect\.failfastafter"; did you mean "reconnect\.failFastAfter"\?/,
    ],
    [
      'unknown "acquireTimeOut"',
      { create, acquireTimeOut: 5 },
      TypeError,
      /did you mean "acquireTimeout"/,
    ],
    [
      'unknown far from any "frobnicate"',
      { create, frobnicate: 1 },
      TypeError,
      /^Unknown option "frobnicate"$/,
    ],
  ];
  for (const [title, options, type, message] of cases) {
    it(`throws ${type.name} for ${title}`, () => {
      // 'idleCheckAfter -1 (without a probe)' sets liveness without a probe: the guard warns
      // (ENGINE_GUARD_NO_PROBE) before the bad value makes it throw. Captured, not printed; any
      // other warning fails the test.
      const { warnings } = captureWarnings(() => {
        expect(() => new EngineGuard(options as Options)).toThrow(type);
        expect(() => new EngineGuard(options as Options)).toThrow(message);
      });
      expect(warnings.filter((w) => w.code !== 'ENGINE_GUARD_NO_PROBE')).toEqual([]);
    });
  }

  it('throws TypeError for options that are not an object', () => {
    expect(() => new EngineGuard(null as unknown as Options)).toThrow(TypeError);
    expect(() => new EngineGuard(undefined as unknown as Options)).toThrow(/create/);
  });

  it('accepts valid edge values', async () => {
    const guard = new EngineGuard<FakeEngine>({
      create,
      pool: 1,
      liveness: false,
      maxQueue: Infinity,
      acquireTimeout: 0,
      reconnect: { jitter: 0, factor: 1, initialDelay: 0 },
    });
    await guard.close();
  });

  it('throws at the call for invalid read/write/cache/on arguments', async () => {
    const guard = new EngineGuard<FakeEngine>({ create });
    try {
      const bad: [string, () => unknown, ErrorConstructor, RegExp][] = [
        ['read(123)', () => guard.read(123 as never), TypeError, /"fn"/],
        ['write(undefined)', () => guard.write(undefined as never), TypeError, /"fn"/],
        ['read options "x"', () => guard.read(() => 1, 'x' as never), TypeError, /options/],
        [
          'read signal {}',
          () => guard.read(() => 1, { signal: {} as AbortSignal }),
          TypeError,
          /"signal"/,
        ],
        ['read timeout -1', () => guard.read(() => 1, { timeout: -1 }), RangeError, /"timeout"/],
        [
          'write timeout NaN',
          () => guard.write(() => 1, { timeout: Number.NaN }),
          TypeError,
          /"timeout"/,
        ],
        ['write label 7', () => guard.write(() => 1, { label: 7 as never }), TypeError, /"label"/],
        [
          'read option "timout"',
          () => guard.read(() => 1, { timout: 5 } as never),
          TypeError,
          /"timout"; did you mean "timeout"\?/,
        ],
        [
          'write option "waitForready"',
          () => guard.write(() => 1, { waitForready: true } as never),
          TypeError,
          /did you mean "waitForReady"\?/,
        ],
        [
          'read waitForReady 1',
          () => guard.read(() => 1, { waitForReady: 1 as never }),
          TypeError,
          /"waitForReady"/,
        ],
        ['cache(null)', () => guard.cache(null as never), TypeError, /"loader"/],
        ['cache maxAge -1', () => guard.cache(() => 1, { maxAge: -1 }), RangeError, /"maxAge"/],
        ['on(stall, 1)', () => guard.on('stall', 1 as never), TypeError, /listener/],
      ];
      for (const [title, call, type, message] of bad) {
        let thrown: unknown;
        try {
          const result = call();
          // A rejected promise instead of a throw would be a failure too.
          if (result instanceof Promise) result.catch(() => {});
        } catch (error) {
          thrown = error;
        }
        expect(thrown, title).toBeInstanceOf(type);
        expect((thrown as Error).message, title).toMatch(message);
      }
      // Nothing was queued or run by the bad calls.
      expect(guard.status().counters.ops).toBe(0);
      expect(queued(guard)).toBe(0);
    } finally {
      await guard.close();
    }
  });
});
