/**
 * One logical connection to the gateway over a sequence of WebSockets: it opens the
 * socket, hands every text frame to its owner, and when the socket drops it opens a new
 * one with exponential backoff and jitter, within a bounded time. It knows nothing of
 * sessions: its owner ({@link SluiceClient}) resumes them when told the link is back.
 *
 * It uses any WebSocket constructor with the WHATWG interface: the browser's own, or
 * `ws` in Node (see `node.ts`).
 *
 * A credential travels as a second subprotocol, `sluice.token.<token>`, after `sluice.v1`
 * (PROTOCOL.md, "Connecting"): the one way a browser can send it, so Node does the same.
 * A gateway that refuses it answers HTTP 401; `ws` shows that answer (the client then
 * fails with {@link AuthenticationError} and does not retry), a browser only reports a
 * failed connection.
 */

import { AuthenticationError, ConnectionError } from './errors.js';

/** The part of the WHATWG WebSocket interface the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

/** A WebSocket constructor: `globalThis.WebSocket` in browsers, `ws` in Node. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** How the client reconnects after its connection drops. */
export interface ReconnectOptions {
  /** Delay before the first attempt, in ms (default 100); it doubles with each failed attempt. */
  initialDelayMs?: number;
  /** Longest delay between attempts, in ms (default 5000). */
  maxDelayMs?: number;
  /** Give up when the link has been down this long, in ms (default 30000). */
  giveUpAfterMs?: number;
  /** Give up after this many failed attempts (default: no bound but the time). */
  maxAttempts?: number;
}

/** What the connection tells its owner. */
export interface ConnectionHandlers {
  /** A text frame arrived. */
  message(text: string): void;
  /** The socket dropped; the connection is trying to reopen it. */
  down(reason: string): void;
  /** A new socket is open (after {@link down}); the owner resumes on it. */
  up(): void;
  /** The connection ended for good; `error` says why unless the owner closed it. */
  closed(error: ConnectionError | undefined): void;
}

/** Settings of a {@link Connection}. */
export interface ConnectionSettings {
  url: string;
  /** The credential, sent as the subprotocol `sluice.token.<token>`. */
  token: string | undefined;
  WebSocket: WebSocketConstructor;
  connectTimeoutMs: number;
  /** `null` turns reconnecting off. */
  reconnect: (Required<Omit<ReconnectOptions, 'maxAttempts'>> & { maxAttempts: number | undefined }) | null;
}

const OPEN = 1;
const SUBPROTOCOL = 'sluice.v1';
/** The subprotocol prefix that carries a credential. */
export const TOKEN_SUBPROTOCOL_PREFIX = 'sluice.token.';
/** What a subprotocol may hold: an HTTP token (RFC 9110 tchar); API keys and JWTs fit. */
const SUBPROTOCOL_CHARS = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** Whether `token` can travel in the subprotocol list. */
export function tokenFitsSubprotocol(token: string): boolean {
  return SUBPROTOCOL_CHARS.test(token);
}

/** The part of Node's `ws` the client uses to read a refused upgrade (absent in browsers). */
interface NodeWebSocket {
  once(event: 'unexpected-response', listener: (request: unknown, response: NodeResponse) => void): void;
  on(event: 'error', listener: (error: unknown) => void): void;
  terminate(): void;
}

interface NodeResponse {
  statusCode?: number;
  setEncoding(encoding: 'utf8'): void;
  on(event: 'data', listener: (chunk: string) => void): void;
  on(event: 'end' | 'error', listener: () => void): void;
}

function isNodeWebSocket(socket: unknown): socket is NodeWebSocket {
  const candidate = socket as Partial<NodeWebSocket>;
  return typeof candidate.once === 'function' && typeof candidate.terminate === 'function';
}

/** The first non-empty line of a refusal's body, at most 500 characters. */
function firstLine(body: string): string | undefined {
  const line = body
    .split(/\r?\n/)
    .map((l) => l.trim())
    .find((l) => l !== '');
  return line?.slice(0, 500);
}

