/**
 * The client against a real gateway over real sockets (Node, with `ws`).
 */

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { AbortedError, ConnectionError, GatewayError, InvalidFrameError, SluiceClient, type SluiceEvent } from '../src/node.js';
import { type Proxy as CuttableProxy, collect, type Gateway, startGateway, startProxy, stdoutOf, within } from './helpers.js';

let gateway: Gateway;
let client: SluiceClient;

before(async () => {
  gateway = await startGateway();
  client = await SluiceClient.connect(gateway.url, { reconnect: false });
});

after(async () => {
  client?.close();
  await gateway?.stop();
});

/** Event types and sequences of an execution's events must be started, output..., one terminal. */
function assertWellFormed(events: SluiceEvent[]): void {
  assert.equal(events[0]?.type, 'started', 'the first event is started');
  const terminal = events.filter((e) => ['completed', 'cancelled', 'resource_limit', 'error'].includes(e.type));
  assert.equal(terminal.length, 1, 'exactly one terminal event');
  assert.equal(terminal[0], events[events.length - 1], 'the terminal event is the last');
  for (let i = 1; i < events.length; i++) {
    assert.equal(events[i]!.sequence, events[i - 1]!.sequence + 1, 'sequences increase by one');
  }
}

describe('executions', () => {
  test('hello world: outcome and events', async () => {
    const execution = client.execute("print('hello world')", { language: 'python' });
    const events = await collect(execution, () => false);
    assertWellFormed(events);
    const outcome = await within(execution.done, 10_000, 'done');
    assert.equal(outcome.status, 'completed');
    assert.equal(outcome.exitCode, 0);
    assert.equal(outcome.stdout, 'hello world\n');
    assert.equal(outcome.stderr, '');
    assert.equal(outcome.usage?.stdout_bytes, 12);
    assert.match(outcome.session, /^[0-9a-f]{32}$/, 'a gateway-made session id');
    assert.equal(execution.session, outcome.session);
  });

  test('executeCodeStream yields events in order; exit status and stderr', async () => {
    const events: SluiceEvent[] = [];
    for await (const event of client.executeCodeStream('echo out; echo err >&2; exit 3', { language: 'sh' })) {
      events.push(event);
    }
    assertWellFormed(events);
    const last = events[events.length - 1]!;
    assert.ok(last.type === 'completed' && last.exit_code === 3);
    assert.equal(stdoutOf(events), 'out\n');
    assert.equal(
      events
        .filter((e) => e.type === 'stderr')
        .map((e) => e.data)
        .join(''),
      'err\n',
    );
  });

  test('stdin: interactive lines, then eof', async () => {
    const code = "import sys\nfor line in sys.stdin:\n    print('got', line.strip(), flush=True)\nprint('eof')";
    const execution = client.execute(code, { language: 'python' });
    let out = '';
    for await (const event of execution) {
      // Each line is sent only once the answer to the previous one arrived.
      if (event.type === 'started') execution.sendStdin('a\n');
      if (event.type !== 'stdout') continue;
      out += event.data;
      if (out === 'got a\n') execution.sendStdin('b\n');
      else if (out === 'got a\ngot b\n') execution.closeStdin();
    }
    const outcome = await within(execution.done, 10_000, 'done');
    assert.equal(outcome.stdout, 'got a\ngot b\neof\n');
    assert.equal(outcome.exitCode, 0);
    assert.throws(
      () => execution.sendStdin('late'),
      (err: unknown) => err instanceof Error && 'code' in err,
    );
  });

  test('stdin given with execute, and a closed stdin is refused locally', async () => {
    const execution = client.execute('import sys; print(sys.stdin.read().upper(), end="")', {
      language: 'python',
      stdin: 'shout\n',
    });
    assert.throws(() => execution.sendStdin('more'), { code: 'stdin_closed' });
    const outcome = await within(execution.done, 10_000, 'done');
    assert.equal(outcome.stdout, 'SHOUT\n');
  });

  test('cancel stops a running program', async () => {
    const execution = client.execute('echo ready; sleep 60', { language: 'sh' });
    for await (const event of execution) {
      if (event.type === 'stdout' && event.data.includes('ready')) {
        execution.cancel();
      }
    }
    const outcome = await within(execution.done, 10_000, 'done');
    assert.equal(outcome.status, 'cancelled');
    assert.equal(outcome.stdout, 'ready\n');
    assert.ok(outcome.usage && outcome.usage.duration_ms < 30_000);
  });

  test('an AbortSignal cancels a running program', async () => {
    const controller = new AbortController();
    const execution = client.execute("import time\nprint('ready', flush=True)\ntime.sleep(60)", {
      language: 'python',
      signal: controller.signal,
    });
    const events = await collect(execution, (event) => {
      if (event.type === 'stdout' && event.data.includes('ready')) controller.abort();
      return false;
    });
    assert.equal(events[events.length - 1]?.type, 'cancelled');
    assert.equal((await execution.done).status, 'cancelled');
  });

  test('an already aborted signal sends nothing', async () => {
    const controller = new AbortController();
    controller.abort();
    const execution = client.execute('echo never', { language: 'sh', signal: controller.signal });
    await assert.rejects(execution.done, (err: unknown) => err instanceof AbortedError && err.code === 'aborted');
  });

  test('50 concurrent executions each get their own output', async () => {
    const executions = Array.from({ length: 50 }, (_, i) =>
      client.execute(`i=${i}; echo "start $i"; echo "square $((i * i))"`, { language: 'sh' }),
    );
    const outcomes = await within(Promise.all(executions.map((e) => e.done)), 60_000, '50 executions');
    outcomes.forEach((outcome, i) => {
      assert.equal(outcome.exitCode, 0);
      assert.equal(outcome.stdout, `start ${i}\nsquare ${i * i}\n`);
    });
    assert.equal(new Set(outcomes.map((o) => o.session)).size, 50, 'one session each');
  });

  test('an output limit ends with resource_limit "output"', async () => {
    const execution = client.execute("while True:\n    print('x' * 99)", {
      language: 'python',
      limits: { output_bytes: 5000 },
    });
    const outcome = await within(execution.done, 20_000, 'done');
    assert.equal(outcome.status, 'resource_limit');
    assert.equal(outcome.limit, 'output');
    assert.equal(outcome.limitValue, 5000);
    assert.equal(outcome.stdout.length, 5000, 'exactly output_bytes bytes are delivered');
  });

  test('an unknown language ends with an error event and a GatewayError', async () => {
    const execution = client.execute('DISPLAY "HI".', { language: 'cobol' });
    const events = await collect(execution, () => false);
    assert.equal(events.length, 1);
    const [event] = events;
    assert.ok(event?.type === 'error' && event.code === 'unknown_language' && event.sequence === 1);
    await assert.rejects(
      execution.done,
      (err: unknown) => err instanceof GatewayError && err.code === 'unknown_language' && /cobol/.test(err.message),
    );
  });

  test('an invalid request is refused locally with bad_request', () => {
    assert.throws(
      () => client.execute('echo', { language: 'sh', env: { 'A=B': 'c' } }),
      (err: unknown) => err instanceof InvalidFrameError && err.code === 'bad_request',
    );
    assert.throws(() => client.execute('x', { language: 'python', persistent: true }), { code: 'bad_request' });
  });

  test('a frame over the size limit is refused locally with too_large; stdin split in pieces passes', async () => {
    const execution = client.execute('import sys; print(len(sys.stdin.read()))', { language: 'python' });
    const big = 'x'.repeat(1 << 20);
    assert.throws(() => execution.sendStdin(big), { code: 'too_large' });
    // Three quarters of it, in frames that fit (the gateway queues at most 1 MiB of stdin).
    for (let i = 0; i < 3; i++) execution.sendStdin(big.slice(i << 18, (i + 1) << 18));
    execution.closeStdin();
    assert.equal((await within(execution.done, 20_000, 'done')).stdout, `${3 << 18}\n`);
  });

  test('a persistent session keeps state between cells', async () => {
    const session = `ts-persist-${process.pid}`;
    const first = client.execute('x = 41', { language: 'python', session, persistent: true });
    assert.equal((await within(first.done, 20_000, 'cell 1')).exitCode, 0);
    const second = client.execute('x + 1', { language: 'python', session, persistent: true });
    const outcome = await within(second.done, 20_000, 'cell 2');
    // The value of the last expression is the cell's result, no longer printed on stdout.
    assert.equal(outcome.stdout, '');
    assert.equal(outcome.value?.data, '42');
  });
});

