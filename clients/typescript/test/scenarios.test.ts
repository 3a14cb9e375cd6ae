/**
 * The client scenarios of protocol/fixtures/scenarios (its README gives the format): a
 * scripted peer plays the gateway on a `ws` server on port 0 while the scenario's script
 * drives this client's public API. Every scenario file in that folder is replayed.
 */

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import type WebSocket from 'ws';
import { WebSocketServer } from 'ws';
import { type Execution, SluiceClient, type SluiceEvent } from '../src/node.js';
import { repoRoot } from './helpers.js';

const dir = join(repoRoot, 'protocol', 'fixtures', 'scenarios');
/** A bound on one scenario, so a client that never sends what the peer expects fails. */
const DEADLINE_MS = 30_000;

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Step = Record<string, Json>;

interface Scenario {
  description: string;
  client: { options?: { execution_buffer_bytes?: number }; script: Step[] };
  peer: Step[];
  observe: Record<string, Json>[];
}

/** `value` has every field `pattern` names, equal; `null` also matches a missing field. */
function matches(pattern: unknown, value: unknown): boolean {
  if (pattern === null) return value === null || value === undefined;
  if (typeof pattern === 'object' && !Array.isArray(pattern)) {
    if (typeof value !== 'object' || value === null) return false;
    return Object.entries(pattern).every(([key, want]) => matches(want, (value as Record<string, unknown>)[key]));
  }
  return JSON.stringify(pattern) === JSON.stringify(value);
}

/** A one-shot signal. */
class Signal {
  readonly promise: Promise<void>;
  fire!: () => void;
  constructor() {
    this.promise = new Promise((resolve) => {
      this.fire = resolve;
    });
  }
}

/** Frames from one connection, read one at a time. */
class Inbox {
  private readonly frames: string[] = [];
  private waiter: ((text: string | undefined) => void) | undefined;
  private closed = false;

  constructor(socket: WebSocket) {
    socket.on('message', (data) => this.put(String(data)));
    socket.on('close', () => {
      this.closed = true;
      this.waiter?.(undefined);
    });
  }

  private put(text: string): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    if (waiter) waiter(text);
    else this.frames.push(text);
  }

  next(): Promise<string | undefined> {
    const text = this.frames.shift();
    if (text !== undefined || this.closed) return Promise.resolve(text);
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }
}

/** The gateway's side: accepts connections and runs the scenario's peer steps. */
class Peer {
  readonly server: WebSocketServer;
  private readonly accepted: { socket: WebSocket; inbox: Inbox }[] = [];
  private acceptWaiter: (() => void) | undefined;
  private readonly labels = new Map<string, Signal>();
  readonly received: Record<string, Json>[] = [];

