/**
 * One execution: the handle `execute()` returns. It is an async iterable of the
 * execution's events (started, output and rich output, exactly one terminal event), a way to feed its
 * standard input and cancel it, and `done`, a promise of its {@link Outcome}.
 */

import { AbortedError, GatewayError, SlowConsumerError, SluiceError } from './errors.js';
import {
  bufferedSize,
  type CellException,
  type DisplayEvent,
  decodeBase64,
  type ErrorEvent,
  type FileChanges,
  isTerminal,
  type LimitKind,
  type ResultEvent,
  type SluiceEvent,
  syntheticError,
  type TerminalEvent,
  type UpdateDisplayEvent,
  type Usage,
} from './events.js';
import type { Encoding, Limits } from './frames.js';
import { BoundedQueue } from './queue.js';

/** What to run, and how. Only `language` is required. */
export interface ExecuteOptions {
  /** Runtime name, such as `python`, `bash`, `sh` or `node`. */
  language: string;
  /** Execution id (1 to 128 bytes); by default the client makes a unique one. */
  id?: string;
  /** Run in this named session (created if it is not open); default: a fresh session of its own. */
  session?: string;
  /** Run `code` as a cell of the session's persistent interpreter (needs `session`). */
  persistent?: boolean;
  /** The program's whole standard input; stdin is closed after it (with `tty`, it is typed and input stays open). */
  stdin?: string;
  /** Environment variables added to the runtime's. */
  env?: Record<string, string>;
  /** Arguments passed to the program. */
  args?: string[];
  /** Limits for this execution (PROTOCOL.md §9.1). */
  limits?: Limits;
  /** How output travels: `utf8` (default) or `base64` (exact bytes). */
  encoding?: Encoding;
  /**
   * Run the program on a pseudo-terminal (not with `persistent`): it sees a terminal on its
   * stdin, stdout and stderr; output is one `stdout` stream of the terminal's bytes (stderr
   * merged, `"\n"` sent as `"\r\n"`); {@link Execution.sendStdin} types (`"\x03"` is Ctrl-C),
   * {@link Execution.closeStdin} types Ctrl-D and input stays open; {@link Execution.resize}
   * changes its size.
   */
  tty?: boolean;
  /** The terminal's width in columns, 1 to 1000 (default 80). Only with `tty`. */
  cols?: number;
  /** The terminal's height in rows, 1 to 1000 (default 24). Only with `tty`. */
  rows?: number;
  /**
   * More files of the program, path (relative to its working directory) to text, written
   * there before it starts (`{ 'util.py': ... }` for a `main.py` that imports it). Not with `persistent`.
   */
  files?: Record<string, string>;
  /** The program's `TERM` (default `xterm-256color`): 1 to 64 letters, digits or `.+-_`. Only with `tty`. */
  term?: string;
  /**
   * Give the session a workspace (needs `session`): a directory that outlives the
   * execution, where it and every later execution of the session start, and which the
   * client's file methods reach. The execution's stream then holds a `files_changed` event
   * before its terminal event, naming what it created, modified and deleted there.
   */
  workspace?: boolean;
  /** Aborting it cancels the execution (or, before it was sent, never sends it). */
  signal?: AbortSignal;
}

/** How an execution that ran ended: everything but an `error`, which rejects `done` instead. */
export interface Outcome {
  id: string;
  session: string;
  /** `completed`: it ended by itself; `cancelled`; `resource_limit`: it hit `limit`. */
  status: 'completed' | 'cancelled' | 'resource_limit';
  /** Exit status, when it exited by itself. */
  exitCode?: number;
  /** Signal number, when a signal it did not get from Sluice killed it. */
  signal?: number;
  /** For `resource_limit`: which limit, and its value (ms or bytes). */
  limit?: LimitKind;
  limitValue?: number;
  /** What it was seen to use of that limit, where the gateway knows it. */
  limitObserved?: number;
  /** Standard output and error as text (base64 output is decoded, then read as UTF-8). */
  stdout: string;
  stderr: string;
  /** What it used, as the gateway measured it. */
  usage?: Usage;
  /**
   * What it created, modified and deleted in its session's workspace (its `files_changed`
   * event), when it ran in one and changed something.
   */
  filesChanged?: FileChanges;
  /**
   * Its rich output: its `display` and `update_display` events, in order (an update may
   * replace a display of an earlier execution of the session: match them by `display_id`).
   * Empty when it showed none.
   */
  displays: (DisplayEvent | UpdateDisplayEvent)[];
  /**
   * The value of a persistent cell's last expression: its `result` event (the last one,
   * should a program write several), or undefined when there was none (the cell ended
   * with a statement, or with an expression whose value is `None`).
   */
  value?: ResultEvent;
  /**
   * The exception a persistent cell raised (`ename`, `evalue`, `traceback`; the traceback
   * is on `stderr` too); the cell then ended with `completed` and exit code 1.
   */
  exception?: CellException;
  /** A persistent cell's number in its interpreter, from 1 (again from 1 after a restart). */
  executionCount?: number;
  /** The terminal event itself. */
  terminal: TerminalEvent;
}

