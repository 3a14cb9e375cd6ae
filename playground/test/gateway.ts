/**
 * A real gateway for the browser tests: `$SLUICE_BIN serve` on a free port, ready once it
 * logs "listening" (no sleep stands in for that), stopped with SIGTERM.
 */

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import net from 'node:net';
import { createInterface } from 'node:readline';

export interface Gateway {
  /** `http://127.0.0.1:PORT`: where the playground page is. */
  base: string;
  port: number;
  stop(): Promise<void>;
}

function bin(): string {
  const path = process.env['SLUICE_BIN'];
  if (!path) throw new Error('SLUICE_BIN is not set: point it at a built gateway, e.g. SLUICE_BIN=target/debug/sluice');
  return path;
}

export async function startGateway(extraArgs: string[] = []): Promise<Gateway> {
  const child = spawn(bin(), ['serve', '--listen', '127.0.0.1:0', '--log-json', ...extraArgs], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const tail: string[] = [];
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the gateway did not log "listening" within 20 s:\n${tail.join('\n')}`));
    }, 20_000);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the gateway exited (${code ?? signal}) before listening:\n${tail.join('\n')}`));
    });
    // Read stderr for the gateway's whole life, so it never blocks on a full pipe.
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
        // Not JSON (a panic, say): kept in `tail`.
      }
    });
  });
  child.removeAllListeners('exit');
  const port = new URL(url).port;
  return { base: `http://127.0.0.1:${port}`, port: Number(port), stop: () => stop(child) };
}

function stop(child: ChildProcess): Promise<void> {
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

/** Makes an API key for `tenant` with `$SLUICE_BIN key add`, its hash appended to `file`. */
export function addKey(tenant: string, file: string): string {
  return execFileSync(bin(), ['key', 'add', tenant, '--file', file], { encoding: 'utf8', timeout: 20_000 }).trim();
}

/** A TCP proxy in front of a port; `cut()` resets every connection it carries. */
export interface Proxy {
  port: number;
  cut(): void;
  close(): Promise<void>;
}

export async function startProxy(target: number): Promise<Proxy> {
  const open = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target, '127.0.0.1');
    for (const socket of [client, upstream]) {
      open.add(socket);
      socket.on('error', () => undefined);
      socket.on('close', () => {
        open.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    cut() {
      for (const socket of open) socket.resetAndDestroy();
      open.clear();
    },
    close() {
      for (const socket of open) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
