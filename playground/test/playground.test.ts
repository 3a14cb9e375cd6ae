/**
 * The playground page in headless Chromium (Debian's chromium, driven by playwright-core),
 * loaded from a real gateway's own `GET /`: languages, a run with output and input, Stop,
 * a program printing without end, a reload that resumes the session, the credential
 * prompt, the session's file tree (uploads read from code, downloads of what a program
 * wrote, refreshes, deletes, by mouse and keyboard; a gateway that keeps no workspace
 * for it, where the tree is hidden), rich output (HTML in a sandboxed frame, images, updates
 * by display_id), and (where the gateway has terminal mode) a terminal. Every wait is for
 * something the page shows, bounded by a timeout; none is a sleep. Screenshots go to
 * playground/artifacts/ (printed at the end).
 */

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
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

/** A python program that asks for a line as a persistent cell's `input()` would: it writes the record itself. */
function asking(prompt: string, password: boolean): string {
  const record = JSON.stringify(password ? { prompt, password } : { prompt });
  return String.raw`import sys
print('\x1b]sluice;input_request;${record}\x07', end='', flush=True)
line = sys.stdin.readline().rstrip('\n')
print('got', len(line), 'chars:', line if ${password ? 'False' : 'True'} else '*' * len(line))
`;
}

test('an input request shows its prompt by the input box and focuses it; a password request uses a password field', async () => {
  const { page, problems } = await openPage();
  try {
    await load(page, gateway.base);
    await page.selectOption('#language', 'python');

    await typeCode(page, asking('Name: ', false));
    await page.click('#run');
    const run = await newest(page);
    const id = await run.getAttribute('data-id');
    await page.waitForSelector(`.pane[data-id="${id}"][data-input-request="text"]`, WAIT);
    const prompt = run.locator('.stdin label.prompt');
    assert.equal(await prompt.isVisible(), true, 'the prompt shows');
    assert.equal(await prompt.textContent(), 'Name: ');
    const box = run.locator('.stdin input');
    assert.equal(await box.getAttribute('type'), 'text');
    assert.equal(await box.getAttribute('aria-label'), 'Name: ');
    assert.equal(
      await page.evaluate((id) => document.activeElement === document.querySelector(`.pane[data-id="${id}"] .stdin input`), id),
      true,
      'the input box has the focus',
    );
    await shot(page, 'input-request');
    // Typed straight away: the focus is already there.
    await page.keyboard.type('Ada');
    await page.keyboard.press('Enter');
    await paneStatus(page, run, 'completed');
    assert.equal(
      await run
        .locator('.output .stdout')
        .allTextContents()
        .then((t) => t.join('')),
      'got 3 chars: Ada\n',
      'the prompt and the record are not in the output',
    );
    assert.equal(await run.getAttribute('data-input-request'), null, 'the request was answered');

    await typeCode(page, asking('Secret: ', true));
    await page.click('#run');
    const secret = await newest(page);
    const secretId = await secret.getAttribute('data-id');
    assert.notEqual(secretId, id);
    await page.waitForSelector(`.pane[data-id="${secretId}"][data-input-request="password"]`, WAIT);
    assert.equal(await secret.locator('.stdin label.prompt').textContent(), 'Secret: ');
    const hidden = secret.locator('.stdin input');
    assert.equal(await hidden.getAttribute('type'), 'password', 'a password field');
    assert.equal(
      await page.evaluate((id) => document.activeElement === document.querySelector(`.pane[data-id="${id}"] .stdin input`), secretId),
      true,
    );
    await page.keyboard.type('hunter2');
    await shot(page, 'input-request-password');
    await page.keyboard.press('Enter');
    await paneStatus(page, secret, 'completed');
    assert.equal(
      await secret
        .locator('.output .stdout')
        .allTextContents()
        .then((t) => t.join('')),
      'got 7 chars: *******\n',
    );
    assert.equal(await hidden.getAttribute('type'), 'text', 'an ordinary field again once answered');
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

/** Waits for the file tree to show `path` (its row), and returns the row. */
async function fileRow(page: Page, path: string): Promise<ReturnType<Page['locator']>> {
  const row = page.locator(`#files-tree .node[data-path="${path}"]`);
  await row.waitFor({ state: 'visible', ...WAIT });
  return row;
}

/** Where the editor and the runs area are: a refresh of the tree must not move them. */
async function layout(page: Page): Promise<string> {
  return page.evaluate(() =>
    ['#files', '#editor-pane', '#runs']
      .map((sel) => {
        const box = document.querySelector(sel)!.getBoundingClientRect();
        return `${sel} ${box.x} ${box.width} ${box.height}`;
      })
      .join('; '),
  );
}

async function runPython(page: Page, code: string): Promise<ReturnType<Page['locator']>> {
  await page.selectOption('#language', 'python');
  await typeCode(page, code);
  await page.click('#run');
  const run = await newest(page);
  await paneStatus(page, run, 'completed');
  return run;
}

test('the file tree: an upload (picker, drop, and a large one in pieces) is read from code, without a layout jump', async () => {
  const { page, problems } = await openPage();
  try {
    await load(page, gateway.base);
    await page.waitForSelector('#files[data-state="open"][data-listed]', WAIT);
    assert.equal(await page.locator('#files-empty').isVisible(), true, 'an empty workspace says so');
    const before = await layout(page);

    await page.setInputFiles('#upload-input', { name: 'up.txt', mimeType: 'text/plain', buffer: Buffer.from('uploaded from the page\n') });
    const up = await fileRow(page, 'up.txt');
    assert.equal(await up.locator('.size').textContent(), '23 B');
    const run = await runPython(page, "print(open('up.txt').read(), end='')\n");
    await waitForText(page, run, 'uploaded from the page');
    assert.equal(await run.locator('.output').textContent(), 'uploaded from the page\n');

    // Larger than a frame and than the page's slice: sent in pieces, read back whole.
    const big = randomBytes(3 * 1024 * 1024 + 4321);
    await page.setInputFiles('#upload-input', { name: 'big.bin', mimeType: 'application/octet-stream', buffer: big });
    const bigRow = await fileRow(page, 'big.bin');
    await page.waitForFunction(
      () => document.getElementById('files-status')?.textContent?.startsWith('uploaded big.bin') ?? false,
      null,
      WAIT,
    );
    assert.equal(await bigRow.locator('.size').textContent(), '3.0 MiB');
    const hashed = await runPython(
      page,
      "import hashlib\nb = open('big.bin', 'rb').read()\nprint(len(b), hashlib.sha256(b).hexdigest())\n",
    );
    assert.equal(await hashed.locator('.output').textContent(), `${big.length} ${createHash('sha256').update(big).digest('hex')}\n`);

    // A file dropped on the panel.
    await page.evaluate(() => {
      const transfer = new DataTransfer();
      transfer.items.add(new File(['dropped\n'], 'dropped.txt', { type: 'text/plain' }));
      const tree = document.getElementById('files-tree')!;
      tree.dispatchEvent(new DragEvent('dragover', { dataTransfer: transfer, bubbles: true, cancelable: true }));
      tree.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true, cancelable: true }));
    });
    await fileRow(page, 'dropped.txt');
    const read = await runPython(page, "print(open('dropped.txt').read(), end='')\n");
    assert.equal(await read.locator('.output').textContent(), 'dropped\n');
    assert.deepEqual(await page.locator('#files-tree .node').evaluateAll((rows) => rows.map((r) => (r as HTMLElement).dataset['path'])), [
      'big.bin',
      'dropped.txt',
      'up.txt',
    ]);
    assert.equal(await page.locator('#files-empty').isVisible(), false);
    await shot(page, 'files-upload');
    assert.equal(await layout(page), before, 'the editor and the runs stay where they were');
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
  }
});

