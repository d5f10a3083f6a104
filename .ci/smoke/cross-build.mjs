// Loads the ESM build (import) and the CJS build (require) of the installed engine-guard into
// one process, as an app does when one dependency imports it and another requires it, and checks
// that errors made by either build are `instanceof` the classes of both. Run by run-core.sh from
// the consumer project it installed the tarball into.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const esm = await import('engine-guard');
const cjs = createRequire(`${process.cwd()}/`)('engine-guard');

assert.notEqual(esm.LockTimeoutError, cjs.LockTimeoutError, 'two distinct builds were loaded');

const ERROR_CLASSES = [
  'LockTimeoutError',
  'DeadlockError',
  'QueueFullError',
  'LeaseRevokedError',
  'EngineStalledError',
  'EngineUnavailableError',
  'GuardClosedError',
  'ProbeTimeoutError',
  'HookTimeoutError',
];

/** One error of each class made by `build`'s own constructors. */
function made(build) {
  return {
    LockTimeoutError: new build.LockTimeoutError(10, 'lock'),
    DeadlockError: new build.DeadlockError('write in read', 'lock'),
    QueueFullError: new build.QueueFullError(1, 'lock'),
    LeaseRevokedError: new build.LeaseRevokedError(),
    EngineStalledError: new build.EngineStalledError({
      guardName: 'g',
      kind: 'write',
      opId: 1,
      generation: 1,
      probeFailures: 3,
    }),
    EngineUnavailableError: new build.EngineUnavailableError(
      3,
      new Error('refused'),
      undefined,
      'g',
    ),
    GuardClosedError: new build.GuardClosedError('g'),
    ProbeTimeoutError: new build.ProbeTimeoutError(100),
    HookTimeoutError: new build.HookTimeoutError('connect', 100),
  };
}

let checked = 0;
for (const [madeBy, maker] of [
  ['ESM', esm],
  ['CJS', cjs],
]) {
  const errors = made(maker);
  for (const [checkedBy, checker] of [
    ['ESM', esm],
    ['CJS', cjs],
  ]) {
    for (const name of ERROR_CLASSES) {
      const error = errors[name];
      assert.ok(
        error instanceof checker[name],
        `${madeBy} ${name} instanceof ${checkedBy} ${name}`,
      );
      assert.ok(
        error instanceof checker.EngineGuardError,
        `${madeBy} ${name} instanceof ${checkedBy} EngineGuardError`,
      );
      assert.ok(error instanceof Error, `${madeBy} ${name} instanceof Error`);
      checked += 3;
      for (const other of ERROR_CLASSES) {
        if (other === name) continue;
        assert.ok(
          !(error instanceof checker[other]),
          `${madeBy} ${name} must not be instanceof ${checkedBy} ${other}`,
        );
        checked++;
      }
    }
  }
}

// Nothing else passes for an engine-guard error: a plain error with a matching code, or null.
for (const build of [esm, cjs]) {
  const impostor = Object.assign(new Error('x'), { code: 'ERR_LOCK_TIMEOUT' });
  assert.ok(
    !(impostor instanceof build.LockTimeoutError),
    'a look-alike is not a LockTimeoutError',
  );
  assert.ok(
    !(impostor instanceof build.EngineGuardError),
    'a look-alike is not an EngineGuardError',
  );
  assert.ok(!(null instanceof build.EngineGuardError), 'null is not an EngineGuardError');
  checked += 3;
}

// Errors the library raises itself, not only constructed ones.
const lock = new esm.RWLock({ name: 'smoke' });
const held = await lock.acquireWrite();
const timedOut = await lock.acquireRead({ timeout: 1 }).then(
  () => assert.fail('acquireRead must time out behind a held write'),
  (error) => error,
);
held.release();
assert.ok(timedOut instanceof cjs.LockTimeoutError, 'ESM lock timeout instanceof CJS class');
assert.equal(timedOut.lockName, 'smoke');

const guard = new cjs.EngineGuard({ name: 'smoke-guard', create: () => ({}), liveness: false });
assert.equal(await guard.read(() => 'ok'), 'ok');
await guard.close();
const closed = await guard
  .read(() => 'late')
  .then(
    () => assert.fail('a read on a closed guard must reject'),
    (error) => error,
  );
assert.ok(closed instanceof esm.GuardClosedError, 'CJS GuardClosedError instanceof ESM class');
assert.ok(closed instanceof esm.EngineGuardError);
assert.equal(closed.guardName, 'smoke-guard');
checked += 5;

console.log(
  `cross-build instanceof: ${checked} assertions passed (ESM and CJS builds in one process)`,
);
