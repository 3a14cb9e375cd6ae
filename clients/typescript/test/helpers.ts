/**
 * Test helpers: a real gateway as a child process, a TCP proxy whose connections a test
 * can cut, and bounded waits. No helper sleeps in place of waiting for an event.
 */

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import net from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { SluiceEvent } from '../src/index.js';

/** The repository root (tests run from build/test/). */
export const repoRoot = fileURLToPath(new URL('../../../../', import.meta.url));

/** The package root (clients/typescript). */
export const packageRoot = fileURLToPath(new URL('../../', import.meta.url));

/** A running gateway. */
export interface Gateway {
  url: string;
  /** Where it listens, as host:port. */
  port: number;
  stop(): Promise<void>;
}

/** Starts `$SLUICE_BIN serve` on a free port with `extraArgs`; resolves once it logs "listening". */
export async function startGateway(extraArgs: string[] = []): Promise<Gateway> {
  const bin = process.env['SLUICE_BIN'];
  if (!bin) {
    throw new Error('SLUICE_BIN is not set: point it at a built gateway binary, e.g. SLUICE_BIN=target/release/sluice');
  }
  const child = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--log-json', ...extraArgs], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const tail: string[] = [];
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the gateway did not log "listening" within 20 s; its stderr:\n${tail.join('\n')}`));
    }, 20_000);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`could not start ${bin}: ${err.message}`));
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the gateway exited (${code ?? signal}) before listening; its stderr:\n${tail.join('\n')}`));
    });
    // Keep reading stderr for the gateway's whole life, so it never blocks on a full pipe.
    createInterface({ input: child.stderr! }).on('line', (line) => {
      tail.push(line);
      if (tail.length > 50) tail.shift();
      if (process.env['SLUICE_TEST_LOG']) process.stderr.write(`[gateway] ${line}\n`);
      try {
        const record = JSON.parse(line) as { fields?: { message?: string; url?: string } };
        if (record.fields?.message === 'listening' && record.fields.url) {
          clearTimeout(timer);
          resolve(record.fields.url);
        }
      } catch {
        // not JSON: a panic message or similar, kept in `tail`
      }
    });
  });
  child.removeAllListeners('exit');
  return { url, port: Number(new URL(url).port), stop: () => stopChild(child) };
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** A TCP proxy in front of a port; `cut()` destroys every connection it carries. */
export interface Proxy {
  port: number;
  /** Connections accepted so far. */
  readonly accepted: number;
  cut(): void;
  /** Sends the connections accepted from now on to `port` instead. */
  retarget(port: number): void;
  close(): Promise<void>;
}

export async function startProxy(targetPort: number): Promise<Proxy> {
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  let target = targetPort;
  const server = net.createServer((client) => {
    accepted += 1;
    const upstream = net.connect(target, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    get accepted() {
      return accepted;
    },
    cut() {
      for (const socket of sockets) socket.resetAndDestroy();
      sockets.clear();
    },
    retarget(port: number) {
      target = port;
    },
    close() {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** Makes an API key for `tenant` with `$SLUICE_BIN key add`, its hash appended to `file`. */
export function addKey(tenant: string, file: string): string {
  const bin = process.env['SLUICE_BIN'];
  if (!bin) throw new Error('SLUICE_BIN is not set');
  return execFileSync(bin, ['key', 'add', tenant, '--file', file], { encoding: 'utf8', timeout: 20_000 }).trim();
}

/** Rejects if `promise` has not settled within `ms` (a bound on a wait, never a synchronisation). */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Reads `events` until `stop` says so (or the stream ends), within `ms`. */
export async function collect(
  events: AsyncIterable<SluiceEvent>,
  stop: (event: SluiceEvent, all: SluiceEvent[]) => boolean,
  ms = 20_000,
): Promise<SluiceEvent[]> {
  const all: SluiceEvent[] = [];
  const read = (async () => {
    for await (const event of events) {
      all.push(event);
      if (stop(event, all)) break;
    }
    return all;
  })();
  return within(read, ms, 'events');
}

/** The concatenated stdout of `events`. */
export function stdoutOf(events: SluiceEvent[]): string {
  return events
    .filter((e) => e.type === 'stdout')
    .map((e) => e.data)
    .join('');
}
