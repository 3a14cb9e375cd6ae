/**
 * `renderBundle` in a real browser: a page (test/browser/render-page.ts) bundled with
 * esbuild from the browser entry point, served from a local HTTP server (no Content
 * Security Policy: only the sandbox stands between a program's HTML and the page), driven
 * in headless Chromium by playwright-core. No gateway: the bundles are the ones a
 * `display` or `result` event carries.
 */

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { build } from 'esbuild';
import { type Browser, chromium, type Page } from 'playwright-core';
import type { MimeBundle, RenderOptions, renderBundle } from '../src/index.js';
import { packageRoot } from './helpers.js';

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';

const HTML = `<!doctype html>
<meta charset="utf-8">
<title>sluice-client renderBundle test</title>
<link rel="icon" href="data:,">
<div id="out"></div>
<script type="module" src="/render.js"></script>
`;

/** What the test page offers (render-page.ts). */
type TestWindow = Window & { sluice: { renderBundle: typeof renderBundle }; ran: string[]; messages: string[] };

/**
 * HTML that tells the page when its script or its `onerror` handler runs: in the page's
 * origin through `parent.ran` and `document.body.dataset`, from any origin by a message.
 */
const PROBE = `<p id="para">drawn in the frame</p>
<script>document.body.dataset.ran = 'script'; parent.postMessage('script', '*'); parent.ran.push('script');</script>
<img id="broken" alt="broken" src="data:image/png;base64,AAAA" onerror="document.body.dataset.error = 'onerror'; parent.postMessage('onerror', '*'); parent.ran.push('onerror')">`;

/** A 1x1 red PNG. */
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==';

/** 20x10 pixels; a script, an `onload` handler. */
const SVG =
  "<svg xmlns='http://www.w3.org/2000/svg' width='20' height='10' onload=\"parent.postMessage('svg onload', '*'); parent.ran.push('svg onload')\">" +
  "<script>parent.postMessage('svg script', '*'); parent.ran.push('svg script')</script><rect width='20' height='10' fill='#5aa9ff'/></svg>";

