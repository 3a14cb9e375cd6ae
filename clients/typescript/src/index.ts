/**
 * sluice-client: the TypeScript client of the Sluice gateway (browser entry point).
 *
 * In browsers the native `WebSocket` is used. Node (>= 20) resolves the package to
 * `node.ts`, which supplies `ws` instead; this module never imports it.
 */

export { type ClientOptions, SluiceClient } from './client.js';
export type { ReconnectOptions, WebSocketConstructor, WebSocketLike } from './connection.js';
export {
  AbortedError,
  AuthenticationError,
  type ClientErrorCode,
  ConnectionError,
  GatewayError,
  InvalidEventError,
  InvalidFrameError,
  SlowConsumerError,
  SluiceError,
} from './errors.js';
export {
  type AttachedEvent,
  type CancelledEvent,
  type Catalog,
  type CompletedEvent,
  decodeBase64,
  decodeEvent,
  type ErrorCode,
  type ErrorEvent,
  type GapEvent,
  isTerminal,
  type KnownErrorCode,
  type LimitKind,
  type LimitRange,
  type OutputEvent,
  type ResourceLimitEvent,
  type RuntimeInfo,
  type RuntimesEvent,
  type SluiceEvent,
  type StartedEvent,
  type TerminalEvent,
  type UnknownEvent,
  type Usage,
} from './events.js';
export { type ExecuteOptions, Execution, type Outcome } from './execution.js';
export {
  type AckFrame,
  type AttachFrame,
  type CancelFrame,
  type ClientFrame,
  DEFAULT_TERM,
  DEFAULT_TERMINAL_SIZE,
  type DetachFrame,
  type Encoding,
  type ExecuteFrame,
  encodeFrame,
  type Limits,
  MAX_TERM_BYTES,
  MAX_TERMINAL_SIDE,
  parseClientFrame,
  type ResizeFrame,
  type StdinFrame,
} from './frames.js';
export { type AttachOptions, SessionEvents } from './session.js';
