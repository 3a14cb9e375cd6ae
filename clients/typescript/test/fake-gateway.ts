/**
 * A gateway a test plays by hand: a `ws` server on port 0 whose test reads each frame the
 * client sends (acks left out) and answers it, or drops the connection. For exchanges the
 * shared scenarios cannot script (answers that repeat an id the client chose). Every wait
 * is for a frame, bounded; none is a sleep.
 */

import type { AddressInfo } from 'node:net';
import type WebSocket from 'ws';
import { WebSocketServer } from 'ws';

export type Frame = Record<string, unknown>;

/** How long a test waits for a frame before failing. */
const FRAME_WAIT_MS = 10_000;

export class FakeGateway {
  private readonly server: WebSocketServer;
  private socket: WebSocket | undefined;
  private readonly frames: Frame[] = [];
  private waiter: ((frame: Frame) => void) | undefined;
  private connectionWaiter: (() => void) | undefined;
  /** Connections accepted so far. */
  connections = 0;
  private sequence = 0;

  constructor() {
    this.server = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: () => 'sluice.v1' });
    this.server.on('connection', (socket) => {
      this.connections += 1;
      this.socket = socket;
      // What the previous connection sent and nobody read is not this one's.
      this.frames.length = 0;
      socket.on('message', (data) => {
        const frame = JSON.parse(String(data)) as Frame;
        if (frame['type'] === 'ack' || socket !== this.socket) return;
        const waiter = this.waiter;
        this.waiter = undefined;
        if (waiter) waiter(frame);
        else this.frames.push(frame);
      });
      this.connectionWaiter?.();
    });
  }

  async url(): Promise<string> {
    await new Promise<void>((resolve) => {
      if (this.server.address()) resolve();
      else this.server.once('listening', () => resolve());
    });
    return `ws://127.0.0.1:${(this.server.address() as AddressInfo).port}/v1/ws`;
  }

  /** The next frame the client sent (acks aside). */
  next(): Promise<Frame> {
    const frame = this.frames.shift();
    if (frame) return Promise.resolve(frame);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no frame from the client within ${FRAME_WAIT_MS} ms`)), FRAME_WAIT_MS);
      this.waiter = (frame) => {
        clearTimeout(timer);
        resolve(frame);
      };
    });
  }

  /** Frames already received and not read. */
  get pending(): number {
    return this.frames.length;
  }

  /** Sends an event of the socket's own stream (session null), numbered in that stream. */
  answer(type: string, fields: Frame): void {
    this.sequence += 1;
    this.raw({ type, data: '', timestamp: 1767225600 + this.sequence, sequence: this.sequence, id: null, session: null, ...fields });
  }

  /** Sends an event as it is. */
  raw(event: Frame): void {
    this.socket?.send(JSON.stringify(event));
  }

  /** Answers an `attach` of `session` after `since`. */
  attached(session: string, since: number): void {
    this.raw({
      type: 'attached',
      data: '',
      timestamp: 1767225600,
      sequence: since,
      id: null,
      session,
      resume_from: since + 1,
    });
  }

  /** Cuts the connection; `reconnected()` resolves when the client is back. */
  drop(): Promise<void> {
    const back = new Promise<void>((resolve) => {
      this.connectionWaiter = resolve;
    });
    this.socket?.terminate();
    return back;
  }

  async close(): Promise<void> {
    for (const client of this.server.clients) client.terminate();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
