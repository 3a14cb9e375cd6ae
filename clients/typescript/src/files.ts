/**
 * A session's workspace from the client's side (PROTOCOL.md, "Workspaces"): the options
 * of the file methods of {@link SluiceClient}, and one file request on its way, which
 * gathers the answers that repeat its `request` into what the method resolves with.
 *
 * Each request is one frame, answered on the socket's own stream: `file_written`,
 * `file_data` (several, in order, the last with `last: true`), `file_list` or
 * `file_deleted`, or an `error` that repeats the `request`. A write larger than one frame
 * is several requests, one after the other: the first replaces the file, the rest append.
 */

import { ConnectionError, GatewayError, InvalidEventError, type SluiceError } from './errors.js';
import { decodeBase64, type ErrorEvent, type FileEntry, type SluiceEvent } from './events.js';

/** Options of `writeFile`. */
export interface WriteFileOptions {
  /** Permission bits (0 to 0o777) of a file the write creates; 0o644 by default. An existing file keeps its own. */
  mode?: number;
  /** Add to the end of the file (created if missing) instead of replacing it. */
  append?: boolean;
}

/** Options of `readFile` and `readText`. */
export interface ReadFileOptions {
  /** The first byte to read (default 0). */
  offset?: number;
  /** How many bytes to read at most (default: to the end of the file). */
  length?: number;
}

/** Options of `deleteFile`. */
export interface DeleteFileOptions {
  /** Remove a directory that is not empty, with everything in it. */
  recursive?: boolean;
}

/** What `listFiles` resolves with: the directory's entries, sorted by name. */
export type FileListing = FileEntry[] & {
  /** True when the directory had more entries than one answer carries (10,000); the rest are not listed. */
  truncated: boolean;
};

/** An answer to a file frame (or its refusal). */
export type FileAnswer = Extract<SluiceEvent, { type: 'file_written' | 'file_data' | 'file_list' | 'file_deleted' | 'error' }>;

/** The most raw bytes one `write_file` frame carries: 256 KiB (about 342 KiB of base64). */
export const UPLOAD_PIECE_BYTES = 256 * 1024;

/** The standard, padded base64 of `bytes` (browsers and Node alike). */
export function encodeBase64(bytes: Uint8Array): string {
  const parts: string[] = [];
  // String.fromCharCode takes its arguments on the stack: 32 KiB at a time.
  for (let i = 0; i < bytes.length; i += 0x8000) {
    parts.push(String.fromCharCode(...bytes.subarray(i, i + 0x8000)));
  }
  return btoa(parts.join(''));
}

/** One file frame sent (or waiting for a socket) and not answered yet. */
export class FileRequest<T> {
  /** True once its frame was written to a socket. */
  sent = false;
  readonly promise: Promise<T>;
  private resolve!: (value: T) => void;
  private reject!: (error: Error) => void;
  /** `file_data` parts of a read, and where the next one must start. */
  private parts: Uint8Array[] = [];
  private next: number;

  /**
   * @param request the frame's `request`
   * @param text the frame, kept for asking again after a reconnect
   * @param repeatable asked again on a new socket when the old one dropped before the
   *   answer: a read or a list changes nothing; a write or a delete is not (it may have
   *   been done), and fails with `connection_lost` instead
   * @param what names it in errors (`write_file "a/b.txt"`)
   * @param finish makes the result from its last answer (and a read's bytes)
   */
  constructor(
    readonly request: string,
    readonly text: string,
    readonly repeatable: boolean,
    readonly what: string,
    private readonly start: number,
    private readonly finish: (event: FileAnswer, bytes: Uint8Array | undefined) => T,
  ) {
    this.next = start;
    this.promise = new Promise<T>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    // A caller that never awaits it gets no "unhandled rejection".
    this.promise.catch(() => undefined);
  }

  /** Takes one answer; true once the request is over (answered, refused or broken). */
  take(event: FileAnswer): boolean {
    if (event.type === 'error') {
      this.reject(new GatewayError(event as ErrorEvent, this.what));
      return true;
    }
    if (event.type !== 'file_data') {
      this.resolve(this.finish(event, undefined));
      return true;
    }
    // Reads ask for base64: text would have lost whatever was not UTF-8, so it is never taken for the bytes.
    if (event.encoding !== 'base64') {
      this.reject(
        new InvalidEventError(`${this.what}: a part came as text, not the base64 asked for`, JSON.stringify(event).slice(0, 200)),
      );
      return true;
    }
    const bytes = decodeBase64(event.data);
    // A read from past the end is answered from the end: no bytes, at the file's size.
    if (this.parts.length === 0 && this.next > event.size) this.next = event.size;
    if (event.offset !== this.next) {
      this.reject(
        new InvalidEventError(
          `${this.what}: a part starts at byte ${event.offset}, where ${this.next} was expected`,
          JSON.stringify(event),
        ),
      );
      return true;
    }
    this.parts.push(bytes);
    this.next += bytes.length;
    if (!event.last) return false;
    this.resolve(this.finish(event, concat(this.parts)));
    return true;
  }

  /** The socket dropped after it was sent: it will be asked again from the start. */
  restart(): void {
    this.sent = false;
    this.parts = [];
    this.next = this.start;
  }

  /** Ends it with `error`. */
  fail(error: SluiceError): void {
    this.reject(error);
  }

  /** The error of a request that was sent and not answered when the socket dropped. */
  lost(): ConnectionError {
    return new ConnectionError(
      'connection_lost',
      `the connection dropped before the gateway answered ${this.what}; it may or may not have been done`,
    );
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
