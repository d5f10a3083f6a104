// Type-checked (never run) through the "require" condition (dist/index.d.cts): a CommonJS
// consumer sees the same API.
import { EngineGuard, EngineStalledError, LockTimeoutError, RWLock } from 'engine-guard';

export async function cjsConsumer(): Promise<string> {
  const lock = new RWLock();
  const guard = new EngineGuard<{ id: number }>({ create: () => ({ id: 1 }) });
  try {
    const id: number = await guard.read((engine) => engine.id);
    await lock.read(() => id);
    return 'ok';
  } catch (error) {
    if (error instanceof LockTimeoutError || error instanceof EngineStalledError) return error.code;
    throw error;
  } finally {
    await guard.close();
  }
}
