/**
 * Notebook features against a real gateway over real sockets: a cell asking for input
 * (`input_request`), a cell's exception and number on its outcome, and `restart`.
 */

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ConnectionError, GatewayError, type InputRequestEvent, SluiceClient, type SluiceEvent } from '../src/node.js';
import { type Proxy as CuttableProxy, collect, type Gateway, startGateway, startProxy, within } from './helpers.js';

let gateway: Gateway;
let client: SluiceClient;
let sessions = 0;

/** A fresh named session for one test. */
const fresh = (what: string): string => `ts-nb-${what}-${process.pid}-${++sessions}`;

before(async () => {
  gateway = await startGateway();
  client = await SluiceClient.connect(gateway.url, { reconnect: false });
});

after(async () => {
  client?.close();
  await gateway?.stop();
});

const cell = (c: SluiceClient, session: string, code: string) => c.execute(code, { language: 'python', session, persistent: true });

/** A long cell that prints `go` and sleeps (ignoring the interrupt when `stubborn`). */
const LONG = "import time\nprint('go', flush=True)\ntime.sleep(120)";
const STUBBORN = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('go', flush=True)\ntime.sleep(120)";

/**
 * Reads all of `execution`'s events (leaving its loop early would cancel it): `output`
 * resolves at its first stdout, `events` with all of them.
 */
function watch(execution: AsyncIterable<SluiceEvent>): { output: Promise<void>; events: Promise<SluiceEvent[]> } {
  let output!: () => void;
  const first = new Promise<void>((resolve) => (output = resolve));
  const events = collect(
    execution,
    (e) => {
      if (e.type === 'stdout') output();
      return false;
    },
    60_000,
  );
  events.catch(() => undefined);
  return { output: within(first, 20_000, 'the first output'), events };
}

describe('input requests', () => {
  test('input(): an input_request with the prompt, answered with sendStdin; the prompt is not on stdout', async () => {
    const session = fresh('input');
    const execution = cell(client, session, "name = input('Name: ')\nprint('hello', name)");
    const requests: InputRequestEvent[] = [];
    for await (const event of execution) {
      if (event.type !== 'input_request') continue;
      requests.push(event);
      execution.sendStdin('Ada\n');
    }
    assert.equal(requests.length, 1);
    const [request] = requests;
    assert.equal(request?.data, 'Name: ');
    assert.equal(request?.password, false);
    assert.equal(request?.id, execution.id);
    assert.equal(request?.session, session);
    const outcome = await within(execution.done, 20_000, 'done');
    assert.equal(outcome.exitCode, 0);
    assert.equal(outcome.stdout, 'hello Ada\n');
    assert.equal(outcome.exception, undefined);
    assert.equal(outcome.executionCount, 1);
  });

  test('getpass(): an input_request with password true', async () => {
    const session = fresh('getpass');
    const execution = cell(client, session, "import getpass\nsecret = getpass.getpass('Secret: ')\nprint(len(secret))");
    let request: SluiceEvent | undefined;
    for await (const event of execution) {
      if (event.type !== 'input_request') continue;
      request = event;
      execution.sendStdin('hunter2\n');
    }
    assert.ok(request?.type === 'input_request');
    assert.equal(request.data, 'Secret: ');
    assert.equal(request.password, true);
    const outcome = await within(execution.done, 20_000, 'done');
    assert.equal(outcome.stdout, '7\n', 'what was typed is not echoed');
  });

  test('the input_request reaches a reader of the session too', async () => {
    const session = fresh('input-reader');
    await within(cell(client, session, 'pass').done, 20_000, 'first cell');
    const other = await SluiceClient.connect(gateway.url, { reconnect: false });
    try {
      const reader = other.attach(session);
      await within(reader.ready, 10_000, 'attached');
      const execution = cell(client, session, "print(input('? '))");
      const seen = collect(reader, (e) => e.type === 'completed' && e.id === execution.id);
      for await (const event of execution) if (event.type === 'input_request') execution.sendStdin('42\n');
      const events = await seen;
      const request = events.find((e) => e.type === 'input_request');
      assert.ok(request?.type === 'input_request' && request.data === '? ' && request.password === false);
    } finally {
      other.close();
    }
  });
});

