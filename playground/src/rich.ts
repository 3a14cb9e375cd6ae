/**
 * Rich output in a run's pane: a `display` or `result` event's MIME bundle, drawn by the
 * client's `renderBundle` (clients/typescript/src/render.ts) as the richest
 * representation the page can show safely: HTML in an `<iframe sandbox="">` (no scripts,
 * an opaque origin: the page holds the credential, and what a program prints must not
 * reach it), SVG only as an `<img>`, PNG and JPEG as `<img>` sized by the metadata, JSON
 * pretty-printed, text in a `<pre>`. The page's HTML is never trusted (`trustedHtml` is
 * left off); a frame's height is guessed from the HTML, and a person can drag it taller.
 *
 * A `result` is drawn like a display under an `Out[n]:` label.
 */

import { type MimeBundle, renderBundle } from '../../clients/typescript/src/index.js';

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

/** How much a rich piece counts against a pane's budget of kept output (characters). */
export function richSize(rich: Rich): number {
  let size = 64;
  for (const [mime, value] of Object.entries(rich.bundle)) {
    size += mime.length + (typeof value === 'string' ? value.length : (JSON.stringify(value)?.length ?? 0));
  }
  return size;
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
  renderBundle(block, rich.bundle, rich.metadata);
  return block;
}
