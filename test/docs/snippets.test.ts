/**
 * Every code block of the repository's Markdown does what its info string promises (see
 * test/docs/snippets.ts and CONTRIBUTING.md, "Code blocks in the docs"): `ts` and `js` blocks run
 * as written, each as its own program (`node --import tsx`, the package names resolved to the
 * sources as in tsconfig.json "paths"), against a PostgreSQL database of their own on the test
 * harness's cluster (`DATABASE_URL`, `PGHOST`, ...) and a real DuckDB, and must exit 0 by
 * themselves; TypeScript blocks, sketches included, type-check; excerpts match the source they
 * quote; JSON parses; `npm run` commands name real scripts with flags the example accepts.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCli } from '../../examples/mcp-server/cli.js';
import { adminQuery, pgConfig } from '../support/pg.js';
import {
  allBlocks,
  type Block,
  docSlug,
  excerptDrift,
  fileNameOf,
  headingAnchors,
  markdownFiles,
  npmRuns,
  relativeLinks,
  where,
} from './snippets.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** Longest a block may run before it counts as hung (it must exit by itself). */
const RUN_BOUND_MS = 60_000;
/** Programs run at once: each is a Node.js process compiling the sources with tsx. */
const CONCURRENCY = 3;

const blocks = allBlocks(ROOT);
const WORK = join(ROOT, '.tmp', `docs-snippets-${process.pid}-${randomBytes(3).toString('hex')}`);
const dirOf = (block: Block): string => join(WORK, docSlug(block.doc));
const fileOf = (block: Block): string => join(dirOf(block), fileNameOf(block));

/** `engine-guard`, `engine-guard/pg`, ... → their sources, from tsconfig.json "paths". */
function packagePaths(): Map<string, string> {
  const tsconfig = JSON.parse(readFileSync(join(ROOT, 'tsconfig.json'), 'utf8')) as {
    compilerOptions: { paths: Record<string, string[]> };
  };
  return new Map(
    Object.entries(tsconfig.compilerOptions.paths).map(([name, [target]]) => [
      name,
      resolve(ROOT, target!),
    ]),
  );
}

/** The block, numbered as in its document, for a failure message. */
function listing(block: Block): string {
  return block.code
    .split('\n')
    .map((line, i) => `${String(block.line + 1 + i).padStart(5)} | ${line}`)
    .join('\n');
}

/** The last `n` lines of `text`. */
const tail = (text: string, n = 80): string => text.trimEnd().split('\n').slice(-n).join('\n');

/** A tiny semaphore: at most `limit` of the functions given to it run at once. */
function limiter(limit: number): <T>(fn: () => Promise<T>) => Promise<T> {
  let active = 0;
  const waiting: (() => void)[] = [];
  return async (fn) => {
    if (active >= limit) await new Promise<void>((resolve) => waiting.push(resolve));
    active++;
    try {
      return await fn();
    } finally {
      active--;
      waiting.shift()?.();
    }
  };
}
const limit = limiter(CONCURRENCY);

interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
  timedOut: boolean;
}

/** Runs `args` with this Node.js in `cwd`; kills it past {@link RUN_BOUND_MS}. */
function runNode(args: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<Outcome> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(process.execPath, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, RUN_BOUND_MS);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolveRun({ code, signal, output, timedOut });
    });
  });
}

/** Whether a block talks to PostgreSQL (it then gets a database of its own). */
const needsPostgres = (block: Block): boolean =>
  /DATABASE_URL|PGHOST|PGPORT|engine-guard\/pg|from ['"]pg['"]|require\(['"]pg['"]\)/.test(
    block.code,
  );

const databases: string[] = [];

/** A new database for one block on the harness's cluster, as `DATABASE_URL` and `PG*`. */
async function databaseFor(block: Block): Promise<NodeJS.ProcessEnv> {
  // Lower case: PostgreSQL folds unquoted names, and the URL must name the same database; and
  // short: it cuts names at 63 bytes.
  const slug = docSlug(block.doc).replace(/-/g, '_').toLowerCase().slice(0, 40);
  const name = `docs_${slug}_${block.line}_${randomBytes(3).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${name}`);
  databases.push(name);
  const { host, port, user } = pgConfig();
  return {
    DATABASE_URL: `postgresql://${user}@${host}:${port}/${name}`,
    PGHOST: host,
    PGPORT: String(port),
    PGUSER: user,
    PGDATABASE: name,
  };
}

