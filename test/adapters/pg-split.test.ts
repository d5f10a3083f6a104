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
    // A SQL-standard function body keeps its semicolons (as psql does).
    [
      'CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; select 3',
      [
        'CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END',
        'select 3',
      ],
    ],
    [
      'create or replace procedure p(x int) begin atomic insert into t values (x); select case when x > 0 then 1 else 2 end; end;\nselect 1',
      [
        'create or replace procedure p(x int) begin atomic insert into t values (x); select case when x > 0 then 1 else 2 end; end',
        'select 1',
      ],
    ],
    // BEGIN outside such a statement is a transaction's: it ends at its semicolon.
    [
      'begin; select 1; end; select case when true then 1 end',
      ['begin', 'select 1', 'end', 'select case when true then 1 end'],
    ],
    ['create table begin_end (x int); select 1', ['create table begin_end (x int)', 'select 1']],
    // Inside parentheses a semicolon ends nothing; a stray closing one is ignored.
    ['select (1; 2); select 3', ['select (1; 2)', 'select 3']],
    ['select 1); select 2', ['select 1)', 'select 2']],
  ])('%j', (script, expected) => {
    expect(splitStatements(script)).toEqual(expected);
  });
});
