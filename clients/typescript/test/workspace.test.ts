/**
 * Session workspaces against a real gateway: files written and read back exactly (text,
 * every byte value, a file larger than one frame, a range), listings, deletes, a program
 * that reads what the client wrote and writes what the client reads, `files_changed`
 * before an execution's terminal event, and the refusals.
 */

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { GatewayError, InvalidFrameError, SluiceClient, type SluiceEvent, UPLOAD_PIECE_BYTES } from '../src/node.js';
import { collect, type Gateway, startGateway, within } from './helpers.js';

let gateway: Gateway;
let client: SluiceClient;
let counter = 0;

before(async () => {
  gateway = await startGateway();
  client = await SluiceClient.connect(gateway.url, { reconnect: false });
});

after(async () => {
  client?.close();
  await gateway?.stop();
});

/** A fresh session with a workspace, opened by `attach`; its reader is left unread (detached). */
async function workspace(): Promise<string> {
  const session = `ts-ws-${process.pid}-${++counter}`;
  const reader = client.attach(session, { workspace: true });
  await within(reader.ready, 10_000, 'the workspace attach');
  reader.detach();
  return session;
}

/** Every byte value, `n` of them, in an order that is not text. */
function binary(n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + (i >> 8)) % 256);
}

describe('workspace files', () => {
  test('text and binary round trips, and a file larger than one frame', async () => {
    const session = await workspace();
    assert.equal(await client.writeFile(session, 'hello.txt', 'héllo, wörld\n'), Buffer.byteLength('héllo, wörld\n'));
    assert.equal(await client.readText(session, 'hello.txt'), 'héllo, wörld\n');

    const bytes = binary(4096);
    assert.equal(await client.writeFile(session, 'dir/sub/all.bin', bytes), 4096);
    assert.deepEqual(Buffer.from(await client.readFile(session, 'dir/sub/all.bin')), Buffer.from(bytes));

    // 2.5 MiB: several write frames (256 KiB each) and many file_data parts (64 KiB each).
    const big = binary(10 * UPLOAD_PIECE_BYTES + 12_345);
    assert.equal(await within(client.writeFile(session, 'big.bin', big), 30_000, 'the upload'), big.length);
    const back = await within(client.readFile(session, 'big.bin'), 30_000, 'the download');
    assert.equal(back.length, big.length);
    assert.ok(Buffer.from(back).equals(Buffer.from(big)), 'the bytes read are the bytes written');

    // Append adds; a write without it replaces.
    await client.writeFile(session, 'hello.txt', 'more\n', { append: true });
    assert.equal(await client.readText(session, 'hello.txt'), 'héllo, wörld\nmore\n');
    assert.equal(await client.writeFile(session, 'hello.txt', 'new'), 3);
    assert.equal(await client.readText(session, 'hello.txt'), 'new');
  });

  test('a ranged read', async () => {
    const session = await workspace();
    const bytes = binary(200_000);
    await client.writeFile(session, 'r.bin', bytes);
    const middle = await client.readFile(session, 'r.bin', { offset: 70_000, length: 100_000 });
    assert.ok(Buffer.from(middle).equals(Buffer.from(bytes.subarray(70_000, 170_000))));
    const tail = await client.readFile(session, 'r.bin', { offset: 199_990 });
    assert.ok(Buffer.from(tail).equals(Buffer.from(bytes.subarray(199_990))));
    assert.equal((await client.readFile(session, 'r.bin', { offset: 500_000 })).length, 0, 'past the end: nothing');
    assert.equal(await client.readText(session, 'r.bin', { length: 0 }), '');
  });

  test('listings: names, kinds, sizes and modes, sorted', async () => {
    const session = await workspace();
    await client.writeFile(session, 'b.txt', 'twelve bytes');
    await client.writeFile(session, 'a.sh', 'echo hi\n', { mode: 0o755 });
    await client.writeFile(session, 'd/inner.txt', 'x');
    const root = await client.listFiles(session);
    assert.equal(root.truncated, false);
    assert.deepEqual(
      root.map((e) => [e.name, e.kind]),
      [
        ['a.sh', 'file'],
        ['b.txt', 'file'],
        ['d', 'dir'],
      ],
    );
    const [script, text] = root;
    assert.equal(text?.size, 12);
    assert.equal(script?.mode, 0o755);
    assert.equal(text?.mode, 0o644, 'the default mode');
    assert.ok(text!.mtime > 1_700_000_000 && text!.mtime < Date.now() / 1000 + 60, `mtime ${text?.mtime}`);
    const inner = await client.listFiles(session, 'd');
    assert.deepEqual(
      inner.map((e) => [e.name, e.kind, e.size]),
      [['inner.txt', 'file', 1]],
    );
    assert.deepEqual([...(await client.listFiles(await workspace()))], [], 'a new workspace is empty');
  });

  test('deletes: a file, an empty directory, a full one only with recursive', async () => {
    const session = await workspace();
    await client.writeFile(session, 'f.txt', 'f');
    await client.writeFile(session, 'tree/a/b.txt', 'b');
    await client.writeFile(session, 'tree/c.txt', 'c');
    await client.deleteFile(session, 'f.txt');
    await assert.rejects(client.readFile(session, 'f.txt'), { code: 'not_found' });
    await assert.rejects(
      client.deleteFile(session, 'tree'),
      (err: unknown) => err instanceof GatewayError,
      'a directory that is not empty',
    );
    await client.deleteFile(session, 'tree/a/b.txt');
    await client.deleteFile(session, 'tree/a');
    await client.deleteFile(session, 'tree', { recursive: true });
    assert.deepEqual([...(await client.listFiles(session))], []);
  });

  test('a program reads a file the client wrote and writes one the client reads back; files_changed comes before the end', async () => {
    const session = await workspace();
    await client.writeFile(session, 'data/in.txt', 'from the client\n');
    await client.writeFile(session, 'blob.bin', binary(300));
    const code = [
      "text = open('data/in.txt').read()",
      "blob = open('blob.bin', 'rb').read()",
      "open('out.txt', 'w').write(text.upper() + str(len(blob)) + '\\n')",
      "open('data/in.txt', 'a').write('and the program\\n')",
      "import os; os.remove('blob.bin')",
      'print(text, end="")',
    ].join('\n');
    const run = client.execute(code, { language: 'python', session, workspace: true });
    const events = await collect(run, () => false, 30_000);
    const outcome = await run.done;
    assert.equal(outcome.exitCode, 0, outcome.stderr);
    assert.equal(outcome.stdout, 'from the client\n');
    const types = events.map((e) => e.type);
    const changedAt = types.indexOf('files_changed');
    assert.ok(changedAt > 0 && changedAt === types.length - 2, `files_changed just before the terminal event: ${types.join(', ')}`);
    const changed = events[changedAt] as Extract<SluiceEvent, { type: 'files_changed' }>;
    assert.equal(changed.id, run.id);
    assert.equal(changed.session, session);
    assert.deepEqual(changed.changes, { created: ['out.txt'], modified: ['data/in.txt'], deleted: ['blob.bin'] });
    assert.deepEqual(outcome.filesChanged, changed.changes);
    assert.equal(await client.readText(session, 'out.txt'), 'FROM THE CLIENT\n300\n');
    assert.equal(await client.readText(session, 'data/in.txt'), 'from the client\nand the program\n');

    // The next execution of the session starts in the same workspace.
    const again = client.execute("print(open('out.txt').read(), end='')", { language: 'python', session });
    assert.equal((await within(again.done, 30_000, 'the second run')).stdout, 'FROM THE CLIENT\n300\n');
  });

  test('an execute with workspace: true makes the workspace for the file frames', async () => {
    const session = `ts-ws-exec-${process.pid}`;
    const run = client.execute("open('made.txt', 'w').write('by the program')", { language: 'python', session, workspace: true });
    assert.equal((await within(run.done, 30_000, 'the run')).exitCode, 0);
    assert.equal(await client.readText(session, 'made.txt'), 'by the program');
    assert.deepEqual(
      (await client.listFiles(session)).map((e) => e.name),
      ['made.txt'],
      "the gateway's own files are not listed",
    );
  });

  test('a write or delete frame is followed by files_changed with no execution id on the session stream', async () => {
    const session = `ts-ws-notify-${process.pid}`;
    const reader = client.attach(session, { workspace: true });
    await within(reader.ready, 10_000, 'attached');
    await client.writeFile(session, 'n.txt', 'n');
    await client.deleteFile(session, 'n.txt');
    const events = await collect(reader, (_event, all) => all.filter((e) => e.type === 'files_changed').length >= 2, 10_000);
    const changes = events.filter((e): e is Extract<SluiceEvent, { type: 'files_changed' }> => e.type === 'files_changed');
    assert.equal(changes[0]?.id, null);
    assert.deepEqual(changes[0]?.changes.created, ['n.txt']);
    assert.deepEqual(changes[1]?.changes.deleted, ['n.txt']);
  });
});

