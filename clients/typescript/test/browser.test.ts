/**
 * The client in a real browser: the page (test/browser/page.ts) is bundled with esbuild
 * from the browser entry point, served from a local HTTP server, and driven in headless
 * Chromium by playwright-core against a real gateway that allows the page's origin.
 */

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { build } from 'esbuild';
import { type Browser, chromium } from 'playwright-core';
import { type Gateway, packageRoot, startGateway } from './helpers.js';

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
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  gateway = await startGateway(['--allow-origin', origin]);
  strict = await startGateway();
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
