/**
 * Frames a client sends (PROTOCOL.md §4), and their validation. The client checks every
 * frame before it goes out, so a bad request fails at once with an {@link InvalidFrameError}
 * (code `bad_request`, as the gateway would answer) instead of as a socket-stream refusal
 * that is hard to tie back to its caller. {@link parseClientFrame} applies the same rules
 * to received text; the tests run it over the protocol fixtures.
 */

import { InvalidFrameError } from './errors.js';

/** Per-execution limits an `execute` may request (§9.1); absent ones take the gateway's defaults. */
export interface Limits {
  timeout_ms?: number;
  output_bytes?: number;
  cpu_ms?: number;
  file_size_bytes?: number;
  open_files?: number;
  memory_bytes?: number;
  processes?: number;
  workspace_bytes?: number;
}

/** How output is carried in `stdout`/`stderr` events. */
export type Encoding = 'utf8' | 'base64';

/** `execute` (§4.1). */
export interface ExecuteFrame {
  type: 'execute';
  id: string;
  language: string;
  code: string;
  session?: string;
  persistent?: boolean;
  stdin?: string;
  env?: Record<string, string>;
  args?: string[];
  limits?: Limits;
  encoding?: Encoding;
  /**
   * Run the program on a pseudo-terminal: output is one `stdout` stream of the terminal's
   * bytes (stderr merged, `"\n"` sent as `"\r\n"`), `stdin` data is typed. Not with `persistent`.
   */
  tty?: boolean;
  /** The terminal's width, 1 to 1000 (default 80). Only with `tty: true`. */
  cols?: number;
  /** The terminal's height, 1 to 1000 (default 24). Only with `tty: true`. */
  rows?: number;
  /** The program's `TERM` (default `xterm-256color`): 1 to 64 letters, digits or `.+-_`. Only with `tty: true`. */
  term?: string;
  /**
   * More files of the program, path (relative to its working directory) to text, written
   * there before it starts. Not with `persistent`.
   */
  files?: Record<string, string>;
  /**
   * Give the session a workspace (if it has none yet) that outlives this execution: this
   * execution and every later one of the session start in it, and the file frames reach
   * it. Needs `session`.
   */
  workspace?: boolean;
  /**
   * The client acknowledges the session's events (`ack`): the gateway keeps every one it
   * has not acknowledged from the first on. The client sets it while reconnecting is on.
   */
  ack?: boolean;
}

/** `resize`: a terminal execution's terminal gets a new size; its program gets SIGWINCH. */
export interface ResizeFrame {
  type: 'resize';
  id: string;
  session?: string;
  /** Columns, 1 to 1000. */
  cols: number;
  /** Rows, 1 to 1000. */
  rows: number;
}

/** `stdin` (§4.2): at least one of `data` and `eof: true`. */
export interface StdinFrame {
  type: 'stdin';
  id: string;
  session?: string;
  data?: string;
  eof?: boolean;
}

/** `cancel` (§4.3). */
export interface CancelFrame {
  type: 'cancel';
  id: string;
  session?: string;
}

/** `attach` (§4.4). */
export interface AttachFrame {
  type: 'attach';
  session: string;
  since?: number;
  /** Open the session (creating it when it does not exist) with a workspace (made when it has none). */
  workspace?: boolean;
  /** The client acknowledges the session's events: as if an `ack` of `since` came with the frame. */
  ack?: boolean;
}

/** `detach` (§4.5). */
export interface DetachFrame {
  type: 'detach';
  session: string;
}

/** `ack` (§4.6). */
export interface AckFrame {
  type: 'ack';
  session: string;
  sequence: number;
}

/**
 * `restart` (§4.10): restart a named session's persistent interpreter. Its cells that run
 * or wait are cancelled; the next cell starts a fresh interpreter. Answered by a
 * `restarted` event on the session's stream.
 */
export interface RestartFrame {
  type: 'restart';
  session: string;
}

/**
 * `complete` (§4.11): the completions of the name that ends at `cursor_pos` in `code`,
 * from a named session's persistent interpreter. Answered on the socket's own stream by a
 * `complete_reply` that repeats `request`.
 */
