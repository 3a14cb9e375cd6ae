/**
 * Events the gateway sends (PROTOCOL.md §5): their types, and a decoder that checks
 * each text frame against the protocol's rules before the client acts on it.
 *
 * Events keep their wire shape (snake_case field names, `null` for "no execution"), so
 * what a program logs is exactly what travelled. Fields the decoder does not know are
 * dropped; event types it does not know decode as {@link UnknownEvent} (§15).
 */

import { InvalidEventError } from './errors.js';

/** Error codes the gateway sends (§8.2). A newer gateway may send others. */
export type KnownErrorCode =
  | 'bad_request'
  | 'too_large'
  | 'duplicate_id'
  | 'unknown_execution'
  | 'unknown_session'
  | 'stdin_closed'
  | 'stdin_full'
  | 'too_many_sessions'
  | 'unknown_language'
  | 'invalid_limit'
  | 'too_many_executions'
  | 'spawn_failed'
  | 'shutting_down'
  | 'kernel_lost'
  | 'gateway_busy'
  | 'not_permitted'
  | 'not_a_terminal'
  | 'no_workspace'
  | 'invalid_path'
  | 'not_found'
  | 'workspace_full'
  | 'kernel_busy'
  | 'no_kernel'
  | 'query_timeout'
  | 'internal';

/**
 * An `error` event the client made itself (`sequence` 0): the one that ends the stream of a
 * consumer that fell behind (code `slow_consumer`, clients/CONTRACT.md).
 */
export function syntheticError(code: string, message: string, id: string | null, session: string | null): ErrorEvent {
  return { type: 'error', code, data: message, timestamp: Date.now() / 1000, sequence: 0, id, session };
}

/** A protocol error code: one of {@link KnownErrorCode}, or one a newer gateway added. */
export type ErrorCode = KnownErrorCode | (string & {});

/** Limit names of `resource_limit` events (§5.1); a newer sandbox may add more. */
export type LimitKind = 'timeout' | 'output' | 'cpu' | 'file_size' | 'memory' | 'processes' | 'workspace' | (string & {});

/** What an execution used (§5.2). */
export interface Usage {
  duration_ms: number;
  first_output_ms?: number;
  cpu_ms: number;
  peak_memory_bytes: number;
  stdout_bytes: number;
  stderr_bytes: number;
}

/** The six fields every event carries (§5.1). */
interface Envelope {
  /** Output for `stdout`/`stderr`, otherwise a message for people. */
  data: string;
  /** Unix time in seconds (microsecond precision) when the gateway numbered the event. */
  timestamp: number;
  /** Position in the event's stream (its session's, or the socket's when `session` is null). */
  sequence: number;
  /** The execution the event belongs to, or null. */
  id: string | null;
  /** The session whose stream holds the event, or null for the socket stream. */
  session: string | null;
}

/** An execution's events always name the execution and its session. */
interface ExecutionEnvelope extends Envelope {
  id: string;
  session: string;
}

/** `started`: the program runs; always the first event of an execution that started. */
export interface StartedEvent extends ExecutionEnvelope {
  type: 'started';
  pid: number;
}

/** `stdout` / `stderr`: a chunk of output; `encoding` is present only for base64. */
export interface OutputEvent extends ExecutionEnvelope {
  type: 'stdout' | 'stderr';
  encoding?: 'base64';
}

/** The exception a persistent cell raised (PROTOCOL.md §12.2), with Jupyter's names. */
export interface CellException {
  /** The exception's class name, such as `ZeroDivisionError`. */
  ename: string;
  /** Its message (`str()` of the exception), such as `division by zero`. */
  evalue: string;
  /** The traceback as Python prints it, one line per entry (the same text is on stderr). */
  traceback: string[];
}

/** What the terminal event of a persistent cell adds (PROTOCOL.md §12.2). */
export interface CellFields {
  /** The cell's number in its interpreter, from 1 (a fresh interpreter counts from 1 again). */
  execution_count?: number;
  /** The exception the cell raised (on a `completed` with `exit_code` 1). */
  exception?: CellException;
}

/** `completed` (terminal): the program ended by itself; exactly one of `exit_code` and `signal`. */
export interface CompletedEvent extends ExecutionEnvelope, CellFields {
  type: 'completed';
  exit_code?: number;
  signal?: number;
  usage?: Usage;
}

