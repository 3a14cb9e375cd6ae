// The Sluice kernel for Node: one interpreter that runs a persistent session's cells.
//
// The gateway starts this file (with --expose-internals, for the REPL's top-level await
// rewrite) with a Unix stream socket on descriptor 3. For each cell it sends a 16-byte
// header, the source's length and the cell's number (from 1), each 8 bytes
// little-endian, then the source as UTF-8. Node cannot take descriptors from a socket,
// so a cell's output is the interpreter's own stdout and stderr, which the gateway
// carries to the cell's pipes: when the cell is over the kernel writes CELL_END on both
// (after everything the cell wrote), then answers with one JSON line on the socket:
// {"cell": n, "status": "ok" | "error" | "exit" | "interrupted", "exit_code": N}, with
// "error": {"ename", "evalue", "traceback": [lines]} when the cell threw. Cells have no
// standard input (reads see its end).
//
// A query (`complete` or `inspect`, PROTOCOL.md 4.11) comes the same way with cell number
// 0: its source is a JSON object {"kind", "code", "cursor_pos", "detail_level"}, answered
// with one line {"cell": 0, "answer": {...}}. Cursors count code points.
//
// Cells run in the interpreter's main context, one after another: their top-level
// declarations persist, `await` works at the top level, and the value of the last
// expression becomes the cell's result. SIGINT interrupts the running cell (a loop
// too); between cells it is ignored, and the kernel lets one that arrived late pass
// before it says {"cell": n, "started": true}. Before the first cell, once started, it
// says {"ready": true}, once (the gateway sends no cell before that).
//
// Rich output: `display(value, options)` and `updateDisplay(value, {display_id})` are
// globals; each writes a display record, ESC ] sluice;<kind>;<JSON> BEL, on stdout,
// which the gateway turns into an event at its place in the output (PROTOCOL.md 10.1).

'use strict';

const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const util = require('node:util');
const vm = require('node:vm');
const { createRequire } = require('node:module');
const { randomUUID } = require('node:crypto');

// From Node's internals, as its REPL uses them: the rewrite that lets a cell await at
// the top level, and the SIGINT watchdog (see `interrupts` below).
let processTopLevelAwait = null;
let sigintWatchdog = null;
{
  const warn = process.emitWarning;
  process.emitWarning = () => {};
  try {
    ({ processTopLevelAwait } = require('internal/repl/await'));
    const { internalBinding } = require('internal/test/binding');
    const { startSigintWatchdog, stopSigintWatchdog } = internalBinding('contextify');
    sigintWatchdog = { start: startSigintWatchdog, stop: stopSigintWatchdog };
  } catch {
    // Without them a cell that awaits at the top level is a syntax error, and an
    // interrupt at the very end of a cell's synchronous part may be missed.
  } finally {
    process.emitWarning = warn;
  }
}

const HEADER = 16;
const DRIVER = __filename;
const CELL_END = '\x1b]sluice;cell_end\x07';
const RECORD_START = '\x1b]sluice;';
const RECORD_END = '\x07';
// The most bytes of one record's JSON the gateway takes (sluice_protocol::MAX_DISPLAY_BYTES).
const MAX_DISPLAY_BYTES = 8 << 20;
// A query's answer stays well under the gateway's 256 KiB line (its JSON's bytes).
const ANSWER_BYTES = 150000;
const MAX_MATCHES = 1000;
const MAX_INSPECT_CHARS = 50000;

// Every write is synchronous, the cells' too: an interrupt that stops a cell inside
// Node's stream code (`breakOnSigint` ends whatever JavaScript runs) would leave an
// asynchronous stream stuck for good. The pipes are made blocking; a descriptor that
// is not waits a millisecond at a time.
const pause = new Int32Array(new SharedArrayBuffer(4));

function writeAll(fd, data) {
  const bytes = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  let done = 0;
  while (done < bytes.length) {
    try {
      done += fs.writeSync(fd, bytes, done);
    } catch (error) {
      if (error.code !== 'EAGAIN') throw error;
      Atomics.wait(pause, 0, 0, 1);
    }
  }
}

for (const [stream, fd] of [[process.stdout, 1], [process.stderr, 2]]) {
  stream._handle?.setBlocking?.(true);
  stream.write = function write(chunk, encoding, callback) {
    if (typeof encoding === 'function') {
      callback = encoding;
      encoding = undefined;
    }
    writeAll(fd, typeof chunk === 'string' ? Buffer.from(chunk, encoding) : chunk);
    if (typeof callback === 'function') process.nextTick(callback);
    return true;
  };
}

