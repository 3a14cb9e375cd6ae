/**
 * The errors the client throws. Every one is a {@link SluiceError} with a `code`: the
 * gateway's own error code (§8.2 of PROTOCOL.md) when the gateway refused or failed
 * something, or one of {@link ClientErrorCode} when the failure is on the client's side.
 */

import type { ErrorCode, ErrorEvent } from './events.js';

/** Codes of failures detected by the client itself (never sent by a gateway). */
export type ClientErrorCode =
  /** The connection could not be opened, or dropped for good (reconnecting gave up or is off). */
  | 'connection_lost'
  /**
   * The gateway refused the credential (HTTP 401 to the upgrade request). Only where the
   * WebSocket implementation shows the HTTP status (Node's `ws`); a browser reports a
   * refused upgrade as `connection_lost` without saying why.
   */
  | 'unauthorized'
  /** `close()` was called, or the client was closed before the operation finished. */
  | 'closed'
  /** The operation was aborted through its `AbortSignal` before it took effect. */
  | 'aborted'
  /** A consumer fell further behind than its buffer allows; events after the ones buffered are lost to it. */
  | 'slow_consumer'
  /** The gateway sent something that breaks the protocol. */
  | 'invalid_event';

/** Base class: every error from this package; `code` says what happened. */
export class SluiceError extends Error {
  readonly code: ErrorCode | ClientErrorCode;

  constructor(code: ErrorCode | ClientErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SluiceError';
    this.code = code;
  }
}

/** The gateway answered with an `error` event: a refusal, or an execution that failed to run. */
export class GatewayError extends SluiceError {
  /** The event as the gateway sent it. */
  readonly event: ErrorEvent;

  constructor(event: ErrorEvent, context?: string) {
    const where = context ? `${context}: ` : '';
    super(event.code, `${where}${event.code}: ${event.data || 'the gateway gave no message'}`);
    this.name = 'GatewayError';
    this.event = event;
  }
}

/** The connection is gone (or was never made) and will not come back. */
export class ConnectionError extends SluiceError {
  constructor(code: 'connection_lost' | 'closed' | 'unauthorized', message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'ConnectionError';
  }
}

/**
 * The gateway refused the credential (`token`): missing, unknown, expired or malformed; it
 * answered the upgrade request with HTTP 401 and `reason`, its one-line explanation. Never
 * retried: a reconnect refused so ends the client at once. Browsers do not expose the
 * status of a refused upgrade, so there the refusal is a {@link ConnectionError} with code
 * `connection_lost` whose message says the credential may have been refused.
 */
export class AuthenticationError extends ConnectionError {
  readonly reason: string;

  constructor(reason: string) {
    super('unauthorized', `the gateway refused the credential: ${reason}`);
    this.name = 'AuthenticationError';
    this.reason = reason;
  }
}

/** The operation was aborted through its `AbortSignal`. */
export class AbortedError extends SluiceError {
  constructor(message = 'the operation was aborted') {
    super('aborted', message);
    this.name = 'AbortedError';
  }
}

/** A consumer did not keep up and its buffer overflowed. */
export class SlowConsumerError extends SluiceError {
  constructor(message: string) {
    super('slow_consumer', message);
    this.name = 'SlowConsumerError';
  }
}

/** A frame from the gateway is not a valid event; `text` is what arrived (cut to 200 characters). */
export class InvalidEventError extends SluiceError {
  readonly text: string;

  constructor(reason: string, text: string) {
    super('invalid_event', `invalid event from the gateway: ${reason}`);
    this.name = 'InvalidEventError';
    this.text = text.length > 200 ? `${text.slice(0, 200)}…` : text;
  }
}

/**
 * A frame the client was asked to send breaks the protocol's rules; `code` is the code the
 * gateway would refuse it with (`bad_request`, or `invalid_path` for a file frame's path),
 * so it is refused locally instead.
 */
export class InvalidFrameError extends SluiceError {
  constructor(message: string, code: 'bad_request' | 'invalid_path' = 'bad_request') {
    super(code, message);
    this.name = 'InvalidFrameError';
  }
}
