/**
 * How a tool's answer is worded: results with a bounded text preview, tool errors, and the
 * phrases several tools share (ages, the calls a waiting call waits for).
 */
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import type { BlockingOp, HeldState } from 'engine-guard';

/** Most characters of the JSON preview in a result's text block. */
const PREVIEW_CHARS = 2_000;

/**
 * A tool result: the data in `structuredContent`, and a short text block (the one-line summary
 * and a bounded preview of the JSON) for clients that only show text, so a large result is not
 * sent twice.
 */
export function ok(structured: Record<string, unknown>, summary: string): CallToolResult {
  const json = JSON.stringify(structured);
  const preview =
    json.length <= PREVIEW_CHARS
      ? json
      : `${json.slice(0, PREVIEW_CHARS)}... (${json.length - PREVIEW_CHARS} more characters in structuredContent)`;
  return {
    content: [{ type: 'text', text: `${summary}\n${preview}` }],
    structuredContent: structured,
  };
}

export function toolError(message: string): CallToolResult {
  return { content: [{ type: 'text', text: message }], isError: true };
}

/** The text of a result's text blocks. */
export function textOf(result: CallToolResult): string {
  return result.content.map((c) => (c.type === 'text' ? c.text : '')).join('\n');
}

/** `result` with `note` as its first text block (an error's message keeps one block). */
export function withNote(result: CallToolResult, note: string | undefined): CallToolResult {
  if (note === undefined) return result;
  if (result.isError) return toolError(`${note}\n${textOf(result)}`);
  return { ...result, content: [{ type: 'text', text: note }, ...result.content] };
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** "4 min", "12.5 s", "80 ms": how long an op has been running or waiting. */
export function formatAge(ms: number): string {
  if (ms < 1_000) return `${Math.round(ms)} ms`;
  if (ms < 120_000) return `${(ms / 1_000).toFixed(1)} s`;
  return `${Math.round(ms / 60_000)} min`;
}

/** `query #12 "query: select ..." (running 4 min)`, for each op a queued call waits for. */
export function describeBlockers(blockers: readonly BlockingOp[]): string {
  return blockers
    .map((op) => {
      const tool = op.label?.split(':')[0] ?? op.kind;
      const what = op.label === undefined ? '' : ` "${op.label.replace(/ \[call \d+\]$/, '')}"`;
      return `${tool} #${op.id}${what} (running ${formatAge(op.ageMs)})`;
    })
    .join(', ');
}

/** `temp table t, setting search_path`: the connection state that pins a session. */
export function describeState(state: readonly HeldState[]): string {
  if (state.length === 0) return 'connection state';
  const shown = state.slice(0, 5).map((entry) => `${entry.kind} ${entry.name}`);
  return state.length > 5 ? `${shown.join(', ')} and ${state.length - 5} more` : shown.join(', ');
}

/** `query: select 1`: the op's label in `status()` and logs, the SQL cut to one short line. */
export function opLabel(tool: string, sql?: string): string {
  if (sql === undefined) return tool;
  const flat = sql.replace(/\s+/g, ' ').trim();
  return `${tool}: ${flat.length > 60 ? `${flat.slice(0, 57)}...` : flat}`;
}

let callSequence = 0;
/** `label` made unique: a waiting call finds itself in `guard.status().queued` by it. */
export function uniqueLabel(label: string): string {
  return `${label} [call ${++callSequence}]`;
}