export interface CompleteFrame {
  type: 'complete';
  /** Client-chosen, 1 to 128 bytes; the answer repeats it. */
  request: string;
  /** A named session this socket reads. */
  session: string;
  /** The text being edited (a cell). */
  code: string;
  /** The cursor's position in `code`, in Unicode code points (not UTF-16 units): at most its length in code points. */
  cursor_pos: number;
}

/**
 * `inspect` (§4.11): what the interpreter knows about the name at `cursor_pos` in `code`
 * (or the callee of the call the cursor is in). Answered by an `inspect_reply`.
 */
export interface InspectFrame {
  type: 'inspect';
  request: string;
  session: string;
  code: string;
  /** In Unicode code points, as in `complete`. */
  cursor_pos: number;
  /** 0 (the default): signature, type, value and documentation; 1: the source too. */
  detail_level?: 0 | 1;
}

/** A question to a session's interpreter: it names a `request` its answer repeats. */
export type QueryFrame = CompleteFrame | InspectFrame;

/** `runtimes`: which languages may this client run, with which limits. */
export interface RuntimesFrame {
  type: 'runtimes';
}

/**
 * `write_file`: create or replace (or, with `append`, add to) a file of a session's
 * workspace, its parent directories made as needed. Answered by `file_written`.
 */
export interface WriteFileFrame {
  type: 'write_file';
  /** Client-chosen, 1 to 128 bytes; the answer repeats it. */
  request: string;
  session: string;
  /** Relative to the workspace. */
  path: string;
  /** The content: text, or base64 when `encoding` is `base64`. */
  data: string;
  encoding?: Encoding;
  append?: boolean;
  /** Permission bits (0 to 0o777) of a file this write creates; 0o644 by default. */
  mode?: number;
}

/** `read_file`: a file of a session's workspace (or `length` bytes from `offset`), answered by `file_data` events in order. */
export interface ReadFileFrame {
  type: 'read_file';
  request: string;
  session: string;
  path: string;
  offset?: number;
  length?: number;
  encoding?: Encoding;
}

/** `list_files`: the entries of a directory of a session's workspace (absent `path`: the workspace itself). */
export interface ListFilesFrame {
  type: 'list_files';
  request: string;
  session: string;
  path?: string;
}

/** `delete_file`: remove a file, or a directory (not empty only with `recursive`). */
export interface DeleteFileFrame {
  type: 'delete_file';
  request: string;
  session: string;
  path: string;
  recursive?: boolean;
}

/** A frame about a session's workspace: it names a `request` its answer repeats. */
export type FileFrame = WriteFileFrame | ReadFileFrame | ListFilesFrame | DeleteFileFrame;

/** Any frame a client sends. */
export type ClientFrame =
  | ExecuteFrame
  | StdinFrame
  | CancelFrame
  | AttachFrame
  | DetachFrame
  | AckFrame
  | RuntimesFrame
  | ResizeFrame
  | RestartFrame
  | QueryFrame
  | FileFrame;

/** Most columns or rows a terminal may have (the least is 1). */
export const MAX_TERMINAL_SIDE = 1000;
/** The size, `[cols, rows]`, of a `tty` execution's terminal when it names none. */
export const DEFAULT_TERMINAL_SIZE: readonly [number, number] = [80, 24];
/** The `TERM` of a `tty` execution that names none. */
export const DEFAULT_TERM = 'xterm-256color';
/** Most bytes in a `term`. */
export const MAX_TERM_BYTES = 64;
const TERM_NAME = /^[A-Za-z0-9.+\-_]+$/;

const MAX_NAME_BYTES = 128;
const LIMIT_NAMES: readonly (keyof Limits)[] = [
  'timeout_ms',
  'output_bytes',
  'cpu_ms',
  'file_size_bytes',
  'open_files',
  'memory_bytes',
  'processes',
  'workspace_bytes',
];

const utf8 = new TextEncoder();

/** Throws {@link InvalidFrameError} unless `frame` follows the rules of its type. */
export function checkClientFrame(frame: ClientFrame): void {
  parseObject(frame as unknown as Record<string, unknown>);
}

/** Encodes a frame as the JSON text of one WebSocket text frame, checking it first. */
export function encodeFrame(frame: ClientFrame): string {
  checkClientFrame(frame);
  return JSON.stringify(frame);
}

/**
 * Decodes and checks a client frame from text, as the gateway would (unknown fields are
 * ignored and dropped). Throws {@link InvalidFrameError} (code `bad_request`) otherwise.
 */
