/**
 * The bounded queue between the connection and a consumer: order, end, errors, and what
 * happens to a consumer that falls behind.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BoundedQueue } from '../src/queue.js';

/** The queue's own `overflow` item: says how many bytes would have been buffered. */
const overflow = (buffered: number, max: number): string => `overflow ${buffered} > ${max}`;

const drain = async (queue: BoundedQueue<string>): Promise<string[]> => {
  const out: string[] = [];
  for await (const item of queue) out.push(item);
  return out;
};

test('items come out in order, then the loop ends', async () => {
  const queue = new BoundedQueue<string>(100, (s) => s.length, 'q', overflow);
  queue.push('a');
  queue.push('b');
  const reading = drain(queue);
  queue.push('c');
  queue.end();
  assert.deepEqual(await reading, ['a', 'b', 'c']);
});

test('a consumer that falls behind gets what was buffered, then the overflow item', async () => {
  const queue = new BoundedQueue<string>(10, (s) => s.length, 'q', overflow);
  assert.equal(queue.push('12345'), true);
  assert.equal(queue.push('67890'), true);
  assert.equal(queue.overflowed, false);
  assert.equal(queue.push('x'), false, 'over the bound: dropped');
  assert.equal(queue.overflowed, true);
  assert.equal(queue.push('y'), false, 'and everything after');
  assert.deepEqual(await drain(queue), ['12345', '67890', 'overflow 11 > 10']);
});

test('a forced item is taken over the bound', async () => {
  const queue = new BoundedQueue<string>(10, (s) => s.length, 'q', overflow);
  assert.equal(queue.push('12345'), true);
  assert.equal(queue.push('6789012345', true), true);
  queue.end();
  assert.deepEqual(await drain(queue), ['12345', '6789012345']);
});

test('an item larger than the bound is taken when nothing is waiting', async () => {
  const queue = new BoundedQueue<string>(2, (s) => s.length, 'q', overflow);
  assert.equal(queue.push('a long item'), true);
  queue.end();
  assert.deepEqual(await drain(queue), ['a long item']);
});

test('leaving the loop early stops the queue and tells its owner', async () => {
  let stopped = 0;
  const queue = new BoundedQueue<string>(
    100,
    (s) => s.length,
    'q',
    overflow,
    () => (stopped += 1),
  );
  queue.push('a');
  queue.push('b');
  for await (const item of queue) {
    assert.equal(item, 'a');
    break;
  }
  assert.equal(stopped, 1);
  assert.equal(queue.push('c'), false);
});

test('an error reaches a consumer that is waiting', async () => {
  const queue = new BoundedQueue<string>(100, (s) => s.length, 'q', overflow);
  const reading = drain(queue);
  queue.fail(new Error('gone'));
  await assert.rejects(reading, /gone/);
});
