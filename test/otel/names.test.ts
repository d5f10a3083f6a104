/**
 * The semantic-convention names engine-guard/otel copies (src/otel/names.ts) are the ones
 * `@opentelemetry/semantic-conventions` defines, and `error.type` is read as documented.
 */
import * as semconv from '@opentelemetry/semantic-conventions/incubating';
import { describe, expect, it } from 'vitest';
import { EngineStalledError } from '../../src/index.js';
import {
  ATTR,
  CONNECTION_STATE,
  DB_METRICS,
  ERROR_TYPE_OTHER,
  errorType,
} from '../../src/otel/names.js';

describe('engine-guard/otel names', () => {
  it('match @opentelemetry/semantic-conventions', () => {
    expect(DB_METRICS).toEqual({
      count: semconv.METRIC_DB_CLIENT_CONNECTION_COUNT,
      limit: semconv.METRIC_DB_CLIENT_CONNECTION_LIMIT,
      max: semconv.METRIC_DB_CLIENT_CONNECTION_MAX,
      idleMax: semconv.METRIC_DB_CLIENT_CONNECTION_IDLE_MAX,
      pendingRequests: semconv.METRIC_DB_CLIENT_CONNECTION_PENDING_REQUESTS,
      timeouts: semconv.METRIC_DB_CLIENT_CONNECTION_TIMEOUTS,
      createTime: semconv.METRIC_DB_CLIENT_CONNECTION_CREATE_TIME,
      waitTime: semconv.METRIC_DB_CLIENT_CONNECTION_WAIT_TIME,
      useTime: semconv.METRIC_DB_CLIENT_CONNECTION_USE_TIME,
    });
    expect(ATTR.poolName).toBe(semconv.ATTR_DB_CLIENT_CONNECTION_POOL_NAME);
    expect(ATTR.connectionState).toBe(semconv.ATTR_DB_CLIENT_CONNECTION_STATE);
    expect(ATTR.errorType).toBe(semconv.ATTR_ERROR_TYPE);
    expect(CONNECTION_STATE).toEqual({
      idle: semconv.DB_CLIENT_CONNECTION_STATE_VALUE_IDLE,
      used: semconv.DB_CLIENT_CONNECTION_STATE_VALUE_USED,
    });
    expect(ERROR_TYPE_OTHER).toBe(semconv.ERROR_TYPE_VALUE_OTHER);
  });

  it('error.type: the string code, else a specific name, else _OTHER', () => {
    expect(
      errorType(
        new EngineStalledError({
          guardName: 'g',
          kind: 'read',
          opId: 1,
          label: undefined,
          generation: 1,
          probeFailures: 2,
          cause: undefined,
        }),
      ),
    ).toBe('ERR_ENGINE_STALLED');
    expect(errorType(Object.assign(new Error('x'), { code: '57014' }))).toBe('57014');
    expect(errorType(new DOMException('gone', 'AbortError'))).toBe('AbortError');
    expect(errorType(new TypeError('t'))).toBe('TypeError');
    expect(errorType(new Error('plain'))).toBe('_OTHER');
    expect(errorType('a string')).toBe('_OTHER');
    expect(errorType(undefined)).toBe('_OTHER');
    const revoked = Proxy.revocable({}, {});
    revoked.revoke();
    expect(errorType(revoked.proxy)).toBe('_OTHER');
  });
});