/** `cancelled` (terminal): stopped by `cancel`, by its session ending, or by shutdown. */
export interface CancelledEvent extends ExecutionEnvelope, CellFields {
  type: 'cancelled';
  usage?: Usage;
}

/** `resource_limit` (terminal): the program hit `limit`, whose value was `limit_value`. */
export interface ResourceLimitEvent extends ExecutionEnvelope, CellFields {
  type: 'resource_limit';
  limit: LimitKind;
  limit_value: number;
  /** What the program was seen to use of that limit, where the gateway knows it. */
  limit_observed?: number;
  usage?: Usage;
}

/**
 * `error`: terminal for the execution named by a non-null `id`; with `id: null` it is a
 * refusal on the socket stream (`for_session` names the session the refused frame named).
 */
export interface ErrorEvent extends Envelope, CellFields {
  type: 'error';
  code: ErrorCode;
  for_session?: string;
  /** The refusal of a file frame or a query (`complete`, `inspect`): its `request`. */
  request?: string;
  usage?: Usage;
}

/** `attached`: the answer to an `attach`; not numbered in the session (`sequence` is its `since`). */
export interface AttachedEvent extends Envelope {
  type: 'attached';
  id: null;
  session: string;
  resume_from: number;
}

/** `gap`: events `missed_from` to `resume_from - 1` of `session` will never reach this socket. */
export interface GapEvent extends Envelope {
  type: 'gap';
  id: null;
  session: string;
  missed_from: number;
  resume_from: number;
}

/** One language the gateway runs for this client (the `runtimes` event, `GET /v1/runtimes`). */
export interface RuntimeInfo {
  /** The name an execute gives as its `language`. */
  language: string;
  /** The interpreter's own account of its version, when it gives one. */
  version?: string;
  /** A Python interpreter's packages (a virtual environment's included), sorted by name. */
  packages?: PackageInfo[];
  /** The file the code is written to (`main.py`) and its extension (`py`). */
  file_name: string;
  extension: string;
  /** `persistent: true` works (a session's interpreter keeps its state). */
  persistent: boolean;
  /** A program can run on a terminal (false until the gateway has terminal mode). */
  tty: boolean;
  /** Its programs may reach the network. */
  network: boolean;
  /** The package index pip installs from, when the operator offers one (a session that keeps a workspace installs into its own package layer). */
  package_index?: string;
}

/** One installed package of a runtime. */
export interface PackageInfo {
  name: string;
  version: string;
}

/** A limit's default (when a request names none) and the largest value a request may ask for. */
export interface LimitRange {
  default: number;
  max: number;
}

/** What this client may run: languages sorted by name, and each limit's range by its name in `limits`. */
export interface Catalog {
  runtimes: RuntimeInfo[];
  limits: Record<string, LimitRange>;
}

/** `runtimes`: the answer to a `runtimes` frame, on the socket stream. */
export interface RuntimesEvent extends Envelope, Catalog {
  type: 'runtimes';
  id: null;
  session: null;
}

/** What an entry of a workspace is; a kind this client does not know reads as `other`. */
export type FileKind = 'file' | 'dir' | 'symlink' | 'other';

/** One entry of a workspace directory (`file_list`). */
export interface FileEntry {
  /** Its name in the directory listed. */
  name: string;
  kind: FileKind;
  /** Its size in bytes (a directory's as the file system reports it). */
  size: number;
  /** Its permission bits (`0o644` is 420). */
  mode: number;
  /** When its content last changed: Unix time in seconds. */
  mtime: number;
}

/** Paths of a workspace that changed, relative to it, each list sorted. */
export interface FileChanges {
  /** Paths that did not exist before (a new directory is named, and each file in it). */
  created: string[];
  /** Paths whose size, modification time or kind changed. */
  modified: string[];
  /** Paths that no longer exist. */
  deleted: string[];
}

/** The answers to file frames travel on the socket stream and repeat the frame's `request`. */
interface FileAnswerEnvelope extends Envelope {
  id: null;
  session: null;
  /** The `request` of the frame answered. */
  request: string;
  /** The path, relative to the workspace (`""` for the workspace itself). */
  path: string;
}

/** `file_written`: the answer to a `write_file`; `path` now holds `size` bytes. */
export interface FileWrittenEvent extends FileAnswerEnvelope {
  type: 'file_written';
  size: number;
}

