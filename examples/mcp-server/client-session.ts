/**
 * One MCP client's engine session (`guard.session()`): its temporary tables, `SET`s, prepared
 * statements and advisory locks are its own, the same in every call, and reach no other client.
 *
 * The session pins on state (when the engine adapter reports state, as both of ours do): the
 * client's calls run side by side on shared connections, and only once a call leaves state does
 * the session keep that connection, running the client's calls there one at a time until the
 * state is gone. A client that holds no state holds no connection, so one that vanishes without
 * saying goodbye costs nothing.
 *
 * The session is opened by the client's first call and closed with its MCP session (or by the
 * guard after `--session-idle-timeout` without a call). Losing its state is never silent:
 * - its connection died (stall, fatal error): the call that finds out gets a tool error saying
 *   so, and the session is reopened, so the client's next call runs on a fresh connection;
 * - it expired while idle holding state: the client's next call runs in a new session, and its
 *   result starts with a note saying the old state is gone;
 * - a call left state that could not be kept (no free connection): that call says so.
 */
import {
  type EngineGuard,
  type OpContext,
  type OpOptions,
  type Session,
  SessionClosedError,
  type SessionStatus,
} from 'engine-guard';

/** Longest label shown in `status` and logs: the client picks its name, and may pick a long one. */
const MAX_LABEL = 100;

/** What a failed call did to the client's session state, for the tool error to say. */
export type SessionNews =
  /** The connection died: the state is gone; the next call runs on a fresh connection. */
  | { kind: 'lost'; generation: number }
  /** The session expired while idle between this call's check and its start. */
  | { kind: 'expired' };

/** `error[name]`, for errors of any shape (engine-guard's carry `code` and details). */
function field(error: unknown, name: string): unknown {
  return typeof error === 'object' && error !== null
    ? (error as Record<string, unknown>)[name]
    : undefined;
}

export class ClientSession<H> {
  readonly #guard: EngineGuard<H>;
  readonly #idleTimeout: number;
  readonly #label: () => string;
  #session: Session<H> | undefined = undefined;
  /** The state the session held after its last call: an expiry loses it, and the client is told. */
  #held: SessionStatus['heldState'] = [];
  #closed = false;

  /** `label` is read when a session opens: the client's name is known only after `initialize`. */
  constructor(guard: EngineGuard<H>, idleTimeout: number, label: () => string) {
    this.#guard = guard;
    this.#idleTimeout = idleTimeout;
    this.#label = label;
  }

  /** The current session's id; `undefined` before the first call and once it closed. */
  get id(): number | undefined {
    const session = this.#session;
    return session === undefined || session.status().state === 'closed' ? undefined : session.id;
  }

  /**
   * Runs `fn` in the client's session (opened now when it has none). `expired` is set when the
   * previous session had expired while idle: its state is gone, and the caller must say so.
   */
  run<T>(
    kind: 'read' | 'write',
    fn: (handle: H, ctx: OpContext) => Promise<T>,
    options: OpOptions,
  ): { result: Promise<T>; expired: SessionStatus | undefined } {
    if (this.#closed) {
      const closed = new SessionClosedError(this.#session?.id ?? 0, undefined, 'closed');
      return { result: Promise.reject(closed), expired: undefined };
    }
    let expired: SessionStatus | undefined;
    let session = this.#session;
    if (session?.status().state === 'closed' && !this.#closed) {
      // Closed by the guard, not by us: its idle timeout passed. Only a session that kept state
      // (or a pin: 'always' one, whose connection held whatever it made) lost something.
      const status = session.status();
      if (this.#held.length > 0 || status.pin === 'always') expired = status;
      session = undefined;
      this.#held = [];
    }
    if (session === undefined) {
      const label = this.#label().slice(0, MAX_LABEL);
      session = this.#guard.session({ label, idleTimeout: this.#idleTimeout });
      this.#session = session;
    }
    const opened = session;
    const result = kind === 'read' ? opened.read(fn, options) : opened.write(fn, options);
    const remember = (): void => {
      if (this.#session === opened && opened.status().state !== 'closed') {
        this.#held = opened.status().heldState;
      }
    };
    result.then(remember, remember);
    return { result, expired };
  }

  /**
   * After a failed call: whether the session's state went with it. A lost session is reopened
   * here, once told: the client's next call continues on a fresh connection.
   */
  afterFailure(error: unknown): SessionNews | undefined {
    const session = this.#session;
    if (session === undefined) return undefined;
    const code = field(error, 'code');
    const state = session.status();
    if (state.state === 'lost' || code === 'ERR_SESSION_LOST') {
      if (state.state === 'lost') session.reopen();
      const generation = field(error, 'generation');
      return {
        kind: 'lost',
        generation: typeof generation === 'number' ? generation : state.generation,
      };
    }
    if (
      code === 'ERR_SESSION_CLOSED' &&
      field(error, 'reason') === 'idle' &&
      field(error, 'sessionId') === session.id
    ) {
      // It expired between `run`'s check and the call's start: the next call opens a new one.
      this.#session = undefined;
      return { kind: 'expired' };
    }
    return undefined;
  }

  /** Closes the session with its MCP session; calls not started yet fail. Idempotent. */
  close(): Promise<void> {
    this.#closed = true;
    return this.#session?.close() ?? Promise.resolve();
  }
}