/** What an {@link Execution} asks of the client that runs it. */
export interface ExecutionHost {
  sendStdin(execution: Execution, data: string | undefined, eof: boolean): void;
  resize(execution: Execution, cols: number, rows: number): void;
  cancel(execution: Execution): void;
}

/** Collects one output stream as text, decoding base64 chunks across chunk boundaries. */
class TextSink {
  private readonly parts: string[] = [];
  private readonly decoder = new TextDecoder();

  add(data: string, base64: boolean): void {
    this.parts.push(base64 ? this.decoder.decode(decodeBase64(data), { stream: true }) : data);
  }

  text(): string {
    this.parts.push(this.decoder.decode());
    return this.parts.join('');
  }
}

/** A running (or finished) execution; see the module comment. */
export class Execution implements AsyncIterable<SluiceEvent> {
  /** The execution id. */
  readonly id: string;
  /** True when it was started with `tty: true`: it runs on a terminal, which {@link resize} changes. */
  readonly tty: boolean;
  /** Resolves with how it ended; rejects with a {@link GatewayError} (code from the gateway) or a {@link SluiceError}. */
  readonly done: Promise<Outcome>;

  private sessionName: string | undefined;
  private readonly queue: BoundedQueue<SluiceEvent>;
  private readonly stdout = new TextSink();
  private readonly stderr = new TextSink();
  private filesChanged: FileChanges | undefined;
  private readonly displays: (DisplayEvent | UpdateDisplayEvent)[] = [];
  private value: ResultEvent | undefined;
  private resolveDone!: (outcome: Outcome) => void;
  private rejectDone!: (error: Error) => void;
  private finished = false;
  private stdinClosed: boolean;
  private readonly abortListener: (() => void) | undefined;
  private readonly signal: AbortSignal | undefined;

  /** @internal */
  readonly named: boolean;
  /** @internal True once an event of this execution arrived. */
  answered = false;
  /** @internal The `execute` frame, kept for sending it again after a reconnect. */
  readonly frame: string;
  /** @internal True when a `cancel` was asked for. */
  cancelRequested = false;
  /** @internal True once its `execute` frame was written to a socket. */
  sent = false;
  /** @internal True once its `cancel` frame was written to a socket. */
  cancelSent = false;

  /** @internal Made by the client. */
  constructor(
    private readonly host: ExecutionHost,
    options: {
      id: string;
      session: string | undefined;
      frame: string;
      stdinGiven: boolean;
      tty?: boolean;
      maxBufferedBytes: number;
      signal?: AbortSignal | undefined;
    },
  ) {
    this.id = options.id;
    this.sessionName = options.session;
    this.named = options.session !== undefined;
    this.frame = options.frame;
    this.tty = options.tty === true;
    // A terminal's input never closes: its `stdin` and `eof` are typed (Ctrl-D ends one read).
    this.stdinClosed = options.stdinGiven && !this.tty;
    this.queue = new BoundedQueue<SluiceEvent>(
      options.maxBufferedBytes,
      bufferedSize,
      `execution ${JSON.stringify(this.id)}`,
      (buffered, max) =>
        syntheticError(
          'slow_consumer',
          `the consumer of execution ${JSON.stringify(this.id)} fell behind: ${buffered} bytes of events would have ` +
            `been buffered unread, over the maxBufferedBytes limit of ${max}; the client cancelled the execution ` +
            'and discarded its later events',
          this.id,
          this.sessionName ?? null,
        ),
      // Leaving the loop early (`break`, `return`, a throw) cancels the execution.
      () => this.cancel(),
    );
    this.done = new Promise<Outcome>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    // `done` may be ignored by a caller that only iterates; its rejection is not "unhandled".
    this.done.catch(() => undefined);
    const signal = options.signal;
    if (signal) {
      this.abortListener = () => this.cancel();
      signal.addEventListener('abort', this.abortListener, { once: true });
      this.signal = signal;
    }
  }

  /** The session it runs in: the named one, or the gateway's (known from its first event). */
  get session(): string | undefined {
    return this.sessionName;
  }

  /** True once its terminal event (or a failure) has arrived. */
  get ended(): boolean {
    return this.finished;
  }

  /** Writes `data` to the program's standard input; on a terminal (`tty`) it is typed (`"\r"` is Enter, `"\x03"` Ctrl-C). */
  sendStdin(data: string): void {
    this.checkStdin();
    this.host.sendStdin(this, data, false);
  }

  /**
   * Closes the program's standard input (after any data sent before). On a terminal (`tty`)
   * it types Ctrl-D instead, which ends the program's current read, and input stays open.
   */
  closeStdin(): void {
    this.checkStdin();
    this.stdinClosed = !this.tty;
    this.host.sendStdin(this, undefined, true);
  }

