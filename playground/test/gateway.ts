/**
 * A real gateway for the browser tests: `$SLUICE_BIN serve` on a free port, ready once it
 * logs "listening" (no sleep stands in for that), stopped with SIGTERM.
 *
 * With `PLAYGROUND_FROM_DISK=1` the page's three files come from
 * gateway/assets/playground/ as committed, not from the gateway binary (which embeds the
 * assets of the tree it was built from): a front server in its place answers `/`,
 * `/playground.js` and `/playground.css` with those files (and the gateway's own headers:
 * its content security policy and the rest) and passes everything else, WebSocket
 * upgrades included, to the gateway. For testing the page against a gateway built
 * before it; without the variable the page is the gateway's own.
 */

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

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
  const port = Number(new URL(url).port);
  if (process.env['PLAYGROUND_FROM_DISK']) {
    const front = await startFront(port);
    return {
      base: `http://127.0.0.1:${front.port}`,
      port: front.port,
      stop: async () => {
        await front.close();
        await stop(child);
      },
    };
  }
  return { base: `http://127.0.0.1:${port}`, port, stop: () => stop(child) };
}

/** gateway/assets/playground (the tests run from playground/build/test/). */
const ASSETS = fileURLToPath(new URL('../../../gateway/assets/playground/', import.meta.url));
const ASSET_FILES: Record<string, string> = { '/': 'index.html', '/playground.js': 'playground.js', '/playground.css': 'playground.css' };

/** The front server of `PLAYGROUND_FROM_DISK` (see the module comment) before the gateway on `target`. */
async function startFront(target: number): Promise<{ port: number; close(): Promise<void> }> {
  const open = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    const asset = req.method === 'GET' ? ASSET_FILES[(req.url ?? '').split('?')[0]!] : undefined;
    const headers = { ...req.headers };
    if (asset) delete headers['if-none-match'];
    const upstream = http.request({ host: '127.0.0.1', port: target, method: req.method, path: req.url, headers }, (answer) => {
      if (!asset || answer.statusCode !== 200) {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
        return;
      }
      answer.resume();
      const body = readFileSync(`${ASSETS}${asset}`);
      const kept = { ...answer.headers };
      delete kept['etag'];
      delete kept['content-length'];
      delete kept['transfer-encoding'];
      res.writeHead(200, { ...kept, 'content-length': body.length, 'cache-control': 'no-store' });
      res.end(body);
    });
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  server.on('upgrade', (req, socket: net.Socket, head: Buffer) => {
    const upstream = net.connect(target, '127.0.0.1');
    for (const side of [socket, upstream]) {
      open.add(side);
      side.on('error', () => undefined);
      side.on('close', () => {
        open.delete(side);
        socket.destroy();
        upstream.destroy();
      });
    }
    const lines = [`${req.method} ${req.url} HTTP/${req.httpVersion}`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    upstream.write(`${lines.join('\r\n')}\r\n\r\n`);
    if (head.length > 0) upstream.write(head);
    socket.pipe(upstream);
    upstream.pipe(socket);
  });
  server.on('connection', (socket) => {
    open.add(socket);
    socket.on('close', () => open.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close() {
      for (const socket of open) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
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
