/**
 * The credential against a real gateway that requires one (`--api-keys`, the key made
 * with `sluice key add`), in Node with `ws`: the key runs a program; no key or a wrong one
 * rejects at once with AuthenticationError and the gateway's reason; a reconnect refused
 * for its credential is not tried again.
 */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { AuthenticationError, ConnectionError, SluiceClient, SluiceError } from '../src/node.js';
import { addKey, type Proxy as CuttableProxy, type Gateway, startGateway, startProxy, within } from './helpers.js';

let dir: string;
let key: string;
let open: Gateway;
let guarded: Gateway;
let proxy: CuttableProxy | undefined;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sluice-ts-auth-'));
  const keys = join(dir, 'keys');
  key = addKey('acme', keys);
  guarded = await startGateway(['--api-keys', keys]);
  open = await startGateway();
});

after(async () => {
  await proxy?.close();
  await guarded?.stop();
  await open?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function refusal(token: string | undefined): Promise<AuthenticationError> {
  const attempt = SluiceClient.connect(guarded.url, token === undefined ? {} : { token });
  const error = await within(
    attempt.then(
      (client) => {
        client.close();
        throw new Error('the gateway accepted the client');
      },
      (err: unknown) => err,
    ),
    20_000,
    'the refusal',
  );
  assert.ok(error instanceof AuthenticationError, `expected AuthenticationError, got ${String(error)}`);
  return error;
}

test('the key runs a program', async () => {
  const client = await SluiceClient.connect(guarded.url, { token: key });
  try {
    const execution = client.execute('echo hello', { language: 'sh' });
    const outcome = await within(execution.done, 20_000, 'hello world');
    assert.equal(outcome.stdout, 'hello\n');
    assert.equal(outcome.exitCode, 0);
  } finally {
    client.close();
  }
});

test('no key, or a wrong one, is refused at once with the reason', async () => {
  const missing = await refusal(undefined);
  assert.match(missing.reason, /credential is required/);
  assert.equal(missing.code, 'unauthorized');
  assert.ok(missing instanceof ConnectionError);
  assert.match(missing.message, /^the gateway refused the credential: /);
  const wrong = await refusal(`${key}x`);
  assert.match(wrong.reason, /not valid/);
  assert.ok(!wrong.message.includes(key), 'the message does not echo the credential');
});

test('a token a subprotocol cannot carry is refused before connecting', async () => {
  await assert.rejects(SluiceClient.connect(guarded.url, { token: 'has space' }), (err: unknown) => {
    assert.ok(err instanceof SluiceError);
    assert.equal(err.code, 'bad_request');
    return true;
  });
});

test('a reconnect refused for its credential is not retried', async () => {
  // Through a proxy to a gateway that needs no credential; after the cut, the proxy
  // leads to the one that refuses this client's token.
  const through = await startProxy(open.port);
  proxy = through;
  const client = await SluiceClient.connect(`ws://127.0.0.1:${through.port}/v1/ws`, {
    token: 'not-a-key-of-the-second-gateway',
    reconnect: { initialDelayMs: 20, maxDelayMs: 200, giveUpAfterMs: 20_000 },
  });
  try {
    const execution = client.execute('echo ready; read line', { language: 'sh' });
    for await (const event of execution) {
      if (event.type === 'stdout') break;
    }
    through.retarget(guarded.port);
    through.cut();
    const ended = await within(
      execution.done.then(
        () => undefined,
        (err: unknown) => err,
      ),
      20_000,
      'the execution to end',
    );
    assert.ok(ended instanceof AuthenticationError, `expected AuthenticationError, got ${String(ended)}`);
    assert.match(ended.reason, /not valid/);
    assert.throws(() => client.execute('echo again', { language: 'sh' }), AuthenticationError);
    // The first connection and one refused attempt: no retry loop.
    assert.equal(through.accepted, 2);
  } finally {
    client.close();
  }
});
