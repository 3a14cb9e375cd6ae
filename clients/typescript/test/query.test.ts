/**
 * `complete` and `inspect` against a real gateway: a session's interpreter answers from its
 * live state (a variable, an import), cursors before a character beyond the BMP, and the
 * refusals (`no_kernel`, `kernel_busy`, and the client's own for a session it does not read).
 */

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { GatewayError, SluiceClient, type SluiceEvent } from '../src/node.js';
import { collect, type Gateway, startGateway, within } from './helpers.js';

let gateway: Gateway;
let client: SluiceClient;
let sessions = 0;

/** A fresh named session for one test. */
const fresh = (what: string): string => `ts-q-${what}-${process.pid}-${++sessions}`;

const cell = (session: string, code: string) => client.execute(code, { language: 'python', session, persistent: true });

/** A session whose interpreter ran `import math; value = 42`. */
async function notebook(what: string): Promise<string> {
  const session = fresh(what);
  const outcome = await within(cell(session, 'import math; value = 42').done, 30_000, 'the first cell');
  assert.equal(outcome.exitCode, 0, outcome.stderr);
  return session;
}

before(async () => {
  gateway = await startGateway();
  client = await SluiceClient.connect(gateway.url, { reconnect: false });
});

after(async () => {
  client?.close();
  await gateway?.stop();
});

describe('complete', () => {
  test('math.sq: sqrt, replacing "sq"; val: value', async () => {
    const session = await notebook('complete');
    const code = 'math.sq';
    const completions = await within(client.complete(session, code, code.length), 10_000, 'complete');
    assert.ok(completions.matches.includes('sqrt'), JSON.stringify(completions));
    assert.equal(code.slice(completions.cursorStart, completions.cursorEnd), 'sq');
    assert.deepEqual([completions.cursorStart, completions.cursorEnd], [5, 7]);
    assert.equal(completions.truncated, false);
    assert.deepEqual(completions.matches, [...completions.matches].sort(), 'sorted');

    const value = await within(client.complete(session, 'val', 3), 10_000, 'complete val');
    assert.ok(value.matches.includes('value'), JSON.stringify(value));
    assert.deepEqual([value.cursorStart, value.cursorEnd], [0, 3]);
  });

  test('a cursor after a character beyond the BMP: offsets are JavaScript string indices', async () => {
    const session = await notebook('astral');
    // "😀" is two UTF-16 units and one code point: the gateway counts it once.
    const code = 's = "😀"; math.sq';
    assert.equal(code.length, [...code].length + 1);
    const completions = await within(client.complete(session, code, code.length), 10_000, 'complete');
    assert.ok(completions.matches.includes('sqrt'), JSON.stringify(completions));
    assert.equal(code.slice(completions.cursorStart, completions.cursorEnd), 'sq');
    assert.deepEqual([completions.cursorStart, completions.cursorEnd], [code.length - 2, code.length]);

    // A cursor in the middle of the code, with the emoji before it and text after it.
    const middle = '"😀😀"; val + 1';
    const at = middle.indexOf(' + 1');
    const value = await within(client.complete(session, middle, at), 10_000, 'complete in the middle');
    assert.ok(value.matches.includes('value'), JSON.stringify(value));
    assert.equal(middle.slice(value.cursorStart, value.cursorEnd), 'val');

    const inspection = await within(client.inspect(session, '"😀"; len(', '"😀"; len('.length), 10_000, 'inspect');
    assert.equal(inspection.found, true);
    assert.match(inspection.text, /len/);
  });
});