/**
 * `file_data`: part of the answer to a `read_file`: the bytes of `path` from `offset`
 * (`data`, base64 when `encoding` says so), `size` the file's whole size; the last part
 * has `last: true`.
 */
export interface FileDataEvent extends FileAnswerEnvelope {
  type: 'file_data';
  offset: number;
  size: number;
  last: boolean;
  encoding?: 'base64';
}

/** `file_list`: the answer to a `list_files`: the directory's entries, sorted by name; `truncated` when there were more. */
export interface FileListEvent extends FileAnswerEnvelope {
  type: 'file_list';
  entries: FileEntry[];
  truncated?: boolean;
}

/** `file_deleted`: the answer to a `delete_file`: `path` is gone. */
export interface FileDeletedEvent extends FileAnswerEnvelope {
  type: 'file_deleted';
}

/**
 * `files_changed`, on a session's stream: paths of its workspace that changed, seen when
 * the execution `id` ended (before its terminal event) or after a file frame (`id` null).
 */
export interface FilesChangedEvent extends Envelope {
  type: 'files_changed';
  session: string;
  changes: FileChanges;
  /** True when more paths changed than the event names. */
  truncated?: boolean;
}

/**
 * A MIME bundle: MIME type to data. The data is text for text types (`text/html`,
 * `image/svg+xml`, ...), base64 text for binary ones (`image/png`, `image/jpeg`,
 * `application/pdf`), and any JSON value for `application/json` and the types ending in
 * `+json` (the decoder checks this, so `typeof bundle['text/html']` is `'string'` when present).
 */
export type MimeBundle = Record<string, unknown>;

/** True for the MIME types whose data in a bundle is a JSON value rather than text. */
export function isJsonMime(mime: string): boolean {
  return mime === 'application/json' || mime.endsWith('+json');
}

/** The fields of rich output: `display`, `update_display` and `result` events. */
interface RichOutput extends ExecutionEnvelope {
  /** The bundle's `text/plain`, or `""` when it has none. */
  data: string;
  /** The representations of what is shown, by MIME type. */
  bundle: MimeBundle;
  /** What the program said about them (an image's `width`, say); `{}` when nothing. */
  metadata: Record<string, unknown>;
  /** Ties a display to the updates that later replace it (in the same session). */
  display_id?: string;
}

/**
 * `display`: rich output of an execution, at its place among the `stdout`/`stderr`
 * events. With a `display_id`, a later `update_display` of that id replaces what it shows.
 */
export interface DisplayEvent extends RichOutput {
  type: 'display';
}

/**
 * `update_display`: replaces what the `display` (or the latest update) of `display_id`
 * in the same session shows, whichever execution showed it.
 */
export interface UpdateDisplayEvent extends RichOutput {
  type: 'update_display';
  display_id: string;
}

/** `result`: the value of a persistent cell's last expression (before, it was printed on stdout). */
export interface ResultEvent extends RichOutput {
  type: 'result';
  /** The cell's number in its interpreter, from 1 (the `n` of `Out[n]`). */
  execution_count?: number;
}

/**
 * `input_request`: a persistent cell's `input(prompt)` or `getpass.getpass(prompt)` is
 * about to read one line of its standard input (PROTOCOL.md §12.3): show `data`, the
 * prompt, and send the answer with `sendStdin`. Never terminal.
 */
export interface InputRequestEvent extends ExecutionEnvelope {
  type: 'input_request';
  /** Hide what is typed (`getpass`). */
  password: boolean;
}

/**
 * `network_blocked`: the execution has no network and tried to reach a host (PROTOCOL.md
 * §11.7): `data` says so, to show beside the program's own error. At most one per
 * execution, never terminal.
 */
export interface NetworkBlockedEvent extends ExecutionEnvelope {
  type: 'network_blocked';
}

/**
 * `restarted`: the answer to a `restart` (PROTOCOL.md §4.10), on the session's stream
 * after the cancelled cells' terminal events: the next cell starts a fresh interpreter.
 */
export interface RestartedEvent extends Envelope {
  type: 'restarted';
  id: null;
  session: string;
}

/**
 * `complete_reply`: the answer to a `complete` (PROTOCOL.md §4.11), on the socket's own
 * stream: `matches` may each replace the code points `cursor_start` to `cursor_end` of the
 * query's code (code points, not UTF-16 units: `client.complete` converts them).
 */
