// Cortex functions runtime v2: the worker thread that hosts one function (or checks one build).
//
// Started only by runtime-v2.js, as a worker_threads Worker whose process.env is the function's environment
// (Worker option `env`), whose heap is capped (Worker option `resourceLimits`) and whose stdout/stderr go to
// the runtime, which discards them. Two modes (workerData.mode):
//
//   "function"  load the function's code once (a CommonJS module; require() resolves the project's
//               node_modules), answer {t: "ready", loadError} and then run one invocation at a time:
//                 runtime → worker  {id, body}        body: the raw JSON of {"event", "ctx", "handler"}
//                 worker → runtime  {t: "log", id, line}   one captured console line (streamed, capped)
//                 worker → runtime  {t: "done", id, outcome: "ok" | "error", result, error, dropped}
//                                   result: the JSON text of {statusCode, headers, body} (or null)
//   "build"     compile and evaluate the code once, check the entrypoint, answer
//                 {t: "built", ok, error, handlers} (console lines streamed as {t: "log", id: 0, line} before)
//
// Timeouts, memory limits and crashes are the runtime's business: it terminates this thread.
//
// This file is immutable once released, like runtime-v2.js.

'use strict';

const { parentPort, workerData } = require('node:worker_threads');
const { Console } = require('node:console');
const { Writable } = require('node:stream');
const Module = require('node:module');
const path = require('node:path');
const util = require('node:util');
const vm = require('node:vm');

const HANDLER_NAME = /^on[A-Z][A-Za-z0-9]*$/;
const MAX_LOG_LINES = workerData.maxLogLines;
const MAX_LOG_BYTES = workerData.maxLogBytes;
const MAX_RESULT_BYTES = workerData.maxResultBytes;

// --- console capture --------------------------------------------------------------------------------------

// The invocation whose console lines are being captured ({id, requestId, lines, bytes, dropped}); lines
// printed while none is current (after an invocation answered, by timers it left behind) are dropped. Lines
// printed while the module loads are kept and handed to the first invocation.
let current = null;
let loading = null;

function capture(level, message) {
  const target = current ?? loading;
  if (target === null) return;
  if (target.lines >= MAX_LOG_LINES || target.bytes >= MAX_LOG_BYTES) {
    target.dropped++;
    return;
  }
  let text = message;
  const room = MAX_LOG_BYTES - target.bytes;
  if (text.length > room) text = `${text.slice(0, room)}… (line truncated)`;
  target.lines++;
  target.bytes += Buffer.byteLength(text);
  const line = { time: new Date().toISOString(), level, message: text, requestId: target.requestId };
  if (target === current) parentPort.postMessage({ t: 'log', id: target.id, line });
  else target.buffered.push(line);
}

function captureStream(level) {
  return new Writable({
    decodeStrings: false,
    write(chunk, encoding, callback) {
      const text = typeof chunk === 'string' ? chunk : chunk.toString('utf8');
      capture(level, text.endsWith('\n') ? text.slice(0, -1) : text);
      callback();
    },
  });
}