describe('workspace refusals', () => {
  test('a path outside the workspace is refused with invalid_path, by the client and by the gateway', async () => {
    const session = await workspace();
    await assert.rejects(
      client.writeFile(session, '../x', 'x'),
      (err: unknown) => err instanceof InvalidFrameError && err.code === 'invalid_path',
    );
    // The same frame sent as it is: the gateway refuses it with the same code, naming the request.
    const answer = await rawExchange([
      { type: 'attach', session },
      { type: 'write_file', request: 'raw-1', session, path: '../x', data: 'x' },
    ]);
    assert.equal(answer['type'], 'error');
    assert.equal(answer['code'], 'invalid_path');
    assert.equal(answer['request'], 'raw-1');
    assert.equal(answer['id'], null);
  });

  test('reading a file that does not exist is refused with not_found; a directory with invalid_path', async () => {
    const session = await workspace();
    await assert.rejects(
      client.readFile(session, 'missing.txt'),
      (err: unknown) => err instanceof GatewayError && err.code === 'not_found' && err.event.request !== undefined,
    );
    await assert.rejects(client.deleteFile(session, 'missing/too'), { code: 'not_found' });
    await client.writeFile(session, 'd/f', 'f');
    await assert.rejects(client.readFile(session, 'd'), { code: 'invalid_path' });
  });

  test('a file frame on a session without a workspace is refused with no_workspace', async () => {
    const session = `ts-ws-none-${process.pid}`;
    const run = client.execute('print(1)', { language: 'python', session });
    assert.equal((await within(run.done, 30_000, 'the run')).exitCode, 0);
    await assert.rejects(
      client.writeFile(session, 'a.txt', 'a'),
      (err: unknown) => err instanceof GatewayError && err.code === 'no_workspace',
    );
    await assert.rejects(client.listFiles(session), { code: 'no_workspace' });
  });

  test('a file frame on a session this client does not read is refused with unknown_session', async () => {
    const session = await workspace();
    await client.writeFile(session, 'mine.txt', 'mine');
    const other = await SluiceClient.connect(gateway.url, { reconnect: false });
    try {
      await assert.rejects(
        other.readFile(session, 'mine.txt'),
        (err: unknown) => err instanceof GatewayError && err.code === 'unknown_session',
      );
      // Once it attaches, it reaches the same files.
      const reader = other.attach(session);
      await within(reader.ready, 10_000, 'attached');
      assert.equal(await other.readText(session, 'mine.txt'), 'mine');
    } finally {
      other.close();
    }
  });

  test('a write that does not fit is refused with workspace_full, and the pieces before it stay', async () => {
    const session = `ts-ws-full-${process.pid}`;
    // A workspace of 1 MiB, made by an execute that asks for it.
    const run = client.execute('pass', { language: 'python', session, workspace: true, limits: { workspace_bytes: 1 << 20 } });
    assert.equal((await within(run.done, 30_000, 'the run')).exitCode, 0);
    await assert.rejects(
      client.writeFile(session, 'too-big.bin', binary(2 << 20)),
      (err: unknown) => err instanceof GatewayError && err.code === 'workspace_full',
    );
    const [left] = await client.listFiles(session);
    assert.ok(
      left && left.size <= 1 << 20 && left.size % UPLOAD_PIECE_BYTES === 0,
      `the whole pieces before the refused one: ${left?.size}`,
    );
    await client.deleteFile(session, 'too-big.bin');
    assert.equal(await client.writeFile(session, 'small.txt', 'fits'), 4);
  });

  test('a gateway-made session keeps no workspace: no_workspace', async () => {
    const run = client.execute('print(1)', { language: 'python' });
    const outcome = await within(run.done, 30_000, 'the run');
    await assert.rejects(client.listFiles(outcome.session), { code: 'no_workspace' });
  });
});

/** Sends `frames` on a socket of its own and resolves with the first event that is not `attached`. */
async function rawExchange(frames: Record<string, unknown>[]): Promise<Record<string, unknown>> {
  const socket = new WebSocket(gateway.url, ['sluice.v1']);
  try {
    const answer = new Promise<Record<string, unknown>>((resolve, reject) => {
      socket.on('message', (data) => {
        const event = JSON.parse(String(data)) as Record<string, unknown>;
        if (event['type'] !== 'attached') resolve(event);
      });
      socket.on('error', reject);
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve());
      socket.once('error', reject);
    });
    for (const frame of frames) socket.send(JSON.stringify(frame));
    return await within(answer, 10_000, 'the answer');
  } finally {
    socket.terminate();
  }
}
