/**
 * `complete` and `inspect` against a gateway the test plays by hand (fake-gateway.ts):
 * the frames the client sends (cursor positions in code points), how it turns the answers'
 * code points back into JavaScript string offsets, refusals, the local checks, and what a
 * dropped connection does to a query on its way.
 */

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { ConnectionError, GatewayError, InvalidEventError, InvalidFrameError, parseClientFrame, SluiceClient } from '../src/node.js';
import { FakeGateway, type Frame } from './fake-gateway.js';
import { within } from './helpers.js';

let gateway: FakeGateway;
let client: SluiceClient;

/** The next frame, checked against the protocol's rules, of `type`. */
async function expectFrame(type: string): Promise<Frame> {
  const frame = await gateway.next();
  assert.equal(frame['type'], type, `expected a ${type} frame, got ${JSON.stringify(frame).slice(0, 300)}`);
  parseClientFrame(JSON.stringify(frame));
  return frame;
}

/** Attaches `session`, answered; returns the reader. */
async function read(session: string): Promise<ReturnType<SluiceClient['attach']>> {
  const reader = client.attach(session);
  await expectFrame('attach');
  gateway.attached(session, 0);
  await within(reader.ready, 5_000, 'attached');
  return reader;
}

/** Sends a `runtimes` and checks it is the next frame: nothing was sent before it. */
async function nothingSent(): Promise<void> {
  const asked = client.runtimes();
  await expectFrame('runtimes');
  gateway.answer('runtimes', { runtimes: [], limits: {} });
  await within(asked, 5_000, 'runtimes');
}