export function parseClientFrame(text: string): ClientFrame {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new InvalidFrameError('the frame is not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InvalidFrameError('the frame is not a JSON object');
  }
  return parseObject(value as Record<string, unknown>);
}

function parseObject(obj: Record<string, unknown>): ClientFrame {
  const type = obj['type'];
  if (typeof type !== 'string') throw new InvalidFrameError('the frame has no string "type"');
  switch (type) {
    case 'execute': {
      const frame: ExecuteFrame = {
        type,
        id: name(obj, 'id', type),
        language: name(obj, 'language', type),
        code: text(obj, 'code', type),
      };
      const session = optionalName(obj, 'session', type);
      if (session !== undefined) frame.session = session;
      const persistent = obj['persistent'];
      if (persistent !== undefined) {
        if (typeof persistent !== 'boolean') bad(type, '"persistent" must be a boolean');
        if (persistent && session === undefined) bad(type, '"persistent": true needs a "session"');
        frame.persistent = persistent as boolean;
      }
      if (obj['stdin'] !== undefined) frame.stdin = text(obj, 'stdin', type);
      if (obj['env'] !== undefined) frame.env = env(obj['env'], type);
      if (obj['args'] !== undefined) frame.args = args(obj['args'], type);
      if (obj['limits'] !== undefined) frame.limits = limits(obj['limits'], type);
      const encoding = obj['encoding'];
      if (encoding !== undefined) {
        if (encoding !== 'utf8' && encoding !== 'base64') bad(type, '"encoding" must be "utf8" or "base64"');
        frame.encoding = encoding as Encoding;
      }
      terminal(obj, frame);
      if (obj['files'] !== undefined) frame.files = files(obj['files'], frame);
      const workspace = flag(obj, 'workspace', type);
      if (workspace !== undefined) {
        if (workspace && session === undefined) bad(type, '"workspace": true needs a "session" for the workspace to live in');
        frame.workspace = workspace;
      }
      const ack = flag(obj, 'ack', type);
      if (ack !== undefined) frame.ack = ack;
      return frame;
    }
    case 'stdin': {
      const frame: StdinFrame = { type, id: name(obj, 'id', type) };
      const session = optionalName(obj, 'session', type);
      if (session !== undefined) frame.session = session;
      if (obj['data'] !== undefined) frame.data = text(obj, 'data', type);
      const eof = obj['eof'];
      if (eof !== undefined) {
        if (typeof eof !== 'boolean') bad(type, '"eof" must be a boolean');
        frame.eof = eof as boolean;
      }
      if (frame.data === undefined && frame.eof !== true) bad(type, 'needs "data" or "eof": true');
      return frame;
    }
    case 'cancel': {
      const frame: CancelFrame = { type, id: name(obj, 'id', type) };
      const session = optionalName(obj, 'session', type);
      if (session !== undefined) frame.session = session;
      return frame;
    }
    case 'attach': {
      const frame: AttachFrame = { type, session: name(obj, 'session', type) };
      if (obj['since'] !== undefined) frame.since = count(obj['since'], 'since', type);
      const workspace = flag(obj, 'workspace', type);
      if (workspace !== undefined) frame.workspace = workspace;
      const ack = flag(obj, 'ack', type);
      if (ack !== undefined) frame.ack = ack;
      return frame;
    }
    case 'detach':
      return { type, session: name(obj, 'session', type) };
    case 'ack':
      return { type, session: name(obj, 'session', type), sequence: count(obj['sequence'], 'sequence', type) };
    case 'runtimes':
      return { type };
    case 'restart':
      return { type, session: name(obj, 'session', type) };
    case 'resize': {
      const frame: ResizeFrame = { type, id: name(obj, 'id', type), cols: 0, rows: 0 };
      const session = optionalName(obj, 'session', type);
      if (session !== undefined) frame.session = session;
      frame.cols = side(obj['cols'], 'cols', type);
      frame.rows = side(obj['rows'], 'rows', type);
      return frame;
    }
    // As the gateway decodes them: every field's type first, then `request`, `path`
    // (`invalid_path`) and `session`, then what is particular to the frame.
    case 'write_file': {
      const frame: WriteFileFrame = { type, ...fileNames(obj, type, true), data: text(obj, 'data', type) };
      const encoding = optionalEncoding(obj, type);
      const append = flag(obj, 'append', type);
      const mode = obj['mode'] === undefined ? undefined : count(obj['mode'], 'mode', type);
      checkFileNames(frame, type);
      if (encoding !== undefined) frame.encoding = encoding;
      if (append !== undefined) frame.append = append;
      if (mode !== undefined) {
        if (mode > MAX_FILE_MODE) bad(type, `"mode" 0o${mode.toString(8)} has bits beyond 0o777 (no set-id or sticky bits)`);
        frame.mode = mode;
      }
      if (encoding !== 'base64' && frame.data.includes('\0')) bad(type, 'text may not contain NUL; send it as base64');
      return frame;
    }
    case 'read_file': {
      const frame: ReadFileFrame = { type, ...fileNames(obj, type, true) };
      const offset = obj['offset'] === undefined ? undefined : count(obj['offset'], 'offset', type);
      const length = obj['length'] === undefined ? undefined : count(obj['length'], 'length', type);
      const encoding = optionalEncoding(obj, type);
      checkFileNames(frame, type);
      if (offset !== undefined) frame.offset = offset;
      if (length !== undefined) frame.length = length;
      if (encoding !== undefined) frame.encoding = encoding;
      return frame;
    }
    case 'list_files': {
      const { path, ...rest } = fileNames(obj, type, false);
      const frame: ListFilesFrame = { type, ...rest };
      if (path !== undefined) frame.path = path;
      checkFileNames(frame, type);
      return frame;
    }
    case 'delete_file': {
      const frame: DeleteFileFrame = { type, ...fileNames(obj, type, true) };
      const recursive = flag(obj, 'recursive', type);
      checkFileNames(frame, type);
      if (recursive !== undefined) frame.recursive = recursive;
      return frame;
    }
    // As the gateway decodes them: every field's type, then `request` and `session`, then the cursor.
    case 'complete':
    case 'inspect': {
      const request = text(obj, 'request', type);
      const session = text(obj, 'session', type);
      const code = text(obj, 'code', type);
      const cursor = count(obj['cursor_pos'], 'cursor_pos', type);
      const level = obj['detail_level'];
      if (type === 'inspect' && level !== undefined && level !== 0 && level !== 1) bad(type, '"detail_level" must be 0 or 1');
      nameLength(request, 'request', type);
      nameLength(session, 'session', type);
      const length = codePointLength(code);
      if (cursor > length) bad(type, `"cursor_pos" ${cursor} is past the end of "code" (${length} code points)`);
      if (type === 'complete') return { type, request, session, code, cursor_pos: cursor };
      const frame: InspectFrame = { type, request, session, code, cursor_pos: cursor };
      if (level !== undefined) frame.detail_level = level as 0 | 1;
      return frame;
    }
    default:
      throw new InvalidFrameError(
        `unknown frame type ${JSON.stringify(type)}; expected one of execute, stdin, cancel, attach, detach, ack, runtimes, resize, restart, ` +
          'write_file, read_file, list_files, delete_file, complete, inspect',
      );
  }
}