test('the file tree refreshes after a run that writes files; a download gives their bytes; keys open, download and delete', async () => {
  const { page, problems } = await openPage();
  try {
    await load(page, gateway.base);
    await page.waitForSelector('#files[data-state="open"][data-listed]', WAIT);
    await runPython(
      page,
      "import os\nos.makedirs('out/deep', exist_ok=True)\nopen('out/data.bin', 'wb').write(bytes(range(256)) * 4)\nopen('out/deep/x.txt', 'w').write('x')\nopen('top.txt', 'w').write('top')\n",
    );
    // No click: the run's files_changed refreshes the tree.
    const out = await fileRow(page, 'out');
    await fileRow(page, 'top.txt');
    assert.equal(await out.getAttribute('aria-expanded'), 'false');

    // The keyboard: the tree is a tab stop; Right opens a folder, Down moves, Enter downloads.
    await out.focus();
    await page.keyboard.press('ArrowRight');
    assert.equal(await out.getAttribute('aria-expanded'), 'true');
    const data = await fileRow(page, 'out/data.bin');
    assert.equal(await data.locator('.size').textContent(), '1.0 KiB');
    await page.keyboard.press('ArrowDown');
    assert.equal(await page.evaluate(() => (document.activeElement as HTMLElement | null)?.dataset['path']), 'out/data.bin');
    const [download] = await Promise.all([page.waitForEvent('download', WAIT), page.keyboard.press('Enter')]);
    assert.equal(download.suggestedFilename(), 'data.bin');
    const expected = Buffer.concat(Array.from({ length: 4 }, () => Buffer.from(Array.from({ length: 256 }, (_, i) => i))));
    assert.ok(readFileSync((await download.path())!).equals(expected), 'the downloaded bytes are the ones the program wrote');

    // The button downloads too.
    const [second] = await Promise.all([
      page.waitForEvent('download', WAIT),
      (await fileRow(page, 'top.txt')).locator('.download').click(),
    ]);
    assert.equal(readFileSync((await second.path())!, 'utf8'), 'top');

    // An open folder stays open, and is listed again, when a run changes it.
    await runPython(page, "import os\nos.remove('out/data.bin')\nopen('out/new.txt', 'w').write('new')\n");
    await fileRow(page, 'out/new.txt');
    await page.locator('#files-tree .node[data-path="out/data.bin"]').waitFor({ state: 'detached', ...WAIT });

    // Delete asks first: dismissed, nothing goes; accepted, the folder goes with what is in it.
    await out.focus();
    page.once('dialog', (dialog) => void dialog.dismiss());
    await page.keyboard.press('Delete');
    await shot(page, 'files-tree');
    assert.equal(await out.count(), 1);
    page.once('dialog', (dialog) => {
      assert.match(dialog.message(), /out and everything in it/);
      void dialog.accept();
    });
    await out.focus();
    await page.keyboard.press('Delete');
    await out.waitFor({ state: 'detached', ...WAIT });
    // (A run sees its own source file there too, under the gateway's reserved prefix.)
    const listed = await runPython(page, "import os\nprint(sorted(n for n in os.listdir('.') if not n.startswith('.sluice-')))\n");
    assert.equal(await listed.locator('.output').textContent(), "['top.txt']\n");

    // A refusal is said plainly under the tree.
    await page.setInputFiles('#upload-input', { name: '.sluice-notes.txt', mimeType: 'text/plain', buffer: Buffer.from('x') });
    await page.waitForSelector('#files-status.error', WAIT);
    assert.match((await page.locator('#files-status').textContent()) ?? '', /could not upload \.sluice-notes\.txt: .*gateway's own/);
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
  }
});

test('a gateway that keeps no workspace for the page: the tree is hidden, and runs and reloads go on as before', async () => {
  // No workspace at all may be kept: the page's workspace attach is refused.
  const bare = await startGateway(['--max-workspaces', '0']);
  const { page, problems } = await openPage();
  try {
    await load(page, bare.base);
    await page.waitForSelector('#files[data-state="unavailable"]', { state: 'attached', ...WAIT });
    assert.equal(await page.locator('#files').isVisible(), false);
    assert.match((await page.getAttribute('#files', 'title')) ?? '', /workspace/);
    const done = await runPython(page, 'print("ran")\n');
    assert.equal(await done.locator('.output').textContent(), 'ran\n');
    // A run still going when the page reloads goes on in its pane.
    await typeCode(page, 'print("ready", flush=True)\nprint("got", input())\n');
    await page.click('#run');
    let run = await newest(page);
    const id = await run.getAttribute('data-id');
    await waitForText(page, run, 'ready');
    await page.reload();
    await page.waitForSelector('body[data-ready="true"]', WAIT);
    assert.equal(await page.locator(`.pane[data-id="${await done.getAttribute('data-id')}"][data-status="completed"]`).count(), 1);
    run = page.locator(`.pane[data-id="${id}"]`);
    await run.locator('.stdin input').fill('after the reload');
    await run.locator('.stdin input').press('Enter');
    await paneStatus(page, run, 'completed');
    assert.equal(await run.locator('.output').textContent(), 'ready\ngot after the reload\n');
    assert.equal(await page.locator('#files').isVisible(), false);
    await shot(page, 'no-workspace');
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
    await bare.stop();
  }
});

/** A Python program that writes display records (any program may) and some text around them. */
const RICH_PROGRAM = String.raw`import base64, json, struct, zlib
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
def png():
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")
def show(kind, data, **more):
    print("\x1b]sluice;" + kind + ";" + json.dumps(dict(data=data, **more)) + "\x07", end="", flush=True)
print("before")
show("display", {"text/html": "<table><tr><td id='cell'>a cell</td></tr></table><script>document.write('<p id=ran>ran</p>')</script>", "text/plain": "a table"})
show("display", {"image/png": base64.b64encode(png()).decode(), "text/plain": "a red pixel"}, metadata={"image/png": {"width": 24, "height": 24}})
show("display", {"image/svg+xml": "<svg xmlns='http://www.w3.org/2000/svg' width='20' height='10'><rect width='20' height='10' fill='#5aa9ff'/></svg>"})
show("display", {"text/plain": "0%"}, display_id="progress")
show("display", {"application/json": {"rows": [1, 2]}, "text/plain": "{'rows': [1, 2]}"})
show("display", {"text/markdown": "**bold**", "text/plain": "bold, in plain text"})
show("update_display", {"text/plain": "100%"}, display_id="progress")
show("result", {"text/plain": "42"}, execution_count=7)
print("after")
`;

/** What a run pane shows, block by block: text as it is, rich output by what draws it. */
async function blocks(page: Page, id: string): Promise<string[]> {
  return page.evaluate((id) => {
    const output = document.querySelector(`.pane[data-id="${id}"] .output`)!;
    return [...output.children]
      .map((block) => {
        if (!block.classList.contains('rich')) return block.textContent ?? '';
        const iframe = block.querySelector('iframe');
        const img = block.querySelector('img');
        if (iframe) return 'iframe';
        if (img) return `img ${img.getAttribute('src')!.split(',')[0]}`;
        return `rich ${block.textContent}`;
      })
      .filter((text) => text !== '');
  }, id);
}

test('rich output: HTML in a sandboxed frame, images from data: URLs, JSON, an update by display_id (from another run too), a result; kept across a reload', async () => {
  // A gateway built before this page embeds one that draws no rich output: say so, rather than time out.
  const served = await (await fetch(`${gateway.base}/playground.js`)).text();
  const committed = readFileSync(fileURLToPath(new URL('../../../gateway/assets/playground/playground.js', import.meta.url)), 'utf8');
  assert.ok(
    served === committed,
    `${gateway.base} serves a playground.js other than gateway/assets/playground's: rebuild the gateway, or set PLAYGROUND_FROM_DISK=1`,
  );
  const { page, problems } = await openPage();
  try {
    await load(page, gateway.base);
    const run = await runPython(page, RICH_PROGRAM);
    const id = (await run.getAttribute('data-id'))!;
    await run
      .locator('.rich')
      .nth(6)
      .waitFor({ state: 'attached', ...WAIT });
    assert.deepEqual(await blocks(page, id), [
      'before\n',
      'iframe',
      'img data:image/png;base64',
      'img data:image/svg+xml;base64',
      'rich 100%',
      'rich {\n  "rows": [\n    1,\n    2\n  ]\n}',
      'rich bold, in plain text',
      'rich Out[7]:42',
      'after\n',
    ]);

    // The HTML: in a frame with an empty sandbox (no scripts, an opaque origin), drawn there.
    const iframe = run.locator('.rich iframe');
    assert.equal(await iframe.getAttribute('sandbox'), '');
    assert.ok((await iframe.getAttribute('srcdoc'))?.includes("<table><tr><td id='cell'>a cell</td></tr></table>"));
    const inside = page.frameLocator(`.pane[data-id="${id}"] .rich iframe`);
    await inside.locator('#cell').waitFor({ state: 'visible', ...WAIT });
    assert.equal(await inside.locator('#cell').textContent(), 'a cell');
    assert.equal(await inside.locator('#ran').count(), 0, "the program's script did not run");
    const height = await iframe.evaluate((node) => node.getBoundingClientRect().height);
    assert.ok(height >= 40 && height <= 480, `the frame is sized reasonably (${height}px)`);

    // The images: decoded by the browser (the page's policy allows data: images), the PNG at the size its metadata asks.
    await page.waitForFunction(
      (id) =>
        [...document.querySelectorAll<HTMLImageElement>(`.pane[data-id="${id}"] img.rich-image`)].every(
          (img) => img.complete && img.naturalWidth > 0,
        ),
      id,
      WAIT,
    );
    const png = run.locator('img[src^="data:image/png;base64,"]');
    assert.equal(await png.getAttribute('alt'), 'a red pixel');
    assert.deepEqual(await png.evaluate((img: HTMLImageElement) => [img.naturalWidth, img.width]), [1, 24]);
    assert.deepEqual(await run.locator('img[src^="data:image/svg+xml"]').evaluate((img: HTMLImageElement) => img.naturalWidth), 20);
    assert.equal(await run.locator('svg').count(), 0, 'no inline SVG');
    await shot(page, 'rich-output');

    // An update from another run of the tab replaces what the first run showed.
    const other = await runPython(
      page,
      String.raw`print("\x1b]sluice;update_display;" + '{"data": {"text/plain": "done, said another run"}, "display_id": "progress"}' + "\x07", end="")`,
    );
    await page.waitForFunction(
      (id) => document.querySelector(`.pane[data-id="${id}"] .rich[data-display-id="progress"]`)?.textContent === 'done, said another run',
      id,
      WAIT,
    );
    assert.equal(await other.locator('.output').textContent(), '', 'an update shows nothing where it was made');

    // A reload shows it all again, updated.
    await page.reload();
    await page.waitForSelector('body[data-ready="true"]', WAIT);
    const again = page.locator(`.pane[data-id="${id}"]`);
    await again
      .locator('.rich')
      .nth(6)
      .waitFor({ state: 'attached', ...WAIT });
    const after = await blocks(page, id);
    assert.equal(after[4], 'rich done, said another run');
    assert.deepEqual(after.slice(0, 4), ['before\n', 'iframe', 'img data:image/png;base64', 'img data:image/svg+xml;base64']);
    assert.ok((await again.locator('.rich iframe').getAttribute('srcdoc'))?.includes("<td id='cell'>a cell</td>"));
    // The sandbox refusing the program's script is the only complaint.
    assert.deepEqual(
      problems.filter((p) => !/Blocked script execution in 'about:srcdoc'/.test(p)),
      [],
    );
  } finally {
    await page.close();
  }
});

test("keep state: runs share the tab's interpreter, Ctrl-Space completes from it, Restart clears it; a blocked network is explained", async () => {
  const { page, problems } = await openPage();
  try {
    await load(page, gateway.base);
    await page.selectOption('#language', 'python');
    await page.check('#keep');
    await typeCode(page, 'value_one = 41');
    await page.click('#run');
    await paneStatus(page, await newest(page), 'completed');
    const sum = await runPython(page, 'value_one + 1');
    await waitForText(page, sum, '42');
    // Completion from the live interpreter: the name the first run made.
    await typeCode(page, 'value_o');
    await page.keyboard.press('Control+Space');
    const option = page.locator('.cm-tooltip-autocomplete li', { hasText: 'value_one' });
    // Taken by a click (Enter is ignored for the first moments after the list opens).
    await option.first().click(WAIT);
    await page.waitForFunction(() => document.querySelector('.cm-content')?.textContent === 'value_one', undefined, WAIT);
    // Restart: the variable is gone.
    await page.click('#restart');
    await page.waitForFunction(() => document.querySelector('#notice')?.textContent?.includes('restarted') ?? false, undefined, WAIT);
    await page.click('#run');
    const after = await newest(page);
    await paneStatus(page, after, 'failed');
    await waitForText(page, after, 'NameError');
    // Without the network (where the gateway takes it), the page says why a lookup failed.
    const catalog = (await (await fetch(`${gateway.base}/v1/runtimes`)).json()) as { runtimes: { language: string; network: boolean }[] };
    if (catalog.runtimes.find((r) => r.language === 'python')?.network === false) {
      await page.uncheck('#keep');
      await typeCode(page, "import socket\nsocket.getaddrinfo('pypi.org', 443)");
      await page.click('#run');
      const blocked = await newest(page);
      await paneStatus(page, blocked, 'failed');
      await waitForText(page, blocked, 'this sandbox has no network');
    }
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
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
