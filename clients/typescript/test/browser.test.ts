/**
 * The client in a real browser: the page (test/browser/page.ts) is bundled with esbuild
 * from the browser entry point, served from a local HTTP server, and driven in headless
 * Chromium by playwright-core against a real gateway that allows the page's origin; and
 * against one that also requires a credential, which the page presents in the subprotocol
 * list.
 */

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { build } from 'esbuild';
import { type Browser, chromium } from 'playwright-core';
import { addKey, type Gateway, packageRoot, startGateway } from './helpers.js';

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';

const HTML = `<!doctype html>
<meta charset="utf-8">
<title>sluice-client browser test</title>
<p id="status" data-state="loading"></p>
<pre id="out"></pre><p id="exit"></p>
<pre id="long"></pre><button id="cancel">Cancel</button><p id="outcome"></p>
<p id="error"></p>
<script type="module" src="/bundle.js"></script>
`;

let bundle: string;
let server: Server;
let origin: string;
let gateway: Gateway;
let strict: Gateway;
/** Requires a key (`key`) and allows only `origin`. */
let guarded: Gateway;
let key: string;
let keyDir: string;
/** The same page server, reached by another name: a foreign origin. */
let foreign: string;
let browser: Browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
  const result = await build({
    entryPoints: [join(packageRoot, 'test/browser/page.ts')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    write: false,
  });
  bundle = result.outputFiles[0]!.text;
  server = createServer((req, res) => {
    if (req.url === '/bundle.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(bundle);
    } else if (req.url?.startsWith('/?') || req.url === '/') {
      res.writeHead(200, { 'content-type': 'text/html' }).end(HTML);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  origin = `http://127.0.0.1:${port}`;
  foreign = `http://localhost:${port}`;
  gateway = await startGateway(['--allow-origin', origin]);
  strict = await startGateway();
  keyDir = mkdtempSync(join(tmpdir(), 'sluice-browser-keys-'));
  key = addKey('web', join(keyDir, 'keys'));
  guarded = await startGateway(['--allow-origin', origin, '--api-keys', join(keyDir, 'keys')]);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
  await strict?.stop();
  await guarded?.stop();
  if (keyDir) rmSync(keyDir, { recursive: true, force: true });
  await new Promise((resolve) => server?.close(resolve));
});

test('the browser bundle does not pull in ws or Node modules', () => {
  assert.doesNotMatch(bundle, /from\s*["'](ws|node:[a-z_]+)["']|require\(["'](ws|node:)/);
  assert.match(bundle, /sluice\.v1/, 'the client is in the bundle');
});

test('in Chromium: stdin, output and a cancel button, rendered in the page', async () => {
  const page = await browser.newPage();
  try {
    await page.goto(`${origin}/?gateway=${encodeURIComponent(gateway.url)}`);
    // The cancel button is clicked once the long program's output is on the page.
    await page.waitForFunction(() => document.getElementById('long')?.textContent === 'waiting\n', null, {
      timeout: 20_000,
    });
    await page.click('#cancel');
    await page.waitForSelector('#status[data-state="done"], #status[data-state="failed"]', { state: 'attached', timeout: 20_000 });
    assert.equal(await page.textContent('#error'), '');
    assert.equal(await page.textContent('#out'), 'hello, browser\n');
    assert.equal(await page.textContent('#exit'), '0');
    assert.equal(await page.textContent('#outcome'), 'cancelled');
  } finally {
    await page.close();
  }
});

test('in Chromium: a gateway that does not allow the origin refuses the page', async () => {
  const page = await browser.newPage();
  try {
    await page.goto(`${origin}/?gateway=${encodeURIComponent(strict.url)}`);
    await page.waitForSelector('#status[data-state="failed"]', { state: 'attached', timeout: 20_000 });
    assert.match((await page.textContent('#error')) ?? '', /^connection_lost: could not connect/);
  } finally {
    await page.close();
  }
});

/** Opens the page at `base` against `gateway` with `token`; returns its #error once it ends. */
async function runPage(base: string, target: Gateway, token: string | undefined): Promise<{ state: string; error: string }> {
  const page = await browser.newPage();
  try {
    const query = new URLSearchParams({ gateway: target.url });
    if (token !== undefined) query.set('token', token);
    await page.goto(`${base}/?${query}`);
    // The long program is cancelled once its output is on the page (as above).
    await page.waitForFunction(
      () =>
        document.getElementById('long')?.textContent === 'waiting\n' || document.getElementById('status')?.dataset['state'] === 'failed',
      null,
      { timeout: 20_000 },
    );
    if ((await page.getAttribute('#status', 'data-state')) !== 'failed') await page.click('#cancel');
    await page.waitForSelector('#status[data-state="done"], #status[data-state="failed"]', { state: 'attached', timeout: 20_000 });
    if ((await page.getAttribute('#status', 'data-state')) === 'done') {
      assert.equal(await page.textContent('#out'), 'hello, browser\n');
      assert.equal(await page.textContent('#outcome'), 'cancelled');
    }
    return { state: (await page.getAttribute('#status', 'data-state')) ?? '', error: (await page.textContent('#error')) ?? '' };
  } finally {
    await page.close();
  }
}

test('in Chromium: a token in the subprotocol list opens a gateway that requires one', async () => {
  const ran = await runPage(origin, guarded, key);
  assert.deepEqual(ran, { state: 'done', error: '' });
});

test('in Chromium: without the token, or with a wrong one, the page is refused and told why it may be', async () => {
  for (const token of [undefined, `${key}x`]) {
    const ran = await runPage(origin, guarded, token);
    assert.equal(ran.state, 'failed');
    assert.match(ran.error, /^connection_lost: could not connect/);
    const why = token === undefined ? /may require a credential/ : /the credential may have been refused/;
    assert.match(ran.error, why);
    if (token !== undefined) assert.ok(!ran.error.includes(token), 'the error does not echo the credential');
  }
});

test('in Chromium: a page from a foreign origin is refused even with the token', async () => {
  const ran = await runPage(foreign, guarded, key);
  assert.equal(ran.state, 'failed');
  assert.match(ran.error, /^connection_lost: could not connect/);
});
