/**
 * The panes of the runs area: a {@link RunPane} shows one run's output (stdout and stderr
 * told apart, rich output in its place among them), its state, its usage, an input line
 * and Stop; a {@link TerminalPane} shows a terminal run in xterm.js, whose keys go to the
 * program's input and whose size follows the pane. A pane is fed events either by the run's own handle (runs this page started)
 * or by the session reader (runs from before a reload), never by both.
 */

import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';
import type {
  DisplayEvent,
  ExecuteOptions,
  Execution,
  ResultEvent,
  SluiceClient,
  SluiceEvent,
  TerminalEvent,
  Usage,
} from '../../clients/typescript/src/index.js';
import { isTerminal } from '../../clients/typescript/src/index.js';
import { OutputView, type Piece } from './output.js';
import type { Rich } from './rich.js';
import { SAVED_PER_PANE, type SavedPane, type SavedRequest } from './store.js';

/** What a run pane keeps of its output (the page says when it dropped older output). */
export const KEPT_OUTPUT = 1 << 20;

/** What panes ask of the page. */
export interface PaneHost {
  readonly client: SluiceClient;
  readonly session: string;
  /** An event of the session reached a pane: the page has shown up to its sequence. */
  seen(event: SluiceEvent): void;
  /** Something worth saving changed (a run started or ended, a pane closed). */
  changed(): void;
  /** The pane was closed. */
  removed(pane: Pane): void;
  /** An `update_display` reached a pane: what shows `displayId` in any pane of the tab is replaced. */
  updateDisplay(displayId: string, bundle: Rich['bundle'], metadata: Rich['metadata']): void;
}

/** A `display` or `result` event as a pane keeps it. */
export function richOf(event: DisplayEvent | ResultEvent): Rich {
  const rich: Rich = { kind: event.type, bundle: event.bundle, metadata: event.metadata };
  if (event.display_id !== undefined) rich.displayId = event.display_id;
  if (event.type === 'result' && event.execution_count !== undefined) rich.count = event.execution_count;
  return rich;
}

