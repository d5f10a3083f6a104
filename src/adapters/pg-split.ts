/**
 * Splits a PostgreSQL script into statements at top-level semicolons, for `pgTransaction`.
 *
 * A lexer, not a parser: it skips string literals (`'...'`, `E'...'` with backslash escapes),
 * quoted identifiers (`"..."`), dollar-quoted strings (`$tag$...$tag$`), `--` line comments
 * and nested block comments. It never decides what is allowed: each piece is sent on its own
 * with the extended protocol, so a piece that still holds two statements (or half of one) is
 * refused by the server, never run.
 */
export function splitStatements(script: string): string[] {
  const statements: string[] = [];
  let start = 0;
  let i = 0;
  const n = script.length;
  const push = (end: number): void => {
    const text = script.slice(start, end).trim();
    if (text !== '' && !isOnlyComments(text)) statements.push(text);
  };
  while (i < n) {
    const c = script[i];
    const next = script[i + 1];
    if (c === "'" || c === '"') {
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
    } else if (c === ';') {
      push(i);
      start = i + 1;
      i++;
    } else {
      i++;
    }
  }
  push(n);
  return statements;
}

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
