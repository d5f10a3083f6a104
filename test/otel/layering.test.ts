/**
 * `@opentelemetry/api` is loaded by engine-guard/otel and nothing else: no module outside
 * src/otel/ imports it (or anything of OpenTelemetry), nor src/otel/ itself. Read with the
 * TypeScript compiler's import scanner, type-only imports included. What the builds really load
 * is checked by test/adapters/optional-peers.test.ts.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { expect, it } from 'vitest';

const SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src');
const OTEL = path.join(SRC, 'otel');

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return sources(full);
    return entry.name.endsWith('.ts') ? [full] : [];
  });
}

it('no module outside src/otel/ imports OpenTelemetry or src/otel/', () => {
  const offending: string[] = [];
  let otelImports = 0;
  for (const file of sources(SRC)) {
    const inOtel = file.startsWith(`${OTEL}${path.sep}`);
    const { importedFiles } = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
    for (const { fileName } of importedFiles) {
      const isOtelPackage = fileName.startsWith('@opentelemetry/');
      if (inOtel) {
        if (isOtelPackage) otelImports++;
        continue;
      }
      const target = fileName.startsWith('.') ? path.resolve(path.dirname(file), fileName) : '';
      if (isOtelPackage || target.startsWith(`${OTEL}${path.sep}`)) {
        offending.push(`${path.relative(SRC, file)} imports ${fileName}`);
      }
    }
  }
  expect(offending).toEqual([]);
  // The scan sees imports at all: src/otel/ itself imports the api.
  expect(otelImports).toBeGreaterThan(0);
});
