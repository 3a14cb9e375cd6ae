/**
 * sluice-client: the TypeScript client of the Sluice gateway (browser entry point).
 *
 * In browsers the native `WebSocket` is used. Node (>= 20) resolves the package to
 * `node.ts`, which supplies `ws` instead; this module never imports it.
 */

export { SluiceClient, type ClientOptions } from './client.js';
export { Execution, type ExecuteOptions, type Outcome } from './execution.js';
export { SessionEvents, type AttachOptions } from './session.js';
export type { ReconnectOptions, WebSocketConstructor, WebSocketLike } from './connection.js';
export {
  SluiceError,
  GatewayError,
  ConnectionError,
  AbortedError,
  SlowConsumerError,
  InvalidEventError,
  InvalidFrameError,
  type ClientErrorCode,
} from './errors.js';
export {
  decodeEvent,
  decodeBase64,
  isTerminal,
  type SluiceEvent,
  type TerminalEvent,
  type StartedEvent,
  type OutputEvent,
  type CompletedEvent,
  type CancelledEvent,
  type ResourceLimitEvent,
  type ErrorEvent,
  type AttachedEvent,
  type GapEvent,
  type UnknownEvent,
  type Usage,
  type ErrorCode,
  type KnownErrorCode,
  type LimitKind,
} from './events.js';
export {
  parseClientFrame,
  encodeFrame,
  type ClientFrame,
  type ExecuteFrame,
  type StdinFrame,
  type CancelFrame,
  type AttachFrame,
  type DetachFrame,
  type AckFrame,
  type Limits,
  type Encoding,
} from './frames.js';