describe('inspect', () => {
  test('len( with the cursor after "(": found, text/plain names len; an unknown name: not found', async () => {
    const session = await notebook('inspect');
    const inspection = await within(client.inspect(session, 'len(', 4), 10_000, 'inspect len(');
    assert.equal(inspection.found, true);
    assert.equal(typeof inspection.bundle['text/plain'], 'string');
    assert.match(String(inspection.bundle['text/plain']), /len/);
    assert.equal(inspection.text, inspection.bundle['text/plain']);

    const value = await within(client.inspect(session, 'value', 5), 10_000, 'inspect value');
    assert.equal(value.found, true);
    assert.match(value.text, /42/, 'the live value');

    const unknown = await within(client.inspect(session, 'no_such_name_here', 17), 10_000, 'inspect unknown');
    assert.deepEqual(unknown, { found: false, bundle: {}, text: '' });
  });

  test('detailLevel 1 adds the source of a function the interpreter has the source of', async () => {
    const session = await notebook('detail');
    await within(cell(session, 'import textwrap').done, 20_000, 'import');
    const code = 'textwrap.dedent';
    const plain = await within(client.inspect(session, code, code.length), 10_000, 'inspect');
    const detailed = await within(client.inspect(session, code, code.length, { detailLevel: 1 }), 10_000, 'inspect detail');
    assert.equal(plain.found && detailed.found, true);
    assert.match(plain.text, /dedent/);
    assert.doesNotMatch(plain.text, /def dedent\(/, 'no source at level 0');
    assert.match(detailed.text, /def dedent\(/, 'the source at level 1');
  });
});

describe('refusals', () => {
  test('a session without an interpreter: no_kernel', async () => {
    const session = fresh('no-kernel');
    await within(client.execute('true', { language: 'sh', session }).done, 20_000, 'a program that is not a cell');
    await assert.rejects(
      within(client.complete(session, 'val', 3), 10_000, 'complete'),
      (err: unknown) => err instanceof GatewayError && err.code === 'no_kernel' && err.event.for_session === session,
    );
    await assert.rejects(
      within(client.inspect(session, 'len(', 4), 10_000, 'inspect'),
      (err: unknown) => err instanceof GatewayError && err.code === 'no_kernel',
    );
    // Restarted: the interpreter is gone until the next cell.
    const restarted = await notebook('no-kernel-restarted');
    await within(client.restart(restarted), 20_000, 'restart');
    await assert.rejects(
      within(client.complete(restarted, 'val', 3), 10_000, 'complete after restart'),
      (err: unknown) => err instanceof GatewayError && err.code === 'no_kernel',
    );
  });

  test('a session the gateway made for one execution: no_kernel', async () => {
    const execution = client.execute("import time\nprint('go', flush=True)\ntime.sleep(60)", { language: 'python' });
    const iterator = execution[Symbol.asyncIterator]();
    for (;;) {
      const next = await within(iterator.next(), 20_000, 'an event');
      assert.equal(next.done, false);
      if (next.value.type === 'stdout') break;
    }
    const session = execution.session;
    assert.ok(session);
    await assert.rejects(
      within(client.complete(session, 'x', 1), 10_000, 'complete'),
      (err: unknown) => err instanceof GatewayError && err.code === 'no_kernel' && err.event.for_session === session,
    );
    execution.cancel();
    assert.equal((await within(execution.done, 20_000, 'done')).status, 'cancelled');
  });

  test('a query while a cell runs: kernel_busy; after the cell it is answered', async () => {
    const session = await notebook('busy');
    const running = cell(session, "import time\nprint('go', flush=True)\ntime.sleep(120)");
    let go!: () => void;
    const started = new Promise<void>((resolve) => (go = resolve));
    const events = collect(
      running,
      (e: SluiceEvent) => {
        if (e.type === 'stdout' && e.data.includes('go')) go();
        return false;
      },
      60_000,
    );
    events.catch(() => undefined);
    await within(started, 20_000, '"go" from the cell');
    await assert.rejects(
      within(client.complete(session, 'math.sq', 7), 10_000, 'complete'),
      (err: unknown) => err instanceof GatewayError && err.code === 'kernel_busy' && err.event.for_session === session,
    );
    await assert.rejects(
      within(client.inspect(session, 'len(', 4), 10_000, 'inspect'),
      (err: unknown) => err instanceof GatewayError && err.code === 'kernel_busy',
    );
    running.cancel();
    assert.equal((await within(running.done, 20_000, 'the cell')).status, 'cancelled');
    const after = await within(client.complete(session, 'val', 3), 10_000, 'complete after the cell');
    assert.ok(after.matches.includes('value'), 'the state is still there');
  });

  test('a session this client does not read is refused before sending; attaching it makes the query work', async () => {
    const session = await notebook('other');
    const other = await SluiceClient.connect(gateway.url, { reconnect: false });
    try {
      await assert.rejects(other.complete(session, 'val', 3), { code: 'unknown_session' });
      const reader = other.attach(session);
      await within(reader.ready, 10_000, 'attached');
      const completions = await within(other.complete(session, 'val', 3), 10_000, 'complete');
      assert.ok(completions.matches.includes('value'));
      reader.detach();
    } finally {
      other.close();
    }
  });

  test('a cursor past the code is refused locally with bad_request', async () => {
    const session = await notebook('past-end');
    await assert.rejects(client.complete(session, 'é', 2), { code: 'bad_request' });
  });
});