// The kernel's own handles: a cell may replace process.stdout.write or process.exit.
const writeOut = (text) => writeAll(1, text);
const writeErr = (text) => writeAll(2, text);
const realExit = process.exit.bind(process);
const control = new net.Socket({ fd: 3, readable: true, writable: false });

// A string with a lone surrogate (text cut inside an emoji) is not valid JSON text for
// the gateway: every string sent is made well-formed first (U+FFFD in its place).
const wellFormed = (_key, value) => (typeof value === 'string' ? value.toWellFormed() : value);

function send(line) {
  writeAll(3, JSON.stringify(line, wellFormed) + '\n');
}

// --- rich output -------------------------------------------------------------------

function isJsonType(mime) {
  return mime === 'application/json' || mime.endsWith('+json');
}

function encodeBundle(bundle) {
  const encoded = {};
  for (const [mime, value] of Object.entries(bundle)) {
    if (value instanceof Uint8Array) {
      encoded[mime] = Buffer.from(value).toString('base64');
    } else if (isJsonType(mime) || typeof value === 'string') {
      encoded[mime] = value;
    } else {
      encoded[mime] = String(value);
    }
  }
  return encoded;
}

function plain(value) {
  return util.inspect(value, { depth: 4, maxArrayLength: 100, breakLength: 100 });
}

function writeRecord(kind, record) {
  const text = JSON.stringify(record);
  const size = Buffer.byteLength(text);
  if (size > MAX_DISPLAY_BYTES) {
    throw new RangeError(`this display is ${size} bytes, over the ${MAX_DISPLAY_BYTES} bytes one display may have`);
  }
  writeOut(RECORD_START + kind + ';' + text + RECORD_END);
}

function emit(kind, data, metadata, displayId, executionCount) {
  const record = { data, metadata: metadata ?? {} };
  if (displayId !== undefined) record.display_id = String(displayId);
  if (executionCount !== undefined) record.execution_count = executionCount;
  writeRecord(kind, record);
}

function bundleOf(value, options) {
  if (options.raw) {
    if (value === null || typeof value !== 'object') {
      throw new TypeError('display(value, {raw: true}) takes a MIME bundle: an object of MIME type to data');
    }
    return encodeBundle(value);
  }
  return { 'text/plain': plain(value) };
}

/** Shows a value: as text, or with {raw: true} a MIME bundle ({'text/html': ...}).
 * {display_id: true} (or an id) returns a handle whose update() replaces it. */
function display(value, options = {}) {
  let id = options.display_id;
  if (id === true) id = randomUUID();
  emit('display', bundleOf(value, options), options.metadata, id);
  if (id === undefined || id === null) return undefined;
  return {
    display_id: id,
    update: (next, more = {}) => updateDisplay(next, { ...more, display_id: id }),
  };
}

/** Replaces what an earlier display with the same display_id showed. */
function updateDisplay(value, options = {}) {
  if (options.display_id === undefined || options.display_id === null) {
    throw new TypeError('updateDisplay needs options.display_id');
  }
  emit('update_display', bundleOf(value, options), options.metadata, options.display_id);
}

const rawDisplay = (mime, encode) => (data, options = {}) =>
  display({ [mime]: encode ? encode(data) : data }, { ...options, raw: true });
display.html = rawDisplay('text/html');
display.markdown = rawDisplay('text/markdown');
display.svg = rawDisplay('image/svg+xml');
display.png = rawDisplay('image/png');
display.jpeg = rawDisplay('image/jpeg');
display.json = rawDisplay('application/json');

// --- running cells -----------------------------------------------------------------

class Interrupted extends Error {
  constructor() {
    super('the cell was interrupted');
    this.name = 'Interrupted';
  }
}

class CellExit extends Error {
  constructor(code) {
    super(`process.exit(${code ?? ''}) in a cell`);
    this.name = 'CellExit';
    this.code = code;
  }
}

// The running cell, if any: what a SIGINT interrupts.
let running = null;

// How SIGINT reaches the running cell. With the watchdog, Node's own SIGINT handling is
// replaced for the interpreter's life (started twice, so that taking a pending signal,
// a stop and a start, never lets the last stop put back Node's exit on SIGINT): while a
// cell's synchronous code runs, `breakOnSigint` stops it; a signal at any other time is
// kept pending and taken when the code returns, and every POLL_MS while the cell awaits.
// Without the watchdog a process listener stands in (an interrupt in the instant a
// cell's synchronous part ends can then be missed).
const POLL_MS = 20;
const interrupts = sigintWatchdog === null
  ? (() => {
      let pending = false;
      process.on('SIGINT', () => {
        if (running) running.interrupt(new Interrupted());
        else pending = true;
      });
      return { take: () => { const was = pending; pending = false; return was; }, polled: false };
    })()
  : (() => {
      sigintWatchdog.start();
      sigintWatchdog.start();
      return {
        take: () => {
          const was = sigintWatchdog.stop();
          sigintWatchdog.start();
          return was;
        },
        polled: true,
      };
    })();
