/**
 * Questions to a session's persistent interpreter (PROTOCOL.md §4.11): `complete` and
 * `inspect`, as a notebook's Tab and Shift-Tab ask them. Each is one frame with a
 * `request` of the client's choosing, answered on the socket's own stream by a
 * `complete_reply` or `inspect_reply` that repeats it, or refused by an `error` that
 * repeats it (`kernel_busy`, `no_kernel`, `query_timeout`, `unknown_session`,
 * `not_permitted`, `bad_request`).
 *
 * The protocol counts cursor positions in Unicode code points (as Python indexes a
 * `str`); a JavaScript string is indexed in UTF-16 units, where a character beyond the
 * Basic Multilingual Plane ("😀") takes two. The client's API takes and gives JavaScript
 * string offsets, as editors report them, and converts both ways.
 */

import { ConnectionError, GatewayError, InvalidEventError, InvalidFrameError, type SluiceError } from './errors.js';
import type { CompleteReplyEvent, ErrorEvent, InspectReplyEvent, MimeBundle } from './events.js';

/** What `complete` resolves with. Offsets are into the `code` asked about, in UTF-16 units (JavaScript string indices). */
export interface Completions {
  /** The completions, sorted, without duplicates; empty when nothing matches. Each replaces `code.slice(cursorStart, cursorEnd)`. */
  matches: string[];
  /** Where the text the matches replace starts (the name being completed, after the last `.`). */
  cursorStart: number;
  /** Where it ends (usually the cursor). */
  cursorEnd: number;
  /** True when the interpreter had more matches than one answer carries (1000). */
  truncated: boolean;
}

/** What `inspect` resolves with. */
export interface Inspection {
  /** Whether the interpreter knew the name. */
  found: boolean;
  /** What it knows, by MIME type (`text/plain`: signature, type, value, where defined, documentation); `{}` when not found. */
  bundle: MimeBundle;
  /** The bundle's `text/plain`, or `""`. */
  text: string;
}

/** Options of `inspect`. */
export interface InspectOptions {
  /** 0 (the default): signature, type, value and documentation; 1: the source too, where the interpreter has it. */
  detailLevel?: 0 | 1;
}

/** An answer to a query (or its refusal). */
export type QueryAnswer = CompleteReplyEvent | InspectReplyEvent | ErrorEvent;

/**
 * The code-point offset (the protocol's `cursor_pos`) of the UTF-16 offset `index` into
 * `code`. Throws an {@link InvalidFrameError} (`bad_request`) for an index that is not an
 * integer from 0 to `code.length`, or that falls between the two halves of a surrogate pair.
 */
export function codePointOffset(code: string, index: number): number {
  if (!Number.isSafeInteger(index) || index < 0 || index > code.length) {
    throw new InvalidFrameError(`the cursor position ${index} is not an offset into the code (0 to ${code.length})`);
  }
  if (index > 0 && index < code.length && isHigh(code.charCodeAt(index - 1)) && isLow(code.charCodeAt(index))) {
    throw new InvalidFrameError(`the cursor position ${index} falls inside a character (between the halves of a surrogate pair)`);
  }
  let points = 0;
  for (let i = 0; i < index; i++) {
    if (isHigh(code.charCodeAt(i)) && i + 1 < index && isLow(code.charCodeAt(i + 1))) i++;
    points++;
  }
  return points;
}

/** The UTF-16 offset into `code` of the code-point offset `points`, or `undefined` when `code` is shorter. */
export function utf16Offset(code: string, points: number): number | undefined {
  let index = 0;
  for (let n = 0; n < points; n++) {
    if (index >= code.length) return undefined;
    if (isHigh(code.charCodeAt(index)) && index + 1 < code.length && isLow(code.charCodeAt(index + 1))) index += 2;
    else index += 1;
  }
  return index;
}

function isHigh(unit: number): boolean {
  return unit >= 0xd800 && unit <= 0xdbff;
}

function isLow(unit: number): boolean {
  return unit >= 0xdc00 && unit <= 0xdfff;
}

/** One query sent (or waiting for a socket) and not answered yet. */
export class PendingQuery {
  /** True once its frame was written to a socket. */
  sent = false;
  readonly promise: Promise<Completions | Inspection>;
  private resolve!: (value: Completions | Inspection) => void;
  private reject!: (error: Error) => void;

  /**
   * @param request the frame's `request`
   * @param type the frame's type
   * @param code the code asked about, to turn the answer's code points back into UTF-16 offsets
   * @param what names it in errors (`complete in session "nb"`)
   */
  constructor(
    readonly request: string,
    readonly type: 'complete' | 'inspect',
    private readonly code: string,
    readonly what: string,
  ) {
    this.promise = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.promise.catch(() => undefined);
  }

  /** Takes its answer (or refusal). */
  take(event: QueryAnswer): void {
    if (event.type === 'error') {
      this.reject(new GatewayError(event, this.what));
      return;
    }
    if (event.type === 'inspect_reply') {
      if (this.type !== 'inspect') {
        this.reject(new InvalidEventError(`${this.what} was answered by an inspect_reply`, JSON.stringify(event)));
        return;
      }
      const bundle = event.found ? (event.bundle ?? {}) : {};
      const text = bundle['text/plain'];
      this.resolve({ found: event.found, bundle, text: typeof text === 'string' ? text : '' });
      return;
    }
    if (this.type !== 'complete') {
      this.reject(new InvalidEventError(`${this.what} was answered by a complete_reply`, JSON.stringify(event)));
      return;
    }
    const start = utf16Offset(this.code, event.cursor_start);
    const end = utf16Offset(this.code, event.cursor_end);
    if (start === undefined || end === undefined || start > end) {
      this.reject(
        new InvalidEventError(
          `${this.what}: cursor_start ${event.cursor_start} to cursor_end ${event.cursor_end} is not a range of the code`,
          JSON.stringify(event),
        ),
      );
      return;
    }
    this.resolve({ matches: event.matches, cursorStart: start, cursorEnd: end, truncated: event.truncated === true });
  }

  /** Ends it with `error`. */
  fail(error: SluiceError): void {
    this.reject(error);
  }

  /** The error of a query that was sent and not answered when the socket dropped. */
  lost(): ConnectionError {
    return new ConnectionError(
      'connection_lost',
      `the connection dropped before the gateway answered ${this.what}; it changed nothing, so it may be asked again`,
    );
  }
}
