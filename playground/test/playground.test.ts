/**
 * The playground page in headless Chromium (Debian's chromium, driven by playwright-core),
 * loaded from a real gateway's own `GET /`: languages, a run with output and input, Stop,
 * a program printing without end, a reload that resumes the session, the credential
 * prompt, and (where the gateway has terminal mode) a terminal. Every wait is for
 * something the page shows, bounded by a timeout; none is a sleep. Screenshots go to
 * playground/artifacts/ (printed at the end).
 */

import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type Browser, chromium, type Page } from 'playwright-core';
import { addKey, type Gateway, startGateway, startProxy } from './gateway.js';

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';
/** playground/artifacts (the tests run from playground/build/test/). */
const ARTIFACTS = fileURLToPath(new URL('../../artifacts/', import.meta.url));
const WAIT = { timeout: 20_000 };

let browser: Browser;
let gateway: Gateway;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
  mkdirSync(ARTIFACTS, { recursive: true });
  gateway = await startGateway();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--disable-gpu',
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
  console.log(`screenshots: ${ARTIFACTS}`);
});

interface Watched {
  page: Page;
  /** Page errors, console errors and content-security-policy violations. */
  problems: string[];
}

/** A new page (a tab of its own) that records what went wrong in it. */
async function openPage(): Promise<Watched> {
  const page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
  const problems: string[] = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (event) => {
      console.error(`CSP violation: ${event.violatedDirective} ${event.blockedURI}`);
    });
  });
  return { page, problems };
}

async function load(page: Page, base: string): Promise<void> {
  await page.goto(`${base}/`);
  await page.waitForSelector('body[data-ready="true"]', WAIT);
}

/** Replaces the editor's text as a person pasting it would. */
async function typeCode(page: Page, code: string): Promise<void> {
  await page.click('.cm-content');
  await page.keyboard.press('Control+A');
  await page.keyboard.insertText(code);
}

/** The newest pane, found by its run's id (so it stays that pane when others open). */
async function newest(page: Page): Promise<ReturnType<Page['locator']>> {
  const id = await page.locator('.pane').last().getAttribute('data-id');
  return page.locator(`.pane[data-id="${id}"]`);
}

async function paneStatus(page: Page, pane: ReturnType<Page['locator']>, status: string): Promise<void> {
  const id = await pane.getAttribute('data-id');
  await page.waitForSelector(`.pane[data-id="${id}"][data-status="${status}"]`, WAIT);
}