// Errors a cell left behind (a timer, a promise nobody awaited) are reported on the
// stderr of whatever cell runs; the interpreter stays.
process.on('uncaughtException', (error) => writeErr(`Uncaught ${describeError(error)}\n`));
process.on('unhandledRejection', (error) => writeErr(`Unhandled rejection: ${describeError(error)}\n`));

function describeError(error) {
  return readThrown(error)[2];
}

function evaluate(source, number) {
  let code = source;
  let awaited = false;
  if (processTopLevelAwait !== null && source.includes('await')) {
    const wrapped = processTopLevelAwait(source);
    if (wrapped !== null) {
      code = wrapped;
      awaited = true;
    }
  }
  const script = new vm.Script(code, { filename: `cell-${number}.js` });
  const value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
  if (interrupts.take()) throw new Interrupted();
  // The rewrite resolves with {value} of the last expression.
  return awaited ? Promise.resolve(value).then((ended) => ({ value: ended?.value })) : { value };
}

function isInterrupt(error) {
  return error instanceof Interrupted || error?.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED';
}

function cut(text, most) {
  return text.length > most ? text.slice(0, most) + '...' : text;
}

// What was thrown is the cell's: its `name`, `message` and `stack` may be getters that
// throw or never return. They are read by a script that runs with a time limit (and
// stops on SIGINT), and anything it cannot read is said to be unreadable.
const THROWN = Symbol.for('sluice.thrown');
const READ_THROWN = new vm.Script(
  `(() => {
    const [error, inspect] = globalThis[Symbol.for('sluice.thrown')];
    if (error instanceof Error) {
      const name = String(error.name);
      const message = String(error.message);
      return [name, message, String(error.stack ?? name + ': ' + message)];
    }
    const shown = inspect(error);
    return [error === null ? 'null' : typeof error, shown, 'Uncaught ' + shown];
  })()`,
  { filename: 'sluice-report' },
);
const READ_TIME_MS = 1000;

function readThrown(error) {
  globalThis[THROWN] = [error, plain];
  try {
    return READ_THROWN.runInThisContext({ timeout: READ_TIME_MS, breakOnSigint: true, displayErrors: false });
  } catch (failure) {
    const why = failure?.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT' ? `reading it took over ${READ_TIME_MS} ms` : 'reading it threw';
    return ['Error', `<the thrown value could not be read: ${why}>`, `Error: <the thrown value could not be read: ${why}>`];
  } finally {
    delete globalThis[THROWN];
  }
}

/** Prints the cell's error on its stderr and returns it structured: the cell's own
 * frames, without the kernel's or Node's. */
