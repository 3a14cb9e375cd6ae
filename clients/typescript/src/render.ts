/**
 * Drawing a MIME bundle (a `display`, `update_display` or `result` event's `bundle`) in a
 * page: the richest representation that can be shown safely, as plain DOM (no framework).
 *
 * What a program prints is untrusted: its HTML never reaches the page's DOM unless the
 * caller says it trusts it (`trustedHtml`). The order, richest first:
 *
 * - `text/html`: in an `<iframe sandbox="">` whose `srcdoc` is the HTML, in a `<div>` that
 *   sizes it. The empty sandbox gives the frame an opaque origin and runs none of its
 *   scripts or event handlers (no `allow-scripts`, no `allow-same-origin`): the page may
 *   hold a credential, and what a program prints must not reach it. The frame cannot be
 *   measured from outside, so its height is guessed from the HTML (or given), and a
 *   person can drag it taller.
 * - `image/svg+xml`: an `<img>` with a `data:` URL (an SVG as an image runs no script);
 *   never inline SVG.
 * - `image/png`, `image/jpeg`: an `<img>` with a `data:` URL of the base64 data, sized by
 *   the metadata (`width`, `height`, under the MIME type or at the top) when it gives them.
 * - `application/json`: pretty-printed in a `<pre>`.
 * - `text/plain`, else `text/markdown`, `text/latex`: as it is, in a `<pre>`.
 * - The other `+json` types, else any other `text/` type, likewise.
 * - Anything else (`application/pdf`): a line saying what the bundle holds.
 */

import { isJsonMime, type MimeBundle } from './events.js';

/** How `renderBundle` draws; every field is optional. */
export interface RenderOptions {
  /**
   * Put `text/html` in the page's DOM (scripts included: they run, as the page's own)
   * instead of a sandboxed frame. Only for HTML the page trusts as its own code, never
   * for what a program prints. Default `false`.
   */
  trustedHtml?: boolean;
  /**
   * The height of a frame of HTML, in CSS pixels. Default: a guess from the HTML (its
   * rows and lines), from 48 to `maxFrameHeight`.
   */
  frameHeight?: number;
  /** The tallest a guessed frame height is, in CSS pixels. Default 480. */
  maxFrameHeight?: number;
  /** Whether a person can drag a frame of HTML taller (CSS `resize: vertical`). Default `true`. */
  resizableFrame?: boolean;
}

/** Image types drawn as `<img>` from base64 data, in the order they are preferred. */
const IMAGES = ['image/png', 'image/jpeg'] as const;

/** Text types shown as their text when the bundle has no `text/plain`, in this order. */
const TEXTS = ['text/markdown', 'text/latex'] as const;

const FRAME_MAX = 480;
const FRAME_MIN = 48;
const FRAME_LINE = 21;

/** What goes before a program's HTML in a frame: a font, a margin, table borders. */
const FRAME_HEAD =
  '<!doctype html><meta charset="utf-8"><style>body{margin:6px 8px;font:13px/1.4 system-ui,sans-serif}' +
  'table{border-collapse:collapse}th,td{padding:2px 8px;border:1px solid #d0d4dc}</style>';

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

/** A guess at the height HTML needs: its rows and lines, within bounds. */
function guessHeight(html: string, max: number): number {
  const rows = (html.match(/<(tr|br|p|li|h[1-6]|div|pre|hr|caption)[\s>/]/gi) ?? []).length;
  const lines = html.split('\n').filter((line) => line.trim() !== '').length;
  const estimate = Math.max(1, rows, Math.min(lines, 20)) * FRAME_LINE + 16;
  return Math.max(Math.min(FRAME_MIN, max), Math.min(max, estimate));
}

function positive(value: number | undefined): number | undefined {
  return value !== undefined && Number.isFinite(value) && value > 0 ? value : undefined;
}

/** Draws bundles in one document. */
class Painter {
  constructor(
    private readonly doc: Document,
    private readonly metadata: Record<string, unknown>,
    private readonly options: RenderOptions,
  ) {}