/** The vitest config for blocks named `*.test.ts`: the package names resolved as here. */
function vitestConfig(): string {
  const alias = [...packagePaths()].map(
    ([name, target]) =>
      `{ find: new RegExp(${JSON.stringify(`^${name.replace(/[/]/g, '\\/')}$`)}), replacement: ${JSON.stringify(target)} }`,
  );
  return `export default { resolve: { alias: [${alias.join(', ')}] }, test: { include: ['**/*.test.ts'], testTimeout: 30000 } };\n`;
}

/** Runs a `run` block as its own program (or, named `*.test.ts`, with vitest). */
async function runBlock(block: Block): Promise<Outcome> {
  const cwd = join(dirOf(block), `cwd-L${block.line}`);
  mkdirSync(cwd, { recursive: true });
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    // The repository's tsconfig (its "paths" map the package names to the sources) wherever
    // the block runs: the cwd is the block's own, for files it creates (a DuckDB database).
    TSX_TSCONFIG_PATH: join(ROOT, 'tsconfig.json'),
    ...(needsPostgres(block) ? await databaseFor(block) : {}),
  };
  for (const key of Object.keys(env)) if (key.startsWith('VITEST')) delete env[key];
  if (block.name?.includes('.test.') === true) {
    const vitest = join(ROOT, 'node_modules', 'vitest', 'vitest.mjs');
    const config = join(dirOf(block), 'vitest.config.mjs');
    const args = ['run', '--root', dirOf(block), '--config', config, '--reporter', 'dot'];
    return runNode([vitest, ...args, fileOf(block)], cwd, env);
  }
  return runNode(['--import', 'tsx', fileOf(block)], cwd, env);
}