function report(error) {
  const [ename, evalue, stack] = readThrown(error);
  const lines = stack
    .split('\n')
    .filter((line) => !/^\s+at /.test(line) || (!line.includes(DRIVER) && !/[( ]node:/.test(line)));
  writeErr(lines.join('\n') + '\n');
  return bounded(ename, evalue, lines);
}

// The reply line's budget for an exception, as JSON bytes (the gateway reads lines of at
// most 256 KiB; a character can take 6 bytes there); each tier cuts harder:
// [characters of ename, of evalue, of a line, lines].
const REPORT_BYTES = 150000;
const REPORT_TIERS = [
  [1000, 10000, 2000, 60],
  [200, 2000, 500, 20],
  [100, 200, 200, 6],
  [40, 40, 40, 2],
];

/** The exception cut down, tier by tier, until its JSON fits REPORT_BYTES. */
function bounded(ename, evalue, lines) {
  let candidate;
  for (const [nameMost, valueMost, lineMost, linesMost] of REPORT_TIERS) {
    let traceback = lines.map((line) => cut(line, lineMost));
    if (traceback.length > linesMost) {
      const half = linesMost >> 1;
      traceback = [...traceback.slice(0, half), `... ${traceback.length - 2 * half} lines left out ...`, ...traceback.slice(-half)];
    }
    candidate = { ename: cut(ename, nameMost), evalue: cut(evalue, valueMost), traceback };
    if (Buffer.byteLength(JSON.stringify(candidate)) <= REPORT_BYTES) break;
  }
  return candidate;
}

function nextTurn() {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Ends the cell's output: CELL_END on stdout and stderr, after all the cell wrote. */
function endOutput() {
  writeOut(CELL_END);
  writeErr(CELL_END);
}

async function runCell(number, source) {
  // A SIGINT sent for the previous cell is let through (and dropped) first.
  await nextTurn();
  await nextTurn();
  interrupts.take();
  send({ cell: number, started: true });
  let reply = { cell: number, status: 'ok', exit_code: 0 };
  let interrupt;
  const interrupted = new Promise((_, reject) => {
    interrupt = reject;
  });
  interrupted.catch(() => {});
  running = { interrupt };
  const poll = interrupts.polled
    ? setInterval(() => {
        if (interrupts.take()) interrupt(new Interrupted());
      }, POLL_MS)
    : null;
  try {
    const { value } = await Promise.race([Promise.resolve().then(() => evaluate(source, number)), interrupted]);
    if (value !== undefined) {
      emit('result', { 'text/plain': plain(value) }, {}, undefined, number);
    }
  } catch (error) {
    // What was thrown is the cell's: looking at it (a Proxy, a getter) may throw too,
    // and the cell must still end.
    reply = { cell: number, status: 'error', exit_code: 1 };
    const is = (test) => {
      try {
        return test();
      } catch {
        return false;
      }
    };
    try {
      if (is(() => isInterrupt(error))) {
        reply = { cell: number, status: 'interrupted', exit_code: 130 };
        report(error);
      } else if (is(() => error instanceof CellExit)) {
        const code = Number.isInteger(error.code) ? error.code : 0;
        reply = { cell: number, status: 'exit', exit_code: code };
      } else {
        reply.error = report(error);
      }
    } catch {
      // Reporting failed: the cell still ends, as classified so far.
    }
  } finally {
    running = null;
    if (poll !== null) clearInterval(poll);
  }
  endOutput();
  send(reply);
}

// --- queries -----------------------------------------------------------------------

const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;
const NAME_BEFORE = /(?:[A-Za-z_$][\w$]*\s*\.\s*)*[A-Za-z_$][\w$]*\.?$|(?:[A-Za-z_$][\w$]*\s*\.\s*)+$/;
const KEYWORDS = ['async', 'await', 'break', 'case', 'catch', 'class', 'const', 'continue', 'debugger', 'default', 'delete', 'do', 'else', 'export', 'extends', 'false', 'finally', 'for', 'function', 'if', 'import', 'in', 'instanceof', 'let', 'new', 'null', 'return', 'static', 'super', 'switch', 'this', 'throw', 'true', 'try', 'typeof', 'undefined', 'var', 'void', 'while', 'with', 'yield'];

/** Names the cells declared with let, const or class (not properties of globalThis). */
function lexicalNames() {
  try {
    const inspector = require('node:inspector');
    const session = new inspector.Session();
    session.connect();
    let names = [];
    session.post('Runtime.globalLexicalScopeNames', (error, result) => {
      if (!error) names = result.names;
    });
    session.disconnect();
    return names;
  } catch {
    return [];
  }
}

/** A global or a cell's declaration by name: looked up, nothing evaluated. */
function lookUp(name) {
  if (!IDENTIFIER.test(name)) throw new ReferenceError(name);
  if (name in globalThis) return globalThis[name];
  if (lexicalNames().includes(name)) return vm.runInThisContext(name);
  throw new ReferenceError(name);
}

function resolve(dotted) {
  const parts = dotted.split('.').map((part) => part.trim());
  let value = lookUp(parts[0]);
  for (const part of parts.slice(1)) {
    if (!IDENTIFIER.test(part) || value === null || value === undefined) throw new ReferenceError(dotted);
    value = value[part];
  }
  return value;
}

function propertyNames(value) {
  const names = new Set();
  for (let object = Object(value); object !== null; object = Object.getPrototypeOf(object)) {
    for (const name of Object.getOwnPropertyNames(object)) names.add(name);
  }
  return names;
}

function complete(code, cursor) {
  const before = code.slice(0, cursor);
  const token = NAME_BEFORE.exec(before)?.[0] ?? '';
  const dot = token.lastIndexOf('.');
  const typed = dot >= 0 ? token.slice(dot + 1) : token;
  let candidates;
  if (dot >= 0) {
    try {
      candidates = propertyNames(resolve(token.slice(0, dot)));
    } catch {
      candidates = new Set();
    }
  } else {
    candidates = new Set([...propertyNames(globalThis), ...lexicalNames(), ...KEYWORDS]);
  }
  let names = [...candidates].filter((name) => IDENTIFIER.test(name) && name.startsWith(typed));
  if (!typed.startsWith('_')) names = names.filter((name) => !name.startsWith('_'));
  names.sort();
  const after = /^[\w$]*/.exec(code.slice(cursor))[0];
  const answer = { matches: names.slice(0, MAX_MATCHES), cursor_start: cursor - typed.length, cursor_end: cursor + after.length };
  if (names.length > MAX_MATCHES) answer.truncated = true;
  while (Buffer.byteLength(JSON.stringify(answer)) > ANSWER_BYTES && answer.matches.length > 0) {
    answer.matches = answer.matches.slice(0, answer.matches.length >> 1);
    answer.truncated = true;
  }
  return answer;
}

/** The dotted name under the cursor, else the callee of the call the cursor is in. */
function nameAt(code, cursor) {
  const after = /^[\w$]*/.exec(code.slice(cursor))[0];
  const name = NAME_BEFORE.exec(code.slice(0, cursor + after.length))?.[0] ?? '';
  if (name && !name.endsWith('.')) return name;
  let depth = 0;
  for (let index = cursor - 1; index >= 0; index--) {
    if (code[index] === ')') depth++;
    else if (code[index] === '(') {
      if (depth === 0) return (NAME_BEFORE.exec(code.slice(0, index).trimEnd())?.[0] ?? '').replace(/\.$/, '');
      depth--;
    }
  }
  return '';
}

function describe(name, value, detailLevel) {
  const lines = [];
  const type = value === null ? 'null' : typeof value;
  lines.push(`Type: ${type === 'object' ? (value.constructor?.name ?? 'Object') : type}`);
  if (typeof value === 'function') {
    const source = Function.prototype.toString.call(value);
    lines.push(`Signature: ${name}(${/^[^(]*\(([^)]*)\)/.exec(source)?.[1] ?? '...'})`);
    if (detailLevel >= 1) lines.push('Source:\n' + source);
  } else {
    lines.push('String form: ' + cut(plain(value), 200));
  }
  return cut(lines.join('\n'), MAX_INSPECT_CHARS);
}

function inspectAt(code, cursor, detailLevel) {
  const name = nameAt(code, cursor);
  if (!name) return { found: false };
  let value;
  try {
    value = resolve(name);
  } catch {
    return { found: false };
  }
  const answer = { found: true, bundle: { 'text/plain': describe(name, value, detailLevel) } };
  while (Buffer.byteLength(JSON.stringify(answer)) > ANSWER_BYTES) {
    const text = answer.bundle['text/plain'];
    answer.bundle['text/plain'] = text.slice(0, text.length >> 1) + '...';
  }
  return answer;
}

function answerQuery(source) {
  try {
    const query = JSON.parse(source);
    // The gateway counts code points; JavaScript strings count UTF-16 units.
    const points = Array.from(String(query.code));
    const at = Math.max(0, Math.min(Number(query.cursor_pos) | 0, points.length));
    const code = points.join('');
    const cursor = points.slice(0, at).join('').length;
    const toPoints = (units) => Array.from(code.slice(0, units)).length;
    if (query.kind === 'inspect') return inspectAt(code, cursor, Number(query.detail_level) | 0);
    const answer = complete(code, cursor);
    answer.cursor_start = toPoints(answer.cursor_start);
    answer.cursor_end = toPoints(answer.cursor_end);
    return answer;
  } catch (error) {
    return { error: cut(`${error?.name}: ${error?.message}`, 1000) };
  }
}

// --- the conversation with the gateway ---------------------------------------------

async function* messages(socket) {
  let buffered = Buffer.alloc(0);
  for await (const chunk of socket) {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    while (buffered.length >= HEADER) {
      const length = Number(buffered.readBigUInt64LE(0));
      if (buffered.length < HEADER + length) break;
      const number = Number(buffered.readBigUInt64LE(8));
      const source = buffered.subarray(HEADER, HEADER + length).toString('utf8');
      buffered = buffered.subarray(HEADER + length);
      yield { number, source };
    }
  }
}

async function main() {
  globalThis.require = createRequire(path.join(process.cwd(), '[cell]'));
  globalThis.display = display;
  globalThis.updateDisplay = updateDisplay;
  process.exit = (code) => {
    throw new CellExit(code);
  };
  process.argv = [process.argv[0]];
  // Started: a cell sent from now on runs; one cancelled before this never reached us.
  send({ ready: true });
  for await (const { number, source } of messages(control)) {
    if (number === 0) {
      send({ cell: 0, answer: answerQuery(source) });
    } else {
      await runCell(number, source);
    }
  }
  realExit(0);
}

main().catch((error) => {
  writeErr(`the kernel failed: ${describeError(error)}\n`);
  realExit(70);
});