/** An execution's events between `started` and its terminal event, as `type:data`, adjacent stdout joined. */
function between(events: SluiceEvent[]): string[] {
  const out: string[] = [];
  for (const event of events.slice(1, -1)) {
    const last = out[out.length - 1];
    if (event.type === 'stdout' && last?.startsWith('stdout:')) out[out.length - 1] = last + event.data;
    else out.push(`${event.type}:${event.data}`);
  }
  return out;
}

describe('rich output', () => {
  test('a persistent python cell: a display, its update through the handle, and the value of the cell', async () => {
    const session = `ts-rich-${process.pid}`;
    const code = [
      'class Table:',
      '    def _repr_html_(self):',
      '        return "<table><tr><td>1</td><td>2</td></tr></table>"',
      '    def __repr__(self):',
      '        return "Table(1 row)"',
      'print("before")',
      'handle = display(Table(), display_id=True)',
      'print("between")',
      'handle.update("updated")',
      '6 * 7',
    ].join('\n');
    const execution = client.execute(code, { language: 'python', session, persistent: true });
    const events = await collect(execution, () => false);
    assertWellFormed(events);
    // In order with the text, and nothing of the records in it.
    assert.deepEqual(between(events), [
      'stdout:before\n',
      'display:Table(1 row)',
      'stdout:between\n',
      "update_display:'updated'",
      'result:42',
    ]);
    const outcome = await within(execution.done, 20_000, 'cell 1');
    assert.equal(outcome.exitCode, 0);
    assert.equal(outcome.stdout, 'before\nbetween\n');

    const [shown, update] = outcome.displays;
    assert.equal(outcome.displays.length, 2);
    assert.ok(shown?.type === 'display' && update?.type === 'update_display');
    assert.deepEqual(shown.bundle, { 'text/html': '<table><tr><td>1</td><td>2</td></tr></table>', 'text/plain': 'Table(1 row)' });
    assert.deepEqual(shown.metadata, {});
    assert.match(shown.display_id ?? '', /^[0-9a-f]{32}$/, 'display_id=True makes an id');
    assert.equal(update.display_id, shown.display_id, 'the update names what it replaces');
    assert.deepEqual(update.bundle, { 'text/plain': "'updated'" });
    // The very events the loop read.
    assert.deepEqual(
      outcome.displays,
      events.filter((e) => e.type === 'display' || e.type === 'update_display'),
    );

    const value = outcome.value;
    assert.ok(value, 'the last expression gives a result');
    assert.equal(value.type, 'result');
    assert.equal(value.execution_count, 1, 'the first cell of the session');
    assert.deepEqual(value.bundle, { 'text/plain': '42' });
    assert.equal(value.id, execution.id);
    assert.equal(value, events[events.length - 2]);

    // The next cell updates that display by its id; ending with a statement, it has no value.
    const next = client.execute(
      `update_display({"text/markdown": "**done**", "text/plain": "done"}, display_id=${JSON.stringify(shown.display_id)}, raw=True)\nx = 1`,
      {
        language: 'python',
        session,
        persistent: true,
      },
    );
    const second = await within(next.done, 20_000, 'cell 2');
    assert.equal(second.exitCode, 0);
    assert.equal(second.value, undefined);
    assert.equal(second.displays.length, 1);
    const [again] = second.displays;
    assert.ok(again?.type === 'update_display');
    assert.equal(again.display_id, shown.display_id);
    assert.deepEqual(again.bundle, { 'text/markdown': '**done**', 'text/plain': 'done' });
    assert.equal(again.data, 'done');

    // Cells are numbered in their interpreter.
    const third = await within(client.execute('"three"', { language: 'python', session, persistent: true }).done, 20_000, 'cell 3');
    assert.equal(third.value?.execution_count, 3);
    assert.equal(third.value?.data, "'three'");
    assert.deepEqual(third.displays, []);
  });

  test("any program's display record: binary data as base64 text, JSON values and metadata as sent", async () => {
    const record = JSON.stringify({
      data: { 'image/png': 'iVBORw0KGgo=', 'application/json': { rows: [1, 2.5, null] }, 'text/plain': 'a chart' },
      metadata: { 'image/png': { width: 3 } },
      display_id: 'chart',
    });
    const execution = client.execute(`printf 'text\\n\\033]sluice;display;%s\\007more\\n' '${record}'`, { language: 'sh' });
    const outcome = await within(execution.done, 20_000, 'done');
    assert.equal(outcome.exitCode, 0);
    assert.equal(outcome.stdout, 'text\nmore\n');
    assert.equal(outcome.value, undefined);
    assert.equal(outcome.displays.length, 1);
    const [shown] = outcome.displays;
    assert.ok(shown?.type === 'display');
    assert.equal(shown.data, 'a chart');
    assert.equal(shown.display_id, 'chart');
    assert.deepEqual(shown.bundle, { 'image/png': 'iVBORw0KGgo=', 'application/json': { rows: [1, 2.5, null] }, 'text/plain': 'a chart' });
    assert.deepEqual(shown.metadata, { 'image/png': { width: 3 } });
  });
});