/** How many Unicode code points `text` holds (a surrogate pair is one; a lone surrogate counts as one too). */
export function codePointLength(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
    }
    n++;
  }
  return n;
}

/** The permission bits a written file may ask for, at most (no set-id or sticky bits). */
export const MAX_FILE_MODE = 0o777;
/** The most bytes of a file one `file_data` event carries (before encoding). */
export const FILE_CHUNK_BYTES = 64 * 1024;
/** File names starting with this, at the top of a workspace, are the gateway's own: file frames may not name them. */
export const RESERVED_PREFIX = '.sluice-';

/**
 * Why `path` cannot name a file of a workspace (see {@link filePathProblem}, and not a name
 * starting with `.sluice-` at its top), or `undefined`.
 */
export function workspacePathProblem(path: string): string | undefined {
  const problem = filePathProblem(path);
  if (problem !== undefined) return problem;
  if (path.startsWith(RESERVED_PREFIX)) return 'names starting with ".sluice-" at the top of the workspace are the gateway\'s own';
  return undefined;
}

/** A file frame's `request`, `session` and `path` (optional for `list_files`), as strings. */
function fileNames<P extends boolean>(
  obj: Record<string, unknown>,
  type: string,
  pathRequired: P,
): { request: string; session: string; path: P extends true ? string : string | undefined } {
  const request = text(obj, 'request', type);
  const session = text(obj, 'session', type);
  const path = pathRequired || obj['path'] !== undefined ? text(obj, 'path', type) : undefined;
  return { request, session, path: path as P extends true ? string : string | undefined };
}

