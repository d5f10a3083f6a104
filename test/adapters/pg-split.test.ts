import { describe, expect, it } from 'vitest';
import { splitStatements } from '../../src/adapters/pg-split.js';

describe('splitStatements (pgTransaction scripts)', () => {
  it.each([
    ['select 1; select 2', ['select 1', 'select 2']],
    ["select 'a;b'; select 2", ["select 'a;b'", 'select 2']],
    ["select 'it''s;'; select 2", ["select 'it''s;'", 'select 2']],
    ["select E'\\';x'; select 2", ["select E'\\';x'", 'select 2']],
    ['select "a;b" from t; select 2', ['select "a;b" from t', 'select 2']],
    ['select $$a;b$$; select $t$x;$$;y$t$', ['select $$a;b$$', 'select $t$x;$$;y$t$']],
    ['select 1 -- c;d\n; select 2', ['select 1 -- c;d', 'select 2']],
    ['select /* a; /* b; */ c; */ 1; select 2', ['select /* a; /* b; */ c; */ 1', 'select 2']],
    ['select $1; select $2', ['select $1', 'select $2']],
    ['  ;  ; -- only a comment\n ; /* x */', []],
    ['', []],
  ])('%j', (script, expected) => {
    expect(splitStatements(script)).toEqual(expected);
  });
});
