/**
 * The `advisory-lock` package (PostgreSQL session advisory locks, about 30k downloads a month),
 * the peer of pgCoordinator in bench/coordinator.bench.ts.
 */
// CommonJS compiled from ESM: Node's default import is its `module.exports`, the function is `.default`.
import advisoryLock from 'advisory-lock';

/** An exclusive `advisory-lock` mutex named `name` on the server at `connectionString`. */
export function advisoryMutex(
  connectionString: string,
  name: string,
): { lock(): Promise<() => Promise<void>> } {
  return advisoryLock.default(connectionString)(name);
}
