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
  type CellException,
  type CellFields,
  type CompletedEvent,
  type CompleteReplyEvent,
  type DisplayEvent,
  decodeBase64,
  decodeEvent,
  type ErrorCode,
  type ErrorEvent,
  type FileChanges,
  type FileDataEvent,
  type FileDeletedEvent,
  type FileEntry,
  type FileKind,
  type FileListEvent,
  type FilesChangedEvent,
  type FileWrittenEvent,
  type GapEvent,
  type InputRequestEvent,
  type InspectReplyEvent,
  isJsonMime,
  isTerminal,
  type KnownErrorCode,
  type LimitKind,
  type LimitRange,
  type MimeBundle,
  type NetworkBlockedEvent,
  type OutputEvent,
  type PackageInfo,
  type ResourceLimitEvent,
  type RestartedEvent,
  type ResultEvent,
  type RuntimeInfo,
  type RuntimesEvent,
  type SluiceEvent,
  type StartedEvent,
  type TerminalEvent,
  type UnknownEvent,
  type UpdateDisplayEvent,
  type Usage,
} from './events.js';
export { type ExecuteOptions, Execution, type Outcome } from './execution.js';
export { type DeleteFileOptions, type FileListing, type ReadFileOptions, UPLOAD_PIECE_BYTES, type WriteFileOptions } from './files.js';
export {
  type AckFrame,
  type AttachFrame,
  type CancelFrame,
  type ClientFrame,
  type CompleteFrame,
  codePointLength,
  DEFAULT_TERM,
  DEFAULT_TERMINAL_SIZE,
  type DeleteFileFrame,
  type DetachFrame,
  type Encoding,
  type ExecuteFrame,
  encodeFrame,
  FILE_CHUNK_BYTES,
  type FileFrame,
  type InspectFrame,
  type Limits,
  type ListFilesFrame,
  MAX_FILE_MODE,
  MAX_TERM_BYTES,
  MAX_TERMINAL_SIDE,
  parseClientFrame,
  type QueryFrame,
  RESERVED_PREFIX,
  type ReadFileFrame,
  type ResizeFrame,
  type RestartFrame,
  type StdinFrame,
  type WriteFileFrame,
} from './frames.js';
export { type Completions, codePointOffset, type Inspection, type InspectOptions, utf16Offset } from './queries.js';
export { type RenderOptions, renderBundle } from './render.js';
export { type AttachOptions, SessionEvents } from './session.js';
