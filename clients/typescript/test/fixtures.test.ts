/**
 * The shared protocol fixtures (protocol/fixtures): every valid event decodes, every
 * invalid one is refused, and client frames are accepted or refused with the code their
 * file name gives. A protocol change this client does not follow fails here.
 */

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import {
  codePointLength,
  codePointOffset,
  decodeEvent,
  encodeFrame,
  InvalidEventError,
  isTerminal,
  parseClientFrame,
  SluiceError,
  utf16Offset,
} from '../src/index.js';
import { repoRoot } from './helpers.js';

const root = join(repoRoot, 'protocol', 'fixtures');

function files(dir: string): { name: string; text: string }[] {
  const names = readdirSync(join(root, dir)).sort();
  assert.ok(names.length > 0, `${dir} holds no fixtures`);
  return names.map((name) => ({ name, text: readFileSync(join(root, dir, name), 'utf8') }));
}

/** A nested object as the client keeps it: an optional field sent as `null` is absent. */
function withoutNulls(value: unknown): unknown {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return value;
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== null));
}

describe('event fixtures', () => {
  for (const { name, text } of files('events/valid')) {
    test(`decodes events/valid/${name}`, () => {
      const event = decodeEvent(text);
      const wire = JSON.parse(text) as Record<string, unknown>;
      assert.equal(event.sequence, wire['sequence']);
      assert.equal(event.timestamp, wire['timestamp']);
      assert.equal(event.id, wire['id']);
      assert.equal(event.session, wire['session']);
      assert.equal(event.data, wire['data']);
      if (event.type === 'unknown') {
        assert.equal(event.wire_type, wire['type']);
        assert.equal(isTerminal(event), false, 'an unknown type is never terminal');
      } else {
        assert.equal(event.type, wire['type']);
      }
      // Every field the client keeps has the wire's value.
      for (const [key, value] of Object.entries(event)) {
        if (key === 'type' || key === 'wire_type') continue;
        assert.deepEqual(value, withoutNulls(wire[key]), `field ${key}`);
      }
    });
  }

  for (const { name, text } of files('events/invalid')) {
    test(`refuses events/invalid/${name}`, () => {
      assert.throws(() => decodeEvent(text), InvalidEventError);
    });
  }

  test('specific fixtures decode to what they mean', () => {
    const read = (name: string) => decodeEvent(readFileSync(join(root, 'events/valid', name), 'utf8'));
    const completed = read('completed-signal.json');
    assert.ok(completed.type === 'completed' && completed.signal === 11 && completed.exit_code === undefined);
    const limit = read('resource-limit-output.json');
    assert.ok(limit.type === 'resource_limit' && limit.limit === 'output' && limit.limit_value === 1048576);
    const unknownCode = read('error-unknown-code.json');
    assert.ok(unknownCode.type === 'error' && unknownCode.code === 'quota_exceeded' && isTerminal(unknownCode));
    const socketError = read('error-socket.json');
    assert.ok(socketError.type === 'error' && !isTerminal(socketError));
    const gap = read('gap.json');
    assert.ok(gap.type === 'gap' && gap.missed_from === 1 && gap.resume_from === 41);
    const base64 = read('stdout-base64.json');
    assert.ok(base64.type === 'stdout' && base64.encoding === 'base64');
    assert.equal(read('unknown-type.json').type, 'unknown');
    const workspace = read('resource-limit-workspace.json');
    assert.ok(workspace.type === 'resource_limit' && workspace.limit === 'workspace' && workspace.limit_observed === 8388608);
    const attached = read('attached.json');
    assert.ok(attached.type === 'attached' && attached.resume_from === attached.sequence + 1 && !isTerminal(attached));
    const display = read('display.json');
    assert.ok(display.type === 'display' && display.display_id === 't1' && !isTerminal(display));
    assert.deepEqual(display.bundle['application/json'], { rows: 2 }, 'a JSON type keeps its JSON value');
    const update = read('update-display.json');
    assert.ok(update.type === 'update_display' && update.display_id === 't1' && update.bundle['text/plain'] === '50%');
    const result = read('result.json');
    assert.ok(result.type === 'result' && result.execution_count === 2 && result.data === '42' && !isTerminal(result));
    assert.deepEqual(result.metadata, {});
    const completions = read('complete-reply.json');
    assert.ok(completions.type === 'complete_reply' && completions.request === 'q1' && !isTerminal(completions));
    assert.deepEqual([completions.matches, completions.cursor_start, completions.cursor_end], [['sqrt'], 17, 19]);
    assert.equal(completions.truncated, undefined, 'absent truncated stays absent');
    const inspection = read('inspect-reply.json');
    assert.ok(inspection.type === 'inspect_reply' && inspection.found && inspection.request === 'q2');
    assert.match(String(inspection.bundle?.['text/plain']), /^Signature: len\(obj, \/\)/);
    const notFound = read('inspect-reply-not-found.json');
    assert.ok(notFound.type === 'inspect_reply' && !notFound.found && notFound.bundle === undefined);
    const busy = read('error-kernel-busy.json');
    assert.ok(busy.type === 'error' && busy.code === 'kernel_busy' && busy.request === 'q4' && busy.for_session === 'nb');
    assert.equal(isTerminal(busy), false);
  });
});