function element<K extends keyof HTMLElementTagNameMap>(tag: K, className?: string, text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A size for people: B, KiB or MiB. */
export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

/** One line on what a run used. */
export function describeUsage(usage: Usage | undefined): string {
  if (!usage) return '';
  const parts = [`${(usage.duration_ms / 1000).toFixed(2)} s`, `cpu ${Math.round(usage.cpu_ms)} ms`];
  if (usage.peak_memory_bytes > 0) parts.push(`peak ${bytes(usage.peak_memory_bytes)}`);
  parts.push(`out ${bytes(usage.stdout_bytes)}`, `err ${bytes(usage.stderr_bytes)}`);
  return parts.join(' · ');
}

/** The state word and a sentence for a run's terminal event. */
export function describeEnd(event: TerminalEvent): { status: string; words: string } {
  switch (event.type) {
    case 'completed':
      if (event.signal !== undefined) return { status: 'failed', words: `killed by signal ${event.signal}` };
      // A persistent cell that raised: its exception says more than its exit status (the traceback is on stderr).
      if (event.exception) return { status: 'failed', words: `${event.exception.ename}: ${event.exception.evalue}` };
      return { status: event.exit_code === 0 ? 'completed' : 'failed', words: `exit ${event.exit_code ?? '?'}` };
    case 'cancelled':
      return { status: 'cancelled', words: 'stopped' };
    case 'resource_limit':
      return { status: 'resource_limit', words: `limit: ${event.limit} (${event.limit_value})` };
    default:
      return { status: 'error', words: `${event.code}: ${event.data}` };
  }
}

/** A pane of either kind: its frame (title, state, Stop, Close) and its run's life. */
export abstract class Pane {
  readonly root: HTMLElement;
  protected readonly stateLabel: HTMLElement;
  protected readonly usageLine: HTMLElement;
  protected readonly stopButton: HTMLButtonElement;
  /** Control of the run: the handle of `execute` (for a restored run, made on demand). */
  protected execution: Execution | undefined;
  /** Who feeds it events. */
  source: 'handle' | 'reader';
  running: boolean;
  status: string;
  summary = '';
  /** When Stop was clicked: by the page's clock, and as Unix time in ms. */
  private stopAskedAt: number | undefined;
  private stopAskedAtUnixMs: number | undefined;
  /** The gateway's time of the `started` event, in Unix seconds. */
  private startedAt: number | undefined;

  constructor(
    protected readonly host: PaneHost,
    readonly id: string,
    readonly kind: 'run' | 'terminal',
    readonly title: string,
    readonly request: SavedRequest,
  ) {
    this.root = element('section', `pane pane-${kind}`);
    this.root.dataset['id'] = id;
    const head = element('div', 'pane-head');
    const titleNode = element('span', 'pane-title', title);
    titleNode.title = request.code;
    this.stateLabel = element('span', 'pane-state');
    this.stopButton = element('button', 'stop', 'Stop');
    this.stopButton.type = 'button';
    this.stopButton.addEventListener('click', () => this.stop());
    const close = element('button', 'close', '×');
    close.type = 'button';
    close.title = 'Close this pane (a run still going is stopped)';
    close.setAttribute('aria-label', 'Close');
    close.addEventListener('click', () => this.close());
    head.append(titleNode, this.stateLabel, this.stopButton, close);
    this.usageLine = element('div', 'usage');
    this.root.append(head);
    this.source = 'handle';
    this.running = true;
    this.status = 'starting';
    this.setStatus('starting', '');
  }

  protected setStatus(status: string, words: string): void {
    this.status = status;
    this.root.dataset['status'] = status;
    this.stateLabel.textContent = words || status;
    this.stopButton.disabled = !this.running;
  }

  /** Feeds the pane from the run's own handle, until its last event. */
  follow(execution: Execution): void {
    this.execution = execution;
    this.source = 'handle';
    void (async () => {
      try {
        for await (const event of execution) {
          this.host.seen(event);
          this.receive(event);
        }
      } catch (err) {
        if (this.running) this.lost((err as Error).message);
      }
    })();
  }

  /** Takes control of a run started before a reload by sending its request again. */
  protected control(): Execution | undefined {
    // Only a run from before a reload has no handle yet; a new one gets it from `follow`.
    if (this.execution || !this.running || this.source !== 'reader') return this.execution;
    const options: ExecuteOptions = { ...this.request, id: this.id, session: this.host.session };
    try {
      const execution = this.host.client.execute(this.request.code, options);
      this.execution = execution;
      // Its events also reach the pane through the session reader: only drain them here.
      void (async () => {
        try {
          for await (const _ of execution) {
            // drained
          }
        } catch {
          // The reader reports how the run ended.
        }
      })();
      return execution;
    } catch (err) {
      this.note(`could not take control of the run: ${(err as Error).message}`);
      return undefined;
    }
  }

  /** One event of its run, in order. */
  receive(event: SluiceEvent): void {
    if (!this.running && event.type !== 'gap') return;
    switch (event.type) {
      case 'started':
        this.startedAt = event.timestamp;
        this.setStatus('running', 'running');
        this.host.changed();
        return;
      case 'stdout':
      case 'stderr':
        if (this.status === 'starting' || this.status === 'reattaching') this.setStatus('running', 'running');
        this.output(event.type, event.data);
        return;
      case 'display':
      case 'result':
        if (this.status === 'starting' || this.status === 'reattaching') this.setStatus('running', 'running');
        this.rich(richOf(event));
        return;
      case 'update_display':
        this.host.updateDisplay(event.display_id, event.bundle, event.metadata);
        return;
      case 'input_request':
        if (this.status === 'starting' || this.status === 'reattaching') this.setStatus('running', 'running');
        this.inputRequest(event.data, event.password);
        return;
      case 'gap':
        this.note(`${event.resume_from - event.missed_from} events of the session were lost here (the gateway no longer had them)`);
        return;
      case 'network_blocked':
        this.note(event.data);
        return;
      default:
        if (isTerminal(event)) this.end(event);
    }
  }

  private end(event: TerminalEvent): void {
    this.running = false;
    const { status, words } = describeEnd(event);
    if (event.type !== 'error' && event.exception) this.exception(`${event.exception.ename}: ${event.exception.evalue}`);
    if (this.stopAskedAt !== undefined && event.type === 'cancelled') {
      // How long Stop took to show, and (from the gateway's times: the program's start
      // plus how long it ran) how long the program outlived the click.
      this.root.dataset['stoppedInMs'] = String(Math.round(performance.now() - this.stopAskedAt));
      if (this.startedAt !== undefined && this.stopAskedAtUnixMs !== undefined && event.usage) {
        const ended = this.startedAt * 1000 + event.usage.duration_ms;
        this.root.dataset['ranAfterStopMs'] = String(Math.round(ended - this.stopAskedAtUnixMs));
      }
    }
    this.summary = [words, describeUsage(event.usage)].filter(Boolean).join(' · ');
    this.usageLine.textContent = this.summary;
    this.setStatus(status, words);
    this.ended();
    this.host.changed();
  }

  /** The run ended without its terminal event reaching the page. */
  lost(why: string): void {
    if (!this.running) return;
    this.running = false;
    this.summary = why;
    this.usageLine.textContent = why;
    this.setStatus('lost', 'lost');
    this.ended();
    this.host.changed();
  }

  stop(): void {
    if (!this.running) return;
    this.stopAskedAt = performance.now();
    this.stopAskedAtUnixMs = Date.now();
    this.setStatus('stopping', 'stopping…');
    this.stopButton.disabled = true;
    this.control()?.cancel();
  }

  close(): void {
    if (this.running) this.control()?.cancel();
    this.running = false;
    this.dispose();
    this.root.remove();
    this.host.removed(this);
  }

  /** Puts back what a saved pane showed. */
  restore(saved: SavedPane): void {
    this.running = saved.running;
    this.summary = saved.summary;
    this.usageLine.textContent = saved.summary;
    if (saved.running) {
      this.source = 'reader';
      this.setStatus('reattaching', 'reattaching…');
    } else {
      this.setStatus(saved.status, saved.summary.split(' · ')[0] ?? saved.status);
      this.ended();
    }
  }

  save(): SavedPane {
    const { output, trimmed } = this.saveOutput();
    return {
      id: this.id,
      kind: this.kind,
      title: this.title,
      status: this.status,
      summary: this.summary,
      running: this.running,
      request: this.request,
      output,
      trimmed,
    };
  }

  /** The pane is on the page. */
  mounted(): void {}

  /**
   * Replaces what each rich output of `displayId` in this pane shows (an `update_display`
   * from any run of the tab); returns how many there were.
   */
  updateDisplay(_displayId: string, _bundle: Rich['bundle'], _metadata: Rich['metadata']): number {
    return 0;
  }

  protected abstract output(stream: 'stdout' | 'stderr', text: string): void;
  /** Rich output of the run, after its output so far. */
  protected abstract rich(rich: Rich): void;
  protected abstract note(text: string): void;
  /** The run asks for a line of input (`input_request`): show `prompt` by the input, hidden for a password. */
  protected inputRequest(_prompt: string, _password: boolean): void {}
  /** A cell raised: `ename: evalue`, shown after its output. */
  protected exception(text: string): void {
    this.note(text);
  }
  protected abstract saveOutput(): { output: Piece[]; trimmed: boolean };
  /** The run is over: input controls go. */
  protected abstract ended(): void;
  protected dispose(): void {}
}

/** A run with pipes: output, an input line, and a way to end its input. */
export class RunPane extends Pane {
  private readonly view: OutputView;
  private readonly stdinRow: HTMLFormElement;
  private readonly stdinBox: HTMLInputElement;
  private readonly promptLabel: HTMLLabelElement;
  private readonly eofButton: HTMLButtonElement;

  constructor(host: PaneHost, id: string, title: string, request: SavedRequest) {
    super(host, id, 'run', title, request);
    const notice = element('p', 'trimmed', 'earlier output trimmed (a pane keeps the last 1 MiB)');
    const box = element('div', 'output');
    box.setAttribute('role', 'log');
    this.view = new OutputView(box, notice, KEPT_OUTPUT);
    this.stdinRow = element('form', 'stdin');
    this.stdinBox = element('input');
    this.stdinBox.type = 'text';
    this.stdinBox.id = `stdin-${id}`;
    this.stdinBox.placeholder = 'input: Enter sends the line';
    this.stdinBox.setAttribute('aria-label', 'Standard input');
    // The prompt of the program's input request, shown by the box while it waits for the answer.
    this.promptLabel = element('label', 'prompt');
    this.promptLabel.htmlFor = this.stdinBox.id;
    this.promptLabel.hidden = true;
    const send = element('button', 'send', 'Send');
    send.type = 'submit';
    this.eofButton = element('button', 'eof', 'End input');
    this.eofButton.type = 'button';
    this.eofButton.title = 'Close the program’s standard input (end of file)';
    this.stdinRow.append(this.promptLabel, this.stdinBox, send, this.eofButton);
    this.stdinRow.addEventListener('submit', (e) => {
      e.preventDefault();
      this.sendLine();
    });
    this.eofButton.addEventListener('click', () => this.endInput());
    this.root.append(notice, box, this.usageLine, this.stdinRow);
  }

  private sendLine(): void {
    const line = `${this.stdinBox.value}\n`;
    try {
      this.control()?.sendStdin(line);
      this.stdinBox.value = '';
      this.answered();
    } catch (err) {
      this.note(`input not sent: ${(err as Error).message}`);
    }
  }

  private endInput(): void {
    try {
      this.control()?.closeStdin();
      this.stdinBox.disabled = true;
      this.eofButton.disabled = true;
    } catch (err) {
      this.note(`could not end the input: ${(err as Error).message}`);
    }
  }

  protected output(stream: 'stdout' | 'stderr', text: string): void {
    this.view.append(stream, text);
  }

  protected rich(rich: Rich): void {
    this.view.appendRich(rich);
  }

  /** Shows the prompt by the input box and focuses it; a password is typed into a hidden field. */
  protected override inputRequest(prompt: string, password: boolean): void {
    this.promptLabel.textContent = prompt;
    this.promptLabel.hidden = prompt === '';
    this.stdinBox.type = password ? 'password' : 'text';
    this.stdinBox.autocomplete = password ? 'off' : 'on';
    this.stdinBox.setAttribute('aria-label', prompt === '' ? 'Standard input' : prompt);
    this.stdinRow.classList.add('asked');
    this.root.dataset['inputRequest'] = password ? 'password' : 'text';
    this.stdinBox.focus();
  }

  /** The request was answered: the box is an ordinary input line again. */
  private answered(): void {
    if (!this.stdinRow.classList.contains('asked')) return;
    this.stdinRow.classList.remove('asked');
    this.promptLabel.hidden = true;
    this.promptLabel.textContent = '';
    this.stdinBox.type = 'text';
    this.stdinBox.setAttribute('aria-label', 'Standard input');
    delete this.root.dataset['inputRequest'];
  }

  /** The exception's `ename: evalue` in a line of its own above the usage line (its traceback is on stderr). */
  protected override exception(text: string): void {
    const line = element('p', 'exception', text);
    line.setAttribute('role', 'alert');
    this.usageLine.before(line);
    this.root.dataset['exception'] = text;
  }

  override updateDisplay(displayId: string, bundle: Rich['bundle'], metadata: Rich['metadata']): number {
    return this.view.update(displayId, bundle, metadata);
  }

  protected note(text: string): void {
    this.view.append('note', `[${text}]\n`);
  }

  protected saveOutput(): { output: Piece[]; trimmed: boolean } {
    return { output: this.view.pieces(SAVED_PER_PANE), trimmed: this.view.trimmed || this.view.length > SAVED_PER_PANE };
  }

  protected ended(): void {
    this.answered();
    this.stdinRow.hidden = true;
  }

  override restore(saved: SavedPane): void {
    if (saved.trimmed) this.view.markTrimmed();
    for (const piece of saved.output) {
      if (piece.stream === 'rich') this.view.appendRich(piece.rich);
      else this.view.append(piece.stream, piece.text);
    }
    super.restore(saved);
  }
}

/** A run on a terminal, drawn by xterm.js. */
export class TerminalPane extends Pane {
  readonly terminal: Terminal;
  private readonly fit = new FitAddon();
  private readonly resizeWatch: ResizeObserver;
  private readonly box: HTMLElement;
  /** The tail of what was written to the terminal, saved across reloads. */
  private tail = '';
  private fitAsked = false;

  constructor(host: PaneHost, id: string, title: string, request: SavedRequest) {
    super(host, id, 'terminal', title, request);
    const box = element('div', 'term');
    this.root.append(box, this.usageLine);
    this.terminal = new Terminal({
      cols: request.cols ?? 80,
      rows: request.rows ?? 24,
      convertEol: false,
      cursorBlink: true,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", monospace',
      fontSize: 13,
      scrollback: 5000,
    });
    this.terminal.loadAddon(this.fit);
    this.box = box;
    this.terminal.onData((data) => {
      if (!this.running) return;
      try {
        this.control()?.sendStdin(data);
      } catch (err) {
        this.note(`input not sent: ${(err as Error).message}`);
      }
    });
    this.terminal.onResize(({ cols, rows }) => {
      this.root.dataset['size'] = `${rows} ${cols}`;
      if (!this.running) return;
      try {
        this.control()?.resize(cols, rows);
      } catch (err) {
        this.note(`not resized: ${(err as Error).message}`);
      }
    });
    this.resizeWatch = new ResizeObserver(() => this.refit());
  }

  /** xterm.js measures its cells when it opens: only once the pane is on the page. */
  override mounted(): void {
    if (this.terminal.element) return;
    this.terminal.open(this.box);
    this.resizeWatch.observe(this.box);
  }

  /** Fits the terminal to its box, once per animation frame at most. */
  refit(): void {
    if (this.fitAsked) return;
    this.fitAsked = true;
    requestAnimationFrame(() => {
      this.fitAsked = false;
      if (this.root.isConnected) this.fit.fit();
    });
  }

  /** The size to start the program with: the box's, fitted. */
  size(): { cols: number; rows: number } {
    const proposed = this.fit.proposeDimensions();
    if (proposed && proposed.cols > 0 && proposed.rows > 0) this.terminal.resize(proposed.cols, proposed.rows);
    this.root.dataset['size'] = `${this.terminal.rows} ${this.terminal.cols}`;
    return { cols: this.terminal.cols, rows: this.terminal.rows };
  }

  focus(): void {
    this.terminal.focus();
  }

  protected output(_stream: 'stdout' | 'stderr', text: string): void {
    this.terminal.write(text);
    this.tail += text;
    if (this.tail.length > 2 * SAVED_PER_PANE) this.tail = this.tail.slice(this.tail.length - SAVED_PER_PANE);
  }

  /** The gateway finds display records only in piped output, never on a terminal: should one come, its text is written. */
  protected rich(rich: Rich): void {
    const plain = rich.bundle['text/plain'];
    if (typeof plain === 'string') this.output('stdout', `${plain.replace(/\n/g, '\r\n')}\r\n`);
  }

  protected note(text: string): void {
    this.terminal.write(`\r\n\x1b[2m[${text}]\x1b[0m\r\n`);
  }

  protected saveOutput(): { output: Piece[]; trimmed: boolean } {
    const text = this.tail.length > SAVED_PER_PANE ? this.tail.slice(this.tail.length - SAVED_PER_PANE) : this.tail;
    return { output: [{ stream: 'stdout', text }], trimmed: false };
  }

  protected ended(): void {
    if (this.summary) this.note(this.summary);
  }

  protected override dispose(): void {
    this.resizeWatch.disconnect();
    this.terminal.dispose();
  }

  override restore(saved: SavedPane): void {
    for (const piece of saved.output) if (piece.stream !== 'rich') this.output('stdout', piece.text);
    super.restore(saved);
  }
}