describe('cell exceptions', () => {
  test('a raising cell: completed with exit code 1, outcome.exception and executionCount; its state stays', async () => {
    const session = fresh('raise');
    assert.equal((await within(cell(client, session, 'x = 5').done, 20_000, 'cell 1')).executionCount, 1);
    const outcome = await within(cell(client, session, 'y = x * 2\n1 / 0').done, 20_000, 'cell 2');
    assert.equal(outcome.status, 'completed');
    assert.equal(outcome.exitCode, 1);
    assert.equal(outcome.executionCount, 2);
    const exception = outcome.exception;
    assert.ok(exception, 'the outcome has the exception');
    assert.equal(exception.ename, 'ZeroDivisionError');
    assert.equal(exception.evalue, 'division by zero');
    assert.equal(exception.traceback[0], 'Traceback (most recent call last):');
    assert.equal(exception.traceback[exception.traceback.length - 1], 'ZeroDivisionError: division by zero');
    assert.ok(exception.traceback.some((line) => line.includes('<cell>')));
    assert.ok(outcome.stderr.includes('ZeroDivisionError: division by zero'), 'the traceback is on stderr too');
    assert.deepEqual(outcome.terminal.type === 'completed' && outcome.terminal.exception, exception);
    const after = await within(cell(client, session, 'y').done, 20_000, 'cell 3');
    assert.equal(after.value?.data, '10', 'what ran before the exception is kept');
    assert.equal(after.exception, undefined);
    assert.equal(after.executionCount, 3);
  });

  test('a program that is not a cell has neither', async () => {
    const outcome = await within(client.execute('raise SystemExit(3)', { language: 'python' }).done, 20_000, 'done');
    assert.equal(outcome.exitCode, 3);
    assert.equal(outcome.exception, undefined);
    assert.equal(outcome.executionCount, undefined);
  });
});

describe('restart', () => {
  test('cancels the running and the waiting cell; readers see restarted; the next cell is number 1 with no state', async () => {
    const session = fresh('restart');
    assert.equal((await within(cell(client, session, 'x = 1').done, 20_000, 'cell 1')).exitCode, 0);
    const reader = client.attach(session, { since: 0 });
    await within(reader.ready, 10_000, 'attached');
    const seen = collect(reader, (e) => e.type === 'restarted', 30_000);
    const running = cell(client, session, LONG);
    const waiting = cell(client, session, "print('never')");
    // Restart once the long cell runs.
    await watch(running).output;
    await within(client.restart(session), 20_000, 'restart');
    // Both cells ended before the restart resolved.
    assert.ok(running.ended && waiting.ended);
    const run = await within(running.done, 1_000, 'running cell');
    assert.equal(run.status, 'cancelled');
    assert.equal(run.executionCount, 2);
    assert.match(run.stderr, /KeyboardInterrupt/);
    const wait = await within(waiting.done, 1_000, 'waiting cell');
    assert.equal(wait.status, 'cancelled');
    assert.equal(wait.stdout, '');
    const events = await seen;
    const restarted = events[events.length - 1];
    assert.ok(restarted?.type === 'restarted');
    assert.equal(restarted.id, null);
    assert.equal(restarted.session, session);
    assert.ok(restarted.data.length > 0);
    const terminals = events.filter((e) => e.type === 'cancelled').map((e) => e.id);
    assert.deepEqual(terminals.sort(), [running.id, waiting.id].sort(), 'the cancelled cells end before restarted');
    reader.detach();

    const next = await within(cell(client, session, 'x').done, 20_000, 'the next cell');
    assert.equal(next.executionCount, 1, 'a fresh interpreter counts from 1');
    assert.equal(next.exception?.ename, 'NameError', 'the old state is gone');
  });

  test('a session this client does not read: it attaches for the restart, and an old restarted does not answer it', async () => {
    const session = fresh('restart-other');
    const other = await SluiceClient.connect(gateway.url, { reconnect: false });
    try {
      assert.equal((await within(cell(client, session, 'x = 1').done, 20_000, 'cell 1')).exitCode, 0);
      await within(other.restart(session), 20_000, 'first restart by another client');
      assert.equal((await within(cell(client, session, 'x = 2').done, 20_000, 'cell')).executionCount, 1);
      // The session's buffer holds the first restarted; the second restart waits for its own.
      const running = cell(client, session, LONG);
      await watch(running).output;
      await within(other.restart(session), 20_000, 'second restart by another client');
      // The cell's end comes before `restarted` on the session's stream, but on another
      // socket, whose writer may send it a moment later: wait for it here.
      const ended = await within(running.done, 20_000, 'the running cell');
      assert.equal(ended.status, 'cancelled', 'the restart cancelled the running cell');
      const next = await within(cell(client, session, 'x').done, 20_000, 'the next cell');
      assert.equal(next.exception?.ename, 'NameError');
      assert.equal(next.executionCount, 1);
    } finally {
      other.close();
    }
  });

  test('a session without an interpreter is answered the same way', async () => {
    const session = fresh('restart-empty');
    await within(client.execute('true', { language: 'sh', session }).done, 20_000, 'a program');
    await within(client.restart(session), 20_000, 'restart');
  });

  test('an unknown session rejects with GatewayError unknown_session naming it', async () => {
    const session = fresh('restart-unknown');
    await assert.rejects(
      within(client.restart(session), 10_000, 'restart'),
      (err: unknown) => err instanceof GatewayError && err.code === 'unknown_session' && err.event.for_session === session,
    );
    // The client still works, and so does a restart after it.
    const named = fresh('restart-after');
    await within(cell(client, named, 'pass').done, 20_000, 'cell');
    await within(client.restart(named), 20_000, 'restart');
  });

  test('a gateway-made session rejects with bad_request; a frame without a session is refused locally', async () => {
    const execution = client.execute("import time\nprint('go', flush=True)\ntime.sleep(60)", { language: 'python' });
    await watch(execution).output;
    const session = execution.session;
    assert.ok(session);
    await assert.rejects(
      within(client.restart(session), 10_000, 'restart'),
      (err: unknown) => err instanceof GatewayError && err.code === 'bad_request' && err.event.for_session === session,
    );
    assert.equal(execution.ended, false, 'its program still runs');
    execution.cancel();
    assert.equal((await within(execution.done, 10_000, 'done')).status, 'cancelled');
    assert.throws(() => client.restart(''), { code: 'bad_request' });
  });
});

