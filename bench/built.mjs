/**
 * The `--import` of every benchmark process: TypeScript through tsx, and the library's entry
 * points from its build in dist/ (see built-hooks.mjs). `ENGINE_GUARD_BENCH_SOURCE=src` measures
 * the source as tsx compiles it instead.
 */
import { register } from 'node:module';
import 'tsx';

if (process.env.ENGINE_GUARD_BENCH_SOURCE !== 'src') {
  register('./built-hooks.mjs', import.meta.url);
}