export interface CompleteReplyEvent extends Envelope {
  type: 'complete_reply';
  id: null;
  session: null;
  /** The `request` of the `complete` answered. */
  request: string;
  /** Sorted, without duplicates, at most 1000; empty when nothing matches. */
  matches: string[];
  cursor_start: number;
  cursor_end: number;
  /** True when there were more matches than `matches` holds. */
  truncated?: boolean;
}

/**
 * `inspect_reply`: the answer to an `inspect` (PROTOCOL.md §4.11), on the socket's own
 * stream: `found`, and when found a `bundle` whose `text/plain` describes the name.
 */
export interface InspectReplyEvent extends Envelope {
  type: 'inspect_reply';
  id: null;
  session: null;
  /** The `request` of the `inspect` answered. */
  request: string;
  found: boolean;
  /** Present when `found`. */
  bundle?: MimeBundle;
}

/** An event type this client does not know (sent by a newer gateway); never terminal. */
export interface UnknownEvent extends Envelope {
  type: 'unknown';
  /** The `type` as it came on the wire. */
  wire_type: string;
}

/** Any event from the gateway. Narrow it with `event.type`. */
export type SluiceEvent =
  | StartedEvent
  | OutputEvent
  | CompletedEvent
  | CancelledEvent
  | ResourceLimitEvent
  | ErrorEvent
  | AttachedEvent
  | GapEvent
  | RuntimesEvent
  | FileWrittenEvent
  | FileDataEvent
  | FileListEvent
  | FileDeletedEvent
  | FilesChangedEvent
  | DisplayEvent
  | UpdateDisplayEvent
  | ResultEvent
  | InputRequestEvent
  | NetworkBlockedEvent
  | RestartedEvent
  | CompleteReplyEvent
  | InspectReplyEvent
  | UnknownEvent;

/** The events that end an execution: exactly one per execution (§5.3). */
export type TerminalEvent = CompletedEvent | CancelledEvent | ResourceLimitEvent | (ErrorEvent & { id: string; session: string | null });

/** True for an execution's terminal event (an `error` only when it names an execution). */
export function isTerminal(event: SluiceEvent): event is TerminalEvent {
  switch (event.type) {
    case 'completed':
    case 'cancelled':
    case 'resource_limit':
      return true;
    case 'error':
      return event.id !== null;
    default:
      return false;
  }
}

type Json = Record<string, unknown>;

/** Decodes one text frame from the gateway, or throws {@link InvalidEventError} saying why not. */
export function decodeEvent(text: string): SluiceEvent {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new InvalidEventError(`not JSON: ${(err as Error).message}`, text);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InvalidEventError('not a JSON object', text);
  }
  return checkEvent(value as Json, text);
}

