/**
 * The names of custom settings (`app.tenant`, as row-level security policies read them) that the
 * SQL sent on a client may have set.
 *
 * PostgreSQL lists no custom setting that no loaded module defines (a "placeholder": `pg_settings`
 * and `SHOW ALL` leave them out), yet `RESET ALL` resets them and `DISCARD ALL` does not spare
 * them. To keep the ones `setup` made, and to see the ones an op made, the adapter must know
 * their names: it reads them from the SQL its clients send, where a name stands in a setting's
 * place (after `SET`, `RESET` or `SHOW`, or quoted, as in `set_config('app.tenant', ...)`), and
 * from the query parameters that are such a name (`set_config($1, $2, false)`). The server then
 * says which of them hold a value. A name the SQL never shows (set inside a function under a name
 * built at run time) is not seen: declare it in the adapter's `customSettings`.
 */
import type { PgClient } from './pg-types.js';

/** A custom setting's name: two or more identifiers joined by dots. */
const NAME = String.raw`[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)+`;
/** A name in a setting's place in SQL text. */
const IN_SQL = new RegExp(
  String.raw`(?:\b(?:SET|RESET|SHOW)\s+(?:(?:SESSION|LOCAL)\s+)?|['"])(${NAME})`,
  'gi',
);
/** Custom settings the adapter itself sets, transaction-local, in its state check. */
const OWN_PREFIX = 'engine_guard.';
/** A query parameter that is a name and nothing else. */
const WHOLE_NAME = new RegExp(`^${NAME}$`);

/**
 * Most names remembered per client between two clean points: a bulk insert of quoted dotted
 * strings must not turn the next state check into a scan of thousands of names.
 */
export const MAX_SETTING_NAMES = 256;

/** The names seen on a client since it was last known clean. */
export class SettingNames {
  readonly names = new Set<string>();
  /**
   * More names were seen than {@link MAX_SETTING_NAMES}: the ones beyond were not kept, so a
   * check cannot tell that no custom setting was set.
   */
  overflow = false;

  add(name: string): void {
    // The adapter's own (transaction-local, in its state check): never a caller's state.
    if (name.startsWith(OWN_PREFIX)) return;
    if (this.names.size < MAX_SETTING_NAMES) this.names.add(name);
    else if (!this.names.has(name)) this.overflow = true;
  }
}

/** Adds to `into` the custom setting names that `text` and `values` may set (lower-cased). */
export function collectSettingNames(text: unknown, values: unknown, into: SettingNames): void {
  if (typeof text === 'string' && text.includes('.')) {
    for (const match of text.matchAll(IN_SQL)) into.add((match[1] as string).toLowerCase());
  }
  if (!Array.isArray(values)) return;
  for (const value of values) {
    if (typeof value === 'string' && value.length <= 128 && WHOLE_NAME.test(value)) {
      into.add(value.toLowerCase());
    }
  }
}

/**
 * Wraps `client.query` (on the instance) so that every query sent through it, the op's own
 * included, adds the setting names its text and parameters show to `names()` (read at each
 * call: the set is replaced when the client is known clean again).
 */
export function watchSettingNames(client: PgClient, names: () => SettingNames): void {
  const query = client.query;
  const watched = function (this: PgClient, ...args: unknown[]): unknown {
    const [first, second] = args;
    if (typeof first === 'string') {
      collectSettingNames(first, second, names());
    } else if (first !== null && typeof first === 'object') {
      const config = first as { text?: unknown; values?: unknown };
      collectSettingNames(config.text, config.values ?? second, names());
    }
    return (query as (...a: unknown[]) => unknown).apply(this, args);
  };
  (client as { query: unknown }).query = watched;
}

/**
 * Validates the adapter's `customSettings` option: names of custom settings to keep in the
 * baseline and to check for state whatever the SQL shows.
 * @throws TypeError when it is not an array of custom setting names.
 */
export function validateCustomSettings(value: unknown): readonly string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) {
    throw new TypeError(
      'The "customSettings" option must be an array of custom setting names, such as ["app.tenant"]',
    );
  }
  return value.map((name, index) => {
    if (typeof name !== 'string' || !WHOLE_NAME.test(name)) {
      throw new TypeError(
        `The "customSettings[${index}]" option must be a custom setting name (two or more identifiers joined by dots, such as "app.tenant"), got ${JSON.stringify(name)}`,
      );
    }
    return name.toLowerCase();
  });
}
