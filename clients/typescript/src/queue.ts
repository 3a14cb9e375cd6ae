/**
 * A bounded, single-consumer async queue: the buffer between the connection, which never
 * waits for anyone, and one consumer's `for await` loop.
 *
 * The bound is in bytes (as the caller measures its items). An item that would take the
 * buffer over the bound while older items are still unread means the consumer has fallen
 * behind: the queue keeps what it holds, appends the item its owner's `overflow` makes (for
 * the client: an `error` event with code `slow_consumer`), drops everything after, and the
 * consumer's loop ends once it has read them. An item arriving while the buffer is empty is
 * always taken, so a consumer that keeps up is never cut off.
 */

/** Ends of a queue: still open, ended normally, or ended with an error after its items. */
type State<T> = { open: true } | { open: false; error?: Error; items?: T[] };

export class BoundedQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private bytes = 0;
  private state: State<T> = { open: true };
  private waiter: { resolve: (r: IteratorResult<T>) => void; reject: (e: Error) => void } | undefined;
  private iterating = false;
  private overflowedFlag = false;

  /**
   * @param maxBytes the most bytes of unread items
   * @param sizeOf how many bytes an item counts for
   * @param what names the consumer in errors
   * @param overflow makes the last item of a consumer that fell behind, from the bytes
   *   that would have been buffered
   * @param onStop called once when the consumer stops early (`break` in its loop)
   */
  constructor(
    private readonly maxBytes: number,
    private readonly sizeOf: (item: T) => number,
    private readonly what: string,
    private readonly overflow: (bufferedBytes: number, maxBytes: number) => T,
    private readonly onStop?: () => void,
  ) {}

  /** True once a consumer asked for the iterator. */
  get consumed(): boolean {
    return this.iterating;
  }

  /** True once an item did not fit: the queue ended with the `overflow` item. */
  get overflowed(): boolean {
    return this.overflowedFlag;
  }

  /** True until {@link end} or {@link fail} was called or the consumer stopped. */
  get open(): boolean {
    return this.state.open;
  }

  /**
   * Appends an item; false if the queue is closed or has just overflowed (the item is
   * dropped, see {@link overflowed}). With `force` the item is taken whatever the bound.
   */
  push(item: T, force = false): boolean {
    if (!this.state.open) return false;
    if (this.waiter) {
      const { resolve } = this.waiter;
      this.waiter = undefined;
      resolve({ value: item, done: false });
      return true;
    }
    const size = this.sizeOf(item);
    if (!force && this.items.length > 0 && this.bytes + size > this.maxBytes) {
      this.overflowedFlag = true;
      this.items.push(this.overflow(this.bytes + size, this.maxBytes));
      this.end();
      return false;
    }
    this.items.push(item);
    this.bytes += size;
    return true;
  }

  /** Ends the queue: the consumer reads what is buffered, then its loop ends. */
  end(): void {
    if (!this.state.open) return;
    this.state = { open: false };
    this.settleWaiter();
  }

  /** Ends the queue with an error, thrown to the consumer after the buffered items. */
  fail(error: Error): void {
    if (!this.state.open) return;
    this.state = { open: false, error };
    this.settleWaiter();
  }

  private settleWaiter(): void {
    const waiter = this.waiter;
    if (!waiter || this.items.length > 0) return;
    this.waiter = undefined;
    if (!this.state.open && this.state.error) waiter.reject(this.state.error);
    else waiter.resolve({ value: undefined, done: true });
  }

  private next(): Promise<IteratorResult<T>> {
    const item = this.items.shift();
    if (item !== undefined) {
      this.bytes -= this.sizeOf(item);
      return Promise.resolve({ value: item, done: false });
    }
    if (!this.state.open) {
      const error = this.state.error;
      // An error is thrown once; after it the loop is simply over.
      this.state = { open: false };
      return error ? Promise.reject(error) : Promise.resolve({ value: undefined, done: true });
    }
    if (this.waiter) return Promise.reject(new Error(`${this.what}: next() called while another call waits`));
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.iterating) throw new Error(`${this.what} can be iterated only once`);
    this.iterating = true;
    return {
      next: () => this.next(),
      return: () => {
        if (this.state.open) {
          this.state = { open: false };
          this.items.length = 0;
          this.bytes = 0;
          this.onStop?.();
        }
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