describe('complete and inspect against a scripted gateway', () => {
  before(() => {
    gateway = new FakeGateway();
  });

  afterEach(() => {
    client?.close();
  });

  after(async () => {
    await gateway.close();
  });

  async function connect(options: Parameters<typeof SluiceClient.connect>[1] = {}): Promise<void> {
    client = await SluiceClient.connect(await gateway.url(), {
      reconnect: { initialDelayMs: 5, maxDelayMs: 50, giveUpAfterMs: 5_000 },
      ...options,
    });
  }

  test('complete sends the cursor in code points and gives the answer back in UTF-16 offsets', async () => {
    await connect();
    await read('nb');
    // "😀" is one code point and two UTF-16 units.
    const code = 's = "😀"\nmath.sq';
    const completions = client.complete('nb', code, code.length);
    const frame = await expectFrame('complete');
    const points = [...code].length;
    assert.equal(points, code.length - 1);
    assert.deepEqual(frame, { type: 'complete', request: frame['request'], session: 'nb', code, cursor_pos: points });
    assert.match(String(frame['request']), /^ts-[0-9a-f]+-q\d+$/);
    gateway.answer('complete_reply', { request: frame['request'], matches: ['sqrt'], cursor_start: points - 2, cursor_end: points });
    const answer = await within(completions, 5_000, 'completions');
    assert.deepEqual(answer, { matches: ['sqrt'], cursorStart: code.length - 2, cursorEnd: code.length, truncated: false });
    assert.equal(code.slice(answer.cursorStart, answer.cursorEnd), 'sq');
  });

  test('truncated is kept; answers of concurrent queries find their own query by request', async () => {
    await connect();
    await read('nb');
    const first = client.complete('nb', 'a', 1);
    const second = client.complete('nb', 'b', 1);
    const one = await expectFrame('complete');
    const two = await expectFrame('complete');
    assert.notEqual(one['request'], two['request']);
    gateway.answer('complete_reply', { request: two['request'], matches: ['bb'], cursor_start: 0, cursor_end: 1, truncated: true });
    gateway.answer('complete_reply', { request: one['request'], matches: [], cursor_start: 1, cursor_end: 1 });
    assert.deepEqual(await within(second, 5_000, 'second'), { matches: ['bb'], cursorStart: 0, cursorEnd: 1, truncated: true });
    assert.deepEqual(await within(first, 5_000, 'first'), { matches: [], cursorStart: 1, cursorEnd: 1, truncated: false });
  });

  test('inspect sends detail_level when given; found gives the bundle and its text, not found {}', async () => {
    await connect();
    await read('nb');
    const found = client.inspect('nb', 'len(', 4, { detailLevel: 1 });
    const frame = await expectFrame('inspect');
    assert.deepEqual(frame, { type: 'inspect', request: frame['request'], session: 'nb', code: 'len(', cursor_pos: 4, detail_level: 1 });
    const bundle = { 'text/plain': 'Signature: len(obj, /)', 'text/html': '<b>len</b>' };
    gateway.answer('inspect_reply', { request: frame['request'], found: true, bundle });
    assert.deepEqual(await within(found, 5_000, 'found'), { found: true, bundle, text: 'Signature: len(obj, /)' });

    const missing = client.inspect('nb', 'nope', 2);
    const second = await expectFrame('inspect');
    assert.equal('detail_level' in second, false, 'the default is left to the gateway');
    gateway.answer('inspect_reply', { request: second['request'], found: false });
    assert.deepEqual(await within(missing, 5_000, 'not found'), { found: false, bundle: {}, text: '' });
  });

  test('a refusal rejects with a GatewayError carrying its code; the session reader goes on', async () => {
    await connect();
    const reader = await read('nb');
    for (const code of ['kernel_busy', 'no_kernel', 'query_timeout', 'not_permitted', 'unknown_session']) {
      const asked = client.complete('nb', 'x', 1);
      const frame = await expectFrame('complete');
      gateway.answer('error', { code, data: `refused: ${code}`, for_session: 'nb', request: frame['request'] });
      await assert.rejects(
        within(asked, 5_000, code),
        (err: unknown) =>
          err instanceof GatewayError && err.code === code && err.event.request === frame['request'] && err.message.includes('complete'),
      );
    }
    assert.equal(reader.isDetached, false, "a refusal naming a request is never the attach's");
  });

  test('a session the client does not read, a bad cursor, a bad detail level: refused before anything is sent', async () => {
    await connect();
    await assert.rejects(client.complete('elsewhere', 'x', 1), (err: unknown) => {
      return err instanceof Error && (err as { code?: string }).code === 'unknown_session' && /does not read/.test(err.message);
    });
    await read('nb');
    await assert.rejects(client.complete('nb', 'x', 2), InvalidFrameError);
    await assert.rejects(client.complete('nb', 'x', -1), { code: 'bad_request' });
    await assert.rejects(
      client.complete('nb', '😀', 1),
      (err: unknown) => err instanceof InvalidFrameError && /surrogate/.test(err.message),
    );
    await assert.rejects(client.inspect('nb', 'x', 0, { detailLevel: 2 as 0 }), { code: 'bad_request' });
    await assert.rejects(client.complete('', 'x', 0), { code: 'bad_request' });
    await nothingSent();
  });

  test('an answer whose range is not in the code rejects with invalid_event', async () => {
    await connect();
    await read('nb');
    const asked = client.complete('nb', '😀', 2);
    const frame = await expectFrame('complete');
    assert.equal(frame['cursor_pos'], 1);
    gateway.answer('complete_reply', { request: frame['request'], matches: ['x'], cursor_start: 0, cursor_end: 2 });
    await assert.rejects(asked, InvalidEventError);
  });

  test('a query sent on a socket that drops rejects with connection_lost and is not sent again; one asked while down goes out after the resume', async () => {
    let whileDown: Promise<unknown> | undefined;
    let onDown: (() => void) | undefined;
    await connect({
      onConnectionChange: (state) => {
        if (state === 'reconnecting') onDown?.();
      },
    });
    await read('nb');
    const lost = client.complete('nb', 'x', 1);
    await expectFrame('complete');
    const failed = assert.rejects(
      lost,
      (err: unknown) => err instanceof ConnectionError && err.code === 'connection_lost' && /asked again/.test(err.message),
    );
    onDown = () => {
      whileDown = client.inspect('nb', 'len', 3);
    };
    await gateway.drop();
    await failed;
    assert.ok(whileDown, 'asked while the connection was down');
    const attach = await expectFrame('attach');
    assert.equal(attach['session'], 'nb');
    gateway.attached('nb', 0);
    const again = await expectFrame('inspect');
    assert.equal(again['code'], 'len', 'the query asked while down, not the lost one');
    gateway.answer('inspect_reply', { request: again['request'], found: false });
    assert.deepEqual(await within(whileDown, 5_000, 'inspect'), { found: false, bundle: {}, text: '' });
    await nothingSent();
  });

  test('a gateway older than the queries refuses them: the query rejects with bad_request', async () => {
    await connect();
    await read('nb');
    const asked = client.inspect('nb', 'x', 1);
    await expectFrame('inspect');
    gateway.answer('error', {
      code: 'bad_request',
      data: 'unknown frame type "inspect"; expected one of execute, stdin, cancel, attach, detach, ack, runtimes, resize',
    });
    await assert.rejects(asked, (err: unknown) => err instanceof GatewayError && err.code === 'bad_request');
  });

  test('close() rejects queries on their way with closed', async () => {
    await connect();
    await read('nb');
    const asked = client.complete('nb', 'x', 1);
    await expectFrame('complete');
    client.close();
    await assert.rejects(asked, (err: unknown) => err instanceof ConnectionError && err.code === 'closed');
    await assert.rejects(client.complete('nb', 'x', 1), { code: 'closed' });
  });
});
