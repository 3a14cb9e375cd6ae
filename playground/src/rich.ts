/**
 * Rich output in a run's pane: a `display` or `result` event's MIME bundle, drawn as the
 * richest representation the page can show safely.
 *
 * - `text/html`: in an `<iframe sandbox="">` whose `srcdoc` is the HTML. The empty
 *   sandbox gives it an opaque origin and no scripts (no `allow-scripts`, no
 *   `allow-same-origin`): the page holds the credential, and what a program prints must
 *   not reach it. The frame cannot be measured from outside, so its height is guessed from
 *   the HTML, and a person can drag it taller.
 * - `image/svg+xml`: an `<img>` with a `data:` URL (an SVG as an image runs no script);
 *   never inline SVG.
 * - `image/png`, `image/jpeg`: an `<img>` with a `data:` URL of the base64 data, sized by
 *   the bundle's metadata (`width`, `height`) when it gives them.
 * - `application/json` (and the `+json` types when there is no `text/plain`): pretty-printed
 *   in a `<pre>`.
 * - `text/plain`, else `text/markdown`, `text/latex` or any other text: as it is, in a `<pre>`.
 * - Binary data of another type (`application/pdf`): a line saying what it is.
 *
 * A `result` is drawn like a display under an `Out[n]:` label.
 */

import { isJsonMime, type MimeBundle } from '../../clients/typescript/src/index.js';

/** Rich output as a pane keeps it (and saves it across reloads). */
export interface Rich {
  kind: 'display' | 'result';
  bundle: MimeBundle;
  metadata: Record<string, unknown>;
  /** What an `update_display` names to replace it. */
  displayId?: string;
  /** A result's `execution_count`: the `n` of `Out[n]`. */
  count?: number;
}

/** Image types drawn as `<img>` from base64 data, in the order they are preferred. */
const IMAGES = ['image/png', 'image/jpeg'] as const;

/** Text types shown as their text when the bundle has no `text/plain`, in this order. */
const TEXTS = ['text/markdown', 'text/latex'] as const;

/** The tallest a frame's guessed height makes it (it can be dragged taller), in pixels. */
const FRAME_MAX = 480;
const FRAME_MIN = 48;
const FRAME_LINE = 21;

/** What goes before a program's HTML in the frame: the page's font, a margin. */
const FRAME_HEAD =
  '<!doctype html><meta charset="utf-8"><style>body{margin:6px 8px;font:13px/1.4 system-ui,sans-serif}' +
  'table{border-collapse:collapse}th,td{padding:2px 8px;border:1px solid #d0d4dc}</style>';

/** How much a rich piece counts against a pane's budget of kept output (characters). */
export function richSize(rich: Rich): number {
  let size = 64;
  for (const [mime, value] of Object.entries(rich.bundle)) {
    size += mime.length + (typeof value === 'string' ? value.length : (JSON.stringify(value)?.length ?? 0));
  }
  return size;
}

function text(bundle: MimeBundle, mime: string): string | undefined {
  const value = bundle[mime];
  return typeof value === 'string' ? value : undefined;
}

/** A number in the metadata of `mime` (or at the top of it), for an image's size. */
function dimension(metadata: Record<string, unknown>, mime: string, name: 'width' | 'height'): number | undefined {
  const own = metadata[mime];
  const value = typeof own === 'object' && own !== null ? (own as Record<string, unknown>)[name] : metadata[name];
  return typeof value === 'number' && Number.isFinite(value) && value > 0 ? value : undefined;
}

/** Base64 of the UTF-8 bytes of `value`. */
function base64(value: string): string {
  const bytes = new TextEncoder().encode(value);
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function image(src: string, alt: string, metadata: Record<string, unknown>, mime: string): HTMLElement {
  const img = document.createElement('img');
  img.className = 'rich-image';
  img.alt = alt;
  img.src = src;
  const width = dimension(metadata, mime, 'width');
  const height = dimension(metadata, mime, 'height');
  if (width !== undefined) img.width = width;
  if (height !== undefined) img.height = height;
  return img;
}

/** A guess at the height the HTML needs: its rows and lines, within bounds. */
function frameHeight(html: string): number {
  const rows = (html.match(/<(tr|br|p|li|h[1-6]|div|pre|hr|caption)[\s>/]/gi) ?? []).length;
  const lines = html.split('\n').filter((line) => line.trim() !== '').length;
  const estimate = Math.max(1, rows, Math.min(lines, 20)) * FRAME_LINE + 16;
  return Math.max(FRAME_MIN, Math.min(FRAME_MAX, estimate));
}

function frame(html: string): HTMLElement {
  const box = document.createElement('div');
  box.className = 'rich-frame';
  box.style.height = `${frameHeight(html)}px`;
  const iframe = document.createElement('iframe');
  // Before `srcdoc`, so that the document never exists without its sandbox.
  iframe.setAttribute('sandbox', '');
  iframe.setAttribute('referrerpolicy', 'no-referrer');
  iframe.title = 'HTML output of the program';
  iframe.srcdoc = FRAME_HEAD + html;
  box.append(iframe);
  return box;
}

function pre(content: string, className = 'rich-text'): HTMLElement {
  const node = document.createElement('pre');
  node.className = className;
  node.textContent = content;
  return node;
}

/** The element that shows `bundle` (see the module comment for the choice). */
export function renderBundle(bundle: MimeBundle, metadata: Record<string, unknown>): HTMLElement {
  const plain = text(bundle, 'text/plain');
  const html = text(bundle, 'text/html');
  if (html !== undefined) return frame(html);
  const svg = text(bundle, 'image/svg+xml');
  if (svg !== undefined) return image(`data:image/svg+xml;base64,${base64(svg)}`, plain ?? '', metadata, 'image/svg+xml');
  for (const mime of IMAGES) {
    const data = text(bundle, mime);
    if (data !== undefined) return image(`data:${mime};base64,${data.replace(/\s+/g, '')}`, plain ?? '', metadata, mime);
  }
  if ('application/json' in bundle) return pre(JSON.stringify(bundle['application/json'], null, 2), 'rich-json');
  if (plain !== undefined) return pre(plain);
  for (const mime of TEXTS) {
    const raw = text(bundle, mime);
    if (raw !== undefined) return pre(raw);
  }
  const mimes = Object.keys(bundle);
  const json = mimes.find(isJsonMime);
  if (json !== undefined) return pre(JSON.stringify(bundle[json], null, 2), 'rich-json');
  const other = mimes.find((mime) => mime.startsWith('text/'));
  if (other !== undefined) return pre(text(bundle, other) ?? '');
  return pre(`[${mimes.join(', ') || 'an empty bundle'}: not shown here]`, 'rich-note');
}

/** The block of one rich output: its bundle, and for a result its `Out[n]:` label. */
export function renderRich(rich: Rich): HTMLElement {
  const block = document.createElement('div');
  block.className = `rich rich-${rich.kind}`;
  if (rich.displayId !== undefined) block.dataset['displayId'] = rich.displayId;
  if (rich.kind === 'result') {
    const label = document.createElement('span');
    label.className = 'rich-label';
    label.textContent = rich.count === undefined ? 'Out:' : `Out[${rich.count}]:`;
    block.append(label);
  }
  block.append(renderBundle(rich.bundle, rich.metadata));
  return block;
}
