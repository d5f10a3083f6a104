export {
  type FakeBehavior,
  type FakeCallOptions,
  type FakeCreateOptions,
  FakeEngine,
  FakeEngineCancelledError,
  FakeEngineConnectionError,
  FakeEngineError,
  FakeEngineFactory,
  type FakeEngineFactoryOptions,
  type FakeEngineOptions,
  type FakePingOptions,
} from './fake-engine.js';
export {
  FaultProxy,
  type FaultProxyOptions,
  type FaultProxyStats,
  type FaultProxyTarget,
} from './fault-proxy.js';
