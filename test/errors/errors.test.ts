import { describe, expect, it } from 'vitest';
import {
  DeadlockError,
  EngineGuardError,
  EngineStalledError,
  GuardClosedError,
  LockTimeoutError,
  QueueFullError,
} from '../../src/index.js';

/** What a second copy of the package (the other build) would make: same brand, another class. */
function foreignError(code: string): Error {
  const error = new Error('made by another copy of engine-guard');
  Object.defineProperty(error, Symbol.for('engine-guard.error'), { value: true });
  Object.assign(error, { code });
  return error;
}

describe('errors', () => {
  it('are instances of their class across copies of the package, matched by code', () => {
    const timeout = foreignError('ERR_LOCK_TIMEOUT');
    expect(timeout instanceof LockTimeoutError).toBe(true);
    expect(timeout instanceof EngineGuardError).toBe(true);
    expect(timeout instanceof DeadlockError).toBe(false);
    expect(foreignError('ERR_ENGINE_STALLED') instanceof EngineStalledError).toBe(true);
  });

  it('an unbranded error with a matching code is not one of ours', () => {
    const lookalike = Object.assign(new Error('x'), { code: 'ERR_LOCK_TIMEOUT' });
    expect(lookalike instanceof LockTimeoutError).toBe(false);
    expect(lookalike instanceof EngineGuardError).toBe(false);
    expect((null as unknown as object) instanceof EngineGuardError).toBe(false);
  });

  it('a subclass made by a user keeps ordinary instanceof semantics', () => {
    class MyTimeout extends LockTimeoutError {}
    expect(new MyTimeout(5) instanceof MyTimeout).toBe(true);
    expect(new MyTimeout(5) instanceof LockTimeoutError).toBe(true);
    expect(new LockTimeoutError(5) instanceof MyTimeout).toBe(false);
  });

  it('carry the lock or guard name as a field', () => {
    expect(new LockTimeoutError(5, 'catalog').lockName).toBe('catalog');
    expect(new QueueFullError(2, 'catalog').lockName).toBe('catalog');
    expect(new DeadlockError('x', 'catalog').lockName).toBe('catalog');
    expect(new GuardClosedError('warehouse').guardName).toBe('warehouse');
  });

  it('a lock timeout names what it waited for', () => {
    const error = new LockTimeoutError(1_000, 'warehouse', {
      waitingFor: [{ id: 12, kind: 'read', label: 'count trips', ageMs: 240_000 }],
    });
    expect(error.waitingFor).toHaveLength(1);
    expect(error.message).toContain('read #12 "count trips" (running 4 min)');
    expect(new LockTimeoutError(5).waitingFor).toEqual([]);
  });
});
