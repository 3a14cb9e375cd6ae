/**
 * Terminal mode (`tty: true`) against a real gateway: the program sees a terminal of the
 * size asked for, `resize` delivers SIGWINCH, Ctrl-C and Ctrl-D are typed, `eof` leaves a
 * terminal's input open, and the refusals have their codes. Every wait is on output,
 * never a sleep.
 */

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type Execution, InvalidFrameError, SluiceClient, SluiceError } from '../src/node.js';
import { type Gateway, startGateway, within } from './helpers.js';

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

/** Bound on every wait; no test should come near it. */
const WAIT = 30_000;

/**
 * Blocks SIGWINCH and waits for it, so a resize cannot come before the program is ready
 * for it: prints the size, `ready`, then (after a resize) `winch` and the new size.
 */
const SIGWINCH_PROGRAM = [
  'import signal, subprocess',
  'signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGWINCH])',
  "subprocess.run(['stty', 'size'])",
  "print('ready', flush=True)",
  'signal.sigwait([signal.SIGWINCH])',
  "print('winch', flush=True)",
  "subprocess.run(['stty', 'size'])",
  '',
].join('\n');

/** Reads an execution's events without ending the loop (a `break` would cancel it), keeping its output. */
class Screen {
  text = '';
  /** Where the last text waited for ended: the next wait looks after it. */
  private mark = 0;
  private readonly events: AsyncIterator<unknown>;

  constructor(execution: Execution) {
    this.events = execution[Symbol.asyncIterator]();
  }

  /** Reads until `wanted` appears after the last text waited for; returns the output from there to its end. */
  waitFor(wanted: string): Promise<string> {
    const read = async (): Promise<string> => {
      for (;;) {
        const found = this.text.indexOf(wanted, this.mark);
        if (found >= 0) {
          const start = this.mark;
          this.mark = found + wanted.length;
          return this.text.slice(start, this.mark);
        }
        const next = await this.events.next();
        if (next.done) throw new Error(`the stream ended before ${JSON.stringify(wanted)}; output ${JSON.stringify(this.text)}`);
        const event = next.value as { type: string; data: string };
        if (event.type === 'stdout') this.text += event.data;
      }
    };
    return within(read(), WAIT, JSON.stringify(wanted));
  }

  /** Reads the rest of the events. */
  async drain(): Promise<void> {
    const read = async () => {
      while (!(await this.events.next()).done) {}
    };
    await within(read(), WAIT, 'the end of the stream');
  }
}