describe('code blocks in README.md, docs/ and examples/', () => {
  beforeAll(() => {
    for (const block of blocks) {
      if (block.kind !== 'run' && block.kind !== 'typecheck') continue;
      mkdirSync(dirOf(block), { recursive: true });
      writeFileSync(fileOf(block), `${block.code}\n`);
    }
    for (const doc of new Set(blocks.map(dirOf))) {
      mkdirSync(doc, { recursive: true });
      writeFileSync(join(doc, 'vitest.config.mjs'), vitestConfig());
    }
  });

  afterAll(async () => {
    rmSync(WORK, { recursive: true, force: true });
    for (const name of databases) await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });

  it('finds the blocks, and every block says what it is', () => {
    expect(blocks.length).toBeGreaterThan(20);
    const unknown = blocks
      .filter((block) => block.kind === 'unknown')
      .map((block) => `${where(block)}: \`\`\`${block.info}`);
    expect(
      unknown,
      'label each block: ts, js, js cjs, ts sketch, <lang> sketch, ts excerpt <path>, json, sh or ' +
        'text (CONTRIBUTING.md, "Code blocks in the docs")',
    ).toEqual([]);
  });

  it('no two blocks of a document give themselves the same file name', () => {
    const names = blocks
      .filter((block) => block.name !== undefined)
      .map((block) => `${block.doc}: ${block.name}`);
    expect(names.filter((name, i) => names.indexOf(name) !== i)).toEqual([]);
  });

  it('TypeScript blocks type-check (sketches too)', async () => {
    const files = blocks
      .filter((b) => (b.kind === 'run' || b.kind === 'typecheck') && b.lang.startsWith('t'))
      .map(fileOf);
    expect(files.length).toBeGreaterThan(0);
    const config = join(WORK, 'tsconfig.json');
    writeFileSync(
      config,
      JSON.stringify({
        extends: join(ROOT, 'tsconfig.json'),
        compilerOptions: { noEmit: true },
        include: [],
        files,
      }),
    );
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const outcome = await runNode([tsc, '-p', config, '--pretty', 'false'], WORK, process.env);
    // Errors point into the documents: `docs/api.md:62:7 error TS2304: ...`.
    const byFile = new Map(blocks.map((block) => [fileOf(block), block]));
    const errors = outcome.output
      .split('\n')
      .filter((line) => line.includes('error TS'))
      .map((line) => {
        const at = /^(.*?)\((\d+),(\d+)\): (.*)$/.exec(line);
        const block = at === null ? undefined : byFile.get(resolve(WORK, at[1]!));
        if (at === null || block === undefined) return line;
        return `${block.doc}:${block.line + Number(at[2])}:${at[3]} ${at[4]}`;
      });
    expect(errors).toEqual([]);
    expect(outcome.code, outcome.output).toBe(0);
  }, 180_000);

  describe.concurrent('run as written', () => {
    for (const block of blocks.filter((b) => b.kind === 'run')) {
      it(
        `${where(block)} (${block.info})`,
        async () => {
          const outcome = await limit(() => runBlock(block));
          const verdict = outcome.timedOut
            ? `did not exit within ${RUN_BOUND_MS} ms (a block must end by itself)`
            : `exited with ${outcome.code ?? outcome.signal}`;
          expect(
            outcome.code,
            `${where(block)} ${verdict}\n--- output (last lines)\n${tail(outcome.output)}\n--- block\n${listing(block)}`,
          ).toBe(0);
        },
        2 * RUN_BOUND_MS,
      );
    }
  });

  /** Declares `title` with one test per block of `kind`; none when there is no such block. */
  const eachBlock = (kind: Block['kind'], title: string, check: (block: Block) => void): void => {
    const ofKind = blocks.filter((b) => b.kind === kind);
    if (ofKind.length === 0) return; // an empty suite would fail
    describe(title, () => {
      for (const block of ofKind) it(`${where(block)} (${block.info})`, () => check(block));
    });
  };

  eachBlock('excerpt', 'excerpts are true to their source', (block) => {
    const source = readFileSync(join(ROOT, block.source!), 'utf8');
    const drift = excerptDrift(block.code, source);
    expect(drift, `lines of ${where(block)} that ${block.source} no longer has`).toEqual([]);
  });

  const scripts = (
    JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    }
  ).scripts;
  /** Each `npm run` names a script of package.json; the example server's flags parse. */
  const checkNpmRuns = (block: Block, commands: string): void => {
    for (const run of npmRuns(commands)) {
      expect(Object.keys(scripts), `${where(block)}: npm run ${run.script}`).toContain(run.script);
      if (run.script !== 'mcp') continue;
      // A shell substitution, "$(openssl rand -hex 16)", stands for some value.
      const args = run.args.map((arg) => (arg.startsWith('$(') ? 'x' : arg));
      expect(() => parseCli(args, {}), `${where(block)}: mcp ${args.join(' ')}`).not.toThrow();
    }
  };

  eachBlock('json', 'JSON blocks parse; MCP client configs start real scripts', (block) => {
    let config: unknown;
    expect(() => {
      config = JSON.parse(block.code);
    }, listing(block)).not.toThrow();
    const servers = (
      config as { mcpServers?: Record<string, { command?: string; args?: string[] }> }
    ).mcpServers;
    for (const server of Object.values(servers ?? {})) {
      if (server.command === 'npm') {
        const quoted = (server.args ?? []).map((arg) => `'${arg}'`);
        checkNpmRuns(block, `npm ${quoted.join(' ')}`);
      }
    }
  });

  eachBlock('sh', 'shell blocks run scripts that exist, with flags they accept', (block) =>
    checkNpmRuns(block, block.code),
  );

  it('links between documents and to files of the repository lead somewhere, anchors too', () => {
    const text = (path: string): string => readFileSync(path, 'utf8');
    const broken: string[] = [];
    for (const doc of markdownFiles(ROOT)) {
      for (const link of relativeLinks(doc, text(join(ROOT, doc)))) {
        const path = resolve(ROOT, dirname(doc), link.target);
        const shown = `${doc}:${link.line}: ${link.target}${link.anchor === undefined ? '' : `#${link.anchor}`}`;
        if (!existsSync(path)) broken.push(`${shown} (no such file)`);
        else if (
          link.anchor !== undefined &&
          path.endsWith('.md') &&
          !headingAnchors(text(path)).has(link.anchor)
        ) {
          broken.push(`${shown} (no such heading)`);
        }
      }
    }
    expect(broken).toEqual([]);
  });
});