async function waitForText(page: Page, pane: ReturnType<Page['locator']>, text: string): Promise<void> {
  const id = await pane.getAttribute('data-id');
  await page.waitForFunction(
    ([id, text]) => document.querySelector(`.pane[data-id="${id}"] .output`)?.textContent?.includes(text) ?? false,
    [id, text] as const,
    WAIT,
  );
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`) });
}

test('the page loads from the gateway, lists its languages, runs code with input, and stops a run', async () => {
  const { page, problems } = await openPage();
  try {
    await load(page, gateway.base);
    const catalog = (await (await fetch(`${gateway.base}/v1/runtimes`)).json()) as { runtimes: { language: string }[] };
    const listed = await page.$$eval('#language option', (options) => options.map((o) => (o as HTMLOptionElement).value));
    assert.deepEqual(
      listed,
      catalog.runtimes.map((r) => r.language),
    );
    assert.ok(listed.includes('python'), `python is listed: ${listed.join(', ')}`);
    await page.selectOption('#language', 'python');

    await typeCode(page, 'import sys\nname = input()\nprint("hello,", name)\nprint("to stderr", file=sys.stderr)\n');
    await page.click('#run');
    const run = await newest(page);
    await paneStatus(page, run, 'running');
    await run.locator('.stdin input').fill('Ada');
    await run.locator('.stdin input').press('Enter');
    await paneStatus(page, run, 'completed');
    assert.equal(
      await run
        .locator('.output .stdout')
        .allTextContents()
        .then((t) => t.join('')),
      'hello, Ada\n',
    );
    assert.equal(
      await run
        .locator('.output .stderr')
        .allTextContents()
        .then((t) => t.join('')),
      'to stderr\n',
    );
    assert.match((await run.locator('.usage').textContent()) ?? '', /^exit 0 · /);

    // Ctrl-Enter runs too; Stop ends a program that waits.
    await typeCode(page, 'import time\nprint("waiting", flush=True)\ntime.sleep(60)\n');
    await page.keyboard.press('Control+Enter');
    const sleeper = await newest(page);
    assert.notEqual(await sleeper.getAttribute('data-id'), await run.getAttribute('data-id'));
    await waitForText(page, sleeper, 'waiting');
    await sleeper.locator('button.stop').click();
    await paneStatus(page, sleeper, 'cancelled');
    assert.equal(await page.locator('.pane').count(), 2, 'both runs side by side');
    await shot(page, 'run-input-stop');

    // Closing a pane removes it.
    await run.locator('button.close').click();
    assert.equal(await page.locator('.pane').count(), 1);
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
  }
});

test('a program printing without end does not freeze the page, and Stop ends it within a second', async () => {
  const { page, problems } = await openPage();
  try {
    await load(page, gateway.base);
    await page.selectOption('#language', 'sh');
    // Room for a long run: the largest output limit, a minute.
    const max = await page.getAttribute('#output-limit', 'max');
    await page.fill('#output-limit', max ?? '1024');
    await page.fill('#timeout', '60');
    await typeCode(page, 'yes "a line of output from yes"\n');
    await page.click('#run');
    const run = await newest(page);
    // More than the pane keeps has arrived: it says so, and keeps at most 1 MiB.
    await run.locator('.trimmed').waitFor({ state: 'visible', ...WAIT });
    // The page still draws frames and answers input while the output streams in.
    for (let frame = 0; frame < 5; frame++) {
      await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(resolve)));
    }
    await run.locator('.stdin input').fill('typed while yes runs');
    assert.equal(await run.locator('.stdin input').inputValue(), 'typed while yes runs');
    const kept = await run.locator('.output').evaluate((pre) => pre.textContent?.length ?? 0);
    assert.ok(kept <= 1 << 20, `the pane keeps at most 1 MiB (${kept})`);
    assert.equal(await run.getAttribute('data-status'), 'running');
    await shot(page, 'yes-running');

    await run.locator('button.stop').click();
    await paneStatus(page, run, 'cancelled');
    // The program ended within a second of the click, by the gateway's account (its
    // start plus how long it ran; one clock, one machine). The page shows it once the
    // output already on its way (socket buffers: a few MiB on loopback) has been read.
    const ranAfterText = await run.getAttribute('data-ran-after-stop-ms');
    const shownAfterText = await run.getAttribute('data-stopped-in-ms');
    assert.ok(ranAfterText !== null && shownAfterText !== null, 'the pane measured its Stop');
    const ranAfter = Number(ranAfterText);
    const shownAfter = Number(shownAfterText);
    console.log(`yes: ended ${ranAfter} ms after Stop; the page showed it after ${shownAfter} ms`);
    assert.ok(ranAfter < 1000, `the program ran ${ranAfter} ms after Stop`);
    assert.ok(shownAfter < 5000, `the page showed the end ${shownAfter} ms after Stop`);
    await shot(page, 'yes-stopped');
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
  }
});

test("reloading the page attaches to the session again and the run's output goes on", async () => {
  const { page, problems } = await openPage();
  try {
    await load(page, gateway.base);
    await page.selectOption('#language', 'python');
    await typeCode(page, 'import sys\nprint("ready", flush=True)\nfor line in sys.stdin:\n    print("got", line.strip(), flush=True)\n');
    await page.click('#run');
    let run = await newest(page);
    const id = await run.getAttribute('data-id');
    await waitForText(page, run, 'ready');
    await run.locator('.stdin input').fill('one');
    await run.locator('.stdin input').press('Enter');
    await waitForText(page, run, 'got one');
    // This line may be answered while the page reloads: it must show once either way.
    await run.locator('.stdin input').fill('two');
    await run.locator('.stdin input').press('Enter');

    await page.reload();
    await page.waitForSelector('body[data-ready="true"]', WAIT);
    run = page.locator(`.pane[data-id="${id}"]`);
    await waitForText(page, run, 'got two');
    // The restored run takes input and stops like any other.
    await run.locator('.stdin input').fill('three');
    await run.locator('.stdin input').press('Enter');
    await waitForText(page, run, 'got three');
    await run.locator('button.eof').click();
    await paneStatus(page, run, 'completed');
    assert.equal(await run.locator('.output').textContent(), 'ready\ngot one\ngot two\ngot three\n', 'each line once, in order');
    await shot(page, 'reload-resumed');
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
  }
});

test('a network blip: the indicator says so, and the run goes on over the new connection', async () => {
  const proxy = await startProxy(gateway.port);
  const { page, problems } = await openPage();
  try {
    // The page comes through the proxy, so its socket does too.
    await load(page, `http://127.0.0.1:${proxy.port}`);
    await page.selectOption('#language', 'python');
    await typeCode(page, 'import sys\nprint("ready", flush=True)\nfor line in sys.stdin:\n    print("got", line.strip(), flush=True)\n');
    await page.click('#run');
    const run = await newest(page);
    await waitForText(page, run, 'ready');
    proxy.cut();
    // The client reconnects through the proxy and resumes the session.
    await page.waitForSelector('#status[data-reconnects="1"][data-state="connected"]', { state: 'attached', ...WAIT });
    await run.locator('.stdin input').fill('after the blip');
    await run.locator('.stdin input').press('Enter');
    await waitForText(page, run, 'got after the blip');
    await run.locator('button.eof').click();
    await paneStatus(page, run, 'completed');
    assert.equal(await run.locator('.output').textContent(), 'ready\ngot after the blip\n');
    // The browser logs the dropped socket; nothing else went wrong.
    assert.deepEqual(
      problems.filter((p) => !p.includes('WebSocket')),
      [],
    );
  } finally {
    await page.close();
    await proxy.close();
  }
});