describe('terminal mode', () => {
  test('a terminal program sees a tty of its size and TERM, with stderr merged', async () => {
    const code = [
      'import os, sys',
      "print('tty', os.isatty(0), os.isatty(1), os.isatty(2))",
      "print('size', os.get_terminal_size())",
      "print('term', os.environ.get('TERM'))",
      'sys.stdout.flush()',
      "print('to stderr', file=sys.stderr)",
    ].join('\n');
    const execution = client.execute(code, { language: 'python', tty: true, cols: 100, rows: 30 });
    assert.equal(execution.tty, true);
    const outcome = await within(execution.done, WAIT, 'done');
    assert.equal(outcome.exitCode, 0);
    assert.ok(outcome.stdout.includes('tty True True True\r\n'), outcome.stdout);
    assert.ok(outcome.stdout.includes('columns=100, lines=30'), outcome.stdout);
    assert.ok(outcome.stdout.includes('term xterm-256color\r\n'), outcome.stdout);
    // stderr comes through the terminal, as stdout; "\n" became "\r\n".
    assert.ok(outcome.stdout.endsWith('to stderr\r\n'), outcome.stdout);
    assert.equal(outcome.stderr, '');
    // Without a size: 80 x 24; a `term` of the request's own.
    const sized = client.execute('echo $TERM; stty size', { language: 'sh', tty: true, term: 'vt100' });
    const sizedOutcome = await within(sized.done, WAIT, 'done');
    assert.equal(sizedOutcome.stdout, 'vt100\r\n24 80\r\n');
    // Without tty: pipes, as before.
    const plain = client.execute('import os; print(os.isatty(1))', { language: 'python' });
    assert.equal(plain.tty, false);
    assert.equal((await within(plain.done, WAIT, 'done')).stdout, 'False\n');
  });

  test('resize delivers SIGWINCH and stty size follows', async () => {
    const execution = client.execute(SIGWINCH_PROGRAM, { language: 'python', tty: true, cols: 100, rows: 30 });
    const screen = new Screen(execution);
    assert.equal(await screen.waitFor('ready'), '30 100\r\nready');
    assert.equal(execution.resize(50, 10), true);
    assert.equal(await screen.waitFor('winch\r\n10 50\r\n'), '\r\nwinch\r\n10 50\r\n');
    await screen.drain();
    assert.equal((await within(execution.done, WAIT, 'done')).exitCode, 0);
    // Ended: nothing left to resize, and no error either.
    assert.equal(execution.resize(80, 24), false);
  });

  test('resize in a named session', async () => {
    const session = `tty-${Date.now()}-${Math.random().toString(16).slice(2)}`;
    const execution = client.execute(SIGWINCH_PROGRAM, { language: 'python', tty: true, session });
    const screen = new Screen(execution);
    assert.equal(await screen.waitFor('ready'), '24 80\r\nready');
    execution.resize(132, 43);
    await screen.waitFor('winch\r\n43 132\r\n');
    await screen.drain();
    assert.equal((await within(execution.done, WAIT, 'done')).exitCode, 0);
  });

  test('Ctrl-C interrupts the Python REPL, which survives; Ctrl-D ends it', async () => {
    const execution = client.execute('exec python3 -i -q', { language: 'sh', tty: true });
    const screen = new Screen(execution);
    await screen.waitFor('>>> ');
    execution.sendStdin('import time; time.sleep(1000)\r');
    await screen.waitFor('time.sleep(1000)\r\n');
    // Ctrl-C, typed: the terminal sends SIGINT to the REPL.
    execution.sendStdin('\x03');
    await screen.waitFor('KeyboardInterrupt');
    execution.sendStdin('print(6 * 7)\r');
    // The next prompt first: typed ahead, Ctrl-D would reach the terminal before the REPL's
    // line editor takes it.
    await screen.waitFor('42\r\n>>> ');
    // closeStdin on a terminal types Ctrl-D: at an empty prompt the REPL exits.
    execution.closeStdin();
    await screen.drain();
    assert.equal((await within(execution.done, WAIT, 'done')).exitCode, 0);
  });

  test('eof twice on a terminal; the execute stdin is typed and input stays open', async () => {
    // Two reads to end of input: a pipe's stdin could end only once.
    const code = [
      'import sys',
      "print('first', repr(sys.stdin.read()), flush=True)",
      "print('second', repr(sys.stdin.read()), flush=True)",
    ].join('\n');
    const execution = client.execute(code, { language: 'python', tty: true });
    const screen = new Screen(execution);
    execution.sendStdin('one\r');
    execution.closeStdin();
    await screen.waitFor("first 'one\\n'");
    // Still open: a pipe execution would throw stdin_closed here.
    execution.sendStdin('two\r');
    execution.closeStdin();
    await screen.waitFor("second 'two\\n'");
    await screen.drain();
    assert.equal((await within(execution.done, WAIT, 'done')).exitCode, 0);

    const typed = client.execute('read first; echo "got $first"; read second; echo "then $second"', {
      language: 'sh',
      tty: true,
      stdin: 'typed\r',
    });
    const typedScreen = new Screen(typed);
    await typedScreen.waitFor('got typed\r\n');
    typed.sendStdin('more\r');
    await typedScreen.waitFor('then more\r\n');
    await typedScreen.drain();
    assert.equal((await within(typed.done, WAIT, 'done')).exitCode, 0);

    // A pipe execution's stdin closes for good, as before.
    const pipe = client.execute('cat', { language: 'sh', stdin: 'x' });
    assert.throws(
      () => pipe.sendStdin('y'),
      (err: unknown) => err instanceof SluiceError && err.code === 'stdin_closed',
    );
    assert.equal((await within(pipe.done, WAIT, 'done')).stdout, 'x');
  });

  test('resizing a pipe execution is not_a_terminal, and the execution never notices', async () => {
    const execution = client.execute('echo ready; read x; echo got $x', { language: 'sh' });
    const screen = new Screen(execution);
    await screen.waitFor('ready\n');
    assert.throws(
      () => execution.resize(80, 24),
      (err: unknown) => err instanceof SluiceError && err.code === 'not_a_terminal' && err.message.includes('tty'),
    );
    execution.sendStdin('go\n');
    execution.closeStdin();
    await screen.drain();
    const outcome = await within(execution.done, WAIT, 'done');
    assert.equal(outcome.stdout, 'ready\ngot go\n');
  });

  test('bad terminal requests are refused before sending', async () => {
    const refused: [Record<string, unknown>, string][] = [
      [{ cols: 80 }, '"cols" is only for a terminal'],
      [{ tty: false, term: 'vt100' }, '"term" is only for a terminal'],
      [{ tty: true, rows: 0 }, '"rows" must be an integer from 1 to 1000'],
      [{ tty: true, cols: 1001 }, '"cols" must be an integer from 1 to 1000'],
      [{ tty: true, cols: 80.5 }, '"cols" must be an integer'],
      [{ tty: true, term: 'x;rm' }, '"term" must be'],
      [{ tty: true, term: '' }, '"term" must be'],
      [{ tty: true, term: 'x'.repeat(65) }, '"term" must be'],
      [{ tty: true, persistent: true, session: 's' }, 'do not go together'],
    ];
    for (const [options, says] of refused) {
      assert.throws(
        () => client.execute('true', { language: 'sh', ...options }),
        (err: unknown) => err instanceof InvalidFrameError && err.code === 'bad_request' && err.message.includes(says),
        JSON.stringify(options),
      );
    }
    const execution = client.execute('read x', { language: 'sh', tty: true, cols: 1000, rows: 1, term: 'a.b+c-d_9' });
    for (const [cols, rows] of [
      [0, 24],
      [80, 1001],
      [-1, 24],
      [80, Number.NaN],
    ] as const) {
      assert.throws(
        () => execution.resize(cols, rows),
        (err: unknown) => err instanceof InvalidFrameError && err.code === 'bad_request',
        `${cols} x ${rows}`,
      );
    }
    execution.resize(1000, 1);
    execution.sendStdin('\r');
    assert.equal((await within(execution.done, WAIT, 'done')).exitCode, 0);
  });
});