describe('sessions', () => {
  test('a second client attaching sees the same events', async () => {
    const other = await SluiceClient.connect(gateway.url, { reconnect: false });
    try {
      const code = "import sys\nprint('one', flush=True)\nprint('two', sys.stdin.readline(), end='')";
      const execution = client.execute(code, { language: 'python' });
      const mine: SluiceEvent[] = [];
      let watcher: Promise<SluiceEvent[]> | undefined;
      for await (const event of execution) {
        mine.push(event);
        // Output may come in any chunks: wait for the whole first line.
        if (stdoutOf(mine) === 'one\n' && watcher === undefined) {
          // The session id came with the first event; another client follows it from the start.
          const reader = other.attach(execution.session!);
          await within(reader.ready, 10_000, 'attached');
          watcher = collect(reader, (e) => e.type === 'completed');
          execution.sendStdin('go\n');
        }
      }
      assert.ok(watcher, 'the program printed "one"');
      const theirs = await watcher;
      assertWellFormed(mine);
      assert.equal(stdoutOf(mine), 'one\ntwo go\n');
      assert.deepEqual(theirs, mine, 'the same events, byte for byte');
    } finally {
      other.close();
    }
  });

  test('a rewinding attach on the same client duplicates nothing for the other consumers', async () => {
    const session = `ts-rewind-${process.pid}-${Date.now()}`;
    const code = [
      'echo one; read a',
      'i=1; while [ $i -le 100 ]; do echo $i; i=$((i + 1)); done',
      'read b',
      'while [ $i -le 200 ]; do echo $i; i=$((i + 1)); done',
    ].join('\n');
    const execution = client.execute(code, { language: 'sh', session });
    const own: SluiceEvent[] = [];
    let first: ReturnType<typeof client.attach> | undefined;
    let firstEvents: Promise<SluiceEvent[]> | undefined;
    let second: Promise<SluiceEvent[]> | undefined;
    let out = '';
    for await (const event of execution) {
      own.push(event);
      if (event.type !== 'stdout') continue;
      out += event.data;
      if (out === 'one\n') {
        first = client.attach(session);
        await within(first.ready, 10_000, 'first attach');
        firstEvents = collect(first, () => false, 30_000);
        execution.sendStdin('\n');
      }
      if (out.endsWith('\n100\n') && second === undefined) {
        // The socket goes back to the start of the session while the program still runs.
        const rewind = client.attach(session, { since: 0 });
        await within(rewind.ready, 10_000, 'second attach');
        second = collect(rewind, (e) => e.type === 'completed', 30_000);
        execution.sendStdin('\n');
      }
    }
    assert.ok(first && firstEvents && second, 'both readers attached');
    const replayed = await second;
    first.detach();
    const seenByFirst = await firstEvents;
    assertWellFormed(own);
    assert.deepEqual(replayed, own, 'the rewinding reader sees the whole session');
    assert.deepEqual(seenByFirst, own, 'the first reader sees each event once');
    assert.equal(stdoutOf(own), `one\n${Array.from({ length: 200 }, (_, i) => `${i + 1}\n`).join('')}`);
  });

  test('attach to a session that does not exist is refused with unknown_session', async () => {
    const reader = client.attach('no-such-session-here');
    await assert.rejects(reader.ready, (err: unknown) => err instanceof GatewayError && err.code === 'unknown_session');
    await assert.rejects(
      collect(reader, () => false),
      { code: 'unknown_session' },
    );
  });

  test('attach with since replays only later events', async () => {
    const session = `ts-since-${process.pid}`;
    const execution = client.execute('for i in 1 2 3 4 5; do echo line $i; done', { language: 'sh', session });
    const own = await collect(execution, () => false);
    const last = own[own.length - 1]!.sequence;
    const since = own[1]!.sequence;
    const other = await SluiceClient.connect(gateway.url, { reconnect: false });
    try {
      const reader = other.attach(session, { since });
      const replayed = await collect(reader, (e) => e.sequence === last);
      assert.deepEqual(replayed, own.slice(2));
    } finally {
      other.close();
    }
  });
});