function checkEvent(obj: Json, text: string): SluiceEvent {
  const fail = (why: string): never => {
    throw new InvalidEventError(why, text);
  };
  const type = obj['type'];
  if (typeof type !== 'string') fail('has no string "type"');
  const kind = type as string;
  const what = `${kind} event`;

  const data = obj['data'] ?? '';
  if (typeof data !== 'string') fail(`${what}: "data" is not a string`);
  const timestamp = obj['timestamp'];
  if (typeof timestamp !== 'number' || !Number.isFinite(timestamp) || timestamp <= 0) {
    fail(`${what} has no valid timestamp`);
  }
  const sequence = obj['sequence'];
  if (!isCount(sequence)) fail(`${what} has no valid sequence`);
  if (sequence === 0 && kind !== 'attached') fail(`${what} has sequence 0; sequences start at 1`);
  const id = optionalString(obj, 'id', what);
  const session = optionalString(obj, 'session', what);
  if (id !== null && session === null && kind !== 'error') {
    fail(`${what} names an execution but no session`);
  }
  const envelope: Envelope = {
    data: data as string,
    timestamp: timestamp as number,
    sequence: sequence as number,
    id,
    session,
  };
  const usage = obj['usage'] === undefined ? undefined : checkUsage(obj['usage'], what, text);
  const withUsage = <T extends object>(event: T): T => (usage ? { ...event, usage } : event);
  // A terminal event of a persistent cell also carries its number and, when it raised, the exception.
  const withCell = <T extends CellFields>(event: T): T => {
    const count = obj['execution_count'];
    if (count !== undefined && count !== null) {
      if (!isCount(count)) fail(`${what}: execution_count is not a non-negative integer`);
      event.execution_count = count as number;
    }
    const exception = obj['exception'];
    if (exception !== undefined && exception !== null) event.exception = checkException(exception, what, fail);
    return withUsage(event);
  };

  const needsExecution = (): ExecutionEnvelope => {
    if (id === null || session === null) fail(`${what} has no execution id`);
    return envelope as ExecutionEnvelope;
  };

  switch (kind) {
    case 'started': {
      const base = needsExecution();
      const pid = obj['pid'];
      if (!isCount(pid)) fail(`${what} has no pid`);
      return { type: 'started', ...base, pid: pid as number };
    }
    case 'stdout':
    case 'stderr': {
      const base = needsExecution();
      const encoding = obj['encoding'];
      if (encoding === undefined || encoding === null || encoding === 'utf8') {
        return { type: kind, ...base };
      }
      if (encoding !== 'base64') fail(`${what} has an unknown encoding`);
      return { type: kind, ...base, encoding: 'base64' };
    }
    case 'completed': {
      const base = needsExecution();
      const exit = obj['exit_code'];
      const signal = obj['signal'];
      const hasExit = exit !== undefined && exit !== null;
      const hasSignal = signal !== undefined && signal !== null;
      if (hasExit === hasSignal) fail(`${what} needs exactly one of exit_code and signal`);
      if (hasExit) {
        if (!Number.isSafeInteger(exit)) fail(`${what}: exit_code is not an integer`);
        return withCell<CompletedEvent>({ type: 'completed', ...base, exit_code: exit as number });
      }
      if (!Number.isSafeInteger(signal)) fail(`${what}: signal is not an integer`);
      return withCell<CompletedEvent>({ type: 'completed', ...base, signal: signal as number });
    }
    case 'cancelled':
      return withCell<CancelledEvent>({ type: 'cancelled', ...needsExecution() });
    case 'resource_limit': {
      const base = needsExecution();
      const limit = obj['limit'];
      const value = obj['limit_value'];
      if (typeof limit !== 'string') fail(`${what} has no limit`);
      if (!isCount(value)) fail(`${what} has no limit_value`);
      const event: ResourceLimitEvent = {
        type: 'resource_limit',
        ...base,
        limit: limit as string,
        limit_value: value as number,
      };
      const observed = obj['limit_observed'];
      if (observed !== undefined && observed !== null) {
        if (!isCount(observed)) fail(`${what}: limit_observed is not a non-negative integer`);
        event.limit_observed = observed as number;
      }
      return withCell(event);
    }
    case 'error': {
      const code = obj['code'];
      if (typeof code !== 'string' || code === '') fail(`${what} has no code`);
      const forSession = obj['for_session'];
      if (forSession !== undefined && forSession !== null && typeof forSession !== 'string') {
        fail(`${what}: for_session is not a string`);
      }
      const event: ErrorEvent = { type: 'error', ...envelope, code: code as string };
      if (typeof forSession === 'string') event.for_session = forSession;
      const request = obj['request'];
      if (request !== undefined && request !== null) {
        if (typeof request !== 'string') fail(`${what}: request is not a string`);
        event.request = request as string;
      }
      return withCell(event);
    }
    case 'attached': {
      const resume = obj['resume_from'];
      if (session === null || resume !== envelope.sequence + 1) {
        fail(`${what} needs a session and resume_from = sequence + 1`);
      }
      return { type: 'attached', ...envelope, id: null, session: session as string, resume_from: resume as number };
    }
    case 'gap': {
      const missed = obj['missed_from'];
      const resume = obj['resume_from'];
      if (
        session === null ||
        !isCount(missed) ||
        !isCount(resume) ||
        (missed as number) >= (resume as number) ||
        envelope.sequence + 1 !== resume
      ) {
        fail(`${what} needs a session, missed_from < resume_from and sequence = resume_from - 1`);
      }
      return {
        type: 'gap',
        ...envelope,
        id: null,
        session: session as string,
        missed_from: missed as number,
        resume_from: resume as number,
      };
    }
    case 'runtimes': {
      if (session !== null || id !== null) fail(`${what} names a session or an execution`);
      const catalog = checkCatalog(obj, what, fail);
      return { type: 'runtimes', ...envelope, id: null, session: null, ...catalog };
    }
    case 'file_written':
    case 'file_data':
    case 'file_list':
    case 'file_deleted': {
      const request = obj['request'];
      const path = obj['path'];
      if (session !== null || id !== null || typeof request !== 'string' || typeof path !== 'string') {
        fail(`${what} needs a request and a path, and no session or execution`);
      }
      const answer = { ...envelope, id: null, session: null, request: request as string, path: path as string };
      if (kind === 'file_deleted') return { type: 'file_deleted', ...answer };
      if (kind === 'file_written') {
        if (!isCount(obj['size'])) fail(`${what} has no size`);
        return { type: 'file_written', ...answer, size: obj['size'] as number };
      }
      if (kind === 'file_list') {
        const entries = obj['entries'];
        if (!Array.isArray(entries)) fail(`${what} has no "entries" array`);
        const event: FileListEvent = {
          type: 'file_list',
          ...answer,
          entries: (entries as unknown[]).map((e) => checkEntry(e, what, fail)),
        };
        if (optionalFlag(obj, 'truncated', what, fail)) event.truncated = true;
        return event;
      }
      const offset = obj['offset'];
      const size = obj['size'];
      const last = obj['last'];
      if (!isCount(offset) || !isCount(size) || typeof last !== 'boolean') fail(`${what} needs offset, size and last`);
      const event: FileDataEvent = { type: 'file_data', ...answer, offset: offset as number, size: size as number, last: last as boolean };
      const encoding = obj['encoding'];
      if (encoding === 'base64') event.encoding = 'base64';
      else if (encoding !== undefined && encoding !== null && encoding !== 'utf8') fail(`${what} has an unknown encoding`);
      return event;
    }
    case 'files_changed': {
      if (session === null) fail(`${what} has no session`);
      const changes = obj['changes'];
      if (typeof changes !== 'object' || changes === null || Array.isArray(changes)) fail(`${what} has no "changes" object`);
      const lists = changes as Json;
      const paths = (field: string): string[] => {
        const value = lists[field] ?? [];
        if (!Array.isArray(value) || !value.every((p) => typeof p === 'string')) fail(`${what}: changes.${field} is not a list of paths`);
        return value as string[];
      };
      const event: FilesChangedEvent = {
        type: 'files_changed',
        ...envelope,
        session: session as string,
        changes: { created: paths('created'), modified: paths('modified'), deleted: paths('deleted') },
      };
      if (optionalFlag(obj, 'truncated', what, fail)) event.truncated = true;
      return event;
    }
    case 'display':
    case 'update_display':
    case 'result': {
      const base = needsExecution();
      const bundle = obj['bundle'];
      if (typeof bundle !== 'object' || bundle === null || Array.isArray(bundle)) fail(`${what} has no "bundle" object`);
      for (const [mime, value] of Object.entries(bundle as Json)) {
        if (!isJsonMime(mime) && typeof value !== 'string') fail(`${what}: the data of ${mime} in its bundle is not text`);
      }
      const metadata = obj['metadata'] ?? {};
      if (typeof metadata !== 'object' || Array.isArray(metadata)) fail(`${what}: metadata is not an object`);
      const displayId = obj['display_id'];
      if (displayId !== undefined && displayId !== null && typeof displayId !== 'string') fail(`${what}: display_id is not a string`);
      const rich = { ...base, bundle: bundle as MimeBundle, metadata: metadata as Record<string, unknown> };
      if (kind === 'update_display') {
        if (typeof displayId !== 'string') fail(`${what} has no display_id`);
        return { type: 'update_display', ...rich, display_id: displayId as string };
      }
      if (kind === 'display') {
        const event: DisplayEvent = { type: 'display', ...rich };
        if (typeof displayId === 'string') event.display_id = displayId;
        return event;
      }
      const event: ResultEvent = { type: 'result', ...rich };
      if (typeof displayId === 'string') event.display_id = displayId;
      const count = obj['execution_count'];
      if (count !== undefined && count !== null) {
        if (!isCount(count)) fail(`${what}: execution_count is not a non-negative integer`);
        event.execution_count = count as number;
      }
      return event;
    }
    case 'input_request': {
      const base = needsExecution();
      const password = obj['password'];
      if (typeof password !== 'boolean') fail(`${what} has no boolean "password"`);
      return { type: 'input_request', ...base, password: password as boolean };
    }
    case 'network_blocked':
      return { type: 'network_blocked', ...needsExecution() };
    case 'restarted':
      if (session === null || id !== null) fail(`${what} needs a session and no execution id`);
      return { type: 'restarted', ...envelope, id: null, session: session as string };
    case 'complete_reply':
    case 'inspect_reply': {
      const request = obj['request'];
      if (session !== null || id !== null || typeof request !== 'string') fail(`${what} needs a request, and no session or execution`);
      const answer = { ...envelope, id: null, session: null, request: request as string };
      if (kind === 'complete_reply') {
        const matches = obj['matches'];
        if (!Array.isArray(matches) || !matches.every((m) => typeof m === 'string')) fail(`${what} has no "matches" list of strings`);
        const start = obj['cursor_start'];
        const end = obj['cursor_end'];
        if (!isCount(start) || !isCount(end) || (start as number) > (end as number)) {
          fail(`${what} needs cursor_start <= cursor_end, both non-negative integers`);
        }
        const event: CompleteReplyEvent = {
          type: 'complete_reply',
          ...answer,
          matches: matches as string[],
          cursor_start: start as number,
          cursor_end: end as number,
        };
        if (optionalFlag(obj, 'truncated', what, fail)) event.truncated = true;
        return event;
      }
      const found = obj['found'];
      if (typeof found !== 'boolean') fail(`${what} has no boolean "found"`);
      const event: InspectReplyEvent = { type: 'inspect_reply', ...answer, found: found as boolean };
      const bundle = obj['bundle'];
      if (bundle !== undefined && bundle !== null) {
        if (typeof bundle !== 'object' || Array.isArray(bundle)) fail(`${what}: bundle is not an object`);
        for (const [mime, value] of Object.entries(bundle as Json)) {
          if (!isJsonMime(mime) && typeof value !== 'string') fail(`${what}: the data of ${mime} in its bundle is not text`);
        }
        event.bundle = bundle as MimeBundle;
      } else if (found) {
        fail(`${what} is found but has no "bundle"`);
      }
      return event;
    }
    default:
      return { type: 'unknown', wire_type: kind, ...envelope };
  }
}