  constructor() {
    this.server = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: () => 'sluice.v1' });
    this.server.on('connection', (socket) => {
      this.accepted.push({ socket, inbox: new Inbox(socket) });
      this.acceptWaiter?.();
    });
  }

  async listening(): Promise<string> {
    await new Promise<void>((resolve) => {
      if (this.server.address()) resolve();
      else this.server.once('listening', () => resolve());
    });
    return `ws://127.0.0.1:${(this.server.address() as AddressInfo).port}/v1/ws`;
  }

  label(name: string): Signal {
    let signal = this.labels.get(name);
    if (!signal) {
      signal = new Signal();
      this.labels.set(name, signal);
    }
    return signal;
  }

  private async nextConnection(): Promise<{ socket: WebSocket; inbox: Inbox }> {
    while (this.accepted.length === 0) {
      await new Promise<void>((resolve) => {
        this.acceptWaiter = resolve;
      });
    }
    return this.accepted.shift()!;
  }

  async run(steps: Step[]): Promise<void> {
    let current: { socket: WebSocket; inbox: Inbox } | undefined;
    for (const [index, step] of steps.entries()) {
      if ('label' in step) {
        this.label(String(step['label'])).fire();
        continue;
      }
      if ('drop' in step) {
        current?.socket.terminate();
        current = undefined;
        continue;
      }
      current ??= await this.nextConnection();
      if ('send' in step) {
        current.socket.send(JSON.stringify(step['send']));
      } else if ('expect' in step) {
        const pattern = step['expect'] as Record<string, Json>;
        for (;;) {
          const text = await current.inbox.next();
          assert.ok(text !== undefined, `peer step ${index}: the connection closed while expecting ${JSON.stringify(pattern)}`);
          const frame = JSON.parse(text) as Record<string, Json>;
          this.received.push(frame);
          if (frame['type'] === 'ack' && pattern['type'] !== 'ack') continue;
          assert.ok(matches(pattern, frame), `peer step ${index}: expected a frame like ${JSON.stringify(pattern)}, got ${text}`);
          break;
        }
      } else {
        assert.fail(`peer step ${index}: unknown step ${JSON.stringify(step)}`);
      }
    }
  }

  async close(): Promise<void> {
    for (const client of this.server.clients) client.terminate();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Runs the scenario's client script with this client's API; returns the events it read. */
async function runClient(client: SluiceClient, peer: Peer, script: Step[]): Promise<SluiceEvent[]> {
  const observed: SluiceEvent[] = [];
  let execution: Execution | undefined;
  let events: AsyncIterator<SluiceEvent> | undefined;
  for (const step of script) {
    if ('execute' in step) {
      const { code, language, ...rest } = step['execute'] as { code: string; language: string; id?: string; session?: string };
      execution = client.execute(code, { language, ...rest });
      events = execution[Symbol.asyncIterator]();
    } else if ('read' in step) {
      assert.ok(events);
      for (let i = 0; i < Number(step['read']); i++) {
        const next = await events.next();
        assert.ok(!next.done, `the stream ended after ${observed.length} events; the script reads more`);
        observed.push(next.value);
      }
    } else if ('read_to_end' in step) {
      assert.ok(events);
      for (let next = await events.next(); !next.done; next = await events.next()) observed.push(next.value);
    } else if ('send_stdin' in step) {
      execution?.sendStdin(String(step['send_stdin']));
    } else if ('close_stdin' in step) {
      execution?.closeStdin();
    } else if ('cancel' in step) {
      execution?.cancel();
    } else if ('leave' in step) {
      // What `break` in `for await` does.
      assert.ok(events?.return);
      await events.return();
    } else if ('await' in step) {
      await peer.label(String(step['await'])).promise;
    } else {
      assert.fail(`unknown client step ${JSON.stringify(step)}`);
    }
  }
  return observed;
}

function withDeadline<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not done within ${DEADLINE_MS} ms`)), DEADLINE_MS);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

const names = readdirSync(dir)
  .filter((name) => name.endsWith('.json'))
  .sort();

test('the scenario folder is not empty', () => {
  assert.ok(names.length > 0, `no scenario in ${dir}`);
});

for (const name of names) {
  const scenario = JSON.parse(readFileSync(join(dir, name), 'utf8')) as Scenario;
  test(`scenario ${name}`, async () => {
    const peer = new Peer();
    const url = await peer.listening();
    const options = scenario.client.options ?? {};
    const client = await SluiceClient.connect(url, {
      reconnect: { initialDelayMs: 10, maxDelayMs: 100, giveUpAfterMs: 10_000 },
      ...(options.execution_buffer_bytes !== undefined ? { maxBufferedBytes: options.execution_buffer_bytes } : {}),
    });
    try {
      const [, observed] = await withDeadline(
        Promise.all([peer.run(scenario.peer), runClient(client, peer, scenario.client.script)]),
        name,
      );
      assert.equal(observed.length, scenario.observe.length, `read ${JSON.stringify(observed)}`);
      scenario.observe.forEach((pattern, index) => {
        assert.ok(
          matches(pattern, observed[index]),
          `event ${index}: ${JSON.stringify(observed[index])} does not match ${JSON.stringify(pattern)}`,
        );
      });
    } finally {
      client.close();
      await peer.close();
    }
  });
}

test('break out of for await over an execution cancels it', async () => {
  const scenario = JSON.parse(readFileSync(join(dir, 'leave-early.json'), 'utf8')) as Scenario;
  const peer = new Peer();
  const client = await SluiceClient.connect(await peer.listening());
  const types: string[] = [];
  const user = async (): Promise<void> => {
    for await (const event of client.execute("while True: print('y')", { language: 'python', id: 'x1' })) {
      types.push(event.type);
      if (event.type === 'stdout') break;
    }
  };
  try {
    await withDeadline(Promise.all([peer.run(scenario.peer), user()]), 'break');
  } finally {
    client.close();
    await peer.close();
  }
  assert.deepEqual(types, ['started', 'stdout']);
  assert.deepEqual(
    peer.received.map((frame) => frame['type']).filter((type) => type !== 'ack'),
    ['execute', 'cancel'],
  );
});

test('an execution awaited only through done is never cut off', async () => {
  const peer = new Peer();
  const client = await SluiceClient.connect(await peer.listening(), { maxBufferedBytes: 1024 });
  const big = 'x'.repeat(4000);
  const event = (type: string, sequence: number, extra: Record<string, Json> = {}): Step => ({
    send: { type, data: '', timestamp: 1767225600 + sequence, sequence, id: 'x1', session: 's1', ...extra },
  });
  const steps: Step[] = [
    { expect: { type: 'execute', id: 'x1' } },
    event('started', 1, { pid: 4242 }),
    event('stdout', 2, { data: big }),
    event('stdout', 3, { data: big }),
    event('completed', 4, { exit_code: 0 }),
  ];
  try {
    const run = client.execute('print(1)', { language: 'python', id: 'x1' });
    const [, outcome] = await withDeadline(Promise.all([peer.run(steps), run.done]), 'done only');
    assert.equal(outcome.status, 'completed');
    assert.equal(outcome.stdout, big + big);
  } finally {
    client.close();
    await peer.close();
  }
});

test("rich output counts for its bundle in an execution's buffer: unread images are a slow consumer", async () => {
  const peer = new Peer();
  const client = await SluiceClient.connect(await peer.listening(), { maxBufferedBytes: 4096 });
  // Small `data`, large bundles: counted by `data` alone, both would fit in 4 KiB.
  const image = 'iVBO'.repeat(1000);
  const display = (sequence: number): Step => ({
    send: {
      type: 'display',
      data: 'a picture',
      timestamp: 1767225600 + sequence,
      sequence,
      id: 'x1',
      session: 's1',
      bundle: { 'image/png': image, 'text/plain': 'a picture' },
      metadata: {},
    },
  });
  const steps: Step[] = [
    { expect: { type: 'execute', id: 'x1' } },
    { send: { type: 'started', data: '', timestamp: 1767225600, sequence: 1, id: 'x1', session: 's1', pid: 4242 } },
    display(2),
    display(3),
    { expect: { type: 'cancel', id: 'x1', session: 's1' } },
    { send: { type: 'cancelled', data: '', timestamp: 1767225604, sequence: 4, id: 'x1', session: 's1' } },
  ];
  try {
    const run = client.execute('show()', { language: 'python', id: 'x1' });
    const events = run[Symbol.asyncIterator]();
    const peerDone = peer.run(steps);
    const read = async (): Promise<SluiceEvent[]> => {
      const seen: SluiceEvent[] = [];
      // The first event is read at once; the rest only once the client has cancelled.
      const first = await events.next();
      if (!first.done) seen.push(first.value);
      await peerDone;
      for (let next = await events.next(); !next.done; next = await events.next()) seen.push(next.value);
      return seen;
    };
    const [, seen] = await withDeadline(Promise.all([peerDone, read()]), 'rich slow consumer');
    assert.deepEqual(
      seen.map((e) => e.type),
      ['started', 'display', 'error'],
    );
    const last = seen[2]!;
    assert.ok(last.type === 'error' && last.code === 'slow_consumer');
    await assert.rejects(run.done, { code: 'slow_consumer' });
  } finally {
    client.close();
    await peer.close();
  }
});