describe('query events and frames beyond the fixtures', () => {
  const reply = (fields: Record<string, unknown>) =>
    JSON.stringify({ data: '', timestamp: 1763900004.5, sequence: 3, id: null, session: null, request: 'q1', ...fields });

  test('refuses malformed complete_reply and inspect_reply events', () => {
    for (const fields of [
      { type: 'complete_reply', matches: ['a'], cursor_start: 2, cursor_end: 1 },
      { type: 'complete_reply', matches: [1], cursor_start: 0, cursor_end: 0 },
      { type: 'complete_reply', matches: [], cursor_start: -1, cursor_end: 0 },
      { type: 'complete_reply', matches: [], cursor_end: 0 },
      { type: 'complete_reply', matches: [], cursor_start: 0, cursor_end: 0, truncated: 'yes' },
      { type: 'complete_reply', matches: [], cursor_start: 0, cursor_end: 0, session: 'nb' },
      { type: 'complete_reply', matches: [], cursor_start: 0, cursor_end: 0, request: null },
      { type: 'inspect_reply', found: 'yes' },
      { type: 'inspect_reply', found: true, bundle: ['text/plain'] },
      { type: 'inspect_reply', found: true, bundle: { 'text/plain': 5 } },
      { type: 'inspect_reply', found: false, id: 'x', session: 's' },
    ]) {
      assert.throws(() => decodeEvent(reply(fields)), InvalidEventError, JSON.stringify(fields));
    }
    const truncated = decodeEvent(reply({ type: 'complete_reply', matches: [], cursor_start: 0, cursor_end: 0, truncated: true }));
    assert.ok(truncated.type === 'complete_reply' && truncated.truncated === true);
  });

  test('complete and inspect frames: cursor_pos counts code points, detail_level is 0 or 1', () => {
    const frame = (fields: Record<string, unknown>) => JSON.stringify({ type: 'complete', request: 'q', session: 'nb', ...fields });
    // "😀" is two UTF-16 units but one code point.
    assert.deepEqual(parseClientFrame(frame({ code: '😀x', cursor_pos: 2 })), {
      type: 'complete',
      request: 'q',
      session: 'nb',
      code: '😀x',
      cursor_pos: 2,
    });
    for (const fields of [
      { code: '😀x', cursor_pos: 3 },
      { code: 'x', cursor_pos: -1 },
      { code: 'x', cursor_pos: 0.5 },
      { code: 'x' },
      { code: 5, cursor_pos: 0 },
      { code: 'x', cursor_pos: 0, request: '' },
      { code: 'x', cursor_pos: 0, session: 's'.repeat(129) },
      { type: 'inspect', code: 'x', cursor_pos: 0, detail_level: 1.5 },
      { type: 'inspect', code: 'x', cursor_pos: 0, detail_level: true },
    ]) {
      assert.throws(() => parseClientFrame(frame(fields)), { code: 'bad_request' }, JSON.stringify(fields));
    }
    const inspect = parseClientFrame(frame({ type: 'inspect', code: 'len(', cursor_pos: 4, detail_level: 0 }));
    assert.ok(inspect.type === 'inspect' && inspect.detail_level === 0);
  });

  test('code points and UTF-16 offsets convert both ways', () => {
    const code = 'a😀b';
    assert.deepEqual(
      [0, 1, 3, 4].map((i) => codePointOffset(code, i)),
      [0, 1, 2, 3],
    );
    assert.deepEqual(
      [0, 1, 2, 3].map((p) => utf16Offset(code, p)),
      [0, 1, 3, 4],
    );
    assert.equal(utf16Offset(code, 4), undefined, 'past the end');
    assert.throws(() => codePointOffset(code, 2), { code: 'bad_request' }, 'inside the surrogate pair');
    assert.throws(() => codePointOffset(code, 5), { code: 'bad_request' });
    assert.throws(() => codePointOffset(code, -1), { code: 'bad_request' });
    assert.equal(codePointLength(code), 3);
  });
});

describe('rich output events beyond the fixtures', () => {
  const rich = (fields: Record<string, unknown>) =>
    JSON.stringify({ type: 'display', data: '', timestamp: 1763900001.5, sequence: 3, id: 'c', session: 's', ...fields });

  test('a display without metadata has {}', () => {
    const event = decodeEvent(rich({ bundle: { 'text/plain': 'x' } }));
    assert.ok(event.type === 'display');
    assert.deepEqual(event.metadata, {});
    assert.equal(event.display_id, undefined);
  });

  test('refuses text types whose data is not text, a bundle that is not an object, and a result with a bad count', () => {
    for (const fields of [
      { bundle: { 'image/png': 5 } },
      { bundle: { 'text/html': { a: 1 } } },
      { bundle: ['text/plain'] },
      { bundle: null },
      { bundle: { 'text/plain': 'x' }, metadata: 'wide' },
      { bundle: { 'text/plain': 'x' }, display_id: 7 },
      { bundle: { 'text/plain': 'x' }, id: null, session: null },
      { type: 'result', bundle: { 'text/plain': 'x' }, execution_count: -1 },
    ]) {
      assert.throws(() => decodeEvent(rich(fields)), InvalidEventError, JSON.stringify(fields));
    }
    // Any JSON value for a JSON type.
    const event = decodeEvent(rich({ bundle: { 'application/vnd.example+json': [1, 'a'], 'application/json': 'text' } }));
    assert.ok(event.type === 'display');
    assert.deepEqual(event.bundle, { 'application/vnd.example+json': [1, 'a'], 'application/json': 'text' });
  });
});

describe('client frame fixtures', () => {
  for (const { name, text } of files('client/valid')) {
    test(`accepts client/valid/${name}`, () => {
      const frame = parseClientFrame(text);
      // What the client would send for it is itself valid and means the same.
      assert.deepEqual(parseClientFrame(encodeFrame(frame)), frame);
    });
  }

  for (const { name, text } of files('client/invalid')) {
    const code = name.split('--')[0];
    test(`refuses client/invalid/${name} with ${code}`, () => {
      assert.throws(
        () => parseClientFrame(text),
        (err: unknown) => err instanceof SluiceError && err.code === code,
      );
    });
  }
});