/** Opens one socket, resolving once it is open; rejects with why it could not be opened. */
function openSocket(settings: ConnectionSettings): Promise<WebSocketLike> {
  return new Promise((resolve, reject) => {
    let socket: WebSocketLike;
    const protocols = [SUBPROTOCOL];
    if (settings.token !== undefined) protocols.push(`${TOKEN_SUBPROTOCOL_PREFIX}${settings.token}`);
    try {
      socket = new settings.WebSocket(settings.url, protocols);
    } catch (err) {
      reject(new Error(`could not open a WebSocket to ${settings.url}: ${(err as Error).message}`));
      return;
    }
    const timer = setTimeout(() => {
      fail(`no connection to ${settings.url} within ${settings.connectTimeoutMs} ms`);
      try {
        socket.close();
      } catch {
        // it may not even have started
      }
    }, settings.connectTimeoutMs);
    const fail = (why: string | Error): void => {
      clearTimeout(timer);
      socket.onopen = socket.onerror = socket.onclose = null;
      reject(typeof why === 'string' ? new Error(why) : why);
    };
    if (isNodeWebSocket(socket)) {
      // Node's `ws` lets the client read an answer other than 101: the status and the
      // gateway's one-line reason.
      const node = socket;
      node.once('unexpected-response', (_request, response) => {
        let body = '';
        response.setEncoding('utf8');
        response.on('data', (chunk) => {
          if (body.length < 4096) body += chunk;
        });
        const settle = (): void => {
          const status = response.statusCode ?? 0;
          const reason = firstLine(body);
          fail(
            status === 401
              ? new AuthenticationError(reason ?? 'HTTP 401 Unauthorized (no reason given)')
              : `could not connect to ${settings.url}: the gateway answered HTTP ${status}${reason ? `: ${reason}` : ''}`,
          );
          // Aborting the handshake emits an error nobody else listens to any more.
          node.on('error', () => {});
          node.terminate();
        };
        response.on('end', settle);
        response.on('error', settle);
      });
    }
    socket.onopen = () => {
      clearTimeout(timer);
      socket.onopen = socket.onerror = socket.onclose = null;
      resolve(socket);
    };
    // A browser tells nothing of why: the gateway may be down, or may have refused the
    // credential (HTTP 401) or the page's origin (HTTP 403).
    const unsaid =
      settings.token === undefined
        ? ' (unreachable, or it refused the connection: it may require a credential, or not allow this origin)'
        : ' (unreachable, or it refused the connection: the credential may have been refused, or this origin)';
    socket.onerror = (event) => {
      const said = describe(event);
      fail(`could not connect to ${settings.url}${said || unsaid}`);
    };
    socket.onclose = (event) => fail(`could not connect to ${settings.url} (close code ${event.code})${unsaid}`);
  });
}

/** The message of an error event, where the WebSocket implementation gives one (`ws` does). */
function describe(event: unknown): string {
  if (typeof event === 'object' && event !== null && 'message' in event) {
    const message = (event as { message: unknown }).message;
    if (typeof message === 'string' && message) return `: ${message}`;
  }
  return '';
}

/** A connection that survives dropped sockets (see the module comment). */
export class Connection {
  private socket: WebSocketLike | undefined;
  private closing = false;
  private ended = false;
  /** When the current socket opened, and whether anything arrived on it. */
  private openedAt = 0;
  private received = false;
  /** The outage in progress, carried over when a new socket drops before proving healthy. */
  private outage: { started: number; attempts: number; lastError: string } | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;

  private constructor(
    private readonly settings: ConnectionSettings,
    private readonly handlers: ConnectionHandlers,
  ) {}

  /** Opens the first socket; rejects with a {@link ConnectionError} if it cannot. */
  static async open(settings: ConnectionSettings, handlers: ConnectionHandlers): Promise<Connection> {
    const connection = new Connection(settings, handlers);
    try {
      connection.adopt(await openSocket(settings));
    } catch (err) {
      if (err instanceof AuthenticationError) throw err;
      throw new ConnectionError('connection_lost', (err as Error).message, { cause: err });
    }
    return connection;
  }

  /** True while a socket is open. */
  get connected(): boolean {
    return this.socket !== undefined && this.socket.readyState === OPEN;
  }

  /** Writes a text frame if a socket is open; false otherwise (the caller keeps it for later). */
  send(text: string): boolean {
    if (!this.connected || this.socket === undefined) return false;
    this.socket.send(text);
    return true;
  }