function installConsole() {
  const stdout = captureStream('log');
  const stderr = captureStream('error');
  // table, time, count, group, assert, trace, dir…: Node's Console writing into the capture (log / error);
  // the five levels are captured directly, formatted like console.log does.
  const captured = new Console({ stdout, stderr, colorMode: false });
  for (const level of ['log', 'info', 'warn', 'error', 'debug']) {
    captured[level] = (...args) => capture(level, util.format(...args));
  }
  Object.defineProperty(globalThis, 'console', { value: captured, writable: true, configurable: true });
  // Direct writes to process.stdout / process.stderr are captured too: nothing reaches the runtime's output.
  for (const [stream, target] of [[process.stdout, stdout], [process.stderr, stderr]]) {
    stream.write = (chunk, encoding, callback) => {
      const cb = typeof encoding === 'function' ? encoding : callback;
      target.write(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
      if (typeof cb === 'function') process.nextTick(cb);
      return true;
    };
  }
}

// --- loading the code -------------------------------------------------------------------------------------

function errorMessage(error) {
  if (error instanceof Error) return error.message;
  if (error !== null && typeof error === 'object' && typeof error.message === 'string') return error.message;
  try {
    return String(error);
  } catch {
    return 'unknown error';
  }
}

class LoadError extends Error {}

// Compile `code` as a CommonJS module and evaluate it. A SyntaxError becomes "SyntaxError: <message> (line N)";
// an exception at the module's top level "the module threw while loading: <message>".
function loadModule(code, filename, projectDir) {
  const requireFn = Module.createRequire(path.join(projectDir, 'package.json'));
  let compiled;
  try {
    compiled = vm.compileFunction(code, ['exports', 'require', 'module', '__filename', '__dirname'], { filename });
  } catch (error) {
    if (error instanceof SyntaxError) {
      const found = /^[^\n]*:(\d+)\n/.exec(String(error.stack ?? ''));
      throw new LoadError(`SyntaxError: ${error.message}${found ? ` (line ${found[1]})` : ''}`);
    }
    throw new LoadError(`the code cannot be compiled: ${errorMessage(error)}`);
  }
  const mod = { id: '.', filename, path: projectDir, loaded: false, exports: {}, require: requireFn,
                children: [], paths: requireFn.resolve.paths('x') ?? [] };
  try {
    compiled.call(mod.exports, mod.exports, requireFn, mod, filename, projectDir);
  } catch (error) {
    throw new LoadError(`the module threw while loading: ${errorMessage(error)}`);
  }
  mod.loaded = true;
  return mod.exports;
}

// exports[name] when it is the module's own (not Object's or Function's: "constructor", "call"…).
function exported(exports, name) {
  if (exports === null || (typeof exports !== 'object' && typeof exports !== 'function')) return undefined;
  if (typeof name !== 'string' || name === '') return undefined;
  if (!Object.hasOwn(exports, name) && (name in Object.prototype || name in Function.prototype)) return undefined;
  return exports[name];
}

function handlerNames(exports) {
  const names = new Set();
  for (let object = exports; object !== null && object !== undefined && object !== Object.prototype &&
       object !== Function.prototype; object = Object.getPrototypeOf(object)) {
    if (typeof object !== 'object' && typeof object !== 'function') break;
    for (const name of Object.getOwnPropertyNames(object)) {
      if (!HANDLER_NAME.test(name)) continue;
      try {
        if (typeof exports[name] === 'function') names.add(name);
      } catch {
        // a throwing getter is not a handler
      }
    }
  }
  return [...names].sort();
}

// --- answers ----------------------------------------------------------------------------------------------

class ResponseError extends Error {}

function headerValue(value) {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  throw new ResponseError('header values must be strings, numbers or booleans (or arrays of them)');
}

// What the function returned, as {statusCode, headers, body}: an object with statusCode, headers or body is
// the response (statusCode defaults to 200); anything else (an array, a string, a number, an object without
// any of those keys, undefined) is the body of a 200.
function responseOf(value) {
  let statusCode = 200;
  let headers = {};
  let body = value;
  if (value !== null && typeof value === 'object' && !Array.isArray(value) && !ArrayBuffer.isView(value) &&
      ('statusCode' in value || 'headers' in value || 'body' in value)) {
    statusCode = value.statusCode ?? 200;
    if (!Number.isInteger(statusCode) || statusCode < 100 || statusCode > 599) {
      throw new ResponseError('statusCode must be an integer from 100 to 599');
    }
    const given = value.headers ?? {};
    if (given === null || typeof given !== 'object' || Array.isArray(given)) {
      throw new ResponseError('headers must be an object');
    }
    headers = {};
    for (const [name, item] of Object.entries(given)) {
      headers[name] = Array.isArray(item) ? item.map(headerValue) : headerValue(item);
    }
    body = value.body;
  }
  if (body === undefined) body = null;
  else if (ArrayBuffer.isView(body)) body = Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8');
  let json;
  try {
    json = JSON.stringify({ statusCode, headers, body });
  } catch (error) {
    throw new ResponseError(`the response cannot be sent as JSON: ${errorMessage(error)}`);
  }
  if (json.length > MAX_RESULT_BYTES && Buffer.byteLength(json) > MAX_RESULT_BYTES) {
    throw new ResponseError(`the response is larger than ${MAX_RESULT_BYTES / 1048576} MiB`);
  }
  return json;
}

// --- modes ------------------------------------------------------------------------------------------------

function serveFunction() {
  const { code, entrypoint, projectDir, filename } = workerData;
  let exports = null;
  let loadError = null;
  loading = { requestId: null, lines: 0, bytes: 0, dropped: 0, buffered: [] };
  try {
    exports = loadModule(code, filename, projectDir);
  } catch (error) {
    loadError = error instanceof LoadError ? error.message : errorMessage(error);
  }
  let loadLogs = loading;
  loading = null;

  function done(id, outcome, result, error) {
    const dropped = current.dropped;
    current = null;
    parentPort.postMessage({ t: 'done', id, outcome, result, error, dropped });
  }

  async function invoke(id, body) {
    let request;
    try {
      request = JSON.parse(body);
    } catch {
      request = null;
    }
    const ctx = request?.ctx ?? {};
    const requestId = ctx !== null && typeof ctx === 'object' && ctx.requestId != null ? String(ctx.requestId) : null;
    current = { id, requestId, lines: 0, bytes: 0, dropped: 0 };
    if (loadLogs !== null) { // what the module printed while loading goes with the first invocation
      for (const line of loadLogs.buffered) parentPort.postMessage({ t: 'log', id, line });
      Object.assign(current, { lines: loadLogs.lines, bytes: loadLogs.bytes, dropped: loadLogs.dropped });
      loadLogs = null;
    }
    if (request === null || typeof request !== 'object' || Array.isArray(request)) {
      done(id, 'error', null, 'the invocation is not a JSON object');
      return;
    }
    if (loadError !== null) {
      done(id, 'error', null, loadError);
      return;
    }
    const name = request.handler ?? entrypoint;
    const fn = exported(exports, name);
    if (typeof fn !== 'function') {
      done(id, 'error', null, `the function does not export a function named ${JSON.stringify(String(name))}`);
      return;
    }
    let value;
    try {
      value = fn.call(exports, request.event ?? null, request.ctx ?? {});
      if (value !== null && (typeof value === 'object' || typeof value === 'function') &&
          typeof value.then === 'function') {
        value = await value;
      }
    } catch (error) {
      done(id, 'error', null, errorMessage(error));
      return;
    }
    let result;
    try {
      result = responseOf(value);
    } catch (error) {
      done(id, 'error', null, error instanceof ResponseError ? error.message : errorMessage(error));
      return;
    }
    done(id, 'ok', result, null);
  }

  parentPort.on('message', (message) => {
    invoke(message.id, message.body);
  });
  parentPort.postMessage({ t: 'ready', loadError });
}

function checkBuild() {
  const { code, entrypoint, projectDir, filename } = workerData;
  current = { id: 0, requestId: null, lines: 0, bytes: 0, dropped: 0 };
  let exports;
  try {
    exports = loadModule(code, filename, projectDir);
  } catch (error) {
    parentPort.postMessage({ t: 'built', ok: false, error: errorMessage(error), handlers: [],
                             dropped: current.dropped });
    return;
  }
  const fn = exported(exports, entrypoint);
  const handlers = handlerNames(exports);
  const ok = typeof fn === 'function';
  const error = ok ? null : `the module does not export a function named ${JSON.stringify(entrypoint)} ` +
    `(module.exports.${entrypoint} is ${fn === null ? 'null' : typeof fn})`;
  parentPort.postMessage({ t: 'built', ok, error, handlers, dropped: current.dropped });
}

installConsole();
if (workerData.mode === 'build') checkBuild();
else serveFunction();