test('with credentials configured the page asks for a token and keeps it for the tab only', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-playground-keys-'));
  const key = addKey('playground', join(dir, 'keys'));
  const guarded = await startGateway(['--api-keys', join(dir, 'keys')]);
  const { page, problems } = await openPage();
  try {
    await page.goto(`${guarded.base}/`);
    await page.locator('#token-dialog').waitFor({ state: 'visible', ...WAIT });
    await page.fill('#token', `${key}x`);
    await page.click('#token-submit');
    await page.waitForFunction(() => document.getElementById('token-error')?.textContent?.includes('refused') ?? false, null, WAIT);
    await shot(page, 'token-prompt');
    await page.fill('#token', key);
    await page.click('#token-submit');
    await page.waitForSelector('body[data-ready="true"]', WAIT);
    assert.ok((await page.locator('#language option').count()) > 0, 'the languages are listed with the credential');
    await page.selectOption('#language', 'sh');
    await typeCode(page, 'echo authenticated\n');
    await page.click('#run');
    const echoed = await newest(page);
    await paneStatus(page, echoed, 'completed');
    await waitForText(page, echoed, 'authenticated');
    const stored = await page.evaluate(() => ({
      token: sessionStorage.getItem('sluice.playground.token'),
      local: localStorage.length,
    }));
    assert.equal(stored.token, key, 'the token is in session storage');
    assert.equal(stored.local, 0, 'nothing in local storage');
    // A reload asks no more.
    await page.reload();
    await page.waitForSelector('body[data-ready="true"]', WAIT);
    assert.equal(await page.locator('#token-dialog').isVisible(), false);
    // The refused token's answer (HTTP 401 on /v1/runtimes) is the only console error.
    assert.deepEqual(
      problems.filter((p) => !p.includes('401')),
      [],
    );
  } finally {
    await page.close();
    await guarded.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

/** The text on an xterm.js terminal's screen. */
async function screen(page: Page, id: string): Promise<string> {
  return page
    .locator(`.pane[data-id="${id}"] .xterm-rows`)
    .evaluate((rows) => [...rows.children].map((row) => (row.textContent ?? '').replace(/\u00a0/g, ' ').trimEnd()).join('\n'));
}

async function waitForScreen(page: Page, id: string, pattern: RegExp): Promise<string> {
  await page.waitForFunction(
    ([id, source]) => {
      const rows = document.querySelector(`.pane[data-id="${id}"] .xterm-rows`);
      const text = [...(rows?.children ?? [])].map((row) => (row.textContent ?? '').replace(/\u00a0/g, ' ').trimEnd()).join('\n');
      return new RegExp(source, 'm').test(text);
    },
    [id, pattern.source] as const,
    WAIT,
  );
  return screen(page, id);
}

test('a terminal: an interactive python3 (Ctrl-C included), and stty size follows the window', async (t) => {
  const catalog = (await (await fetch(`${gateway.base}/v1/runtimes`)).json()) as { runtimes: { language: string; tty: boolean }[] };
  if (!catalog.runtimes.some((r) => (r.language === 'bash' || r.language === 'sh') && r.tty)) {
    t.skip('this gateway has no terminal mode (no runtime reports tty: true)');
    return;
  }
  const { page, problems } = await openPage();
  try {
    await load(page, gateway.base);
    await page.click('#shell');
    const pane = await newest(page);
    const id = (await pane.getAttribute('data-id'))!;
    await paneStatus(page, pane, 'running');
    await pane.locator('.xterm').click();
    await waitForScreen(page, id, /[$#]$/);
    await page.keyboard.type('python3 -i\n');
    await waitForScreen(page, id, /^>>>$/);
    await page.keyboard.type('import time; time.sleep(60)\n');
    // Ctrl-C in the terminal interrupts the program, and the REPL goes on.
    await page.keyboard.press('Control+C');
    await waitForScreen(page, id, /^KeyboardInterrupt$/);
    await page.keyboard.type('6 * 7\n');
    await waitForScreen(page, id, /^42$/);
    await page.keyboard.press('Control+D');
    // Back at the shell's prompt (the line that ran python3 no longer ends with it).
    await waitForScreen(page, id, /[$#]$/);
    await page.keyboard.type('stty size\n');
    const before = await pane.getAttribute('data-size');
    await waitForScreen(page, id, new RegExp(`^${before}$`));
    await shot(page, 'terminal-python');
    await page.setViewportSize({ width: 1000, height: 600 });
    await page.waitForFunction(
      ([id, before]) => document.querySelector(`.pane[data-id="${id}"]`)?.getAttribute('data-size') !== before,
      [id, before] as const,
      WAIT,
    );
    const after = await pane.getAttribute('data-size');
    await page.keyboard.type('clear; stty size\n');
    await waitForScreen(page, id, new RegExp(`^${after}$`));
    await shot(page, 'terminal-resized');

    // After a reload the shell is still there, with what it showed, and takes keys.
    await page.reload();
    await page.waitForSelector('body[data-ready="true"]', WAIT);
    await waitForScreen(page, id, new RegExp(`^${after}$`));
    await pane.locator('.xterm').click();
    await page.keyboard.type('echo "after the $((1 + 1))nd load"\n');
    await waitForScreen(page, id, /^after the 2nd load$/);
    await pane.locator('button.stop').click();
    await paneStatus(page, pane, 'cancelled');

    // The editor's code on a terminal.
    await page.selectOption('#language', 'python');
    await page.check('#tty');
    await typeCode(page, 'import os, sys\nprint("tty:", sys.stdout.isatty(), os.environ.get("TERM"))\n');
    await page.click('#run');
    const run = await newest(page);
    const runId = (await run.getAttribute('data-id'))!;
    assert.equal(await run.getAttribute('class'), 'pane pane-terminal');
    await paneStatus(page, run, 'completed');
    await waitForScreen(page, runId, /^tty: True xterm-256color$/);
    await shot(page, 'terminal-run');
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
  }
});
