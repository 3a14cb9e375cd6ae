/**
 * A reader of one session's stream: what `attach()` returns. It is an async iterable of
 * the session's events after `since`, each exactly once and in sequence order, across
 * reconnects. A `gap` event stands in for events the gateway no longer had.
 */

import { AbortedError, type SluiceError } from './errors.js';
import { bufferedSize, type SluiceEvent, syntheticError } from './events.js';
import { BoundedQueue } from './queue.js';

/** Options of `attach()`. */
export interface AttachOptions {
  /** The last sequence of the session already seen; events after it follow (default 0: all still buffered). */
  since?: number;
  /** Aborting it detaches; the loop then throws an {@link AbortedError}. */
  signal?: AbortSignal;
  /**
   * Open the session with a workspace: create the session when it does not exist, and give
   * it a workspace when it has none, so that files can be written before anything runs.
   */
  workspace?: boolean;
}

/** What a {@link SessionEvents} asks of the client. */
export interface SessionHost {
  detach(reader: SessionEvents): void;
}

/** The events of one session; see the module comment. */
export class SessionEvents implements AsyncIterable<SluiceEvent> {
  /** The session read. */
  readonly session: string;
  /** Resolves once the gateway accepted the `attach`; rejects with its refusal (e.g. `unknown_session`). */
  readonly ready: Promise<void>;

  /** @internal The last sequence handed to this reader (or the `since` it started after). */
  last: number;
  /** @internal True once the gateway answered its attach: events before that are not its own. */
  confirmed = false;

  private readonly queue: BoundedQueue<SluiceEvent>;
  private resolveReady!: () => void;
  private rejectReady!: (error: Error) => void;
  private detached = false;
  private readonly signal: AbortSignal | undefined;
  private readonly onAbort = (): void => {
    this.end(new AbortedError(`reading session ${JSON.stringify(this.session)} was aborted`));
  };

  /** @internal Made by the client. */
  constructor(
    private readonly host: SessionHost,
    session: string,
    since: number,
    maxBufferedBytes: number,
    signal: AbortSignal | undefined,
  ) {
    this.session = session;
    this.last = since;
    this.queue = new BoundedQueue<SluiceEvent>(
      maxBufferedBytes,
      bufferedSize,
      `session ${JSON.stringify(session)}`,
      (buffered, max) =>
        syntheticError(
          'slow_consumer',
          `the reader of session ${JSON.stringify(session)} fell behind: ${buffered} bytes of events would have been ` +
            `buffered unread, over the maxBufferedBytes limit of ${max}; it was detached`,
          null,
          session,
        ),
      () => this.end(undefined),
    );
    this.ready = new Promise<void>((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => undefined);
    this.signal = signal;
    signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  /** The last sequence handed to this reader. */
  get position(): number {
    return this.last;
  }

  /** Stops reading the session; the loop ends after the events already buffered. */
  detach(): void {
    this.end(undefined);
  }

  [Symbol.asyncIterator](): AsyncIterator<SluiceEvent> {
    return this.queue[Symbol.asyncIterator]();
  }

  /** @internal The gateway accepted the attach. */
  confirm(): void {
    this.confirmed = true;
    this.resolveReady();
  }

  /** @internal Hands it one event of its session; false once it can take no more. */
  push(event: SluiceEvent): boolean {
    if (this.detached) return false;
    this.last = Math.max(this.last, event.type === 'gap' ? event.resume_from - 1 : event.sequence);
    if (!this.queue.push(event)) {
      // It overflowed: its loop ends with a slow_consumer error event after what it holds.
      this.end(undefined);
      return false;
    }
    return true;
  }

  /** @internal Ends it: with `error` (thrown to its loop after what is buffered), or quietly. */
  end(error: SluiceError | undefined): void {
    if (this.detached) return;
    this.detached = true;
    this.signal?.removeEventListener('abort', this.onAbort);
    if (error) {
      this.queue.fail(error);
      this.rejectReady(error);
    } else {
      this.queue.end();
      this.rejectReady(new AbortedError(`reading session ${JSON.stringify(this.session)} stopped before it was attached`));
    }
    this.host.detach(this);
  }

  /** @internal True once it stopped reading. */
  get isDetached(): boolean {
    return this.detached;
  }
}
