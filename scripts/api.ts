/**
 * The public surface of every entry point, generated from the shipped TSDoc:
 *
 * - `docs/reference/`: the API reference (TypeDoc, one Markdown page per entry point), from the
 *   sources;
 * - `api/<entry>.api.md`: the API report (API Extractor), from the built declarations in
 *   `dist/`: a change of the public surface shows up in review as a change of this file.
 *
 *   npm run api                     build, then regenerate both (commit them)
 *   npm run api:check               fail if either is stale (CI, after the build)
 *   npm run api -- --undocumented   also list the exported members that have no TSDoc
 *
 * The entry points are those of package.json "exports"; each one's source is found through
 * tsconfig.json "paths", so a new entry point only needs those two (and tsup.config.ts).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Extractor, ExtractorConfig, ExtractorLogLevel } from '@microsoft/api-extractor';
import { Application, Converter, ReflectionKind } from 'typedoc';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const REFERENCE_DIR = join(ROOT, 'docs', 'reference');
const REPORT_DIR = join(ROOT, 'api');
const SCRATCH = join(ROOT, '.tmp', 'api');

interface EntryPoint {
  /** `engine-guard/pg`: what users import. */
  name: string;
  /** `engine-guard-pg`: the report's file name. */
  fileName: string;
  /** Its source, e.g. `src/adapters/pg.ts` (absolute). */
  source: string;
  /** Its declarations for `import`, e.g. `dist/adapters/pg.d.ts` (absolute). */
  declarations: string;
}

function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(join(ROOT, path), 'utf8')) as T;
}