describe('restart across a reconnect', () => {
  let small: Gateway;
  let proxy: CuttableProxy;
  before(async () => {
    // A long grace before the kill: a cell that ignores the interrupt holds a restart's answer.
    small = await startGateway(['--kill-grace-ms', '8000']);
    proxy = await startProxy(small.port);
  });
  after(async () => {
    await proxy?.close();
    await small?.stop();
  });

  const connect = async (onChange: (state: string) => void) =>
    SluiceClient.connect(`ws://127.0.0.1:${proxy.port}/v1/ws`, {
      reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
      onConnectionChange: (state) => onChange(state),
    });

  test('a restart asked while the link is down goes out after the session is resumed', async () => {
    let down!: () => void;
    const isDown = new Promise<void>((resolve) => (down = resolve));
    const resumer = await connect((state) => state === 'reconnecting' && down());
    try {
      const session = fresh('restart-reconnect');
      assert.equal((await within(cell(resumer, session, 'x = 1').done, 20_000, 'cell 1')).exitCode, 0);
      const running = cell(resumer, session, LONG);
      await watch(running).output;
      proxy.cut();
      await within(isDown, 10_000, 'the client sees the cut');
      assert.equal(resumer.connected, false);
      await within(resumer.restart(session), 20_000, 'restart');
      assert.equal((await within(running.done, 1_000, 'the cell')).status, 'cancelled');
      const next = await within(cell(resumer, session, 'x').done, 20_000, 'the next cell');
      assert.equal(next.executionCount, 1);
      assert.equal(next.exception?.ename, 'NameError');
    } finally {
      resumer.close();
    }
  });

  test('a restart sent on a socket that drops before the answer rejects with connection_lost, and is not sent again', async () => {
    let back!: () => void;
    const isBack = new Promise<void>((resolve) => (back = resolve));
    const resumer = await connect((state) => state === 'connected' && back());
    try {
      const session = fresh('restart-lost');
      // The cell ignores the interrupt: the restart's answer waits for the kill, 8 s later.
      const running = cell(resumer, session, STUBBORN);
      await watch(running).output;
      const restart = resumer.restart(session);
      // Frames are handled in order: once this is answered, the gateway has the restart.
      await within(resumer.runtimes(), 10_000, 'runtimes');
      proxy.cut();
      await assert.rejects(
        within(restart, 10_000, 'restart'),
        (err: unknown) => err instanceof ConnectionError && err.code === 'connection_lost',
      );
      await within(isBack, 10_000, 'reconnected');
      // The session is resumed: the cell ends (cancelled by the restart that did arrive).
      const outcome = await within(running.done, 30_000, 'the cell');
      assert.equal(outcome.status, 'cancelled');
    } finally {
      resumer.close();
    }
  });
});
