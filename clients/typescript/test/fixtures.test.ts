/**
 * The shared protocol fixtures (protocol/fixtures): every valid event decodes, every
 * invalid one is refused, and client frames are accepted or refused with the code their
 * file name gives. A protocol change this client does not follow fails here.
 */

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { decodeEvent, encodeFrame, InvalidEventError, isTerminal, parseClientFrame, SluiceError } from '../src/index.js';
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