  image(src: string, alt: string, mime: string): HTMLElement {
    const img = this.doc.createElement('img');
    img.className = 'rich-image';
    img.alt = alt;
    img.src = src;
    const width = dimension(this.metadata, mime, 'width');
    const height = dimension(this.metadata, mime, 'height');
    if (width !== undefined) img.width = width;
    if (height !== undefined) img.height = height;
    return img;
  }

  frame(html: string): HTMLElement {
    const max = positive(this.options.maxFrameHeight) ?? FRAME_MAX;
    const box = this.doc.createElement('div');
    box.className = 'rich-frame';
    box.style.height = `${positive(this.options.frameHeight) ?? guessHeight(html, max)}px`;
    if (this.options.resizableFrame ?? true) {
      box.style.resize = 'vertical';
      box.style.overflow = 'hidden';
    }
    const iframe = this.doc.createElement('iframe');
    // Before `srcdoc`, so that the document never exists without its sandbox.
    iframe.setAttribute('sandbox', '');
    iframe.setAttribute('referrerpolicy', 'no-referrer');
    iframe.title = 'HTML output of the program';
    iframe.style.display = 'block';
    iframe.style.width = '100%';
    iframe.style.height = '100%';
    iframe.style.border = '0';
    iframe.srcdoc = FRAME_HEAD + html;
    box.append(iframe);
    return box;
  }

  /** Trusted HTML, in the page: a fragment parsed for it, so its scripts run. */
  inline(html: string): HTMLElement {
    const box = this.doc.createElement('div');
    box.className = 'rich-html';
    const range = this.doc.createRange();
    range.selectNodeContents(box);
    box.append(range.createContextualFragment(html));
    return box;
  }

  pre(content: string, className = 'rich-text'): HTMLElement {
    const node = this.doc.createElement('pre');
    node.className = className;
    node.textContent = content;
    return node;
  }

  draw(bundle: MimeBundle): HTMLElement {
    const plain = text(bundle, 'text/plain');
    const html = text(bundle, 'text/html');
    if (html !== undefined) return this.options.trustedHtml === true ? this.inline(html) : this.frame(html);
    const svg = text(bundle, 'image/svg+xml');
    if (svg !== undefined) return this.image(`data:image/svg+xml;base64,${base64(svg)}`, plain ?? '', 'image/svg+xml');
    for (const mime of IMAGES) {
      const data = text(bundle, mime);
      if (data !== undefined) return this.image(`data:${mime};base64,${data.replace(/\s+/g, '')}`, plain ?? '', mime);
    }
    if ('application/json' in bundle) return this.pre(JSON.stringify(bundle['application/json'], null, 2), 'rich-json');
    if (plain !== undefined) return this.pre(plain);
    for (const mime of TEXTS) {
      const raw = text(bundle, mime);
      if (raw !== undefined) return this.pre(raw);
    }
    const mimes = Object.keys(bundle);
    const json = mimes.find(isJsonMime);
    if (json !== undefined) return this.pre(JSON.stringify(bundle[json], null, 2), 'rich-json');
    const other = mimes.find((mime) => mime.startsWith('text/'));
    if (other !== undefined) return this.pre(text(bundle, other) ?? '');
    return this.pre(`[${mimes.join(', ') || 'an empty bundle'}: not shown here]`, 'rich-note');
  }
}

/**
 * Draws `bundle` at the end of `container` as the richest representation that is safe
 * (see the module comment), and returns the element it appended: a `div.rich-frame`
 * holding the `<iframe>` (HTML), an `img.rich-image`, a `pre.rich-json`, a
 * `pre.rich-text`, a `pre.rich-note` (nothing showable), or with `trustedHtml` a
 * `div.rich-html`. Elements are made with `container.ownerDocument`; `metadata` is the
 * event's (`{}` when absent).
 */
export function renderBundle(
  container: Element,
  bundle: MimeBundle,
  metadata: Record<string, unknown> = {},
  options: RenderOptions = {},
): HTMLElement {
  const node = new Painter(container.ownerDocument, metadata, options).draw(bundle);
  container.append(node);
  return node;
}
