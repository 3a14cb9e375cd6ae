/**
 * Workspaces and file frames against a gateway the test plays by hand (fake-gateway.ts):
 * what the client sends for each file method, how it gathers the answers that repeat its
 * `request`, refusals, pieces of a large upload, `files_changed` in an execution's stream,
 * and what a dropped connection does to a request on its way.
 */

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import {
  ConnectionError,
  decodeBase64,
  GatewayError,
  InvalidEventError,
  InvalidFrameError,
  parseClientFrame,
  SluiceClient,
  type SluiceEvent,
  UPLOAD_PIECE_BYTES,
} from '../src/node.js';
import { FakeGateway, type Frame } from './fake-gateway.js';
import { within } from './helpers.js';

let gateway: FakeGateway;
let client: SluiceClient;

/** Bytes 0..255 repeated, `n` of them: every byte value, text-hostile. */
function binary(n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 7 + 3) % 256);
}

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64');
}

/** The next frame, checked against the protocol's rules, of `type`. */
async function expectFrame(type: string): Promise<Frame> {
  const frame = await gateway.next();
  assert.equal(frame['type'], type, `expected a ${type} frame, got ${JSON.stringify(frame).slice(0, 300)}`);
  parseClientFrame(JSON.stringify(frame));
  return frame;
}

/** Attaches `session` with a workspace, answered; returns the reader. */
async function openWorkspace(session: string): Promise<ReturnType<SluiceClient['attach']>> {
  const reader = client.attach(session, { workspace: true });
  const frame = await expectFrame('attach');
  assert.deepEqual(frame, { type: 'attach', session, since: 0, workspace: true, ack: true });
  gateway.attached(session, 0);
  await within(reader.ready, 5_000, 'attached');
  return reader;
}