/** The entry points of package.json "exports", each with its source and declarations. */
function entryPoints(): EntryPoint[] {
  const pkg = readJson<{ name: string; exports: Record<string, { import?: { types?: string } }> }>(
    'package.json',
  );
  const paths = readJson<{ compilerOptions: { paths: Record<string, string[]> } }>('tsconfig.json')
    .compilerOptions.paths;
  return Object.entries(pkg.exports)
    .filter(([, target]) => typeof target === 'object' && target.import?.types !== undefined)
    .map(([subpath, target]) => {
      const name = `${pkg.name}${subpath.slice(1)}`;
      const source = paths[name]?.[0];
      if (source === undefined) {
        throw new Error(`tsconfig.json "paths" has no source for ${name}: add it there`);
      }
      return {
        name,
        fileName: name.replace(/\//g, '-'),
        source: resolve(ROOT, source),
        declarations: resolve(ROOT, target.import!.types!),
      };
    });
}

/** All files under `dir`, relative to it, sorted. */
function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

/** The files that differ between two directories (missing on either side, or changed). */
function differences(expected: string, actual: string): string[] {
  const names = new Set([...filesUnder(expected), ...filesUnder(actual)]);
  return [...names].sort().filter((name) => {
    const a = join(expected, name);
    const b = join(actual, name);
    return !existsSync(a) || !existsSync(b) || !readFileSync(a).equals(readFileSync(b));
  });
}

/**
 * The reference, written to `out`: TypeDoc over the sources, one page per entry point, named as
 * users import it. Returns TypeDoc's warning count.
 */
async function generateReference(entries: EntryPoint[], out: string): Promise<number> {
  mkdirSync(SCRATCH, { recursive: true });
  const app = await Application.bootstrapWithPlugins({
    entryPoints: entries.map((entry) => entry.source),
    plugin: ['typedoc-plugin-markdown'],
    out,
    tsconfig: join(ROOT, 'tsconfig.json'),
    // `npm run check` type-checks the sources; TypeDoc only reads them.
    skipErrorChecking: true,
    excludeInternal: true,
    excludePrivate: true,
    excludeExternals: true,
    readme: 'none',
    name: 'engine-guard API reference',
    disableSources: true,
    hideGenerator: true,
    // `--undocumented` lists the exported members without TSDoc (warnings, not errors).
    validation: {
      notExported: true,
      invalidLink: true,
      notDocumented: process.argv.includes('--undocumented'),
    },
    // typedoc-plugin-markdown: one page per entry point, an index page.
    outputFileStrategy: 'modules',
    entryFileName: 'README.md',
    hideBreadcrumbs: true,
    hidePageHeader: true,
    useCodeBlocks: true,
  } as Parameters<typeof Application.bootstrapWithPlugins>[0]);
  // Modules are named after their files ("adapters/pg"); users know them as "engine-guard/pg".
  const bySource = new Map(entries.map((entry) => [entry.source, entry.name]));
  app.converter.on(Converter.EVENT_CREATE_DECLARATION, (context, reflection) => {
    if (!reflection.kindOf(ReflectionKind.Module)) return;
    const file = context.getSymbolFromReflection(reflection)?.declarations?.[0]?.getSourceFile();
    const name = file === undefined ? undefined : bySource.get(resolve(file.fileName));
    if (name !== undefined) reflection.name = name;
  });
  const project = await app.convert();
  if (project === undefined) throw new Error('TypeDoc could not convert the sources');
  app.validate(project);
  await app.generateOutputs(project);
  if (app.logger.hasErrors()) throw new Error('TypeDoc reported errors (above)');
  return app.logger.warningCount;
}

/**
 * The API report of each entry point (API Extractor over `dist/`). With `update`, the reports in
 * `api/` are rewritten; without, a stale report fails. Returns the entries whose report is stale.
 */
function reports(entries: EntryPoint[], update: boolean): string[] {
  const stale: string[] = [];
  mkdirSync(REPORT_DIR, { recursive: true });
  mkdirSync(join(SCRATCH, 'report'), { recursive: true });
  for (const entry of entries) {
    if (!existsSync(entry.declarations)) {
      throw new Error(`${relative(ROOT, entry.declarations)} is missing: run npm run build first`);
    }
    const config = ExtractorConfig.prepare({
      configObject: {
        projectFolder: ROOT,
        mainEntryPointFilePath: entry.declarations,
        compiler: {
          // A consumer's view: no Node types, the libs the declarations need.
          overrideTsconfig: {
            compilerOptions: {
              target: 'ES2022',
              module: 'NodeNext',
              moduleResolution: 'NodeNext',
              lib: ['ES2022', 'DOM'],
              types: [],
              strict: true,
              skipLibCheck: true,
            },
            files: [entry.declarations],
          },
        },
        apiReport: {
          enabled: true,
          reportFileName: entry.fileName,
          reportFolder: REPORT_DIR,
          reportTempFolder: join(SCRATCH, 'report'),
        },
        docModel: { enabled: false },
        dtsRollup: { enabled: false },
        tsdocMetadata: { enabled: false },
        messages: {
          // Release tags (@public, @beta) are not used here: every export is public.
          extractorMessageReporting: {
            'ae-missing-release-tag': { logLevel: ExtractorLogLevel.None },
            // Its notes name a line of dist/ (and tsup's hashed chunk), which moves with every
            // change: the report would change without the surface changing. The report marks
            // undocumented members "(undocumented)" in place instead.
            'ae-undocumented': { logLevel: ExtractorLogLevel.None, addToApiReportFile: false },
            default: { logLevel: ExtractorLogLevel.None, addToApiReportFile: true },
          },
          tsdocMessageReporting: { default: { logLevel: ExtractorLogLevel.None } },
          compilerMessageReporting: { default: { logLevel: ExtractorLogLevel.Error } },
        },
      },
      configObjectFullPath: undefined,
      packageJsonFullPath: join(ROOT, 'package.json'),
    });
    const result = Extractor.invoke(config, { localBuild: update, messageCallback: quiet });
    if (result.errorCount > 0) throw new Error(`API Extractor failed on ${entry.name}`);
    if (result.apiReportChanged) stale.push(`api/${entry.fileName}.api.md`);
  }
  return stale;
}

/** Keeps API Extractor's chatter ("Analysis will use the bundled TypeScript...") out. */
function quiet(message: { logLevel: string; handled: boolean; text: string }): void {
  if (
    message.logLevel === ExtractorLogLevel.Info ||
    message.logLevel === ExtractorLogLevel.Verbose
  ) {
    message.handled = true;
  }
}

async function main(): Promise<void> {
  const check = process.argv.includes('--check');
  const entries = entryPoints();
  console.log(`Entry points: ${entries.map((entry) => entry.name).join(', ')}`);
  if (check) {
    const fresh = join(SCRATCH, 'reference');
    rmSync(fresh, { recursive: true, force: true });
    const warnings = await generateReference(entries, fresh);
    const stale = [
      ...differences(REFERENCE_DIR, fresh).map((name) => `docs/reference/${name}`),
      ...reports(entries, false),
    ];
    if (stale.length > 0) {
      console.error(
        `The API reference or report is stale (the public surface or its TSDoc changed):\n` +
          `${stale.map((name) => `  ${name}`).join('\n')}\nRun npm run api and commit the result.`,
      );
      process.exitCode = 1;
      return;
    }
    console.log(`API reference and reports are up to date (TypeDoc warnings: ${warnings}).`);
    return;
  }
  const warnings = await generateReference(entries, REFERENCE_DIR);
  const changed = reports(entries, true);
  console.log(
    `Wrote docs/reference/ (TypeDoc warnings: ${warnings}) and api/*.api.md` +
      (changed.length === 0
        ? ' (no change to the public surface).'
        : `; changed: ${changed.join(', ')}.`),
  );
}

await main();
