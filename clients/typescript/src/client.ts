/**
 * `SluiceClient`: runs code on a Sluice gateway over one WebSocket and routes each event
 * to the {@link Execution} or {@link SessionEvents} it belongs to.
 *
 * Sessions and resume (PROTOCOL.md §7): every event of a session carries its sequence.
 * The client keeps, per session it reads, the last sequence it received on the socket,
 * the highest one it routed to executions, and each reader's own position. After the
 * connection drops and comes back it attaches every session it still needs with `since`
 * set to what every consumer already has, and drops what a consumer has seen, so each one
 * gets every event exactly once, in order. While reconnecting is on it acknowledges what
 * it has received (`ack`), so the gateway keeps every event still in flight.
 */

import { Connection, type ReconnectOptions, tokenFitsSubprotocol, type WebSocketConstructor } from './connection.js';
import { ConnectionError, GatewayError, InvalidEventError, SluiceError } from './errors.js';
import { type Catalog, decodeEvent, type ErrorEvent, isTerminal, type SluiceEvent } from './events.js';
import { type ExecuteOptions, Execution, type ExecutionHost } from './execution.js';
import {
  type DeleteFileOptions,
  encodeBase64,
  type FileAnswer,
  type FileListing,
  FileRequest,
  type ReadFileOptions,
  UPLOAD_PIECE_BYTES,
  type WriteFileOptions,
} from './files.js';
import {
  type AttachFrame,
  type DeleteFileFrame,
  type ExecuteFrame,
  encodeFrame,
  type FileFrame,
  type InspectFrame,
  type ListFilesFrame,
  type QueryFrame,
  type ReadFileFrame,
  type ResizeFrame,
  type WriteFileFrame,
} from './frames.js';
import { type Completions, codePointOffset, type Inspection, type InspectOptions, PendingQuery, type QueryAnswer } from './queries.js';
import { type AttachOptions, SessionEvents, type SessionHost } from './session.js';

/** Options of {@link SluiceClient.connect}. */
export interface ClientOptions {
  /**
   * The credential for a gateway that requires one: an API key or a signed token (a web
   * app's backend mints a short-lived one per user). It travels in the WebSocket
   * subprotocol list as `sluice.token.<token>` next to `sluice.v1`, on every connection
   * and reconnect (browsers cannot set headers on a WebSocket), so it may hold only the
   * characters of an HTTP token (API keys and JWTs do). A refusal rejects with
   * {@link AuthenticationError} in Node and is never retried; a browser only sees a failed
   * connection (a {@link ConnectionError} whose message says the credential may have been
   * refused).
   */
  token?: string;
  /** The WebSocket constructor; default `globalThis.WebSocket` (the Node entry point supplies `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Reconnect policy, or `false` to end everything when the connection drops. On by default. */
  reconnect?: ReconnectOptions | false;
  /** How long one connection attempt may take, in ms (default 10000). */
  connectTimeoutMs?: number;
  /** Most bytes of unread events buffered for one execution or session reader (default 16 MiB). */
  maxBufferedBytes?: number;
  /**
   * Largest frame the client sends, in bytes (default 1 MiB, the gateway's default
   * `--max-frame-bytes`). A larger one throws a {@link SluiceError} with code `too_large`
   * instead of being refused by the gateway on the socket stream.
   */
  maxFrameBytes?: number;
  /** Most frames kept for sending while the connection is down (default 4096). */
  maxQueuedFrames?: number;
  /** Refusals on the socket stream that belong to no execution (e.g. `stdin_full`, `unknown_execution`). */
  onSocketError?: (error: GatewayError) => void;
  /** Called when the link goes down (`reconnecting`), comes back (`connected`) or ends (`closed`). */
  onConnectionChange?: (state: 'connected' | 'reconnecting' | 'closed', reason?: string) => void;
  /** Events that break the protocol (they are skipped). Default: `console.warn`. */
  onProtocolError?: (error: SluiceError) => void;
}

/** An `attach` on its way; the gateway answers attaches of one session in order. */
interface PendingAttach {
  since: number;
  readers: SessionEvents[];
  /** Sent by a reconnect to resume the session. */
  resume: boolean;
  /** Opens the session with a workspace (`attach` with `workspace: true`). */
  workspace?: boolean;
  /** Made by `restart()` for a session the client did not read. */
  forRestart?: boolean;
  /** Its place among the frames written to the current socket (set once written). */
  ordinal?: number;
}

/** A `restart()` waiting for its `restarted` event (or its refusal). */
interface PendingRestart {
  text: string;
  resolve: () => void;
  reject: (error: Error) => void;
  /** Its frame was handed to `write` (to the socket, or to the outbox while the link is down). */
  written: boolean;
  /** Its place among the frames written to the current socket; undefined until it went out. */
  ordinal: number | undefined;
  /** A refusal may still be its answer: no answer to a frame written after it has come yet. */
  refusable: boolean;
  /** Only a `restarted` numbered at or after this time answers it (what an attach replays is older). */
  notBefore: number;
}

/** What the client knows of one session it reads. */
interface SessionState {
  name: string;
  /** Made by the gateway for one execution without `session`. */
  gatewayMade: boolean;
  /** The client executed in it, or opened its workspace: it reads it (and resumes it) until it closes. */
  keep: boolean;
  /** The last sequence received on the current socket. */
  position: number | undefined;
  /** The highest sequence routed to executions. */
  delivered: number;
  executions: Map<string, Execution>;
  readers: Set<SessionEvents>;
  /** The head is on its way; the others wait for its answer. */
  attaches: PendingAttach[];
  /** `restart()` calls not answered yet, oldest first; written only once no attach is on its way. */
  restarts: PendingRestart[];
  acked: number;
  unackedEvents: number;
  unackedBytes: number;
}

/** Acknowledge a session after this many events or bytes, and whenever the socket goes quiet. */
const ACK_EVERY_EVENTS = 256;
const ACK_EVERY_BYTES = 1 << 20;

const utf8 = new TextEncoder();

const ATTACH_REFUSALS = new Set(['unknown_session', 'bad_request', 'too_many_sessions', 'not_permitted', 'no_workspace']);
const RESTART_REFUSALS = new Set(['unknown_session', 'bad_request', 'not_permitted']);

/** How a gateway older than the file frames (or the queries) refuses one: it does not know its type. */
const UNKNOWN_FILE_FRAME = /^unknown frame type "(write_file|read_file|list_files|delete_file|complete|inspect)"/;

let defaultWebSocket: WebSocketConstructor | undefined;

