/**
 * A run's output in a pane, kept and drawn so that no amount of it freezes the page.
 * Output is text of a stream, or rich output (rich.ts) at its place among the text.
 *
 * - Output is added to a model at once and drawn once per animation frame: all that
 *   arrived since the last frame is drawn together.
 * - The model keeps the last `cap` characters and drops older ones (the pane then says
 *   so); output that arrives faster than frames are drawn is bounded the same way, so a
 *   hidden tab (no frames) holds no more.
 * - The drawing is a column of blocks of whole lines, at most 8 KiB each, plus one block
 *   for the unfinished last line. A frame adds blocks at the end and removes blocks from
 *   the start; no block's text is touched again, so the browser lays out only what
 *   changed, and `content-visibility: auto` (style.css) skips the blocks out of view.
 * - A rich output is a block of its own (the unfinished line before it ends there) and
 *   counts for the length of its bundle's data; an `update_display` of its `display_id`
 *   redraws that block alone.
 */

import { type Rich, renderRich, richSize } from './rich.js';

/** Which stream a piece of output came from; `note` is the page's own words. */
export type Stream = 'stdout' | 'stderr' | 'note';

/** Text of a stream. */
export interface TextPiece {
  stream: Stream;
  text: string;
}

/** One rich output (never merged, never cut: it is kept or dropped whole). */
export interface RichPiece {
  stream: 'rich';
  rich: Rich;
}

/** A piece of output as kept (and saved across reloads). */
export type Piece = TextPiece | RichPiece;

/** The characters a piece counts for. */
export function pieceSize(piece: Piece): number {
  return piece.stream === 'rich' ? richSize(piece.rich) : piece.text.length;
}

/** The most characters one drawn block holds. */
const BLOCK = 8 * 1024;

/** Panes with output still to draw; one animation frame draws them all. */
const dirty = new Set<OutputView>();
let frameAsked = false;

function askFrame(): void {
  if (frameAsked) return;
  frameAsked = true;
  requestAnimationFrame(() => {
    frameAsked = false;
    const views = [...dirty];
    dirty.clear();
    for (const view of views) view.draw();
  });
}

/** Appends `text` to `pieces`, merging with the last piece of the same stream; returns its length. */
function push(pieces: Piece[], stream: Stream, text: string): number {
  const last = pieces[pieces.length - 1];
  if (last && last.stream === stream) last.text += text;
  else pieces.push({ stream, text });
  return text.length;
}

/** Drops the oldest characters of `pieces` until at most `cap` remain; returns how many remain. */
function trimFront(pieces: Piece[], size: number, cap: number): number {
  while (size > cap) {
    const first = pieces[0]!;
    const excess = size - cap;
    const firstSize = pieceSize(first);
    if (firstSize <= excess || first.stream === 'rich') {
      pieces.shift();
      size -= firstSize;
    } else {
      first.text = first.text.slice(excess);
      size -= excess;
    }
  }
  return size;
}

function length(pieces: TextPiece[]): number {
  return pieces.reduce((n, p) => n + p.text.length, 0);
}

/** Splits `pieces` after the character at `at` (exclusive): [before, after]. */
function splitAt(pieces: TextPiece[], at: number): [TextPiece[], TextPiece[]] {
  const before: TextPiece[] = [];
  const after: TextPiece[] = [];
  let seen = 0;
  for (const piece of pieces) {
    const end = seen + piece.text.length;
    if (end <= at) before.push(piece);
    else if (seen >= at) after.push(piece);
    else {
      before.push({ stream: piece.stream, text: piece.text.slice(0, at - seen) });
      after.push({ stream: piece.stream, text: piece.text.slice(at - seen) });
    }
    seen = end;
  }
  return [before, after];
}

/** The offset just after the last newline of `pieces` within its first `limit` characters, or -1. */
function lastLineEnd(pieces: TextPiece[], limit: number): number {
  let seen = 0;
  let found = -1;
  for (const piece of pieces) {
    if (seen >= limit) break;
    const within = piece.text.slice(0, Math.max(0, limit - seen));
    const nl = within.lastIndexOf('\n');
    if (nl >= 0) found = seen + nl + 1;
    seen += piece.text.length;
  }
  return found;
}

function render(pieces: TextPiece[]): HTMLElement {
  const block = document.createElement('div');
  for (const piece of pieces) {
    const span = document.createElement('span');
    span.className = piece.stream;
    span.textContent = piece.text;
    block.append(span);
  }
  return block;
}

/** The output of one run; see the module comment. */
export class OutputView {
  /** What is kept (the last `cap` characters), oldest first. */
  private readonly kept: Piece[] = [];
  private keptSize = 0;
  /** What arrived since the last frame (also bounded by `cap`). */
  private fresh: Piece[] = [];
  private freshSize = 0;
  /** More than `cap` arrived between two frames: the drawing starts over. */
  private overrun = false;
  /** The unfinished last line, drawn in `tailNode`. */
  private tail: TextPiece[] = [];
  private readonly tailNode: HTMLElement;
  /** The drawn blocks, oldest first; a rich output's block holds its piece. */
  private readonly blocks: { node: HTMLElement; size: number; piece?: RichPiece }[] = [];
  private drawnSize = 0;
  private trimmedFlag = false;