/** The checks of a file frame's names, in the gateway's order: `request`, `path` (refused with `invalid_path`), `session`. */
function checkFileNames(frame: { request: string; session: string; path?: string }, type: string): void {
  nameLength(frame.request, 'request', type);
  if (frame.path !== undefined) {
    const problem = workspacePathProblem(frame.path);
    if (problem !== undefined) {
      throw new InvalidFrameError(`invalid ${type} frame: path ${JSON.stringify(frame.path.slice(0, 80))}: ${problem}`, 'invalid_path');
    }
  }
  nameLength(frame.session, 'session', type);
}

function optionalEncoding(obj: Record<string, unknown>, type: string): Encoding | undefined {
  const encoding = obj['encoding'];
  if (encoding === undefined) return undefined;
  if (encoding !== 'utf8' && encoding !== 'base64') bad(type, '"encoding" must be "utf8" or "base64"');
  return encoding as Encoding;
}

/** An optional boolean field. */
function flag(obj: Record<string, unknown>, field: string, type: string): boolean | undefined {
  const value = obj[field];
  if (value === undefined) return undefined;
  if (typeof value !== 'boolean') bad(type, `"${field}" must be a boolean`);
  return value as boolean;
}

/**
 * The terminal fields of an `execute`, checked and copied into `frame`: `cols`, `rows` and
 * `term` only with `tty: true`, `tty` never with `persistent`, sizes and `term` in range.
 */
function terminal(obj: Record<string, unknown>, frame: ExecuteFrame): void {
  const type = 'execute';
  const tty = obj['tty'];
  if (tty !== undefined) {
    if (typeof tty !== 'boolean') bad(type, '"tty" must be a boolean');
    frame.tty = tty as boolean;
  }
  if (tty !== true) {
    for (const field of ['cols', 'rows', 'term']) {
      if (obj[field] !== undefined) bad(type, `"${field}" is only for a terminal: add "tty": true`);
    }
    return;
  }
  if (frame.persistent === true) {
    bad(type, '"tty" and "persistent" do not go together: a cell runs in the session\'s interpreter, which has no terminal');
  }
  if (obj['cols'] !== undefined) frame.cols = side(obj['cols'], 'cols', type);
  if (obj['rows'] !== undefined) frame.rows = side(obj['rows'], 'rows', type);
  const term = obj['term'];
  if (term !== undefined) {
    if (typeof term !== 'string' || term.length > MAX_TERM_BYTES || !TERM_NAME.test(term)) {
      const shown = typeof term === 'string' ? JSON.stringify(term.slice(0, 80)) : typeof term;
      bad(type, `"term" must be 1 to ${MAX_TERM_BYTES} letters, digits or .+-_ (like "${DEFAULT_TERM}"), not ${shown}`);
    }
    frame.term = term as string;
  }
}

/** Files an `execute` may carry, at most. */
export const MAX_FILES = 256;
/** The longest path of such a file, in bytes. */
export const MAX_FILE_PATH_BYTES = 1024;
/** The longest component of such a path (the file system's NAME_MAX), in bytes. */
export const MAX_FILE_NAME_BYTES = 255;

/** Why `path` cannot be a path of `files` (relative, plain components, no NUL, at most 1024 bytes), or `undefined`. */
function filePathProblem(path: string): string | undefined {
  if (path === '') return 'the path is empty';
  if (new TextEncoder().encode(path).length > MAX_FILE_PATH_BYTES) return 'the path is longer than 1024 bytes';
  if (path.startsWith('/')) return 'the path is absolute; paths are relative to the working directory';
  if (path.includes('\0')) return 'the path contains NUL';
  for (const component of path.split('/')) {
    if (component === '') return 'the path has an empty component ("//" or a trailing "/")';
    if (component === '.' || component === '..') return 'the path has a "." or ".." component';
    if (new TextEncoder().encode(component).length > MAX_FILE_NAME_BYTES) {
      return 'a component of the path is longer than 255 bytes';
    }
  }
  return undefined;
}

