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

/** `completed` (terminal): the program ended by itself; exactly one of `exit_code` and `signal`. */
export interface CompletedEvent extends ExecutionEnvelope {
  type: 'completed';
  exit_code?: number;
  signal?: number;
  usage?: Usage;
}

/** `cancelled` (terminal): stopped by `cancel`, by its session ending, or by shutdown. */
export interface CancelledEvent extends ExecutionEnvelope {
  type: 'cancelled';
  usage?: Usage;
}

/** `resource_limit` (terminal): the program hit `limit`, whose value was `limit_value`. */
export interface ResourceLimitEvent extends ExecutionEnvelope {
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
export interface ErrorEvent extends Envelope {
  type: 'error';
  code: ErrorCode;
  for_session?: string;
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
  /** The file the code is written to (`main.py`) and its extension (`py`). */
  file_name: string;
  extension: string;
  /** `persistent: true` works (a session's interpreter keeps its state). */
  persistent: boolean;
  /** A program can run on a terminal (false until the gateway has terminal mode). */
  tty: boolean;
  /** Its programs may reach the network. */
  network: boolean;
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
        return withUsage({ type: 'completed' as const, ...base, exit_code: exit as number });
      }
      if (!Number.isSafeInteger(signal)) fail(`${what}: signal is not an integer`);
      return withUsage({ type: 'completed' as const, ...base, signal: signal as number });
    }
    case 'cancelled':
      return withUsage({ type: 'cancelled' as const, ...needsExecution() });
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
      return withUsage(event);
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
      return withUsage(event);
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
    default:
      return { type: 'unknown', wire_type: kind, ...envelope };
  }
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

/** The bytes of a base64 `stdout`/`stderr` event's data (standard alphabet, padded). */
export function decodeBase64(data: string): Uint8Array {
  const binary = atob(data);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