let bundle: string;
let server: Server;
let origin: string;
let browser: Browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
  const result = await build({
    entryPoints: [join(packageRoot, 'test/browser/render-page.ts')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    write: false,
  });
  bundle = result.outputFiles[0]!.text;
  server = createServer((req, res) => {
    if (req.url === '/render.js') res.writeHead(200, { 'content-type': 'text/javascript' }).end(bundle);
    else if (req.url === '/') res.writeHead(200, { 'content-type': 'text/html' }).end(HTML);
    else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
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
  await new Promise((resolve) => server?.close(resolve));
});

/** A fresh test page, ready; `console` collects what its frames log. */
async function open(): Promise<{ page: Page; console: string[] }> {
  const page = await browser.newPage();
  const console: string[] = [];
  page.on('console', (message) => console.push(message.text()));
  await page.goto(`${origin}/`);
  await page.waitForSelector('body[data-ready="true"]', { state: 'attached', timeout: 20_000 });
  return { page, console };
}

/** Resolves once the page has logged `count` console messages matching `pattern` (rejects after 20 s). */
function logged(page: Page, pattern: RegExp, count: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = 0;
    const timer = setTimeout(() => reject(new Error(`${seen} of ${count} console messages matching ${pattern} in 20 s`)), 20_000);
    page.on('console', (message) => {
      if (pattern.test(message.text()) && ++seen === count) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

/** What `renderBundle` drew for `bundle` in #out: the element's tag, class and a few properties. */
async function draw(page: Page, bundle: MimeBundle, metadata?: Record<string, unknown>, options?: RenderOptions) {
  return page.evaluate(
    ([bundle, metadata, options]) => {
      const out = document.getElementById('out')!;
      const node = (window as unknown as TestWindow).sluice.renderBundle(out, bundle, metadata, options);
      const img = node instanceof HTMLImageElement ? node : undefined;
      return {
        appended: out.lastElementChild === node,
        tag: node.tagName.toLowerCase(),
        className: node.className,
        text: node.textContent,
        html: node.innerHTML,
        src: img?.getAttribute('src') ?? undefined,
        alt: img?.alt,
        width: img?.width,
        height: img?.height,
        widthAttribute: img?.getAttribute('width') ?? undefined,
        heightAttribute: img?.getAttribute('height') ?? undefined,
        style: node.getAttribute('style') ?? '',
      };
    },
    [bundle, metadata, options] as const,
  );
}

test('untrusted HTML: an iframe with an empty sandbox; neither its <script> nor its onerror handler runs, in the frame or the page', async () => {
  const { page, console } = await open();
  try {
    // Chromium says so for each script it refuses to run in the sandboxed frame: here two.
    const blocked = logged(page, /Blocked script execution in 'about:srcdoc'/, 2);
    const drawn = await page.evaluate(async (html) => {
      const out = document.getElementById('out')!;
      const box = (window as unknown as TestWindow).sluice.renderBundle(out, { 'text/html': html, 'text/plain': 'drawn' });
      const iframe = box.querySelector('iframe')!;
      // The frame's scripts and handlers would have run by its load event (its image has failed by then).
      await new Promise((resolve) => iframe.addEventListener('load', resolve, { once: true }));
      return {
        box: `${box.tagName.toLowerCase()}.${box.className}`,
        appended: out.lastElementChild === box,
        children: box.children.length,
        sandbox: iframe.getAttribute('sandbox'),
        tokens: iframe.sandbox.length,
        srcdoc: iframe.srcdoc,
        src: iframe.getAttribute('src'),
        // An opaque origin: the page cannot reach the frame's document (nor it the page's).
        reachable: iframe.contentDocument !== null,
        referrerpolicy: iframe.getAttribute('referrerpolicy'),
      };
    }, PROBE);
    assert.deepEqual(
      { ...drawn, srcdoc: drawn.srcdoc.endsWith(PROBE) },
      {
        box: 'div.rich-frame',
        appended: true,
        children: 1,
        sandbox: '',
        tokens: 0,
        srcdoc: true,
        src: null,
        reachable: false,
        referrerpolicy: 'no-referrer',
      },
    );
    const attribute = await page.locator('#out iframe').getAttribute('sandbox');
    assert.doesNotMatch(attribute ?? 'missing', /allow-scripts|allow-same-origin/);

    // The HTML is drawn in the frame, its image failed (so its onerror was due), and nothing ran there.
    const inside = page.frameLocator('#out iframe');
    assert.equal(await inside.locator('#para').textContent(), 'drawn in the frame');
    assert.deepEqual(await inside.locator('#broken').evaluate((img: HTMLImageElement) => [img.complete, img.naturalWidth]), [true, 0]);
    assert.equal(await inside.locator('body').getAttribute('data-ran'), null, 'the <script> did not run in the frame');
    assert.equal(await inside.locator('body').getAttribute('data-error'), null, 'the onerror handler did not run in the frame');
    await blocked;

    // Nor in the page: nothing reached it, by its globals or a message.
    const told = await page.evaluate(() => {
      const w = window as unknown as TestWindow;
      return { ran: w.ran, messages: w.messages, body: { ...document.body.dataset } };
    });
    assert.deepEqual(told, { ran: [], messages: [], body: { ready: 'true' } });
    assert.ok(
      console.length === 2 && console.every((line) => /Blocked script execution in 'about:srcdoc'/.test(line)),
      `the sandbox's two refusals, and nothing else: ${console.join(' | ')}`,
    );
  } finally {
    await page.close();
  }
});

test('the probe does run when asked to: trustedHtml puts the HTML in the page, script and onerror included', async () => {
  const { page } = await open();
  try {
    const drawn = await draw(page, { 'text/html': PROBE, 'text/plain': 'drawn' }, {}, { trustedHtml: true });
    assert.equal(drawn.appended, true);
    assert.equal(`${drawn.tag}.${drawn.className}`, 'div.rich-html');
    await page.waitForFunction(() => (window as unknown as TestWindow).ran.length === 2, null, { timeout: 20_000 });
    assert.deepEqual(await page.evaluate(() => [...(window as unknown as TestWindow).ran].sort()), ['onerror', 'script']);
    assert.equal(await page.locator('#out iframe').count(), 0);
    assert.equal(await page.locator('#out #para').textContent(), 'drawn in the frame');
  } finally {
    await page.close();
  }
});

test('SVG with a script and an onload handler: an <img> with a data: URL, never inline, and nothing runs', async () => {
  const { page } = await open();
  try {
    const drawn = await draw(page, { 'image/svg+xml': SVG, 'text/plain': 'a blue bar' });
    assert.equal(`${drawn.tag}.${drawn.className}`, 'img.rich-image');
    assert.equal(drawn.appended, true);
    assert.equal(drawn.alt, 'a blue bar');
    assert.match(drawn.src ?? '', /^data:image\/svg\+xml;base64,/);
    const decoded = Buffer.from(drawn.src!.slice('data:image/svg+xml;base64,'.length), 'base64').toString('utf8');
    assert.equal(decoded, SVG);
    // Decoded and drawn by the browser (as an image: scripts never run there).
    await page.waitForFunction(
      () => {
        const img = document.querySelector<HTMLImageElement>('#out img');
        return img?.complete === true && img.naturalWidth > 0;
      },
      null,
      { timeout: 20_000 },
    );
    assert.equal(await page.locator('#out img').evaluate((img: HTMLImageElement) => img.naturalWidth), 20);
    assert.equal(await page.locator('#out svg').count(), 0, 'no inline SVG');
    assert.deepEqual(
      await page.evaluate(() => {
        const w = window as unknown as TestWindow;
        return [w.ran, w.messages];
      }),
      [[], []],
    );
  } finally {
    await page.close();
  }
});

test("PNG: an <img> with a data: URL of the base64 data, at the metadata's width and height", async () => {
  const { page } = await open();
  try {
    // Wrapped base64 (as some programs send it) is joined.
    const wrapped = `${PNG.slice(0, 40)}\n${PNG.slice(40)}\n`;
    const drawn = await draw(page, { 'image/png': wrapped, 'text/plain': 'a red pixel' }, { 'image/png': { width: 24, height: 24 } });
    assert.deepEqual(
      { tag: drawn.tag, className: drawn.className, src: drawn.src, alt: drawn.alt, width: drawn.width, height: drawn.height },
      { tag: 'img', className: 'rich-image', src: `data:image/png;base64,${PNG}`, alt: 'a red pixel', width: 24, height: 24 },
    );
    await page.waitForFunction(() => document.querySelector<HTMLImageElement>('#out img')?.complete === true, null, { timeout: 20_000 });
    assert.deepEqual(await page.locator('#out img').evaluate((img: HTMLImageElement) => [img.naturalWidth, img.naturalHeight]), [1, 1]);

    // The size at the top of the metadata; none when it is not a positive number.
    const top = await draw(page, { 'image/jpeg': PNG }, { width: 30, height: 'tall' });
    assert.deepEqual([top.src?.slice(0, 23), top.widthAttribute, top.heightAttribute], ['data:image/jpeg;base64,', '30', undefined]);
    const bare = await draw(page, { 'image/png': PNG });
    assert.deepEqual([bare.widthAttribute, bare.heightAttribute, bare.alt], [undefined, undefined, '']);
  } finally {
    await page.close();
  }
});

test('JSON pretty-printed, text as it is, in a <pre>; an unshowable bundle says what it holds', async () => {
  const { page } = await open();
  try {
    const value = { rows: [1, 2], name: '<b>x</b>' };
    const json = await draw(page, { 'application/json': value, 'text/plain': "{'rows': [1, 2]}" });
    assert.deepEqual([json.tag, json.className, json.text], ['pre', 'rich-json', JSON.stringify(value, null, 2)]);
    assert.equal(json.html.includes('<b>'), false, 'JSON is text, never markup');
    const vendor = await draw(page, { 'application/vnd.example+json': [1, { a: null }] });
    assert.deepEqual([vendor.className, vendor.text], ['rich-json', '[\n  1,\n  {\n    "a": null\n  }\n]']);

    const plain = await draw(page, { 'text/plain': '<b>not bold</b>\n  indented' });
    assert.deepEqual([plain.tag, plain.className, plain.text], ['pre', 'rich-text', '<b>not bold</b>\n  indented']);
    assert.equal(plain.html, '&lt;b&gt;not bold&lt;/b&gt;\n  indented');
    const markdown = await draw(page, { 'text/markdown': '# Title' });
    assert.deepEqual([markdown.className, markdown.text], ['rich-text', '# Title']);
    const csv = await draw(page, { 'text/csv': 'a,b\n1,2' });
    assert.deepEqual([csv.className, csv.text], ['rich-text', 'a,b\n1,2']);

    const pdf = await draw(page, { 'application/pdf': 'JVBERi0=' });
    assert.deepEqual([pdf.tag, pdf.className, pdf.text], ['pre', 'rich-note', '[application/pdf: not shown here]']);
    const empty = await draw(page, {});
    assert.equal(empty.text, '[an empty bundle: not shown here]');
    assert.equal(await page.locator('#out > *').count(), 7, 'each drawn element was appended');
  } finally {
    await page.close();
  }
});

test('the richest safe representation is chosen: HTML, SVG, PNG, JPEG, JSON, then text', async () => {
  const { page } = await open();
  try {
    const all: MimeBundle = {
      'text/plain': 'plain',
      'text/markdown': '*md*',
      'application/json': { a: 1 },
      'image/jpeg': PNG,
      'image/png': PNG,
      'image/svg+xml': SVG,
      'text/html': '<b>html</b>',
    };
    const chosen: string[] = [];
    for (const drop of ['', 'text/html', 'image/svg+xml', 'image/png', 'image/jpeg', 'application/json', 'text/plain']) {
      if (drop !== '') delete all[drop];
      const drawn = await draw(page, all);
      chosen.push(
        drawn.className === 'rich-image' ? (drawn.src ?? '').slice(0, 'data:image/svg+xml'.length).split(';')[0]! : drawn.className,
      );
    }
    assert.deepEqual(chosen, [
      'rich-frame',
      'data:image/svg+xml',
      'data:image/png',
      'data:image/jpeg',
      'rich-json',
      'rich-text',
      'rich-text',
    ]);
    assert.equal(await page.locator('#out > pre').last().textContent(), '*md*');
  } finally {
    await page.close();
  }
});

test("a frame's height: guessed from the HTML within bounds, or given; draggable unless told not to", async () => {
  const { page } = await open();
  try {
    const height = (drawn: { style: string }) => Number(/(?:^|;)\s*height:\s*([\d.]+)px/.exec(drawn.style)?.[1]);
    const one = await draw(page, { 'text/html': '<b>one line</b>' });
    assert.equal(height(one), 48);
    assert.match(one.style, /resize: vertical/);
    const rows = `<table>${'<tr><td>row</td></tr>'.repeat(10)}</table>`;
    const ten = await draw(page, { 'text/html': rows });
    assert.equal(height(ten), 10 * 21 + 16);
    const many = `<table>${'<tr><td>row</td></tr>'.repeat(500)}</table>`;
    assert.equal(height(await draw(page, { 'text/html': many })), 480);
    assert.equal(height(await draw(page, { 'text/html': many }, {}, { maxFrameHeight: 120 })), 120);
    const fixed = await draw(page, { 'text/html': many }, {}, { frameHeight: 300, resizableFrame: false });
    assert.equal(height(fixed), 300);
    assert.doesNotMatch(fixed.style, /resize/);
    // The frame fills its box, whatever the page's style sheets say (this page has none).
    const box = await page
      .locator('#out > .rich-frame')
      .last()
      .evaluate((node) => {
        const frame = node.querySelector('iframe')!.getBoundingClientRect();
        const outer = node.getBoundingClientRect();
        return [frame.height, outer.height, frame.width === outer.width];
      });
    assert.deepEqual(box, [300, 300, true]);
  } finally {
    await page.close();
  }
});

test("elements are made by the container's document: a document of its own, the page's untouched", async () => {
  const { page } = await open();
  try {
    const made = await page.evaluate(() => {
      const other = document.implementation.createHTMLDocument('elsewhere');
      const node = (window as unknown as TestWindow).sluice.renderBundle(other.body, { 'text/html': '<i>x</i>' });
      const text = (window as unknown as TestWindow).sluice.renderBundle(other.body, { 'text/plain': 'y' });
      return {
        own: node.ownerDocument === other && text.ownerDocument === other,
        inOther: other.body.children.length,
        sandbox: node.querySelector('iframe')?.getAttribute('sandbox'),
        inPage: document.getElementById('out')!.children.length,
      };
    });
    assert.deepEqual(made, { own: true, inOther: 2, sandbox: '', inPage: 0 });
  } finally {
    await page.close();
  }
});