/** Sets the WebSocket constructor used when `options.WebSocket` is not given (the Node entry point sets `ws`). */
export function useDefaultWebSocket(webSocket: WebSocketConstructor): void {
  defaultWebSocket = webSocket;
}

/** A random hexadecimal string (crypto.getRandomValues works in browsers and Node >= 20). */
function randomHex(bytes: number): string {
  const buf = new Uint8Array(bytes);
  globalThis.crypto.getRandomValues(buf);
  return Array.from(buf, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** A client of one Sluice gateway; see the module comment. Make one with {@link SluiceClient.connect}. */
export class SluiceClient {
  private connection!: Connection;
  private readonly sessions = new Map<string, SessionState>();
  /** Executions without `session`, by id, until they end. */
  private readonly unnamed = new Map<string, Execution>();
  /** `runtimes` questions sent and not answered yet, oldest first (answers come in order). */
  private runtimesAsked: { resolve: (catalog: Catalog) => void; reject: (error: Error) => void }[] = [];
  /** File frames sent (or waiting for a socket) and not answered yet, by `request`. */
  private readonly fileRequests = new Map<string, FileRequest<unknown>>();
  /** `complete` and `inspect` frames sent (or waiting for a socket) and not answered yet, by `request`. */
  private readonly queries = new Map<string, PendingQuery>();
  /** Frames waiting for a socket. */
  private outbox: {
    text: string;
    execution?: Execution;
    file?: FileRequest<unknown>;
    query?: PendingQuery;
    kind: 'execute' | 'cancel' | 'other';
    onSent?: () => void;
  }[] = [];
  /** How many frames that wait for an answer went out on the current socket (their order, to match refusals). */
  private frameOrdinal = 0;
  private closed = false;
  private flushTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly idPrefix = randomHex(6);
  private nextId = 1;
  private readonly acking: boolean;
  private readonly maxBufferedBytes: number;
  private readonly maxQueuedFrames: number;
  private readonly maxFrameBytes: number;
  private closedError: ConnectionError | undefined;
  /** What executions and session readers call back into. */
  private readonly host: ExecutionHost & SessionHost = {
    sendStdin: (execution, data, eof) => this.sendStdinFor(execution, data, eof),
    resize: (execution, cols, rows) => this.resizeFor(execution, cols, rows),
    cancel: (execution) => this.cancelFor(execution),
    detach: (reader) => this.detachReader(reader),
  };

  private constructor(private readonly options: ClientOptions) {
    this.acking = options.reconnect !== false;
    this.maxBufferedBytes = options.maxBufferedBytes ?? 16 << 20;
    this.maxQueuedFrames = options.maxQueuedFrames ?? 4096;
    this.maxFrameBytes = options.maxFrameBytes ?? 1 << 20;
  }

  /**
   * Connects to the gateway at `url` (e.g. `ws://127.0.0.1:7878/v1/ws`). Rejects with a
   * {@link ConnectionError} when the first connection cannot be made
   * ({@link AuthenticationError} when the gateway refuses `options.token`, where the
   * WebSocket implementation shows it).
   */
  static async connect(url: string, options: ClientOptions = {}): Promise<SluiceClient> {
    if (options.token !== undefined && !tokenFitsSubprotocol(options.token)) {
      throw new SluiceError(
        'bad_request',
        "the token holds characters a WebSocket subprotocol cannot carry (only letters, digits and !#$%&'*+-.^_`|~)",
      );
    }
    const WebSocket = options.WebSocket ?? defaultWebSocket ?? (globalThis as { WebSocket?: unknown }).WebSocket;
    if (typeof WebSocket !== 'function') {
      throw new ConnectionError(
        'connection_lost',
        'no WebSocket implementation: pass options.WebSocket, or import sluice-client from Node (which uses ws)',
      );
    }
    const client = new SluiceClient(options);
    const reconnect = options.reconnect;
    client.connection = await Connection.open(
      {
        url,
        token: options.token,
        WebSocket: WebSocket as WebSocketConstructor,
        connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
        reconnect:
          reconnect === false
            ? null
            : {
                initialDelayMs: reconnect?.initialDelayMs ?? 100,
                maxDelayMs: reconnect?.maxDelayMs ?? 5_000,
                giveUpAfterMs: reconnect?.giveUpAfterMs ?? 30_000,
                maxAttempts: reconnect?.maxAttempts,
              },
      },
      {
        message: (text) => client.onMessage(text),
        down: (reason) => client.onDown(reason),
        up: () => client.onUp(),
        closed: (error) => client.onClosed(error),
      },
    );
    return client;
  }

  /** True while a socket to the gateway is open (false while reconnecting and after `close()`). */
  get connected(): boolean {
    return !this.closed && this.connection.connected;
  }

  // ---------------------------------------------------------------------------------
  // Public API
  // ---------------------------------------------------------------------------------

  /**
   * Starts running `code` and returns its handle at once: iterate it for events, use
   * `sendStdin`/`closeStdin`/`cancel` (and `resize` for `tty: true`, on a terminal), or
   * await `done` for the outcome. Throws an
   * {@link SluiceError} (code `bad_request`) for an invalid request, and a
   * {@link ConnectionError} once the client is closed.
   */
  execute(code: string, options: ExecuteOptions): Execution {
    this.checkOpen();
    const id = options.id ?? `ts-${this.idPrefix}-${this.nextId++}`;
    const frame: ExecuteFrame = { type: 'execute', id, language: options.language, code };
    if (options.session !== undefined) frame.session = options.session;
    if (options.persistent !== undefined) frame.persistent = options.persistent;
    if (options.stdin !== undefined) frame.stdin = options.stdin;
    if (options.env !== undefined) frame.env = options.env;
    if (options.args !== undefined) frame.args = options.args;
    if (options.limits !== undefined) frame.limits = options.limits;
    if (options.encoding !== undefined) frame.encoding = options.encoding;
    if (options.tty !== undefined) frame.tty = options.tty;
    if (options.cols !== undefined) frame.cols = options.cols;
    if (options.rows !== undefined) frame.rows = options.rows;
    if (options.term !== undefined) frame.term = options.term;
    if (options.files !== undefined && Object.keys(options.files).length > 0) frame.files = options.files;
    if (options.workspace) frame.workspace = true;
    // Acknowledging from the first event on: what the gateway writes before the first
    // `ack` arrives survives a cut too.
    if (this.acking) frame.ack = true;
    const text = encodeFrame(frame);
    const execution = new Execution(this.host, {
      id,
      session: options.session,
      frame: text,
      stdinGiven: options.stdin !== undefined,
      tty: options.tty === true,
      maxBufferedBytes: this.maxBufferedBytes,
      signal: options.signal,
    });
    if (options.signal?.aborted) {
      execution.abortBeforeStart();
      return execution;
    }
    if (options.session !== undefined) {
      const state = this.sessionState(options.session, false);
      if (state.executions.has(id)) {
        throw new SluiceError(
          'duplicate_id',
          `execution ${JSON.stringify(id)} is already running in session ${JSON.stringify(options.session)}`,
        );
      }
      state.keep = true;
      state.executions.set(id, execution);
    } else {
      if (this.unnamed.has(id)) {
        throw new SluiceError('duplicate_id', `execution ${JSON.stringify(id)} is already running on this client`);
      }
      this.unnamed.set(id, execution);
    }
    this.write(text, execution, 'execute');
    return execution;
  }

  /** The same as {@link execute}: the handle is an async iterable of the execution's events. */
  executeCodeStream(code: string, options: ExecuteOptions): Execution {
    return this.execute(code, options);
  }

  /**
   * Reads `session`'s events after `options.since` (default 0: all the gateway still
   * buffers), live ones included, across reconnects. Await `ready` to know the gateway
   * accepted it; a refusal (e.g. `unknown_session`) also ends the loop with a {@link GatewayError}.
   *
   * With `workspace: true` it opens the session (creating it when it does not exist) with
   * a workspace, so that files can be written before anything runs; the client then stays
   * attached to the session until it closes, even once this reader is detached, so that
   * file frames and executions keep reaching it. A gateway that keeps no workspaces
   * refuses it with `no_workspace`.
   */
  attach(session: string, options: AttachOptions = {}): SessionEvents {
    this.checkOpen();
    const since = options.since ?? 0;
    const workspace = options.workspace === true;
    encodeFrame(workspace ? { type: 'attach', session, since, workspace } : { type: 'attach', session, since });
    const reader = new SessionEvents(this.host, session, since, this.maxBufferedBytes, options.signal);
    if (options.signal?.aborted) {
      reader.end(new SluiceError('aborted', `reading session ${JSON.stringify(session)} was aborted`));
      return reader;
    }
    const state = this.sessionState(session, false);
    // Never move the socket past what the session's other consumers still need.
    const current = this.resumePoint(state);
    state.readers.add(reader);
    if (workspace) state.keep = true;
    this.enqueueAttach(state, {
      since: current === undefined ? since : Math.min(since, current),
      readers: [reader],
      resume: false,
      workspace,
    });
    return reader;
  }

  /**
   * Writes `data` (text as UTF-8, or bytes) to `path` in `session`'s workspace, making its
   * parent directories, and resolves with the file's size. The socket must read the session
   * (it executed in it, or {@link attach}ed it) and the session must have a workspace
   * (`attach` or `execute` with `workspace: true`). Data larger than one frame goes in
   * pieces of 256 KiB, one after the other (the first replaces the file, the rest append);
   * if one fails, the file holds the pieces before it. Rejects with a {@link GatewayError}
   * carrying the gateway's code (`no_workspace`, `invalid_path`, `workspace_full`, ...), an
   * {@link InvalidFrameError} for a path or mode the gateway would refuse (nothing is
   * sent), or a {@link ConnectionError} (`connection_lost`) when the connection dropped
   * before the answer: the piece may or may not have been written.
   */
  async writeFile(session: string, path: string, data: string | Uint8Array, options: WriteFileOptions = {}): Promise<number> {
    this.checkOpen();
    const bytes = typeof data === 'string' ? utf8.encode(data) : data;
    const piece = this.uploadPiece(session, path);
    let offset = 0;
    let size = 0;
    do {
      const chunk = bytes.subarray(offset, offset + piece);
      const frame: WriteFileFrame = {
        type: 'write_file',
        request: this.requestId(),
        session,
        path,
        data: encodeBase64(chunk),
        encoding: 'base64',
      };
      if (offset > 0 || options.append) frame.append = true;
      if (offset === 0 && options.mode !== undefined) frame.mode = options.mode;
      size = await this.fileRequest(frame, 0, (event) => (event.type === 'file_written' ? event.size : 0));
      offset += chunk.length;
    } while (offset < bytes.length);
    return size;
  }

  /**
   * The bytes of `path` in `session`'s workspace (or `length` bytes of it from `offset`),
   * read exactly (they travel as base64, in parts of 64 KiB). Asked again from the start
   * if the connection drops before the last part. Rejects as {@link writeFile} does
   * (`not_found` for a missing file, `invalid_path` for a directory).
   */
  async readFile(session: string, path: string, options: ReadFileOptions = {}): Promise<Uint8Array> {
    this.checkOpen();
    const frame: ReadFileFrame = { type: 'read_file', request: this.requestId(), session, path, encoding: 'base64' };
    if (options.offset !== undefined && options.offset > 0) frame.offset = options.offset;
    if (options.length !== undefined) frame.length = options.length;
    return this.fileRequest(frame, options.offset ?? 0, (_event, bytes) => bytes ?? new Uint8Array(0));
  }

  /** The text of `path` in `session`'s workspace: {@link readFile}, decoded as UTF-8 (a byte that is not becomes U+FFFD). */
  async readText(session: string, path: string, options: ReadFileOptions = {}): Promise<string> {
    return new TextDecoder().decode(await this.readFile(session, path, options));
  }

  /**
   * The entries of the directory `path` (default: the workspace itself) of `session`'s
   * workspace, sorted by name, each with its kind, size, mode and modification time; the
   * array's `truncated` says when there were more than one answer carries. Asked again if
   * the connection drops before the answer.
   */
  async listFiles(session: string, path = ''): Promise<FileListing> {
    this.checkOpen();
    const frame: ListFilesFrame = { type: 'list_files', request: this.requestId(), session };
    if (path !== '') frame.path = path;
    return this.fileRequest(frame, 0, (event) => {
      const listing = (event.type === 'file_list' ? [...event.entries] : []) as FileListing;
      listing.truncated = event.type === 'file_list' && event.truncated === true;
      return listing;
    });
  }

  /**
   * Removes the file `path` of `session`'s workspace, or a directory (one that is not empty
   * only with `recursive`). Rejects with `not_found` when it does not exist.
   */
  async deleteFile(session: string, path: string, options: DeleteFileOptions = {}): Promise<void> {
    this.checkOpen();
    const frame: DeleteFileFrame = { type: 'delete_file', request: this.requestId(), session, path };
    if (options.recursive) frame.recursive = true;
    await this.fileRequest(frame, 0, () => undefined);
  }

  /**
   * Asks which languages this client may run (each with its interpreter's version, and
   * whether it runs persistently or on a terminal) and each limit's default and maximum,
   * as the client's credential narrows them. Asked again on the new socket if the
   * connection drops before the answer. A gateway older than the `runtimes` frame refuses
   * it: the promise rejects with a {@link GatewayError} (code `bad_request`).
   */
  runtimes(): Promise<Catalog> {
    this.checkOpen();
    const text = encodeFrame({ type: 'runtimes' });
    return new Promise<Catalog>((resolve, reject) => {
      this.runtimesAsked.push({ resolve, reject });
      try {
        this.write(text, undefined, 'other');
      } catch (err) {
        this.runtimesAsked.pop();
        reject(err);
      }
    });
  }

  /**
   * Restarts `session`'s persistent interpreter, like a notebook's "restart kernel"
   * (PROTOCOL.md §4.10): every cell of the session that runs or waits is cancelled (each
   * ends with `cancelled`), and the next cell starts a fresh interpreter, with none of the
   * old state and `execution_count` from 1. Resolves when the session's `restarted` event
   * arrives (after those cells' terminal events); that event also reaches the session's
   * {@link SessionEvents} readers.
   *
   * The answer comes on the session's stream, so the client reads the session: one it
   * executed in or attached is used as it is; for any other, the client attaches it for
   * the restart (and detaches once it is answered, unless something else needs it).
   * Rejects with a {@link GatewayError} when the gateway refuses it (`for_session` names the
   * session): `unknown_session`, `not_permitted`, or `bad_request` for a session the gateway
   * made for one execution. Across a reconnect: a restart not yet sent waits for the new
   * socket and goes out after the session is resumed; one sent on the socket that dropped
   * rejects with a {@link ConnectionError} (`connection_lost`), as the interpreter may or
   * may not have been restarted (a `restarted` event in the session's stream says it was).
   * It is never sent twice.
   */
  restart(session: string): Promise<void> {
    this.checkOpen();
    const text = encodeFrame({ type: 'restart', session });
    const state = this.sessionState(session, false);
    const reads =
      state.executions.size > 0 || state.readers.size > 0 || state.keep || state.restarts.length > 0 || state.attaches.length > 0;
    return new Promise<void>((resolve, reject) => {
      state.restarts.push({ text, resolve, reject, written: false, ordinal: undefined, refusable: false, notBefore: 0 });
      if (!reads) this.enqueueAttach(state, { since: 0, readers: [], resume: false, forRestart: true });
      try {
        this.flushRestarts(state);
      } catch (err) {
        state.restarts = state.restarts.filter((r) => r.written);
        this.releaseIfIdle(state);
        reject(err);
      }
    });
  }

  /**
   * The completions of the name that ends at `cursorPos` in `code`, from `session`'s
   * persistent interpreter (PROTOCOL.md §4.11), as a notebook's Tab asks: its variables,
   * imports and their attributes. Each of `matches` replaces `code.slice(cursorStart, cursorEnd)`.
   *
   * Offsets are JavaScript string indices (UTF-16 units), as editors give them; the client
   * sends the protocol's code points and converts the answer back. A `cursorPos` that is not
   * an index of `code` (or splits a surrogate pair) rejects with an {@link InvalidFrameError}
   * (`bad_request`), nothing sent.
   *
   * The client must read the session (it executed in it, or {@link attach}ed it): otherwise
   * it rejects with a {@link SluiceError} `unknown_session` before sending anything. A refusal
   * rejects with a {@link GatewayError} whose `code` is the gateway's: `kernel_busy` (a cell
   * runs or waits, or another query is answered: ask again after the cell), `no_kernel` (no
   * persistent cell ran in the session yet, or it was restarted since), `query_timeout`,
   * `unknown_session`, `not_permitted`, `bad_request`. Asked while the connection is down,
   * it waits for the new socket; sent on a socket that drops before the answer, it rejects
   * with a {@link ConnectionError} (`connection_lost`) and is not sent again (it changed
   * nothing: ask again if it still matters).
   */
  async complete(session: string, code: string, cursorPos: number): Promise<Completions> {
    this.checkOpen();
    const frame = { type: 'complete', request: this.queryId(), session, code, cursor_pos: codePointOffset(code, cursorPos) } as const;
    return (await this.query(frame, code)) as Completions;
  }

  /**
   * What `session`'s persistent interpreter knows about the name at `cursorPos` in `code`
   * (the name under the cursor, or the callee when the cursor is in a call's parentheses),
   * as a notebook's Shift-Tab asks: `found`, and a `bundle` whose `text/plain` (also as
   * `text`) gives its signature, type, value, where it is defined and its documentation
   * (with `detailLevel: 1`, its source too). `cursorPos` is a JavaScript string index, and
   * everything else is as for {@link complete}.
   */
  async inspect(session: string, code: string, cursorPos: number, options: InspectOptions = {}): Promise<Inspection> {
    this.checkOpen();
    const frame: InspectFrame = { type: 'inspect', request: this.queryId(), session, code, cursor_pos: codePointOffset(code, cursorPos) };
    if (options.detailLevel !== undefined) frame.detail_level = options.detailLevel;
    return (await this.query(frame, code)) as Inspection;
  }

  /**
   * Closes the connection. Executions this client started that are still running are
   * cancelled first (the gateway would otherwise keep them for its grace period); every
   * open stream ends with a {@link ConnectionError} (code `closed`).
   */
  close(): void {
    if (this.closed) return;
    for (const execution of this.allExecutions()) {
      if (!execution.ended && execution.sent) this.connection.send(this.cancelFrame(execution));
    }
    this.closed = true;
    clearTimeout(this.flushTimer);
    this.connection.close();
  }

  // ---------------------------------------------------------------------------------
  // File requests
  // ---------------------------------------------------------------------------------

  private requestId(): string {
    return `ts-${this.idPrefix}-f${this.nextId++}`;
  }

  /** Sends a file frame (checked first: a bad path rejects with `invalid_path`) and resolves with what `finish` makes of its answer. */
  private fileRequest<T>(frame: FileFrame, start: number, finish: (event: FileAnswer, bytes: Uint8Array | undefined) => T): Promise<T> {
    const text = encodeFrame(frame);
    const what = `${frame.type} ${JSON.stringify(frame.path ?? '')} of session ${JSON.stringify(frame.session)}`;
    const repeatable = frame.type === 'read_file' || frame.type === 'list_files';
    const request = new FileRequest<T>(frame.request, text, repeatable, what, start, finish);
    this.fileRequests.set(frame.request, request as FileRequest<unknown>);
    try {
      this.write(text, undefined, 'other', request as FileRequest<unknown>);
    } catch (err) {
      this.fileRequests.delete(frame.request);
      throw err;
    }
    return request.promise;
  }

  /** The most raw bytes a `write_file` to `path` may carry so that its frame stays within `maxFrameBytes`. */
  private uploadPiece(session: string, path: string): number {
    const envelope: WriteFileFrame = {
      type: 'write_file',
      // Longer than any request id this client makes.
      request: 'r'.repeat(40),
      session,
      path,
      data: '',
      encoding: 'base64',
      append: true,
      mode: 0o777,
    };
    // Checked here, so that a bad path or mode is refused before anything is sent.
    const room = this.maxFrameBytes - utf8.encode(encodeFrame(envelope)).length;
    const piece = Math.min(UPLOAD_PIECE_BYTES, Math.floor(room / 4) * 3);
    if (piece <= 0) {
      throw new SluiceError('too_large', `a write_file frame to this path cannot fit in ${this.maxFrameBytes} bytes (maxFrameBytes)`);
    }
    return piece;
  }

  private queryId(): string {
    return `ts-${this.idPrefix}-q${this.nextId++}`;
  }

  /** Sends a query (checked first) once the client reads its session, and resolves with its converted answer. */
  private query(frame: QueryFrame, code: string): Promise<Completions | Inspection> {
    const text = encodeFrame(frame);
    const state = this.sessions.get(frame.session);
    if (!state || !(state.executions.size > 0 || state.readers.size > 0 || state.keep)) {
      throw new SluiceError(
        'unknown_session',
        `${frame.type}: this client does not read session ${JSON.stringify(frame.session)}; ` +
          'execute in it or attach it first (nothing was sent)',
      );
    }
    const pending = new PendingQuery(frame.request, frame.type, code, `${frame.type} in session ${JSON.stringify(frame.session)}`);
    this.queries.set(frame.request, pending);
    try {
      this.write(text, undefined, 'other', undefined, undefined, pending);
    } catch (err) {
      this.queries.delete(frame.request);
      throw err;
    }
    return pending.promise;
  }

  /** An answer (or refusal) that repeats a query's `request`; false when no such query waits. */
  private onQueryAnswer(event: QueryAnswer, request: string): boolean {
    const pending = this.queries.get(request);
    if (!pending) return false;
    this.queries.delete(request);
    pending.take(event);
    return true;
  }

  /** An answer (or refusal) that repeats a file frame's `request`; false when no such request waits. */
  private onFileAnswer(event: FileAnswer, request: string): boolean {
    const pending = this.fileRequests.get(request);
    if (!pending) return false;
    if (pending.take(event)) this.fileRequests.delete(request);
    return true;
  }

  // ---------------------------------------------------------------------------------
  // What executions and readers ask for
  // ---------------------------------------------------------------------------------

  private sendStdinFor(execution: Execution, data: string | undefined, eof: boolean): void {
    this.checkOpen();
    const frame: { type: 'stdin'; id: string; session?: string; data?: string; eof?: boolean } = {
      type: 'stdin',
      id: execution.id,
    };
    // With its session, the frame reaches the execution from a reconnected socket too.
    if (execution.session !== undefined && (execution.named || execution.answered)) frame.session = execution.session;
    if (data !== undefined) frame.data = data;
    if (eof) frame.eof = true;
    this.write(encodeFrame(frame), execution, 'other');
  }

  private resizeFor(execution: Execution, cols: number, rows: number): void {
    this.checkOpen();
    const frame: ResizeFrame = { type: 'resize', id: execution.id, cols, rows };
    // With its session, the frame reaches the execution from a reconnected socket too.
    if (execution.session !== undefined && (execution.named || execution.answered)) frame.session = execution.session;
    this.write(encodeFrame(frame), execution, 'other');
  }

  private cancelFor(execution: Execution): void {
    if (this.closed) return;
    this.write(this.cancelFrame(execution), execution, 'cancel');
  }

  /** A reader stopped: forget it, and stop reading its session if nothing else needs it. */
  private detachReader(reader: SessionEvents): void {
    const state = this.sessions.get(reader.session);
    if (!state?.readers.delete(reader)) return;
    for (const attach of state.attaches) attach.readers = attach.readers.filter((r) => r !== reader);
    if (state.readers.size === 0 && state.executions.size === 0 && state.restarts.length === 0 && !state.keep && !this.closed) {
      this.sessions.delete(state.name);
      this.write(encodeFrame({ type: 'detach', session: state.name }), undefined, 'other');
    }
  }

  // ---------------------------------------------------------------------------------
  // Sending
  // ---------------------------------------------------------------------------------

  private checkOpen(): void {
    if (this.closed) throw this.closedError ?? new ConnectionError('closed', 'the client is closed');
  }

  private cancelFrame(execution: Execution): string {
    const session = execution.named || execution.answered ? execution.session : undefined;
    return encodeFrame(session === undefined ? { type: 'cancel', id: execution.id } : { type: 'cancel', id: execution.id, session });
  }

  /** Writes a frame now, or keeps it for the next socket. */
  private write(
    text: string,
    execution: Execution | undefined,
    kind: 'execute' | 'cancel' | 'other',
    file?: FileRequest<unknown>,
    onSent?: () => void,
    query?: PendingQuery,
  ): void {
    // UTF-8 takes at most 3 bytes per UTF-16 unit: count bytes only when it could matter.
    if (text.length * 3 > this.maxFrameBytes) {
      const bytes = utf8.encode(text).length;
      if (bytes > this.maxFrameBytes) {
        throw new SluiceError(
          'too_large',
          `a ${bytes}-byte frame is larger than the gateway takes (${this.maxFrameBytes} bytes); split stdin over several calls`,
        );
      }
    }
    if (this.connection.connected && this.outbox.length === 0 && this.connection.send(text)) {
      this.markSent(execution, kind, file, onSent, query);
      return;
    }
    if (this.outbox.length >= this.maxQueuedFrames) {
      throw new SluiceError('connection_lost', `the connection is down and ${this.maxQueuedFrames} frames already wait for it`);
    }
    this.outbox.push({
      text,
      kind,
      ...(execution ? { execution } : {}),
      ...(file ? { file } : {}),
      ...(query ? { query } : {}),
      ...(onSent ? { onSent } : {}),
    });
  }

  private markSent(
    execution: Execution | undefined,
    kind: 'execute' | 'cancel' | 'other',
    file?: FileRequest<unknown>,
    onSent?: () => void,
    query?: PendingQuery,
  ): void {
    onSent?.();
    if (file) file.sent = true;
    if (query) query.sent = true;
    if (!execution) return;
    if (kind === 'execute') execution.sent = true;
    if (kind === 'cancel') execution.cancelSent = true;
  }

  private flushOutbox(): void {
    while (this.outbox.length > 0 && this.connection.connected) {
      const entry = this.outbox[0]!;
      if (!this.connection.send(entry.text)) return;
      this.outbox.shift();
      this.markSent(entry.execution, entry.kind, entry.file, entry.onSent, entry.query);
    }
  }

  // ---------------------------------------------------------------------------------
  // Sessions and attaches
  // ---------------------------------------------------------------------------------

  private sessionState(name: string, gatewayMade: boolean): SessionState {
    let state = this.sessions.get(name);
    if (!state) {
      state = {
        name,
        gatewayMade,
        keep: false,
        position: undefined,
        delivered: 0,
        executions: new Map(),
        readers: new Set(),
        attaches: [],
        restarts: [],
        acked: 0,
        unackedEvents: 0,
        unackedBytes: 0,
      };
      this.sessions.set(name, state);
    }
    return state;
  }

  /** The last sequence every consumer of the session has; undefined when it has none. */
  private resumePoint(state: SessionState): number | undefined {
    let point: number | undefined = state.executions.size > 0 ? state.delivered : undefined;
    for (const reader of state.readers) {
      if (reader.confirmed) point = point === undefined ? reader.last : Math.min(point, reader.last);
    }
    return point;
  }

  private enqueueAttach(state: SessionState, attach: PendingAttach): void {
    state.attaches.push(attach);
    if (state.attaches.length === 1) this.sendAttach(state, attach);
  }

  private sendAttach(state: SessionState, attach: PendingAttach): void {
    const frame: AttachFrame = { type: 'attach', session: state.name, since: attach.since };
    if (attach.workspace) frame.workspace = true;
    // An acknowledging client that comes back takes the lead again (PROTOCOL.md §9.3);
    // the `ack` frame after it says the same to a gateway older than `attach`'s `ack`.
    if (this.acking) frame.ack = true;
    this.write(encodeFrame(frame), undefined, 'other', undefined, () => {
      attach.ordinal = ++this.frameOrdinal;
    });
    if (this.acking && attach.since > 0) {
      this.write(encodeFrame({ type: 'ack', session: state.name, sequence: attach.since }), undefined, 'other');
      state.acked = Math.max(state.acked, attach.since);
    }
  }

  private onAttached(state: SessionState, event: SluiceEvent): void {
    const attach = state.attaches.shift();
    if (!attach) return;
    state.position = event.sequence;
    this.answeredUpTo(state, attach.ordinal);
    for (const reader of attach.readers) if (!reader.isDetached) reader.confirm();
    // What this attach replays is older than it: no `restarted` in it answers a restart waiting now.
    for (const restart of state.restarts) if (!restart.written) restart.notBefore = Math.max(restart.notBefore, event.timestamp);
    const next = state.attaches[0];
    if (next) this.sendAttach(state, next);
    else this.flushRestarts(state);
  }

  private onAttachRefused(state: SessionState, attach: PendingAttach, event: ErrorEvent): void {
    state.attaches.shift();
    this.answeredUpTo(state, attach.ordinal);
    for (const reader of attach.readers) reader.end(new GatewayError(event, `attach to session ${JSON.stringify(state.name)}`));
    if (attach.forRestart || attach.resume) {
      // The session cannot be read: the restarts waiting for it get the same answer.
      const waiting = state.restarts.filter((r) => !r.written);
      state.restarts = state.restarts.filter((r) => r.written);
      for (const restart of waiting) restart.reject(new GatewayError(event, `restart of session ${JSON.stringify(state.name)}`));
    }
    if (attach.resume) {
      // The session could not be resumed: its events are gone. An execute that no event
      // answered may not have reached the gateway (the session did not exist): it is sent
      // again and may recreate the session.
      for (const reader of state.readers) reader.end(new GatewayError(event, `resuming session ${JSON.stringify(state.name)}`));
      for (const execution of [...state.executions.values()]) {
        if (event.code === 'unknown_session' && !execution.answered && execution.named) continue;
        this.forget(state, execution);
        execution.fail(new GatewayError(event, `resuming execution ${JSON.stringify(execution.id)}`));
      }
    }
    const next = state.attaches[0];
    if (next) this.sendAttach(state, next);
    else if (state.executions.size === 0 && state.readers.size === 0 && state.restarts.length === 0 && (attach.resume || !state.keep)) {
      this.sessions.delete(state.name);
    } else this.flushRestarts(state);
  }

  /** Writes the session's restarts not written yet, once no attach of it is on its way (answers come in frame order). */
  private flushRestarts(state: SessionState): void {
    if (state.attaches.length > 0) return;
    for (const restart of state.restarts) {
      if (restart.written) continue;
      this.write(restart.text, undefined, 'other', undefined, () => {
        restart.ordinal = ++this.frameOrdinal;
        restart.refusable = true;
      });
      restart.written = true;
    }
  }

  /** A `restarted` event of the session: it answers the oldest restart sent. */
  /** Answers every restart written before it: restarts asked while one is under way share its `restarted` (PROTOCOL.md §4.10). */
  private onRestarted(state: SessionState, event: SluiceEvent): void {
    const answered = state.restarts.filter((r) => r.ordinal !== undefined && event.timestamp >= r.notBefore);
    if (answered.length === 0) return;
    state.restarts = state.restarts.filter((r) => !answered.includes(r));
    for (const restart of answered) restart.resolve();
    this.releaseIfIdle(state);
  }

  /** An attach (of ordinal `ordinal`) was answered: every restart written before it was not refused. */
  private answeredUpTo(state: SessionState, ordinal: number | undefined): void {
    if (ordinal === undefined) return;
    for (const restart of state.restarts) if (restart.ordinal !== undefined && restart.ordinal < ordinal) restart.refusable = false;
  }

  /** A session the client attached only for a restart is let go once nothing needs it. */
  private releaseIfIdle(state: SessionState): void {
    if (
      state.gatewayMade ||
      state.keep ||
      state.executions.size > 0 ||
      state.readers.size > 0 ||
      state.restarts.length > 0 ||
      state.attaches.length > 0 ||
      this.sessions.get(state.name) !== state
    ) {
      return;
    }
    this.sessions.delete(state.name);
    if (!this.closed) this.write(encodeFrame({ type: 'detach', session: state.name }), undefined, 'other');
  }

  private forget(state: SessionState, execution: Execution): void {
    state.executions.delete(execution.id);
    if (!execution.named && this.unnamed.get(execution.id) === execution) this.unnamed.delete(execution.id);
  }

  private *allExecutions(): Iterable<Execution> {
    const seen = new Set<Execution>(this.unnamed.values());
    for (const state of this.sessions.values()) for (const e of state.executions.values()) seen.add(e);
    yield* seen;
  }

  // ---------------------------------------------------------------------------------
  // Receiving
  // ---------------------------------------------------------------------------------

  private onMessage(text: string): void {
    let event: SluiceEvent;
    try {
      event = decodeEvent(text);
    } catch (err) {
      this.protocolError(err as SluiceError);
      return;
    }
    if (event.session === null) this.onSocketStream(event);
    else this.onSessionEvent(event, event.session, text.length);
  }

  private protocolError(error: SluiceError): void {
    if (this.options.onProtocolError) this.options.onProtocolError(error);
    else console.warn(`sluice-client: ${error.message}`);
  }

  /** Answers on the socket stream, and refusals: of a file frame, of an execute, of an attach, or of something else. */
  private onSocketStream(event: SluiceEvent): void {
    if (event.type === 'runtimes') {
      this.runtimesAsked.shift()?.resolve({ runtimes: event.runtimes, limits: event.limits });
      return;
    }
    if (event.type === 'file_written' || event.type === 'file_data' || event.type === 'file_list' || event.type === 'file_deleted') {
      this.onFileAnswer(event, event.request);
      return;
    }
    if (event.type === 'complete_reply' || event.type === 'inspect_reply') {
      this.onQueryAnswer(event, event.request);
      return;
    }
    if (event.type !== 'error') return;
    if (event.request !== undefined) {
      // The refusal of a file frame or a query: never an attach's or an execution's.
      if (!this.onQueryAnswer(event, event.request) && !this.onFileAnswer(event, event.request)) {
        this.options.onSocketError?.(new GatewayError(event));
      }
      return;
    }
    const unknownType = event.id === null && event.code === 'bad_request' ? UNKNOWN_FILE_FRAME.exec(event.data) : null;
    if (unknownType) {
      // A gateway older than the file frames does not know their type: the oldest such
      // request sent is refused (answers come in order).
      const type = unknownType[1]!;
      const query = [...this.queries.values()].find((q) => q.sent && q.type === type);
      if (query) {
        this.queries.delete(query.request);
        query.fail(new GatewayError(event, query.what));
        return;
      }
      const oldest = [...this.fileRequests.entries()].find(([, r]) => r.sent && r.text.startsWith(`{"type":"${type}"`));
      if (oldest) {
        this.fileRequests.delete(oldest[0]);
        oldest[1].fail(new GatewayError(event, oldest[1].what));
        return;
      }
    }
    if (
      event.id === null &&
      event.for_session === undefined &&
      event.code === 'bad_request' &&
      event.data.includes('"runtimes"') &&
      this.runtimesAsked.length > 0
    ) {
      // A gateway older than the frame does not know its type.
      this.runtimesAsked.shift()?.reject(new GatewayError(event, 'listing the runtimes'));
      return;
    }
    if (event.id !== null) {
      const execution =
        event.for_session !== undefined ? this.sessions.get(event.for_session)?.executions.get(event.id) : this.unnamed.get(event.id);
      if (execution && !execution.answered) {
        const state = event.for_session !== undefined ? this.sessions.get(event.for_session) : undefined;
        if (state) this.forget(state, execution);
        else this.unnamed.delete(execution.id);
        execution.receive(event);
        return;
      }
    }
    if (event.for_session !== undefined && RESTART_REFUSALS.has(event.code)) {
      // A refusal answers the oldest frame of the session that may still be refused:
      // the attach on its way, or a restart written before it.
      const state = this.sessions.get(event.for_session);
      const restart = state?.restarts.find((r) => r.refusable);
      const head = state?.attaches[0];
      if (state && restart && (head?.ordinal === undefined || (restart.ordinal ?? 0) < head.ordinal)) {
        state.restarts.splice(state.restarts.indexOf(restart), 1);
        restart.reject(new GatewayError(event, `restart of session ${JSON.stringify(state.name)}`));
        this.releaseIfIdle(state);
        return;
      }
    }
    if (event.for_session !== undefined && ATTACH_REFUSALS.has(event.code)) {
      const state = this.sessions.get(event.for_session);
      const head = state?.attaches[0];
      if (state && head) {
        this.onAttachRefused(state, head, event);
        return;
      }
    }
    this.options.onSocketError?.(new GatewayError(event));
  }

  private onSessionEvent(event: SluiceEvent, name: string, bytes: number): void {
    let state = this.sessions.get(name);
    if (event.type === 'attached') {
      if (state) this.onAttached(state, event);
      return;
    }
    if (!state) {
      // The first event of the gateway-made session of an execution without `session`.
      const execution = event.id !== null ? this.unnamed.get(event.id) : undefined;
      if (!execution || execution.answered) return;
      state = this.sessionState(name, true);
      execution.bind(name);
      state.executions.set(execution.id, execution);
    }
    if (event.type === 'gap') {
      state.position = event.resume_from - 1;
      if (state.position > state.delivered) {
        // Running executions of the session may have lost output: they are told, in place.
        for (const execution of state.executions.values()) if (execution.answered) execution.receive(event);
      }
      state.delivered = Math.max(state.delivered, state.position);
      for (const reader of state.readers) if (reader.confirmed && reader.last < state.position) reader.push(event);
      this.countForAck(state, bytes);
      return;
    }
    if (state.position !== undefined && event.sequence !== state.position + 1 && event.sequence > state.position) {
      this.protocolError(
        new InvalidEventError(
          `session ${JSON.stringify(name)} jumped from sequence ${state.position} to ${event.sequence} without a gap`,
          '',
        ),
      );
    }
    state.position = event.sequence;
    if (event.sequence > state.delivered) {
      state.delivered = event.sequence;
      const execution = event.id !== null ? state.executions.get(event.id) : undefined;
      if (execution) {
        execution.receive(event);
        if (isTerminal(event)) this.forget(state, execution);
      }
      if (event.type === 'restarted') this.onRestarted(state, event);
    }
    for (const reader of state.readers) {
      if (reader.confirmed && event.sequence > reader.last) reader.push(event);
    }
    this.countForAck(state, bytes);
  }

  // ---------------------------------------------------------------------------------
  // Acknowledgements
  // ---------------------------------------------------------------------------------

  private countForAck(state: SessionState, bytes: number): void {
    if (!this.acking) {
      this.dropIfDone(state);
      return;
    }
    state.unackedEvents += 1;
    state.unackedBytes += bytes;
    if (state.unackedEvents >= ACK_EVERY_EVENTS || state.unackedBytes >= ACK_EVERY_BYTES) this.sendAck(state);
    // Also whenever the socket goes quiet, so that a small gateway buffer never waits
    // for an acknowledgement that waits for more events.
    this.flushTimer ??= setTimeout(() => this.flushAcks(), 0);
  }

  private sendAck(state: SessionState): void {
    state.unackedEvents = 0;
    state.unackedBytes = 0;
    const position = state.position;
    if (position === undefined || position <= state.acked || !this.connection.connected) return;
    state.acked = position;
    this.connection.send(encodeFrame({ type: 'ack', session: state.name, sequence: position }));
  }

  private flushAcks(): void {
    this.flushTimer = undefined;
    if (this.closed) return;
    for (const state of [...this.sessions.values()]) {
      if (state.unackedEvents > 0) this.sendAck(state);
      this.dropIfDone(state);
    }
  }

  /** A gateway-made session whose execution ended and that nobody reads is no longer tracked. */
  private dropIfDone(state: SessionState): void {
    if (
      state.gatewayMade &&
      state.executions.size === 0 &&
      state.readers.size === 0 &&
      state.attaches.length === 0 &&
      state.restarts.length === 0
    ) {
      this.sessions.delete(state.name);
    }
  }

  // ---------------------------------------------------------------------------------
  // Connection lifecycle
  // ---------------------------------------------------------------------------------

  private onDown(reason: string): void {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    for (const execution of [...this.unnamed.values()]) {
      if (execution.sent && !execution.answered) {
        // Its session is not known yet, so it cannot be asked after.
        this.unnamed.delete(execution.id);
        execution.fail(
          new ConnectionError(
            'connection_lost',
            `the connection dropped before the gateway answered execution ${JSON.stringify(execution.id)}; it may or may not have run`,
          ),
        );
      }
    }
    // A read or a list is asked again on the new socket; a write or a delete may have been
    // done: it fails (`connection_lost`). Requests still in the outbox wait for the new socket.
    for (const [id, request] of [...this.fileRequests]) {
      if (!request.sent) continue;
      if (request.repeatable) {
        request.restart();
      } else {
        this.fileRequests.delete(id);
        request.fail(request.lost());
      }
    }
    // A query sent is not asked again: its answer would be stale, and the interpreter may
    // still be answering it (a resend could be refused with kernel_busy). It changed
    // nothing, so its caller may ask again. Queries still in the outbox wait for the new socket.
    for (const [request, query] of [...this.queries]) {
      if (!query.sent) continue;
      this.queries.delete(request);
      query.fail(query.lost());
    }
    this.frameOrdinal = 0;
    for (const state of this.sessions.values()) {
      // A restart that went out on the dropped socket may or may not have been done: it is
      // never sent again. One still waiting (or in the outbox) goes out on the new socket.
      for (const restart of state.restarts.filter((r) => r.ordinal !== undefined)) {
        restart.reject(
          new ConnectionError(
            'connection_lost',
            `the connection dropped before the gateway answered the restart of session ${JSON.stringify(state.name)}; ` +
              'its interpreter may or may not have been restarted',
          ),
        );
      }
      state.restarts = state.restarts.filter((r) => r.ordinal === undefined);
      state.attaches = [];
      state.acked = 0;
      state.unackedEvents = 0;
      state.unackedBytes = 0;
      state.position = undefined;
    }
    this.options.onConnectionChange?.('reconnecting', reason);
  }

  private onUp(): void {
    const queued = this.outbox;
    this.outbox = [];
    const queuedExecutions = new Set(queued.filter((e) => e.kind === 'execute').map((e) => e.execution));
    for (const state of [...this.sessions.values()]) {
      const needed = state.executions.size > 0 || state.readers.size > 0 || state.keep || state.restarts.length > 0;
      if (!needed) {
        this.sessions.delete(state.name);
        continue;
      }
      let since = this.resumePoint(state);
      const waiting = [...state.readers].filter((r) => !r.confirmed);
      for (const reader of waiting) since = since === undefined ? reader.last : Math.min(since, reader.last);
      this.enqueueAttach(state, { since: since ?? state.delivered, readers: waiting, resume: true });
    }
    // An execute in a named session that no event answered is sent again: the gateway
    // recognises a repeat by its id and runs it at most once (PROTOCOL.md §7.6).
    for (const state of this.sessions.values()) {
      for (const execution of state.executions.values()) {
        if (execution.named && !execution.answered && !queuedExecutions.has(execution)) {
          this.write(execution.frame, execution, 'execute');
        }
      }
    }
    // Reads and lists the old socket did not answer, after the attaches that let them through.
    const queuedFiles = new Set(queued.map((entry) => entry.file));
    for (const request of this.fileRequests.values()) {
      if (!request.sent && request.repeatable && !queuedFiles.has(request))
        this.outbox.push({ text: request.text, kind: 'other', file: request });
    }
    for (const entry of queued) this.outbox.push(entry);
    // `runtimes` questions the old socket did not answer are asked again (any still in
    // the outbox are dropped first: they were queued for it).
    this.outbox = this.outbox.filter((entry) => !entry.text.startsWith('{"type":"runtimes"'));
    for (let i = 0; i < this.runtimesAsked.length; i++) this.outbox.push({ text: encodeFrame({ type: 'runtimes' }), kind: 'other' });
    this.flushOutbox();
    // A cancel written to the dropped socket may not have arrived: ask again.
    for (const execution of this.allExecutions()) {
      if (execution.cancelSent && !execution.ended) this.write(this.cancelFrame(execution), execution, 'cancel');
    }
    this.options.onConnectionChange?.('connected');
  }

  private onClosed(error: ConnectionError | undefined): void {
    const reason = error ?? new ConnectionError('closed', 'the client was closed');
    this.closed = true;
    this.closedError = reason;
    clearTimeout(this.flushTimer);
    for (const execution of this.allExecutions()) execution.fail(reason);
    for (const asked of this.runtimesAsked.splice(0)) asked.reject(reason);
    for (const request of this.fileRequests.values()) request.fail(reason);
    this.fileRequests.clear();
    for (const query of this.queries.values()) query.fail(reason);
    this.queries.clear();
    for (const state of this.sessions.values()) {
      for (const reader of [...state.readers]) reader.end(reason);
      for (const restart of state.restarts.splice(0)) restart.reject(reason);
    }
    this.sessions.clear();
    this.unnamed.clear();
    this.outbox = [];
    this.options.onConnectionChange?.('closed', error?.message);
  }
}
