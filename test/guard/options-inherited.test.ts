/**
 * Found in review (a test that failed before the fix): option names are checked on own enumerable keys only (validateUnknownKeys skips
 * `!Object.hasOwn`), but options are read with plain property access, which sees inherited ones.
 * So an options object built on a prototype (`Object.create(defaults)`, a common way to share
 * defaults) has its correct inherited options honoured and its misspelled ones silently ignored:
 * the very bug unknown-option checking exists to catch.
 */
import { describe, expect, it } from 'vitest';
import { EngineGuard } from '../../src/index.js';

describe('inherited options', () => {
  it('honours an inherited option (reference behaviour: inherited options are read)', () => {
    const options = Object.assign(Object.create({ pool: 'x' }) as object, { create: () => 1 });
    expect(() => new EngineGuard(options as never)).toThrow(/"pool"/);
  });

  it('rejects an inherited misspelled option naming it, as it rejects an own one', async () => {
    const defaults = { pol: 4 };
    const options = Object.assign(Object.create(defaults) as object, { create: () => 1 });
    let guard: EngineGuard<number> | undefined;
    try {
      expect(() => {
        guard = new EngineGuard<number>(options as never);
      }).toThrow(/Unknown option "pol"/);
    } finally {
      await guard?.close();
    }
  });

  it('rejects an inherited misspelled nested option (liveness.intervall) naming it', async () => {
    let guard: EngineGuard<number> | undefined;
    try {
      expect(() => {
        guard = new EngineGuard<number>({
          create: () => 1,
          probe: () => {},
          liveness: Object.create({ intervall: 5 }) as object,
        });
      }).toThrow(/Unknown option "liveness\.intervall"/);
    } finally {
      await guard?.close();
    }
  });
});