describe('reconnect and resume', () => {
  // A gateway whose replay buffer is small: in acknowledged mode its programs wait as
  // soon as 64 events are unacknowledged, so a client that stops acknowledging (or
  // resumes from the wrong place) cannot pass.
  let small: Gateway;
  let proxy: CuttableProxy;
  before(async () => {
    small = await startGateway(['--replay-events', '64']);
    proxy = await startProxy(small.port);
  });
  after(async () => {
    await proxy?.close();
    await small?.stop();
  });

  for (const named of [true, false]) {
    const what = named ? 'a named session' : 'a gateway-made session';
    test(`a cut connection resumes ${what}: every event exactly once, in order`, async () => {
      const states: string[] = [];
      let reconnected!: () => void;
      const back = new Promise<void>((resolve) => (reconnected = resolve));
      const resumer = await SluiceClient.connect(`ws://127.0.0.1:${proxy.port}/v1/ws`, {
        reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
        onConnectionChange: (state) => {
          states.push(state);
          if (state === 'connected') reconnected();
        },
      });
      try {
        // Numbered lines: 1..1500, then it waits for stdin, then 1501..3000. The cut comes
        // while the first half streams, and the program cannot end before the stdin comes.
        const session = named ? `ts-resume-${process.pid}-${Date.now()}` : undefined;
        const code = [
          'i=1; while [ $i -le 1500 ]; do echo $i; i=$((i + 1)); done',
          'read go',
          'while [ $i -le 3000 ]; do echo $i; i=$((i + 1)); done',
        ].join('\n');
        const execution = resumer.execute(code, session ? { language: 'sh', session } : { language: 'sh' });
        // A reader of the same (named) session on the same client.
        const watched = session ? collect(resumer.attach(session), (e) => e.type === 'completed', 60_000) : undefined;
        let cut = false;
        let out = '';
        const events = await collect(
          execution,
          (event) => {
            if (event.type !== 'stdout') return false;
            out += event.data;
            if (!cut && out.split('\n').length > 300) {
              cut = true;
              proxy.cut();
              // The input goes out once the client is attached again.
              void back.then(() => execution.sendStdin('go\n'));
            }
            return false;
          },
          60_000,
        );
        assert.ok(cut, 'the connection was cut mid-stream');
        assert.deepEqual(states.slice(0, 2), ['reconnecting', 'connected']);
        assert.ok(proxy.accepted >= 2, 'a new connection was made');
        assertWellFormed(events);
        const lines = stdoutOf(events).trimEnd().split('\n').map(Number);
        assert.deepEqual(
          lines,
          Array.from({ length: 3000 }, (_, i) => i + 1),
          'lines 1..3000 exactly once, in order',
        );
        const outcome = await execution.done;
        assert.equal(outcome.exitCode, 0);
        if (watched) assert.deepEqual(await watched, events, 'the session reader saw the same events, once each');
      } finally {
        resumer.close();
      }
    });
  }

  test('an execute cut off before any answer: sent again in a named session, reported without one', async () => {
    const resumer = await SluiceClient.connect(`ws://127.0.0.1:${proxy.port}/v1/ws`, {
      reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
    });
    try {
      const named = resumer.execute('echo ran', { language: 'sh', session: `ts-resend-${Date.now()}` });
      const unnamed = resumer.execute('echo ran', { language: 'sh' });
      // Both frames are written to a socket that is cut before any answer can come.
      proxy.cut();
      const events = await collect(named, () => false);
      assertWellFormed(events);
      assert.equal(stdoutOf(events), 'ran\n', 'it ran exactly once');
      await assert.rejects(unnamed.done, (err: unknown) => err instanceof ConnectionError && /may or may not have run/.test(err.message));
    } finally {
      resumer.close();
    }
  });

  test('a cancel sent across a cut still stops the program', async () => {
    const resumer = await SluiceClient.connect(`ws://127.0.0.1:${proxy.port}/v1/ws`, {
      reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
    });
    try {
      const execution = resumer.execute('echo ready; sleep 60', { language: 'sh', session: `ts-cancel-cut-${Date.now()}` });
      const events = await collect(execution, (event) => {
        if (event.type === 'stdout') {
          // Whether or not the client has noticed the cut yet, the cancel must get through.
          proxy.cut();
          execution.cancel();
        }
        return false;
      });
      assertWellFormed(events);
      assert.equal(events[events.length - 1]?.type, 'cancelled');
    } finally {
      resumer.close();
    }
  });

  test('when reconnecting gives up, open streams end with connection_lost', async () => {
    const doomed = await startProxy(small.port);
    const states: string[] = [];
    const resumer = await SluiceClient.connect(`ws://127.0.0.1:${doomed.port}/v1/ws`, {
      reconnect: { initialDelayMs: 20, maxDelayMs: 100, giveUpAfterMs: 500 },
      onConnectionChange: (state) => states.push(state),
    });
    const execution = resumer.execute('echo ready; sleep 60', { language: 'sh', session: `ts-give-up-${Date.now()}` });
    const reading = collect(execution, (event) => {
      if (event.type === 'stdout') void doomed.close(); // cut, and refuse new connections
      return false;
    });
    await assert.rejects(
      reading,
      (err: unknown) => err instanceof ConnectionError && err.code === 'connection_lost' && /gave up/.test(err.message),
    );
    await assert.rejects(execution.done, { code: 'connection_lost' });
    assert.deepEqual(states, ['reconnecting', 'closed']);
    assert.equal(resumer.connected, false);
  });

  test('close() ends open streams with closed', async () => {
    const closing = await SluiceClient.connect(gateway.url);
    const execution = closing.execute('echo ready; sleep 60', { language: 'sh' });
    const reader = collect(execution, (event) => {
      if (event.type === 'stdout') closing.close();
      return false;
    });
    await assert.rejects(reader, (err: unknown) => err instanceof ConnectionError && err.code === 'closed');
    assert.throws(() => closing.execute('true', { language: 'sh' }), { code: 'closed' });
  });

  test('without reconnect, a cut ends open executions with connection_lost', async () => {
    const fragile = await SluiceClient.connect(`ws://127.0.0.1:${proxy.port}/v1/ws`, { reconnect: false });
    const execution = fragile.execute('echo ready; sleep 60', { language: 'sh' });
    const done = collect(execution, (event) => {
      if (event.type === 'stdout') proxy.cut();
      return false;
    });
    await assert.rejects(done, (err: unknown) => err instanceof ConnectionError && err.code === 'connection_lost');
    await assert.rejects(execution.done, { code: 'connection_lost' });
    assert.throws(() => fragile.execute('true', { language: 'sh' }), { code: 'connection_lost' });
  });
});