describe('file frames against a scripted gateway', () => {
  before(async () => {
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

  test('writeFile sends the bytes as base64 and resolves with the size', async () => {
    await connect();
    await openWorkspace('w1');
    const written = client.writeFile('w1', 'dir/hello.txt', 'héllo\n', { mode: 0o600 });
    const frame = await expectFrame('write_file');
    assert.equal(frame['session'], 'w1');
    assert.equal(frame['path'], 'dir/hello.txt');
    assert.equal(frame['encoding'], 'base64');
    assert.equal(frame['mode'], 0o600);
    assert.equal(frame['append'], undefined);
    assert.equal(Buffer.from(String(frame['data']), 'base64').toString('utf8'), 'héllo\n');
    gateway.answer('file_written', { request: frame['request'], path: 'dir/hello.txt', size: 7 });
    assert.equal(await within(written, 5_000, 'written'), 7);
  });

  test('an empty write is one frame with no data', async () => {
    await connect();
    const written = client.writeFile('w1', 'empty', new Uint8Array(0));
    const frame = await expectFrame('write_file');
    assert.equal(frame['data'], '');
    gateway.answer('file_written', { request: frame['request'], path: 'empty', size: 0 });
    assert.equal(await written, 0);
  });

  test('a large upload goes in pieces, one after the other: the first replaces, the rest append', async () => {
    await connect();
    const data = binary(2 * UPLOAD_PIECE_BYTES + 1000);
    const written = client.writeFile('w1', 'big.bin', data, { mode: 0o640 });
    const received: Uint8Array[] = [];
    for (let i = 0; i < 3; i++) {
      const frame = await expectFrame('write_file');
      assert.ok(JSON.stringify(frame).length <= 1 << 20, 'each frame fits in the default max_frame_bytes');
      assert.equal(frame['append'], i === 0 ? undefined : true);
      assert.equal(frame['mode'], i === 0 ? 0o640 : undefined);
      received.push(decodeBase64(String(frame['data'])));
      // The next piece is sent only once this one is written.
      assert.equal(gateway.pending, 0, 'one piece in flight at a time');
      const size = received.reduce((n, r) => n + r.length, 0);
      gateway.answer('file_written', { request: frame['request'], path: 'big.bin', size });
    }
    assert.equal(await within(written, 5_000, 'written'), data.length);
    assert.deepEqual(Buffer.concat(received), Buffer.from(data));
  });

  test('a smaller maxFrameBytes makes smaller pieces', async () => {
    await connect({ maxFrameBytes: 4096 });
    const data = binary(10_000);
    const written = client.writeFile('w1', 'x.bin', data);
    const received: Uint8Array[] = [];
    while (received.reduce((n, r) => n + r.length, 0) < data.length) {
      const frame = await expectFrame('write_file');
      assert.ok(Buffer.byteLength(JSON.stringify(frame)) <= 4096);
      received.push(decodeBase64(String(frame['data'])));
      gateway.answer('file_written', { request: frame['request'], path: 'x.bin', size: received.reduce((n, r) => n + r.length, 0) });
    }
    assert.ok(received.length >= 4, `${received.length} pieces`);
    assert.equal(await written, data.length);
    assert.deepEqual(Buffer.concat(received), Buffer.from(data));
  });

  test('a refused piece rejects the upload and sends no more', async () => {
    await connect();
    const written = client.writeFile('w1', 'big.bin', binary(UPLOAD_PIECE_BYTES + 1));
    const first = await expectFrame('write_file');
    gateway.answer('file_written', { request: first['request'], path: 'big.bin', size: UPLOAD_PIECE_BYTES });
    const second = await expectFrame('write_file');
    gateway.answer('error', { code: 'workspace_full', data: 'no room', request: second['request'], for_session: 'w1' });
    await assert.rejects(
      written,
      (err: unknown) => err instanceof GatewayError && err.code === 'workspace_full' && err.event.request === second['request'],
    );
    // The socket goes on: a list is answered.
    const listed = client.listFiles('w1');
    const list = await expectFrame('list_files');
    gateway.answer('file_list', { request: list['request'], path: '', entries: [] });
    assert.deepEqual([...(await listed)], []);
  });

  test('readFile asks for base64 and joins the parts exactly; readText decodes UTF-8', async () => {
    await connect();
    const data = binary(150_000);
    const read = client.readFile('w1', 'big.bin');
    const frame = await expectFrame('read_file');
    assert.equal(frame['encoding'], 'base64');
    assert.equal(frame['offset'], undefined);
    assert.equal(frame['length'], undefined);
    for (let at = 0; at < data.length; at += 65_536) {
      const part = data.subarray(at, at + 65_536);
      gateway.answer('file_data', {
        request: frame['request'],
        path: 'big.bin',
        offset: at,
        size: data.length,
        data: b64(part),
        encoding: 'base64',
        last: at + 65_536 >= data.length,
      });
    }
    assert.deepEqual(Buffer.from(await within(read, 5_000, 'read')), Buffer.from(data));

    const text = client.readText('w1', 'note.txt', { offset: 2, length: 5 });
    const ranged = await expectFrame('read_file');
    assert.equal(ranged['offset'], 2);
    assert.equal(ranged['length'], 5);
    gateway.answer('file_data', {
      request: ranged['request'],
      path: 'note.txt',
      offset: 2,
      size: 9,
      data: b64(Buffer.from('ü ok')),
      encoding: 'base64',
      last: true,
    });
    assert.equal(await text, 'ü ok');
  });

  test('a read from past the end is answered from the end, with no bytes', async () => {
    await connect();
    const read = client.readFile('w1', 'small', { offset: 10 });
    const frame = await expectFrame('read_file');
    assert.equal(frame['offset'], 10);
    gateway.answer('file_data', { request: frame['request'], path: 'small', offset: 4, size: 4, data: '', encoding: 'base64', last: true });
    assert.equal((await read).length, 0);
  });

  test('a part that is not the base64 asked for rejects the read', async () => {
    await connect();
    const read = client.readFile('w1', 'a');
    const frame = await expectFrame('read_file');
    gateway.answer('file_data', { request: frame['request'], path: 'a', offset: 0, size: 2, data: 'hi', last: true });
    await assert.rejects(read, (err: unknown) => err instanceof InvalidEventError && /not the base64/.test(err.message));
  });

  test('a part out of place rejects the read with invalid_event', async () => {
    await connect();
    const read = client.readFile('w1', 'a');
    const frame = await expectFrame('read_file');
    const part = { request: frame['request'], path: 'a', size: 10, encoding: 'base64', data: b64(binary(4)) };
    gateway.answer('file_data', { ...part, offset: 0, last: false });
    gateway.answer('file_data', { ...part, offset: 6, last: true });
    await assert.rejects(read, (err: unknown) => err instanceof InvalidEventError && /byte 6, where 4/.test(err.message));
  });

  test('listFiles names no path for the workspace itself, and keeps kinds, sizes and truncated', async () => {
    await connect();
    const listed = client.listFiles('w1');
    const frame = await expectFrame('list_files');
    assert.equal('path' in frame, false);
    const entries = [
      { name: 'a.txt', kind: 'file', size: 5, mode: 0o644, mtime: 1767225600.5 },
      { name: 'd', kind: 'dir', size: 4096, mode: 0o755, mtime: 1767225600 },
      { name: 'l', kind: 'symlink', size: 1, mode: 0o777, mtime: 1767225600 },
      { name: 'p', kind: 'door', size: 0, mode: 0o600, mtime: 1767225600 },
    ];
    gateway.answer('file_list', { request: frame['request'], path: '', entries, truncated: true });
    const listing = await listed;
    assert.equal(listing.truncated, true);
    assert.deepEqual(
      listing.map((e) => [e.name, e.kind, e.size]),
      [
        ['a.txt', 'file', 5],
        ['d', 'dir', 4096],
        ['l', 'symlink', 1],
        ['p', 'other', 0],
      ],
    );

    const sub = client.listFiles('w1', 'd');
    const subFrame = await expectFrame('list_files');
    assert.equal(subFrame['path'], 'd');
    gateway.answer('file_list', { request: subFrame['request'], path: 'd', entries: [] });
    assert.equal((await sub).truncated, false);
  });

  test('deleteFile sends recursive; not_found rejects with a GatewayError', async () => {
    await connect();
    const deleted = client.deleteFile('w1', 'd', { recursive: true });
    const frame = await expectFrame('delete_file');
    assert.equal(frame['recursive'], true);
    gateway.answer('file_deleted', { request: frame['request'], path: 'd' });
    await within(deleted, 5_000, 'deleted');

    const missing = client.deleteFile('w1', 'gone');
    const second = await expectFrame('delete_file');
    assert.equal('recursive' in second, false);
    gateway.answer('error', { code: 'not_found', data: 'no such file', request: second['request'], for_session: 'w1' });
    await assert.rejects(missing, (err: unknown) => err instanceof GatewayError && err.code === 'not_found' && /gone/.test(err.message));
  });

  test('a path or mode the gateway would refuse is refused locally, and nothing is sent', async () => {
    await connect();
    for (const path of ['../x', '/etc/passwd', 'a//b', 'a/./b', '.sluice-main.py', '', `${'n'.repeat(256)}`]) {
      await assert.rejects(
        client.writeFile('w1', path, 'x'),
        (err: unknown) => err instanceof InvalidFrameError && err.code === 'invalid_path',
        path,
      );
      await assert.rejects(client.readFile('w1', path), { code: 'invalid_path' }, path);
      await assert.rejects(client.deleteFile('w1', path), { code: 'invalid_path' }, path);
    }
    await assert.rejects(client.listFiles('w1', '..'), { code: 'invalid_path' });
    // Lower down, the reserved prefix is an ordinary name.
    await assert.rejects(client.writeFile('w1', 'a', 'x', { mode: 0o4755 }), { code: 'bad_request' });
    await assert.rejects(client.writeFile('', 'a', 'x'), { code: 'bad_request' });
    const ok = client.listFiles('w1', 'sub/.sluice-x');
    const frame = await expectFrame('list_files');
    assert.equal(frame['path'], 'sub/.sluice-x');
    gateway.answer('file_list', { request: frame['request'], path: 'sub/.sluice-x', entries: [] });
    await ok;
  });

  test('a refusal of a file frame never ends an attach of the same session', async () => {
    await connect();
    const reader = await openWorkspace('w2');
    const read = client.readFile('w2', 'a');
    const frame = await expectFrame('read_file');
    gateway.answer('error', { code: 'unknown_session', data: 'not attached', request: frame['request'], for_session: 'w2' });
    await assert.rejects(read, { code: 'unknown_session' });
    // The reader still reads the session.
    gateway.raw({
      type: 'files_changed',
      data: '',
      timestamp: 1767225601,
      sequence: 1,
      id: null,
      session: 'w2',
      changes: { created: ['a'], modified: [], deleted: [] },
    });
    const [event] = await collectN(reader, 1);
    assert.ok(event?.type === 'files_changed');
    assert.deepEqual(event.changes, { created: ['a'], modified: [], deleted: [] });
    assert.equal(event.id, null);
  });

  test('a workspace attach keeps the session attached once its reader is detached', async () => {
    await connect();
    const reader = await openWorkspace('w3');
    reader.detach();
    // No detach frame: the next frame the gateway sees is the file frame.
    const listed = client.listFiles('w3');
    const frame = await expectFrame('list_files');
    gateway.answer('file_list', { request: frame['request'], path: '', entries: [] });
    await listed;
  });

  test('execute with workspace: the frame says so, and files_changed comes before the terminal event', async () => {
    await connect();
    assert.throws(
      () => client.execute('x', { language: 'python', workspace: true }),
      (err: unknown) => err instanceof InvalidFrameError,
    );
    const run = client.execute("open('out.txt', 'w').write('hi')", { language: 'python', session: 'w4', workspace: true, id: 'x1' });
    const frame = await expectFrame('execute');
    assert.equal(frame['workspace'], true);
    const base = { data: '', id: 'x1', session: 'w4' };
    gateway.raw({ ...base, type: 'started', timestamp: 1767225601, sequence: 1, pid: 42 });
    gateway.raw({
      ...base,
      type: 'files_changed',
      timestamp: 1767225602,
      sequence: 2,
      changes: { created: ['out.txt'], modified: [], deleted: [] },
    });
    gateway.raw({ ...base, type: 'completed', timestamp: 1767225603, sequence: 3, exit_code: 0 });
    const events = await collectN(run, 3);
    assert.deepEqual(
      events.map((e) => e.type),
      ['started', 'files_changed', 'completed'],
    );
    const outcome = await run.done;
    assert.equal(outcome.status, 'completed');
    assert.deepEqual(outcome.filesChanged, { created: ['out.txt'], modified: [], deleted: [] });
  });

  test('a dropped connection: a read is asked again after the attach, a write fails with connection_lost', async () => {
    await connect();
    await openWorkspace('w5');
    const read = client.readFile('w5', 'a.txt');
    const readFrame = await expectFrame('read_file');
    const write = client.writeFile('w5', 'b.txt', 'b');
    await expectFrame('write_file');
    // Half of the read arrives, then the connection drops.
    gateway.answer('file_data', {
      request: readFrame['request'],
      path: 'a.txt',
      offset: 0,
      size: 4,
      data: b64(Buffer.from('ab')),
      encoding: 'base64',
      last: false,
    });
    const writeFailed = assert.rejects(
      write,
      (err: unknown) => err instanceof ConnectionError && err.code === 'connection_lost' && /may or may not/.test(err.message),
    );
    await gateway.drop();
    await writeFailed;
    const attach = await expectFrame('attach');
    assert.equal(attach['session'], 'w5');
    assert.equal('workspace' in attach, false, 'a resume opens nothing new');
    gateway.attached('w5', 0);
    const again = await expectFrame('read_file');
    assert.equal(again['request'], readFrame['request']);
    gateway.answer('file_data', {
      request: again['request'],
      path: 'a.txt',
      offset: 0,
      size: 4,
      data: b64(Buffer.from('abcd')),
      encoding: 'base64',
      last: true,
    });
    assert.equal(Buffer.from(await within(read, 5_000, 'read')).toString(), 'abcd', 'the first half is not kept twice');
  });

  test('a gateway older than the file frames refuses them: the request rejects with bad_request', async () => {
    await connect();
    const listed = client.listFiles('w1');
    await expectFrame('list_files');
    gateway.answer('error', {
      code: 'bad_request',
      data: 'unknown frame type "list_files"; expected one of execute, stdin, cancel, attach, detach, ack, runtimes, resize',
    });
    await assert.rejects(listed, (err: unknown) => err instanceof GatewayError && err.code === 'bad_request');
  });

  test('close() rejects requests on their way with closed', async () => {
    await connect();
    const listed = client.listFiles('w1');
    await expectFrame('list_files');
    client.close();
    await assert.rejects(listed, (err: unknown) => err instanceof ConnectionError && err.code === 'closed');
    await assert.rejects(client.readFile('w1', 'a'), { code: 'closed' });
  });
});

/** The first `n` events of a stream, within a bound. */
async function collectN(events: AsyncIterable<SluiceEvent>, n: number): Promise<SluiceEvent[]> {
  const out: SluiceEvent[] = [];
  const iterator = events[Symbol.asyncIterator]();
  while (out.length < n) {
    const next = await within(iterator.next(), 5_000, 'an event');
    if (next.done) break;
    out.push(next.value);
  }
  return out;
}