/** The `exception` of a cell's terminal event: `ename`, `evalue` and the `traceback` lines. */
function checkException(value: unknown, what: string, fail: (why: string) => never): CellException {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(`${what}: exception is not an object`);
  const e = value as Json;
  const traceback = e['traceback'] ?? [];
  if (
    typeof e['ename'] !== 'string' ||
    typeof e['evalue'] !== 'string' ||
    !Array.isArray(traceback) ||
    !traceback.every((line) => typeof line === 'string')
  ) {
    fail(`${what}: exception needs a string ename and evalue and a traceback of strings`);
  }
  return { ename: e['ename'] as string, evalue: e['evalue'] as string, traceback: traceback as string[] };
}

const FILE_KINDS: readonly string[] = ['file', 'dir', 'symlink', 'other'];

/** One entry of a `file_list`. */
function checkEntry(value: unknown, what: string, fail: (why: string) => never): FileEntry {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(`${what}: an entry is not an object`);
  const e = value as Json;
  const mtime = e['mtime'];
  if (
    typeof e['name'] !== 'string' ||
    typeof e['kind'] !== 'string' ||
    !isCount(e['size']) ||
    !isCount(e['mode']) ||
    typeof mtime !== 'number' ||
    !Number.isFinite(mtime)
  ) {
    fail(`${what}: an entry needs a name, kind, size, mode and mtime`);
  }
  const kind = e['kind'] as string;
  return {
    name: e['name'] as string,
    kind: (FILE_KINDS.includes(kind) ? kind : 'other') as FileKind,
    size: e['size'] as number,
    mode: e['mode'] as number,
    mtime: mtime as number,
  };
}

