/**
 * The shared state behind every MCP session: one engine adapter, one `EngineGuard` in front of
 * it, and a cache of engine facts for the `status` fast path. Over HTTP each session gets its own
 * `McpServer`, but they all share this one app, hence one engine.
 */
import { type CachedValue, DEFAULT_LIVENESS, EngineGuard } from 'engine-guard';
import type { LivenessFlags } from './cli.js';
import { DemoFaults } from './demo-faults.js';
import type { Engine, EngineFacts } from './engine.js';
import type { Logger } from './log.js';

export interface AppSettings {
  pool: number;
  /** Most client sessions holding a connection at once; 0: calls run stateless on the pool. */
  maxSessions: number;
  /** A client session with no call for this long is closed, ms. */
  sessionIdleTimeout: number;
  /** The `--liveness-*` flags given; the adapter's defaults fill in the rest. */
  liveness: LivenessFlags;
  acquireTimeout: number;
  connectTimeout: number;
  maxRows: number;
  maxResultBytes: number;
  progressInterval: number;
  demoFaults: boolean;
}

export interface App<H> {
  readonly engine: Engine<H>;
  readonly guard: EngineGuard<H>;
  readonly facts: CachedValue<EngineFacts>;
  readonly settings: AppSettings;
  /** The liveness settings the guard runs with: the adapter's defaults under the flags given. */
  readonly liveness: Liveness;
  readonly log: Logger;
  readonly faults: DemoFaults<H> | undefined;
  /**
   * The engine adapter reports the state a call leaves (its guard options have a `state` hook):
   * client sessions hold a connection only while they keep state (see client-session.ts).
   */
  readonly pinsOnState: boolean;
  readonly startedAt: number;
  /** Closes the guard (aborting running ops, destroying handles), then the engine. Idempotent. */
  close(): Promise<void>;
}

/** Liveness settings, all three known. */
export interface Liveness {
  interval: number;
  timeout: number;
  failures: number;
}

/** The flags that were given, and only those: an adapter keeps its default for the others. */
function givenFlags(flags: LivenessFlags): Partial<Liveness> | undefined {
  const given = Object.entries(flags).filter(([, value]) => value !== undefined);
  return given.length === 0 ? undefined : Object.fromEntries(given);
}

/** What the guard runs with: the library fills in what the adapter's options leave out. */
function effectiveLiveness(options: { liveness?: Partial<Liveness> | false }): Liveness {
  const set = options.liveness === false ? {} : (options.liveness ?? {});
  return {
    interval: set.interval ?? DEFAULT_LIVENESS.interval,
    timeout: set.timeout ?? DEFAULT_LIVENESS.timeout,
    failures: set.failures ?? DEFAULT_LIVENESS.failures,
  };
}

/** How long cached engine facts are served before a background refresh, ms. */
export const FACTS_MAX_AGE = 15_000;

export function createApp<H>(engine: Engine<H>, settings: AppSettings, log: Logger): App<H> {
  const faults = settings.demoFaults ? new DemoFaults<H>() : undefined;
  const base = engine.guardOptions({
    name: engine.kind,
    pool: settings.pool,
    maxSessions: settings.maxSessions,
    liveness: givenFlags(settings.liveness),
    acquireTimeout: settings.acquireTimeout,
    connectTimeout: settings.connectTimeout,
  });
  const guard = new EngineGuard<H>(faults === undefined ? base : faults.wrap(base));

  guard.on('stall', ({ op, probeFailures }) =>
    log.warn('engine stalled: op convicted by the liveness watchdog', {
      op: op.id,
      label: op.label,
      generation: op.generation,
      probeFailures,
    }),
  );
  guard.on('replace', ({ generation, reason, cause }) =>
    log.warn('engine handle retired; a new one opens on demand', {
      generation,
      reason,
      cause: cause instanceof Error ? cause.message : undefined,
    }),
  );
  guard.on('connect', ({ generation }) => log.info('engine handle ready', { generation }));
  guard.on('connectError', ({ error, attempts, retryInMs }) =>
    log.warn('engine connect failed', { attempts, retryInMs, error }),
  );
  guard.on('probeFailure', ({ op, consecutive, error }) =>
    log.debug('liveness probe failed', { op: op?.id, consecutive, error }),
  );
  guard.on('state', ({ from, to }) => log.info('guard state', { from, to }));
  guard.on('sessionOpen', ({ session }) =>
    log.info('session opened its connection', {
      session: session.id,
      label: session.label,
      generation: session.generation,
    }),
  );
  guard.on('sessionPin', ({ session, state }) =>
    log.info('session keeps state: its calls run on its own connection', {
      session: session.id,
      label: session.label,
      state: state.map((entry) => `${entry.kind} ${entry.name}`).join(', '),
    }),
  );
  guard.on('sessionUnpin', ({ session }) =>
    log.info('session state gone: its calls run side by side again', {
      session: session.id,
      label: session.label,
    }),
  );
  guard.on('sessionLost', ({ session, cause }) =>
    log.warn('session lost its connection and the state it held', {
      session: session.id,
      label: session.label,
      generation: session.generation,
      cause: cause instanceof Error ? cause.message : undefined,
    }),
  );
  guard.on('sessionClose', ({ session, reason }) =>
    log.info('session closed', { session: session.id, label: session.label, reason }),
  );

  const facts = guard.cache((handle, ctx) => engine.facts(handle, ctx), {
    maxAge: FACTS_MAX_AGE,
    label: 'status facts',
  });

  let closing: Promise<void> | undefined;
  return {
    engine,
    guard,
    facts,
    settings,
    liveness: effectiveLiveness(base),
    log,
    faults,
    pinsOnState: base.state !== undefined,
    startedAt: Date.now(),
    close() {
      closing ??= (async () => {
        await guard.close();
        await engine.close();
      })();
      return closing;
    },
  };
}
