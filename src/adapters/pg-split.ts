/**
 * Splits a PostgreSQL script into statements at top-level semicolons (outside parentheses), for
 * `pgTransaction`.
 *
 * A lexer, not a parser: it skips string literals (`'...'`, `E'...'` with backslash escapes),
 * quoted identifiers (`"..."`), dollar-quoted strings (`$tag$...$tag$`), `--` line comments
 * and nested block comments. Like psql, it keeps together the body of a SQL-standard function
 * (`CREATE [OR REPLACE] FUNCTION|PROCEDURE ... BEGIN ATOMIC ...; ...; END`), whose semicolons
 * end statements of the body, not of the script: see {@link BodyTracker}. It never decides what
 * is allowed: each piece is sent on its own with the extended protocol, so a piece that still
 * holds two statements (or half of one) is refused by the server, never run.
 */
export function splitStatements(script: string): string[] {
  const statements: string[] = [];
  let start = 0;
  let i = 0;
  const n = script.length;
  let body = new BodyTracker();
  const push = (end: number): void => {
    const text = script.slice(start, end).trim();
    if (text !== '' && !isOnlyComments(text)) statements.push(text);
  };
  while (i < n) {
    const c = script[i] as string;
    const next = script[i + 1];
    if (IDENTIFIER_START.test(c) && !IDENTIFIER_PART.test(script[i - 1] ?? '')) {
      const word = IDENTIFIER.exec(script.slice(i, i + 64))?.[0] ?? c;
      // A long identifier's tail is consumed as plain characters: no keyword is that long.
      body.word(word);
      i += word.length;
    } else if (c === '(') {
      body.parens++;
      i++;
    } else if (c === ')') {
      if (body.parens > 0) body.parens--;
      i++;
    } else if (c === "'" || c === '"') {
      const escapes =
        c === "'" && /[eE]/.test(script[i - 1] ?? '') && !/\w/.test(script[i - 2] ?? '');
      i = skipQuoted(script, i, c, escapes);
    } else if (c === '-' && next === '-') {
      const end = script.indexOf('\n', i);
      i = end === -1 ? n : end + 1;
    } else if (c === '/' && next === '*') {
      i = skipBlockComment(script, i);
    } else if (c === '$') {
      const tag = /^\$([A-Za-z_][A-Za-z_0-9]*)?\$/.exec(script.slice(i));
      if (tag !== null && !/[\w$]/.test(script[i - 1] ?? '')) {
        const end = script.indexOf(tag[0], i + tag[0].length);
        i = end === -1 ? n : end + tag[0].length;
      } else {
        i++;
      }
    } else if (c === ';' && body.atTopLevel()) {
      push(i);
      start = i + 1;
      body = new BodyTracker();
      i++;
    } else {
      i++;
    }
  }
  push(n);
  return statements;
}

const IDENTIFIER_START = /[A-Za-z_\u0080-\uffff]/;
const IDENTIFIER_PART = /[A-Za-z0-9_$\u0080-\uffff]/;
const IDENTIFIER = /^[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*/;

/**
 * psql's rule (src/fe_utils/psqlscan.l) for the body of a SQL-standard function, which holds
 * semicolons of its own: in a statement that starts with `CREATE [OR REPLACE] FUNCTION` or
 * `PROCEDURE`, each `BEGIN` outside parentheses opens a block, `END` closes one, and a `CASE`
 * inside a block opens one too (it ends with `END` as well). A semicolon ends the statement only
 * outside any block (and outside parentheses).
 */
class BodyTracker {
  /** Parenthesis depth of the statement so far. */
  parens = 0;
  #words = 0;
  /** First letters of the leading CREATE, OR, REPLACE, FUNCTION, PROCEDURE words. */
  #lead = '';
  #depth = 0;

  /** Feeds the next unquoted word of the statement. */
  word(word: string): void {
    const lower = word.toLowerCase();
    if (this.#words === this.#lead.length && LEAD_WORDS.has(lower)) this.#lead += lower[0];
    this.#words++;
    if (this.parens !== 0 || !/^c(?:or)?[fp]/.test(this.#lead)) return;
    if (lower === 'begin') this.#depth++;
    else if (lower === 'case' && this.#depth > 0) this.#depth++;
    else if (lower === 'end' && this.#depth > 0) this.#depth--;
  }

  /** True when a semicolon here ends the statement. */
  atTopLevel(): boolean {
    return this.parens === 0 && this.#depth === 0;
  }
}

const LEAD_WORDS = new Set(['create', 'or', 'replace', 'function', 'procedure']);

/** Index just after the quoted run that starts at `i` (doubled quotes stay inside). */
function skipQuoted(script: string, i: number, quote: string, escapes: boolean): number {
  let j = i + 1;
  while (j < script.length) {
    const c = script[j];
    if (escapes && c === '\\') {
      j += 2;
    } else if (c === quote) {
      if (script[j + 1] === quote) j += 2;
      else return j + 1;
    } else {
      j++;
    }
  }
  return j;
}

/** Index just after the (possibly nested) block comment that starts at `i`. */
function skipBlockComment(script: string, i: number): number {
  let depth = 0;
  let j = i;
  while (j < script.length) {
    if (script[j] === '/' && script[j + 1] === '*') {
      depth++;
      j += 2;
    } else if (script[j] === '*' && script[j + 1] === '/') {
      depth--;
      j += 2;
      if (depth === 0) return j;
    } else {
      j++;
    }
  }
  return j;
}

/** True when `text` holds comments and whitespace only. */
function isOnlyComments(text: string): boolean {
  let i = 0;
  while (i < text.length) {
    const c = text[i] ?? '';
    if (/\s/.test(c)) i++;
    else if (c === '-' && text[i + 1] === '-') {
      const end = text.indexOf('\n', i);
      i = end === -1 ? text.length : end + 1;
    } else if (c === '/' && text[i + 1] === '*') i = skipBlockComment(text, i);
    else return false;
  }
  return true;
}