/** A boolean field that may be absent or null (false). */
function optionalFlag(obj: Json, field: string, what: string, fail: (why: string) => never): boolean {
  const value = obj[field];
  if (value === undefined || value === null) return false;
  if (typeof value !== 'boolean') fail(`${what}: ${field} is not a boolean`);
  return value as boolean;
}

/** The `runtimes` and `limits` of a `runtimes` event (or of `GET /v1/runtimes`'s body). */
export function checkCatalog(obj: Json, what: string, fail: (why: string) => never): Catalog {
  const runtimes = obj['runtimes'];
  const limits = obj['limits'];
  if (!Array.isArray(runtimes) || typeof limits !== 'object' || limits === null || Array.isArray(limits)) {
    fail(`${what} needs a "runtimes" array and a "limits" object`);
  }
  const entries = (runtimes as unknown[]).map((entry): RuntimeInfo => {
    if (typeof entry !== 'object' || entry === null) fail(`${what}: a runtime is not an object`);
    const r = entry as Json;
    for (const field of ['language', 'file_name', 'extension']) {
      if (typeof r[field] !== 'string') fail(`${what}: a runtime's ${field} is not a string`);
    }
    for (const field of ['persistent', 'tty', 'network']) {
      if (typeof r[field] !== 'boolean') fail(`${what}: a runtime's ${field} is not a boolean`);
    }
    const info: RuntimeInfo = {
      language: r['language'] as string,
      file_name: r['file_name'] as string,
      extension: r['extension'] as string,
      persistent: r['persistent'] as boolean,
      tty: r['tty'] as boolean,
      network: r['network'] as boolean,
    };
    if (r['version'] !== undefined && r['version'] !== null) {
      if (typeof r['version'] !== 'string') fail(`${what}: a runtime's version is not a string`);
      info.version = r['version'] as string;
    }
    if (r['package_index'] !== undefined && r['package_index'] !== null) {
      if (typeof r['package_index'] !== 'string') fail(`${what}: a runtime's package_index is not a string`);
      info.package_index = r['package_index'] as string;
    }
    if (r['packages'] !== undefined && r['packages'] !== null) {
      const packages = r['packages'];
      if (!Array.isArray(packages)) fail(`${what}: a runtime's packages is not an array`);
      info.packages = (packages as unknown[]).map((item): PackageInfo => {
        const p = item as Json;
        if (typeof item !== 'object' || item === null || typeof p['name'] !== 'string' || typeof p['version'] !== 'string') {
          fail(`${what}: a package needs a name and a version`);
        }
        return { name: p['name'] as string, version: p['version'] as string };
      });
    }
    return info;
  });
  const ranges: Record<string, LimitRange> = {};
  for (const [name, value] of Object.entries(limits as Json)) {
    const range = value as Json;
    if (typeof value !== 'object' || value === null || !isCount(range['default']) || !isCount(range['max'])) {
      fail(`${what}: limit ${name} needs a default and a max`);
    }
    ranges[name] = { default: range['default'] as number, max: range['max'] as number };
  }
  return { runtimes: entries, limits: ranges };
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function optionalString(obj: Json, field: string, what: string): string | null {
  const value = obj[field];
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string') {
    throw new InvalidEventError(`${what}: "${field}" is neither a string nor null`, JSON.stringify(obj));
  }
  return value;
}

