/**
 * A run's output in a pane, kept and drawn so that no amount of it freezes the page:
 * text is appended to a model at once and drawn once per animation frame (all the output
 * that arrived since the last frame becomes one element per stream change), and the model
 * keeps only the last `cap` characters, dropping the oldest (and saying so) beyond it.
 * While the tab is hidden, frames do not run, and the model alone keeps the bound.
 */

/** Which stream a piece of output came from; `note` is the page's own words. */
export type Stream = 'stdout' | 'stderr' | 'note';

/** A piece of output as kept (and saved across reloads). */
export interface Piece {
  stream: Stream;
  text: string;
}

interface Chunk extends Piece {
  /** Its element, once drawn. */
  node: HTMLElement | undefined;
}

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

/** The output of one run; see the module comment. */
export class OutputView {
  private readonly chunks: Chunk[] = [];
  private size = 0;
  private trimmedFlag = false;

  /**
   * @param pre where the output is drawn
   * @param notice shown once output has been trimmed
   * @param cap the most characters kept
   */
  constructor(
    private readonly pre: HTMLElement,
    private readonly notice: HTMLElement,
    private readonly cap: number,
  ) {
    this.notice.hidden = true;
  }

  /** True once older output was dropped. */
  get trimmed(): boolean {
    return this.trimmedFlag;
  }

  /** Characters kept. */
  get length(): number {
    return this.size;
  }

  /** Appends `text` of `stream`; it is drawn with the next animation frame. */
  append(stream: Stream, text: string): void {
    if (text.length === 0) return;
    const last = this.chunks[this.chunks.length - 1];
    if (last && last.node === undefined && last.stream === stream) last.text += text;
    else this.chunks.push({ stream, text, node: undefined });
    this.size += text.length;
    this.trim();
    dirty.add(this);
    askFrame();
  }

  /** What is kept, oldest first, at most the last `max` characters of it. */
  pieces(max = this.cap): Piece[] {
    const out: Piece[] = [];
    let room = max;
    for (let i = this.chunks.length - 1; i >= 0 && room > 0; i--) {
      const chunk = this.chunks[i]!;
      const text = chunk.text.length > room ? chunk.text.slice(chunk.text.length - room) : chunk.text;
      out.push({ stream: chunk.stream, text });
      room -= text.length;
    }
    return out.reverse();
  }

  /** Marks the output as trimmed (a restored pane whose saved output was cut). */
  markTrimmed(): void {
    this.trimmedFlag = true;
    this.notice.hidden = false;
  }

  private trim(): void {
    while (this.size > this.cap) {
      const first = this.chunks[0]!;
      const excess = this.size - this.cap;
      if (first.text.length <= excess) {
        this.chunks.shift();
        first.node?.remove();
        this.size -= first.text.length;
      } else {
        first.text = first.text.slice(excess);
        if (first.node) first.node.textContent = first.text;
        this.size -= excess;
      }
      if (!this.trimmedFlag) this.markTrimmed();
    }
  }

  /** Draws what arrived since the last frame (called by the frame). */
  draw(): void {
    const pre = this.pre;
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    // Undrawn chunks are the newest ones, at the end.
    let start = this.chunks.length;
    while (start > 0 && this.chunks[start - 1]!.node === undefined) start -= 1;
    const fragment = document.createDocumentFragment();
    for (const chunk of this.chunks.slice(start)) {
      const span = document.createElement('span');
      span.className = chunk.stream;
      span.textContent = chunk.text;
      chunk.node = span;
      fragment.append(span);
    }
    pre.append(fragment);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }
}