/** An `execute`'s `files`: path to text, not with `persistent`, no path both a file and a directory. */
function files(value: unknown, frame: ExecuteFrame): Record<string, string> {
  const type = 'execute';
  if (typeof value !== 'object' || value === null || Array.isArray(value)) bad(type, '"files" must be an object of path to text');
  const entries = Object.entries(value as Record<string, unknown>);
  if (entries.length === 0) return {};
  if (frame.persistent === true) bad(type, '"files" are for a program of its own: a persistent cell runs in the session\'s interpreter');
  if (entries.length > MAX_FILES) bad(type, `${entries.length} files, more than the ${MAX_FILES} an execute may carry`);
  const paths = new Set(entries.map(([path]) => path));
  for (const [path, text] of entries) {
    if (typeof text !== 'string') bad(type, `file ${JSON.stringify(path.slice(0, 80))}: its text must be a string`);
    const problem = workspacePathProblem(path);
    if (problem !== undefined) bad(type, `file ${JSON.stringify(path.slice(0, 80))}: ${problem}`);
    if ((text as string).includes('\0')) bad(type, `file ${JSON.stringify(path.slice(0, 80))}: text may not contain NUL`);
    let parent = path;
    while (parent.includes('/')) {
      parent = parent.slice(0, parent.lastIndexOf('/'));
      if (paths.has(parent)) bad(type, `${JSON.stringify(parent)} is a file, so it cannot hold ${JSON.stringify(path)}`);
    }
  }
  return value as Record<string, string>;
}

/** A terminal's columns or rows: an integer from 1 to {@link MAX_TERMINAL_SIDE}. */
function side(value: unknown, field: string, type: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_TERMINAL_SIDE) {
    bad(type, `"${field}" must be an integer from 1 to ${MAX_TERMINAL_SIDE}`);
  }
  return value as number;
}

function bad(type: string, why: string): never {
  throw new InvalidFrameError(`invalid ${type} frame: ${why}`);
}

function text(obj: Record<string, unknown>, field: string, type: string): string {
  const value = obj[field];
  if (typeof value !== 'string') bad(type, `"${field}" must be a string`);
  return value as string;
}

/** An id, session or language: 1 to 128 bytes of UTF-8. */
function name(obj: Record<string, unknown>, field: string, type: string): string {
  const value = text(obj, field, type);
  nameLength(value, field, type);
  return value;
}

function nameLength(value: string, field: string, type: string): void {
  const bytes = utf8.encode(value).length;
  if (bytes === 0 || bytes > MAX_NAME_BYTES) {
    bad(type, `"${field}" must be 1 to ${MAX_NAME_BYTES} bytes of UTF-8 (it has ${bytes})`);
  }
}

function optionalName(obj: Record<string, unknown>, field: string, type: string): string | undefined {
  return obj[field] === undefined ? undefined : name(obj, field, type);
}

function count(value: unknown, field: string, type: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    bad(type, `"${field}" must be a non-negative integer`);
  }
  return value as number;
}

function env(value: unknown, type: string): Record<string, string> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) bad(type, '"env" must be an object');
  const out: Record<string, string> = {};
  for (const [key, v] of Object.entries(value as Record<string, unknown>)) {
    if (key === '' || key.includes('=') || key.includes('\0')) {
      bad(type, `env name ${JSON.stringify(key)} must be non-empty without "=" or NUL`);
    }
    if (typeof v !== 'string' || v.includes('\0')) bad(type, `env value of ${JSON.stringify(key)} must be a string without NUL`);
    out[key] = v as string;
  }
  return out;
}

function args(value: unknown, type: string): string[] {
  if (!Array.isArray(value)) bad(type, '"args" must be an array of strings');
  return (value as unknown[]).map((arg) => {
    if (typeof arg !== 'string' || arg.includes('\0')) bad(type, 'every arg must be a string without NUL');
    return arg as string;
  });
}

function limits(value: unknown, type: string): Limits {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) bad(type, '"limits" must be an object');
  const obj = value as Record<string, unknown>;
  const out: Limits = {};
  for (const key of LIMIT_NAMES) {
    if (obj[key] !== undefined) out[key] = count(obj[key], `limits.${key}`, type);
  }
  return out;
}