describe('runtimes', () => {
  test('lists the languages with their versions and the limits, while programs run', async () => {
    // A program runs meanwhile: it waits for its input, sent only after the answer.
    const execution = client.execute('read line; echo "got $line"', { language: 'sh' });
    const catalog = await within(client.runtimes(), 10_000, 'runtimes');
    execution.sendStdin('x\n');
    execution.closeStdin();
    const names = catalog.runtimes.map((r) => r.language);
    assert.deepEqual(names, [...names].sort(), 'sorted by name');
    assert.ok(names.includes('python') && names.includes('sh'), names.join(', '));
    const python = catalog.runtimes.find((r) => r.language === 'python');
    assert.equal(python?.file_name, 'main.py');
    assert.equal(python?.extension, 'py');
    assert.equal(python?.persistent, true);
    assert.equal(python?.tty, true);
    assert.match(python?.version ?? '', /^Python 3\./);
    // Its packages, sorted by name; other languages list none.
    const packageNames = (python?.packages ?? []).map((p) => p.name.toLowerCase());
    assert.ok(Array.isArray(python?.packages), 'python lists its packages');
    assert.deepEqual(packageNames, [...packageNames].sort());
    assert.equal(catalog.runtimes.find((r) => r.language === 'sh')?.packages, undefined);
    const timeout = catalog.limits['timeout_ms'];
    assert.ok(timeout && timeout.default > 0 && timeout.default <= timeout.max);
    assert.equal((await within(execution.done, 10_000, 'done')).stdout, 'got x\n');
    // Over HTTP, the same answer.
    const url = gateway.url.replace(/^ws/, 'http').replace(/\/v1\/ws$/, '/v1/runtimes');
    const response = await fetch(url);
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), catalog);
  });
});