  /**
   * @param box where the output is drawn
   * @param notice shown once output has been trimmed
   * @param cap the most characters kept
   */
  constructor(
    private readonly box: HTMLElement,
    private readonly notice: HTMLElement,
    private readonly cap: number,
  ) {
    this.notice.hidden = true;
    this.tailNode = document.createElement('div');
    this.box.append(this.tailNode);
  }

  /** True once older output was dropped. */
  get trimmed(): boolean {
    return this.trimmedFlag;
  }

  /** Characters kept. */
  get length(): number {
    return this.keptSize;
  }

  /** Appends `text` of `stream`; it is drawn with the next animation frame. */
  append(stream: Stream, text: string): void {
    if (text.length === 0) return;
    this.keptSize += push(this.kept, stream, text);
    this.freshSize += push(this.fresh, stream, text);
    this.added();
  }

  /** Appends rich output after what is there; it is drawn with the next animation frame. */
  appendRich(rich: Rich): void {
    // One object in both lists: an update before the next frame reaches what it draws.
    const piece: RichPiece = { stream: 'rich', rich };
    const size = pieceSize(piece);
    this.kept.push(piece);
    this.keptSize += size;
    this.fresh.push(piece);
    this.freshSize += size;
    this.added();
  }

  /**
   * Replaces what each rich output of `displayId` here shows with `bundle` and `metadata`
   * (an `update_display`); returns how many there were.
   */
  update(displayId: string, bundle: Rich['bundle'], metadata: Rich['metadata']): number {
    let found = 0;
    for (const piece of this.kept) {
      if (piece.stream !== 'rich' || piece.rich.displayId !== displayId) continue;
      found += 1;
      const before = pieceSize(piece);
      piece.rich = { ...piece.rich, bundle, metadata };
      this.keptSize += pieceSize(piece) - before;
    }
    for (const block of this.blocks) {
      if (block.piece?.rich.displayId !== displayId) continue;
      // (Drawn, and no longer kept: trimmed since.)
      if (!this.kept.includes(block.piece)) {
        found += 1;
        block.piece.rich = { ...block.piece.rich, bundle, metadata };
      }
      const node = renderRich(block.piece.rich);
      block.node.replaceWith(node);
      block.node = node;
      const size = pieceSize(block.piece);
      this.drawnSize += size - block.size;
      block.size = size;
    }
    if (found === 0) return 0;
    this.freshSize = this.fresh.reduce((n, p) => n + pieceSize(p), 0);
    this.added();
    return found;
  }

  /** Output was added (or grew): the bounds are kept, and the next frame draws it. */
  private added(): void {
    if (this.keptSize > this.cap) {
      this.keptSize = trimFront(this.kept, this.keptSize, this.cap);
      this.markTrimmed();
    }
    if (this.freshSize > this.cap) {
      this.freshSize = trimFront(this.fresh, this.freshSize, this.cap);
      this.overrun = true;
    }
    dirty.add(this);
    askFrame();
  }

  /** What is kept, oldest first, at most the last `max` characters of it. */
  pieces(max = this.cap): Piece[] {
    const copy = this.kept.map((p): Piece => ({ ...p }));
    trimFront(copy, this.keptSize, max);
    return copy;
  }

  /** Marks the output as trimmed (also for a restored pane whose saved output was cut). */
  markTrimmed(): void {
    this.trimmedFlag = true;
    this.notice.hidden = false;
  }

  /** Draws what arrived since the last frame (called by the frame). */
  draw(): void {
    const box = this.box;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    if (this.overrun) {
      for (const block of this.blocks) block.node.remove();
      this.blocks.length = 0;
      this.drawnSize = 0;
      this.tail = [];
      this.overrun = false;
    }
    let queue: Piece[] = [...this.tail, ...this.fresh];
    this.fresh = [];
    this.freshSize = 0;
    const added = document.createDocumentFragment();
    let rest: TextPiece[];
    for (;;) {
      // The text up to the next rich output (or the end).
      const at = queue.findIndex((p) => p.stream === 'rich');
      rest = (at < 0 ? queue : queue.slice(0, at)) as TextPiece[];
      // Whole lines go into blocks of at most BLOCK characters; a line longer than that
      // is cut where the block ends. Before a rich output the unfinished line ends too.
      for (;;) {
        const size = length(rest);
        let end = lastLineEnd(rest, BLOCK);
        if (end < 0 && size > BLOCK) end = BLOCK;
        if (end < 0 && at >= 0 && size > 0) end = size;
        if (end < 0) break;
        const [block, after] = splitAt(rest, end);
        const node = render(block);
        added.append(node);
        this.blocks.push({ node, size: end });
        this.drawnSize += end;
        rest = after;
      }
      if (at < 0) break;
      const piece = queue[at] as RichPiece;
      const node = renderRich(piece.rich);
      const size = pieceSize(piece);
      added.append(node);
      this.blocks.push({ node, size, piece });
      this.drawnSize += size;
      queue = queue.slice(at + 1);
    }
    this.tailNode.before(added);
    this.tail = rest;
    this.tailNode.replaceChildren(...render(rest).childNodes);
    let total = this.drawnSize + length(rest);
    while (total > this.cap && this.blocks.length > 0) {
      const first = this.blocks.shift()!;
      first.node.remove();
      this.drawnSize -= first.size;
      total -= first.size;
    }
    if (atBottom) box.scrollTop = box.scrollHeight;
  }
}
