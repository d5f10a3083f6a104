// Type-checked (never run) against the packed tarball by .ci/smoke/run-core.sh, through the
// "import" condition (dist/index.d.ts). Uses only the stable public API.
import {
  channelNames,
  DeadlockError,
  EngineGuard,
  EngineGuardError,
  type EngineGuardErrorCode,
  type EngineGuardOptions,
  EngineStalledError,
  EngineUnavailableError,
  GuardClosedError,
  type GuardEventMessage,
  type GuardState,
  type GuardStatus,
  type Lease,
  type LockCancelMessage,
  type LockMode,
  LockTimeoutError,
  type OpContext,
  QueueFullError,
  RWLock,
  type RWLockState,
} from 'engine-guard';

interface Conn {
  query(sql: string, options: { signal: AbortSignal }): Promise<number[]>;
  close(): Promise<void>;
}

declare function connect(signal: AbortSignal): Promise<Conn>;

const options: EngineGuardOptions<Conn> = {
  name: 'db',
  pool: 2,
  create: ({ signal }) => connect(signal),
  destroy: (conn) => conn.close(),
  probe: (conn, { signal }) => conn.query('select 1', { signal }),
  liveness: { interval: 5_000, timeout: 3_000, failures: 3 },
  acquireTimeout: 1_000,
};

export async function useGuard(): Promise<GuardState> {
  await using guard = new EngineGuard(options);
  const controller = new AbortController();
  const rows: number[] = await guard.read(
    (conn: Conn, ctx: OpContext) => {
      ctx.heartbeat();
      return conn.query('select 1', { signal: ctx.signal });
    },
    { signal: controller.signal, timeout: 500, label: 'one' },
  );
  const count: number = await guard.write(
    async (conn, ctx) => (await conn.query('x', { signal: ctx.signal })).length,
  );
  const subscription = guard.on('stall', ({ error, op }) => {
    const indeterminate: boolean = error.indeterminate;
    const id: number = op.id;
    void [indeterminate, id];
  });
  subscription.dispose();
  const status: GuardStatus = guard.status();
  const busy: number = status.handles.busy + rows.length + count;
  void busy;
  await guard.close();
  return status.state;
}

export async function useLock(): Promise<RWLockState> {
  const lock = new RWLock({ name: 'catalog', maxReaders: 4, maxQueue: 100 });
  const n: number = await lock.read(() => 1);
  const s: string = await lock.write(async (lease: Lease) => {
    const mode: LockMode = lease.mode;
    const signal: AbortSignal = lease.signal;
    return `${mode} ${signal.aborted}`;
  });
  const lease = await lock.acquireRead({ signal: AbortSignal.timeout(100), timeout: 50 });
  lease.release();
  {
    using held = await lock.acquireWrite();
    void held.mode;
  }
  const maybe: Lease | null = lock.tryAcquireRead();
  maybe?.release();
  // @ts-expect-error releasing by mode on the lock is internal (it unbalanced the lock)
  lock.releaseLease('read');
  void [n, s];
  return lock.state;
}

export function describe(error: unknown): string {
  if (error instanceof LockTimeoutError) {
    const blockers = error.waitingFor.map((op) => `${op.kind} #${op.id} ${op.ageMs} ms`);
    return `${error.code} ${error.timeout} ${error.lockName ?? '-'} ${blockers.join(',')}`;
  }
  if (error instanceof EngineStalledError) {
    return `${error.code} ${error.guardName ?? '-'} ${error.opId} ${error.indeterminate}`;
  }
  if (error instanceof EngineUnavailableError) return `${error.code} ${error.attempts}`;
  if (error instanceof QueueFullError) return `${error.code} ${error.maxQueue} ${error.lockName}`;
  if (error instanceof DeadlockError) return `${error.code} ${error.lockName}`;
  if (error instanceof GuardClosedError) return `${error.code} ${error.guardName}`;
  if (error instanceof EngineGuardError) {
    const code: EngineGuardErrorCode = error.code;
    return code;
  }
  return String(error);
}

export function onGuardEvent(message: GuardEventMessage): string {
  switch (message.type) {
    case 'stall':
      return `${message.guard} stalled: ${message.event.error.opId}`;
    case 'replace':
      return `replaced ${message.event.generation} (${message.event.reason})`;
    case 'state':
      return `${message.event.from} -> ${message.event.to}`;
    default:
      return message.type;
  }
}

export function onLockCancel(message: LockCancelMessage): boolean {
  return message.reason instanceof LockTimeoutError || message.reason instanceof QueueFullError;
}

export const names: string[] = [channelNames.guardEvent, channelNames.lockCancel];

// The channels the library publishes on are internal: only their names are public.
type Api = typeof import('engine-guard');
// @ts-expect-error internal, stripped from the published declarations
export type NoLockChannels = Api['lockChannels'];
// @ts-expect-error internal, stripped from the published declarations
export type NoOpTracing = Api['opTracing'];
// @ts-expect-error internal, stripped from the published declarations
export type NoGuardEventChannel = Api['guardEventChannel'];
// @ts-expect-error a cached value is made by guard.cache(), never constructed by users (type only)
export type NoCachedValueClass = Api['CachedValue'];
// @ts-expect-error a lease is made by the lock, never constructed by users (type only)
export type NoLeaseClass = Api['Lease'];