  /**
   * Gives its terminal `cols` columns and `rows` rows (1 to 1000 each); the program gets
   * SIGWINCH. Returns false, and sends nothing, once it has ended: a terminal widget resized
   * as its program ends is no error. Throws a {@link SluiceError} with code `not_a_terminal`
   * if it was not started with `tty: true` (the gateway would refuse it so), and an
   * {@link InvalidFrameError} (code `bad_request`) for a size out of range.
   */
  resize(cols: number, rows: number): boolean {
    if (!this.tty) {
      throw new SluiceError(
        'not_a_terminal',
        `execution ${JSON.stringify(this.id)} does not run on a terminal: only an execution started with tty: true can be resized`,
      );
    }
    if (this.finished) return false;
    this.host.resize(this, cols, rows);
    return true;
  }

  private checkStdin(): void {
    if (this.finished) throw new SluiceError('unknown_execution', `execution ${JSON.stringify(this.id)} has ended`);
    if (this.stdinClosed) throw new SluiceError('stdin_closed', `the standard input of execution ${JSON.stringify(this.id)} is closed`);
  }

  /** Stops the program (SIGTERM, then SIGKILL); it ends with `cancelled`. Does nothing once it ended. */
  cancel(): void {
    if (this.finished || this.cancelRequested) return;
    this.cancelRequested = true;
    this.host.cancel(this);
  }

  [Symbol.asyncIterator](): AsyncIterator<SluiceEvent> {
    return this.queue[Symbol.asyncIterator]();
  }

  /** @internal Learns the gateway-made session from the first event. */
  bind(session: string): void {
    this.sessionName = session;
  }

  /** @internal One of its events arrived (in order, once). */
  receive(event: SluiceEvent): void {
    if (this.finished) return;
    this.answered = true;
    if (this.sessionName === undefined && event.session !== null) this.sessionName = event.session;
    if (event.type === 'stdout') this.stdout.add(event.data, event.encoding === 'base64');
    else if (event.type === 'stderr') this.stderr.add(event.data, event.encoding === 'base64');
    else if (event.type === 'files_changed') this.filesChanged = event.changes;
    else if (event.type === 'display' || event.type === 'update_display') this.displays.push(event);
    else if (event.type === 'result') this.value = event;
    const terminal = isTerminal(event);
    // A terminal event is always taken: memory stays bounded by the budget plus one event.
    if (!this.queue.push(event, terminal) && this.queue.overflowed && this.queue.consumed) {
      this.fellBehind();
      return;
    }
    // Never iterated: `done` alone collects the output, and is never cut off. A loop that
    // starts late reads what was buffered, then the `slow_consumer` error event.
    if (terminal) this.terminate(event);
  }

  /**
   * Its consumer fell behind: the queue ended with a `slow_consumer` error event after what
   * it holds. The execution is cancelled and its later events discarded; `done` rejects
   * with a {@link SlowConsumerError}. The client keeps the id until the gateway's terminal event.
   */
  private fellBehind(): void {
    this.cancel();
    this.settle();
    this.rejectDone(new SlowConsumerError(`execution ${JSON.stringify(this.id)}: its events were not read fast enough; it was cancelled`));
  }

  private terminate(event: TerminalEvent): void {
    this.settle();
    this.queue.end();
    if (event.type === 'error') {
      this.rejectDone(new GatewayError(event as ErrorEvent, `execution ${JSON.stringify(this.id)}`));
      return;
    }
    const outcome: Outcome = {
      id: this.id,
      session: event.session ?? this.sessionName ?? '',
      status: event.type,
      stdout: this.stdout.text(),
      stderr: this.stderr.text(),
      displays: this.displays,
      terminal: event,
    };
    if (this.value) outcome.value = this.value;
    if (event.usage) outcome.usage = event.usage;
    if (event.exception) outcome.exception = event.exception;
    if (event.execution_count !== undefined) outcome.executionCount = event.execution_count;
    if (this.filesChanged) outcome.filesChanged = this.filesChanged;
    if (event.type === 'completed') {
      if (event.exit_code !== undefined) outcome.exitCode = event.exit_code;
      if (event.signal !== undefined) outcome.signal = event.signal;
    } else if (event.type === 'resource_limit') {
      outcome.limit = event.limit;
      outcome.limitValue = event.limit_value;
      if (event.limit_observed !== undefined) outcome.limitObserved = event.limit_observed;
    }
    this.resolveDone(outcome);
  }

  /** @internal Ends it without a terminal event from the gateway (connection lost, client closed, aborted). */
  fail(error: SluiceError): void {
    if (this.finished) return;
    this.settle();
    this.queue.fail(error);
    this.rejectDone(error);
  }

  /** @internal Ends it before it was sent because its signal was already aborted. */
  abortBeforeStart(): void {
    this.fail(new AbortedError(`execution ${JSON.stringify(this.id)} was aborted before it was sent`));
  }

  private settle(): void {
    this.finished = true;
    if (this.signal && this.abortListener) this.signal.removeEventListener('abort', this.abortListener);
  }
}
