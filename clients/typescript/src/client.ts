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
import { type ExecuteFrame, encodeFrame, type ResizeFrame } from './frames.js';
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
}

/** What the client knows of one session it reads. */
interface SessionState {
  name: string;
  /** Made by the gateway for one execution without `session`. */
  gatewayMade: boolean;
  /** The client executed in it: it reads it (and resumes it) until it closes. */
  keep: boolean;
  /** The last sequence received on the current socket. */
  position: number | undefined;
  /** The highest sequence routed to executions. */
  delivered: number;
  executions: Map<string, Execution>;
  readers: Set<SessionEvents>;
  /** The head is on its way; the others wait for its answer. */
  attaches: PendingAttach[];
  acked: number;
  unackedEvents: number;
  unackedBytes: number;
}

/** Acknowledge a session after this many events or bytes, and whenever the socket goes quiet. */
const ACK_EVERY_EVENTS = 256;
const ACK_EVERY_BYTES = 1 << 20;

const utf8 = new TextEncoder();

const ATTACH_REFUSALS = new Set(['unknown_session', 'bad_request', 'too_many_sessions']);

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
  /** Frames waiting for a socket. */
  private outbox: { text: string; execution?: Execution; kind: 'execute' | 'cancel' | 'other' }[] = [];
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
   */
  attach(session: string, options: AttachOptions = {}): SessionEvents {
    this.checkOpen();
    const since = options.since ?? 0;
    encodeFrame({ type: 'attach', session, since });
    const reader = new SessionEvents(this.host, session, since, this.maxBufferedBytes, options.signal);
    if (options.signal?.aborted) {
      reader.end(new SluiceError('aborted', `reading session ${JSON.stringify(session)} was aborted`));
      return reader;
    }
    const state = this.sessionState(session, false);
    // Never move the socket past what the session's other consumers still need.
    const current = this.resumePoint(state);
    state.readers.add(reader);
    this.enqueueAttach(state, {
      since: current === undefined ? since : Math.min(since, current),
      readers: [reader],
      resume: false,
    });
    return reader;
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
    if (state.readers.size === 0 && state.executions.size === 0 && !state.keep && !this.closed) {
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
  private write(text: string, execution: Execution | undefined, kind: 'execute' | 'cancel' | 'other'): void {
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
      this.markSent(execution, kind);
      return;
    }
    if (this.outbox.length >= this.maxQueuedFrames) {
      throw new SluiceError('connection_lost', `the connection is down and ${this.maxQueuedFrames} frames already wait for it`);
    }
    this.outbox.push(execution ? { text, execution, kind } : { text, kind });
  }

  private markSent(execution: Execution | undefined, kind: 'execute' | 'cancel' | 'other'): void {
    if (!execution) return;
    if (kind === 'execute') execution.sent = true;
    if (kind === 'cancel') execution.cancelSent = true;
  }

  private flushOutbox(): void {
    while (this.outbox.length > 0 && this.connection.connected) {
      const entry = this.outbox[0]!;
      if (!this.connection.send(entry.text)) return;
      this.outbox.shift();
      this.markSent(entry.execution, entry.kind);
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
    this.write(encodeFrame({ type: 'attach', session: state.name, since: attach.since }), undefined, 'other');
    // An acknowledging client that comes back takes the lead again (PROTOCOL.md §9.3).
    if (this.acking && attach.since > 0) {
      this.write(encodeFrame({ type: 'ack', session: state.name, sequence: attach.since }), undefined, 'other');
      state.acked = Math.max(state.acked, attach.since);
    }
  }

  private onAttached(state: SessionState, event: SluiceEvent): void {
    const attach = state.attaches.shift();
    if (!attach) return;
    state.position = event.sequence;
    for (const reader of attach.readers) if (!reader.isDetached) reader.confirm();
    const next = state.attaches[0];
    if (next) this.sendAttach(state, next);
  }

  private onAttachRefused(state: SessionState, attach: PendingAttach, event: ErrorEvent): void {
    state.attaches.shift();
    for (const reader of attach.readers) reader.end(new GatewayError(event, `attach to session ${JSON.stringify(state.name)}`));
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
    else if (state.executions.size === 0 && state.readers.size === 0 && (attach.resume || !state.keep)) {
      this.sessions.delete(state.name);
    }
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

  /** Refusals on the socket stream: of an execute, of an attach, or of something else. */
  private onSocketStream(event: SluiceEvent): void {
    if (event.type === 'runtimes') {
      this.runtimesAsked.shift()?.resolve({ runtimes: event.runtimes, limits: event.limits });
      return;
    }
    if (event.type !== 'error') return;
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
    if (state.gatewayMade && state.executions.size === 0 && state.readers.size === 0 && state.attaches.length === 0) {
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
    for (const state of this.sessions.values()) {
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
      const needed = state.executions.size > 0 || state.readers.size > 0 || state.keep;
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
    for (const state of this.sessions.values()) for (const reader of [...state.readers]) reader.end(reason);
    this.sessions.clear();
    this.unnamed.clear();
    this.outbox = [];
    this.options.onConnectionChange?.('closed', error?.message);
  }
}