  /** Closes the socket (normal closure) and ends the connection; no reconnect follows. */
  close(): void {
    if (this.closing || this.ended) return;
    this.closing = true;
    clearTimeout(this.timer);
    const socket = this.socket;
    this.socket = undefined;
    if (socket) {
      socket.onmessage = socket.onerror = null;
      socket.onclose = null;
      try {
        socket.close(1000, 'client closed');
      } catch {
        // already closing
      }
    }
    this.finish(undefined);
  }

  private finish(error: ConnectionError | undefined): void {
    if (this.ended) return;
    this.ended = true;
    this.handlers.closed(error);
  }

  private adopt(socket: WebSocketLike): void {
    this.socket = socket;
    this.openedAt = Date.now();
    this.received = false;
    socket.onmessage = (event) => {
      this.received = true;
      if (typeof event.data === 'string') this.handlers.message(event.data);
      // Binary frames are not part of the protocol; the gateway never sends them.
    };
    socket.onerror = () => {
      // A close event always follows; the reason is reported there.
    };
    socket.onclose = (event) => {
      socket.onmessage = socket.onerror = socket.onclose = null;
      if (this.socket !== socket || this.closing) return;
      this.socket = undefined;
      const reason =
        event.code === 1006
          ? 'the connection to the gateway dropped'
          : `the gateway closed the connection (code ${event.code}${event.reason ? `: ${event.reason}` : ''})`;
      this.lost(reason);
    };
  }

  private lost(reason: string): void {
    const policy = this.settings.reconnect;
    if (policy === null) {
      this.finish(new ConnectionError('connection_lost', reason));
      return;
    }
    // A socket that dropped before it proved healthy (it lived less than the longest
    // delay and received nothing) continues the outage before it, with its backoff and
    // its bound, so a gateway that accepts and drops at once is not hammered forever.
    const healthy = this.received || Date.now() - this.openedAt >= policy.maxDelayMs;
    if (healthy || this.outage === undefined) {
      this.outage = { started: Date.now(), attempts: 0, lastError: 'no attempt was made' };
    }
    this.handlers.down(reason);
    this.scheduleAttempt(reason);
  }

  private scheduleAttempt(reason: string): void {
    const policy = this.settings.reconnect;
    const outage = this.outage;
    if (policy === null || outage === undefined || this.closing) return;
    const deadline = outage.started + policy.giveUpAfterMs;
    const outOfAttempts = policy.maxAttempts !== undefined && outage.attempts >= policy.maxAttempts;
    if (outOfAttempts || Date.now() >= deadline) {
      this.finish(
        new ConnectionError(
          'connection_lost',
          `${reason}; gave up reconnecting after ${outage.attempts} failed attempt(s) in ` +
            `${((Date.now() - outage.started) / 1000).toFixed(1)} s (last: ${outage.lastError})`,
        ),
      );
      return;
    }
    const exponential = policy.initialDelayMs * 2 ** Math.min(outage.attempts, 30);
    const delay = jitter(Math.min(exponential, policy.maxDelayMs));
    const wait = Math.max(0, Math.min(delay, deadline - Date.now()));
    this.timer = setTimeout(() => void this.attempt(reason, deadline), wait);
  }

  private async attempt(reason: string, deadline: number): Promise<void> {
    const outage = this.outage;
    if (this.closing || outage === undefined) return;
    outage.attempts += 1;
    const timeout = Math.max(1, Math.min(this.settings.connectTimeoutMs, deadline - Date.now()));
    try {
      const socket = await openSocket({ ...this.settings, connectTimeoutMs: timeout });
      if (this.closing) {
        socket.close(1000, 'client closed');
        return;
      }
      this.adopt(socket);
      this.handlers.up();
    } catch (err) {
      if (err instanceof AuthenticationError) {
        // Retrying cannot help: the key was revoked, or the token expired.
        this.finish(err);
        return;
      }
      outage.lastError = (err as Error).message;
      this.scheduleAttempt(reason);
    }
  }
}

/** A random duration between half and all of `delay` (so that clients do not retry in step). */
function jitter(delay: number): number {
  return delay / 2 + Math.random() * (delay / 2);
}