function checkUsage(value: unknown, what: string, text: string): Usage {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InvalidEventError(`${what}: usage is not an object`, text);
  }
  const obj = value as Json;
  const num = (field: string): number => {
    const v = obj[field];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
      throw new InvalidEventError(`${what}: usage.${field} is not a non-negative number`, text);
    }
    return v;
  };
  const usage: Usage = {
    duration_ms: num('duration_ms'),
    cpu_ms: num('cpu_ms'),
    peak_memory_bytes: num('peak_memory_bytes'),
    stdout_bytes: num('stdout_bytes'),
    stderr_bytes: num('stderr_bytes'),
  };
  if (obj['first_output_ms'] !== undefined && obj['first_output_ms'] !== null) {
    usage.first_output_ms = num('first_output_ms');
  }
  return usage;
}

/**
 * What an event counts for in a buffer of unread events (`maxBufferedBytes`): the length
 * of its `data` plus 256, and for rich output also the length of its bundle's data (a
 * JSON value: of its JSON text).
 */
export function bufferedSize(event: SluiceEvent): number {
  let size = event.data.length + 256;
  if (event.type === 'display' || event.type === 'update_display' || event.type === 'result') {
    for (const [mime, value] of Object.entries(event.bundle)) {
      size += mime.length + (typeof value === 'string' ? value.length : (JSON.stringify(value)?.length ?? 0));
    }
  }
  if ('exception' in event && event.exception) {
    size += event.exception.ename.length + event.exception.evalue.length;
    for (const line of event.exception.traceback) size += line.length;
  }
  return size;
}

/** The bytes of a base64 `stdout`/`stderr` event's data (standard alphabet, padded). */
export function decodeBase64(data: string): Uint8Array {
  const binary = atob(data);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
