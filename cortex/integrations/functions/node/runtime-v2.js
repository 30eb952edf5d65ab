// Cortex functions runtime, version v2 (Node.js 20+, built-in modules only).
//
// One process per activated project, started by a Cortex runtime provider (cortex/integrations/functions/) as
//
//     node runtime-v2.js <path of runtime.json>
//
// with the project's directory as working directory (its node_modules/ holds the project's npm dependencies)
// and an environment that holds nothing of the server's. Everything it needs comes from runtime.json:
//
//     {"projectId": "...", "env": {"KEY": "value"}, "apiUrl": "https://...", "version": "v2",
//      "host": "127.0.0.1", "port": 41234, "token": "...", "memoryMib": 512, "parentPid": 1234}
//
// It serves HTTP on host:port — loopback only — and answers only requests that carry the token in the
// X-Cortex-Runtime-Token header. It exits on SIGTERM, and on its own when the Cortex process that started it
// (parentPid) is gone. Everything v1 does, plus it hosts the project's functions:
//
// Deployed functions are files <project dir>/functions/<slug>.json, written by the provider:
//     {"slug", "functionId", "versionId", "version", "code", "entrypoint", "timeout" (ms), "memoryMib",
//      "env": {...}}        env: the function's whole environment (its process.env, exactly)
// all loaded at start. Routes (ROUTES below):
//
//   GET    /health            v1's answer (version "v2") plus "functions": how many are loaded
//   GET    /functions         [{slug, versionId, version, workers}]
//   PUT    /functions/:slug   body: the function's JSON → load it (again) now → 204. Workers of the version it
//                             replaces finish their current invocation, then exit; waiting invocations run on
//                             the new version. One worker of the new version is started at once, and the answer
//                             waits until it has loaded the module (1 s at most): the next invocation is warm.
//   DELETE /functions/:slug   unload, terminate its workers → 204 (404 if unknown)
//   POST   /build             {code, entrypoint, timeoutMs?} → 200 {ok, error, logs, handlers}: compile (a
//                             SyntaxError's message and line) and evaluate the code in a fresh worker (no env,
//                             64 MiB heap, at most 5 s), check that exports[entrypoint] is a function; handlers:
//                             the exported functions named on<Event>
//   POST   /invoke/:slug      {event, ctx, handler} → 200 {outcome, result, error, logs, durationMs}
//                             outcome: ok | timeout | memory | error | not_found
//
// Functions run only in worker threads (worker_threads), never on this thread: per function up to
// MAX_WORKERS workers, each running one invocation at a time and reused (the module is loaded once per worker),
// started when needed and ended after IDLE_WORKER_MS unused. Invocations beyond MAX_WORKERS wait in a FIFO
// queue. A function's `timeout` counts from the invocation's arrival (waiting included), so every invocation is
// answered within its timeout; a worker running past it is terminated at once (one still loading the module
// goes on loading, up to max(timeout, 10 s), and is not sent the invocation). A worker's V8 heap is capped at
// the function's memoryMib (at most the runtime's memoryMib) through resourceLimits; a worker exceeding it dies
// (ERR_WORKER_OUT_OF_MEMORY) and is replaced when needed. Node 20 cannot cap a worker's ArrayBuffer/Buffer
// memory (outside the V8 heap): that counts only towards the process. A worker's process.env is exactly the function's env;
// its require() resolves the project's node_modules; its console (and stdout/stderr) is captured per invocation
// (MAX_LOG_LINES lines / MAX_LOG_BYTES bytes) and never reaches this process's output.
// The worker's code is function-worker-v2.js next to this file.
//
// This file is immutable once released: a change of behaviour is a new runtime-vN.js.
// Do not set process.title: the provider recognises this process by its command line.

'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { Worker } = require('node:worker_threads');

const VERSION = 'v2';
const MIN_NODE_MAJOR = 20;
const TOKEN_HEADER = 'x-cortex-runtime-token';
const SHUTDOWN_GRACE_MS = 800; // SIGTERM → exit within a second, even with requests still open
const PARENT_CHECK_MS = 1000; // how often the runtime looks whether its parent is still there
const KEEP_ALIVE_MS = 60000; // idle keep-alive connections (Cortex pools them) are closed after this

const WORKER_SCRIPT = path.join(__dirname, 'function-worker-v2.js');
const SLUG = /^[a-z0-9][a-z0-9-]{0,62}$/;
const MAX_WORKERS = 4; // concurrent workers per function
const MAX_QUEUE = 1000; // invocations waiting per function; beyond, an invocation is refused at once (error)
const IDLE_WORKER_MS = 10 * 60 * 1000; // an unused worker is ended after this
const IDLE_CHECK_MS = 30 * 1000;
const PREWARM_WAIT_MS = 1000; // PUT /functions/:slug answers once a first worker is ready, or after this
const MIN_LOAD_LIMIT_MS = 10000; // a worker may load the module for max(timeout, this) before it is ended
const MAX_TIMEOUT_MS = 15 * 60 * 1000;
const MAX_LOG_LINES = 200; // per invocation
const MAX_LOG_BYTES = 64 * 1024; // per invocation
const MAX_RESULT_BYTES = 6 * 1024 * 1024; // a function's response as JSON
const MAX_INVOKE_BODY = 6 * 1024 * 1024; // {event, ctx, handler} as JSON
const MAX_SPEC_BODY = 16 * 1024 * 1024; // a function's JSON (its code)
const BUILD_TIMEOUT_MS = 5000;
const BUILD_HEAP_MIB = 64;
const MAX_BUILDS = 4; // concurrent build checks; more wait (their timeout counts from arrival)

function log(message) {
  process.stdout.write(`${new Date().toISOString()} runtime ${VERSION} [${process.pid}] ${message}\n`);
}

function fail(message) {
  log(`fatal: ${message}`);
  process.exit(2);
}

// --- configuration ----------------------------------------------------------------------------------------

function loadConfig(file) {
  if (!file) fail('usage: node runtime-v2.js <runtime.json>');
  let config;
  try {
    config = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (error) {
    fail(`cannot read config ${file}: ${error.message}`);
  }
  if (config === null || typeof config !== 'object' || Array.isArray(config)) fail('config is not an object');
  if (config.host !== '127.0.0.1') fail('config.host must be 127.0.0.1 (the runtime listens on loopback only)');
  if (!Number.isInteger(config.port) || config.port < 1 || config.port > 65535) fail('config.port is invalid');
  if (typeof config.token !== 'string' || config.token.length < 16) fail('config.token is missing or short');
  if (typeof config.projectId !== 'string' || config.projectId === '') fail('config.projectId is missing');
  const env = config.env ?? {};
  if (env === null || typeof env !== 'object' || Array.isArray(env)) fail('config.env is not an object');
  for (const [key, value] of Object.entries(env)) {
    if (typeof value !== 'string') fail(`config.env.${key} is not a string`);
  }
  if (config.apiUrl !== undefined && typeof config.apiUrl !== 'string') fail('config.apiUrl is not a string');
  if (config.parentPid !== undefined && !Number.isInteger(config.parentPid)) fail('config.parentPid is invalid');
  if (config.memoryMib !== undefined && !(Number.isInteger(config.memoryMib) && config.memoryMib > 0)) {
    fail('config.memoryMib is invalid');
  }
  return config;
}

// The project's environment as v1 reports it (config.env plus the reserved CORTEX_ keys, which win): only its
// digest is used here (GET /health); each function's own env comes with its JSON.
function buildProjectEnv(config) {
  return Object.freeze({ ...config.env, CORTEX_API_URL: config.apiUrl ?? '', CORTEX_PROJECT_ID: config.projectId });
}

// SHA-256 (hex) of the environment as compact JSON with keys sorted (provider.env_digest computes the same).
function digestEnv(env, keys) {
  const json = `{${keys.map((key) => `${JSON.stringify(key)}:${JSON.stringify(env[key])}`).join(',')}}`;
  return crypto.createHash('sha256').update(json, 'utf8').digest('hex');
}

// A function's JSON, checked; throws an Error whose message says what is wrong.
function checkSpec(spec, slug) {
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) throw new Error('not a JSON object');
  if (typeof spec.slug !== 'string' || !SLUG.test(spec.slug)) throw new Error('slug is invalid');
  if (slug !== undefined && spec.slug !== slug) throw new Error(`slug ${spec.slug} does not match ${slug}`);
  if (typeof spec.code !== 'string') throw new Error('code must be a string');
  if (typeof spec.entrypoint !== 'string' || spec.entrypoint === '') throw new Error('entrypoint must be a name');
  if (!Number.isInteger(spec.timeout) || spec.timeout < 1 || spec.timeout > MAX_TIMEOUT_MS) {
    throw new Error(`timeout must be a whole number of milliseconds from 1 to ${MAX_TIMEOUT_MS}`);
  }
  if (!Number.isInteger(spec.memoryMib) || spec.memoryMib < 8) throw new Error('memoryMib must be 8 or more');
  const env = spec.env ?? {};
  if (env === null || typeof env !== 'object' || Array.isArray(env)) throw new Error('env must be an object');
  for (const [key, value] of Object.entries(env)) {
    if (typeof value !== 'string') throw new Error(`env.${key} must be a string`);
  }
  return {
    slug: spec.slug,
    functionId: spec.functionId ?? null,
    versionId: spec.versionId ?? null,
    version: spec.version ?? null,
    code: spec.code,
    entrypoint: spec.entrypoint,
    timeout: spec.timeout,
    memoryMib: spec.memoryMib,
    env: { ...env },
  };
}

function errorMessage(error) {
  if (error instanceof Error) return error.message;
  if (error !== null && typeof error === 'object' && typeof error.message === 'string') return error.message;
  try {
    return String(error);
  } catch {
    return 'unknown error';
  }
}

// --- HTTP plumbing ----------------------------------------------------------------------------------------

function sendJson(res, status, body, headers = {}) {
  sendText(res, status, JSON.stringify(body), headers);
}

function sendText(res, status, data, headers = {}) {
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(data),
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(data);
}

function sendEmpty(res, status) {
  res.writeHead(status, { 'Cache-Control': 'no-store' });
  res.end();
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The request body as a string (at most `limit` bytes: HttpError 413 beyond).
function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (declared > limit) {
      req.resume();
      reject(new HttpError(413, `the request body is larger than ${limit} bytes`));
      return;
    }
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        chunks.length = 0;
        reject(new HttpError(413, `the request body is larger than ${limit} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(chunks.length === 1 ? chunks[0].toString('utf8') : Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function readJson(req, limit) {
  const text = await readBody(req, limit);
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError(400, 'the request body is not JSON');
  }
}

// Constant-time token check (both sides hashed first, so lengths never differ and never leak).
function tokenMatches(given, expectedDigest) {
  if (typeof given !== 'string') return false;
  const digest = crypto.createHash('sha256').update(given, 'utf8').digest();
  return crypto.timingSafeEqual(digest, expectedDigest);
}

// Route patterns are split on '/'; a segment ':name' captures one non-empty path segment into params.name.
function compile(routes) {
  return routes.map(([method, pattern, handler]) => ({ method, parts: pattern.split('/'), handler }));
}

function match(route, parts) {
  if (route.parts.length !== parts.length) return null;
  const params = {};
  for (let i = 0; i < parts.length; i++) {
    const want = route.parts[i];
    if (want.startsWith(':')) {
      if (parts[i] === '') return null;
      params[want.slice(1)] = decodeURIComponent(parts[i]); // a malformed escape throws: answered 400
    } else if (want !== parts[i]) {
      return null;
    }
  }
  return params;
}

// --- functions and their workers --------------------------------------------------------------------------

// One loaded version of a function: its spec, its workers (Slot) and the invocations waiting for one.
class Host {
  constructor(spec, memoryCapMib, projectDir) {
    this.spec = spec;
    this.slug = spec.slug;
    this.memoryMib = memoryCapMib ? Math.min(spec.memoryMib, memoryCapMib) : spec.memoryMib;
    this.filename = path.join(projectDir, 'functions', `${spec.slug}.js`);
    this.workers = new Set(); // every live Slot of this version
    this.idle = []; // Slots waiting for work (most recently used last)
    this.queue = []; // Invocations waiting for a worker (FIFO)
    this.active = true; // false once replaced or unloaded
  }
}

// One worker thread.
class Slot {
  constructor(host, worker) {
    this.host = host;
    this.worker = worker;
    this.inv = null; // the Invocation it runs
    this.ready = false; // its module is loaded
    this.retired = false; // its version was replaced: exit once the current invocation is answered
    this.dead = false;
    this.failure = undefined; // the error it is dying of ('error' event; its 'exit' follows)
    this.idleSince = 0;
    this.loadTimer = null;
    this.waiters = []; // called once it is ready or dead (prewarm)
  }

  settled() {
    for (const waiter of this.waiters.splice(0)) waiter();
  }
}

// One invocation being answered.
class Invocation {
  constructor(id, body, res, arrived) {
    this.id = id;
    this.body = body;
    this.res = res;
    this.arrived = arrived;
    this.host = null;
    this.slot = null;
    this.timer = null;
    this.logs = [];
    this.dropped = 0;
    this.done = false;
  }
}

class FunctionPool {
  constructor(projectDir, memoryCapMib) {
    this.projectDir = projectDir;
    this.memoryCapMib = memoryCapMib;
    this.hosts = new Map(); // slug → the loaded Host
    this.nextId = 1;
  }

  // --- deployment ---

  load(spec) {
    const host = new Host(spec, this.memoryCapMib, this.projectDir);
    const old = this.hosts.get(spec.slug);
    this.hosts.set(spec.slug, host);
    if (old !== undefined) {
      old.active = false;
      for (const slot of [...old.workers]) {
        if (slot.inv === null) this.kill(slot);
        else slot.retired = true; // finishes its invocation, then exits (release)
      }
      for (const inv of old.queue) inv.host = host; // waiting invocations run on the new version
      host.queue = old.queue;
      old.queue = [];
      this.pump(host);
    }
    return host;
  }

  unload(slug) {
    const host = this.hosts.get(slug);
    if (host === undefined) return false;
    this.hosts.delete(slug);
    host.active = false;
    for (const inv of host.queue.splice(0)) this.finish(inv, 'not_found', null, `no function ${slug} is deployed`);
    for (const slot of [...host.workers]) {
      if (slot.inv !== null) this.finish(slot.inv, 'error', null, 'the function was undeployed while it ran');
      this.kill(slot);
    }
    return true;
  }

  list() {
    return [...this.hosts.values()]
      .sort((a, b) => (a.slug < b.slug ? -1 : a.slug > b.slug ? 1 : 0))
      .map((host) => ({ slug: host.slug, versionId: host.spec.versionId, version: host.spec.version,
                        workers: host.workers.size }));
  }

  // Start one worker so the first invocation finds the module loaded; resolves once it is loaded (or failed),
  // after PREWARM_WAIT_MS at the latest.
  prewarm(host) {
    if (!host.active || host.workers.size > 0) return Promise.resolve();
    let slot;
    try {
      slot = this.spawn(host);
    } catch (error) {
      log(`function ${host.slug}: cannot start a worker: ${errorMessage(error)}`);
      return Promise.resolve();
    }
    slot.idleSince = Date.now();
    host.idle.push(slot);
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, PREWARM_WAIT_MS);
      slot.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  // --- workers ---

  spawn(host) {
    const spec = host.spec;
    const worker = new Worker(WORKER_SCRIPT, {
      name: `function ${spec.slug}`,
      env: spec.env,
      workerData: {
        mode: 'function', code: spec.code, entrypoint: spec.entrypoint, projectDir: this.projectDir,
        filename: host.filename, maxLogLines: MAX_LOG_LINES, maxLogBytes: MAX_LOG_BYTES,
        maxResultBytes: MAX_RESULT_BYTES,
      },
      resourceLimits: { maxOldGenerationSizeMb: host.memoryMib, maxYoungGenerationSizeMb: youngGeneration(host.memoryMib) },
      stdin: false,
      stdout: true, // not piped to our stdout: drained and dropped (the worker captures its own writes)
      stderr: true,
      trackUnmanagedFds: true,
    });
    const slot = new Slot(host, worker);
    host.workers.add(slot);
    worker.stdout.resume();
    worker.stderr.resume();
    worker.on('message', (message) => this.onMessage(slot, message));
    worker.on('error', (error) => this.onError(slot, error));
    worker.on('exit', (code) => this.onExit(slot, code));
    // Loading the module may take longer than one invocation's timeout (the invocation is answered "timeout"
    // and the worker goes on loading, so that the function gets warm), but not longer than this.
    const loadLimit = Math.max(spec.timeout, MIN_LOAD_LIMIT_MS);
    slot.loadTimer = setTimeout(() => {
      if (slot.ready || slot.dead) return;
      const inv = slot.inv;
      slot.inv = null;
      this.kill(slot);
      if (inv !== null) this.finish(inv, 'error', null, `the function's module did not load within ${loadLimit} ms`);
      this.pump(host);
    }, loadLimit);
    return slot;
  }

  // Take a worker out of service (idempotent); terminate() stops even a synchronous loop at once. Nothing it
  // sends afterwards counts.
  kill(slot) {
    if (slot.dead) return;
    slot.dead = true;
    clearTimeout(slot.loadTimer);
    slot.settled();
    this.detach(slot);
    slot.worker.terminate().catch(() => {});
  }

  // Out of the pool: no new invocation goes to it.
  detach(slot) {
    slot.host.workers.delete(slot);
    const at = slot.host.idle.indexOf(slot);
    if (at >= 0) slot.host.idle.splice(at, 1);
  }

  onMessage(slot, message) {
    if (slot.dead || message === null || typeof message !== 'object') return;
    const inv = slot.inv;
    switch (message.t) {
      case 'log':
        if (inv !== null && message.id === inv.id && inv.logs.length < MAX_LOG_LINES) {
          const line = message.line;
          if (line !== null && typeof line === 'object') inv.logs.push(line);
        }
        break;
      case 'done':
        if (inv === null || message.id !== inv.id) break;
        slot.inv = null;
        inv.dropped += Number(message.dropped) || 0;
        if (message.outcome === 'ok' && typeof message.result === 'string') {
          this.finish(inv, 'ok', message.result, null);
        } else {
          this.finish(inv, 'error', null, String(message.error ?? 'the function failed'));
        }
        this.release(slot);
        break;
      case 'ready':
        if (slot.ready) break;
        slot.ready = true;
        clearTimeout(slot.loadTimer);
        slot.settled();
        if (inv !== null) this.post(slot, inv);
        else if (!slot.host.idle.includes(slot)) this.release(slot); // its invocation timed out while it loaded
        break;
      default:
        break;
    }
  }

  // The worker is dying (out of memory, an uncaught exception). What it sent before still arrives (Node delivers
  // its messages before 'exit'), e.g. the answer to an invocation that returned just before a timer threw:
  // the invocation is settled at 'exit'.
  onError(slot, error) {
    if (slot.dead) return;
    slot.failure = error ?? new Error('the worker failed');
    this.detach(slot);
  }

  onExit(slot, code) {
    const host = slot.host;
    const inv = slot.inv;
    const failure = slot.failure;
    slot.inv = null;
    this.kill(slot);
    const memory = failure !== undefined && failure !== null && failure.code === 'ERR_WORKER_OUT_OF_MEMORY';
    if (inv !== null) {
      if (memory) {
        this.finish(inv, 'memory', null, `the function exceeded its memory limit of ${host.memoryMib} MB`);
      } else if (failure !== undefined) {
        this.finish(inv, 'error', null, errorMessage(failure));
      } else {
        this.finish(inv, 'error', null, `the function's worker exited (code ${code}) before it answered`);
      }
    } else if (memory) {
      log(`function ${host.slug}: an idle worker exceeded the memory limit of ${host.memoryMib} MB`);
    }
    this.pump(this.hosts.get(host.slug) ?? host);
  }

  // A worker answered: give it the next waiting invocation, or park it.
  release(slot) {
    if (slot.dead) return;
    const host = slot.host;
    if (slot.retired || !host.active || slot.failure !== undefined) {
      this.kill(slot);
      const current = this.hosts.get(host.slug);
      if (current !== undefined) this.pump(current);
      return;
    }
    const next = host.queue.shift();
    if (next !== undefined) {
      this.run(slot, next);
      return;
    }
    slot.idleSince = Date.now();
    host.idle.push(slot);
  }

  // Start waiting invocations on idle workers, or new ones up to MAX_WORKERS.
  pump(host) {
    if (!host.active) return;
    while (host.queue.length > 0) {
      let slot = host.idle.pop();
      if (slot === undefined) {
        if (host.workers.size >= MAX_WORKERS) return;
        try {
          slot = this.spawn(host);
        } catch (error) {
          log(`function ${host.slug}: cannot start a worker: ${errorMessage(error)}`);
          for (const inv of host.queue.splice(0)) {
            this.finish(inv, 'error', null, `the function's worker could not be started: ${errorMessage(error)}`);
          }
          return;
        }
      }
      this.run(slot, host.queue.shift());
    }
  }

  // Give `inv` to `slot`; it is sent once the worker has loaded the module.
  run(slot, inv) {
    slot.inv = inv;
    inv.slot = slot;
    if (slot.ready) this.post(slot, inv);
  }

  post(slot, inv) {
    const body = inv.body;
    inv.body = null;
    slot.worker.postMessage({ id: inv.id, body });
  }

  endIdle(now) {
    for (const host of this.hosts.values()) {
      for (const slot of [...host.idle]) {
        if (now - slot.idleSince >= IDLE_WORKER_MS) this.kill(slot);
      }
    }
  }

  // --- invocations ---

  invoke(slug, body, res, arrived) {
    const inv = new Invocation(this.nextId++, body, res, arrived);
    const host = SLUG.test(slug) ? this.hosts.get(slug) : undefined;
    if (host === undefined) {
      this.finish(inv, 'not_found', null, `no function ${slug} is deployed`);
      return;
    }
    inv.host = host;
    inv.timer = setTimeout(() => this.onTimeout(inv), Math.max(0, host.spec.timeout - (performance.now() - arrived)));
    let slot = host.idle.pop();
    if (slot === undefined && host.workers.size < MAX_WORKERS) {
      try {
        slot = this.spawn(host);
      } catch (error) {
        log(`function ${slug}: cannot start a worker: ${errorMessage(error)}`);
        this.finish(inv, 'error', null, `the function's worker could not be started: ${errorMessage(error)}`);
        return;
      }
    }
    if (slot !== undefined) {
      this.run(slot, inv);
    } else if (host.queue.length >= MAX_QUEUE) {
      this.finish(inv, 'error', null, `too many invocations of the function are waiting (${MAX_QUEUE})`);
    } else {
      host.queue.push(inv);
    }
  }

  onTimeout(inv) {
    if (inv.done) return;
    const host = inv.host;
    const ms = host.spec.timeout;
    const slot = inv.slot;
    if (slot !== null && slot.inv === inv && !slot.ready) {
      slot.inv = null; // never sent: the worker goes on loading the module (the load limit still applies)
      this.finish(inv, 'timeout', null,
                  `the function did not finish within its timeout of ${ms} ms (its module was still loading)`);
    } else if (slot !== null && slot.inv === inv) {
      slot.inv = null;
      this.kill(slot); // replaced when needed (pump, or the next invocation)
      this.finish(inv, 'timeout', null, `the function did not finish within its timeout of ${ms} ms`);
      this.pump(host);
    } else {
      const at = host.queue.indexOf(inv);
      if (at >= 0) host.queue.splice(at, 1);
      this.finish(inv, 'timeout', null,
                  `the function did not start within its timeout of ${ms} ms: all its workers were busy`);
    }
  }

  finish(inv, outcome, resultJson, error) {
    if (inv.done) return;
    inv.done = true;
    clearTimeout(inv.timer);
    if (inv.dropped > 0) {
      inv.logs.push({ time: new Date().toISOString(), level: 'warn', requestId: inv.logs.at(-1)?.requestId ?? null,
                      message: `${inv.dropped} more log lines were dropped (at most ${MAX_LOG_LINES} lines and ` +
                               `${MAX_LOG_BYTES / 1024} KiB per invocation)` });
    }
    const durationMs = Math.round((performance.now() - inv.arrived) * 1000) / 1000;
    const data = `{"outcome":"${outcome}","result":${resultJson ?? 'null'},"error":${JSON.stringify(error)},` +
                 `"logs":${inv.logs.length === 0 ? '[]' : JSON.stringify(inv.logs)},"durationMs":${durationMs}}`;
    inv.body = null;
    inv.slot = null;
    if (!inv.res.destroyed && !inv.res.headersSent) sendText(inv.res, 200, data);
  }

  terminateAll() {
    for (const host of this.hosts.values()) {
      for (const slot of [...host.workers]) this.kill(slot);
    }
  }
}

function youngGeneration(memoryMib) {
  return Math.max(2, Math.min(16, Math.floor(memoryMib / 8)));
}

// POST /build: check code in a fresh, isolated worker. At most MAX_BUILDS at once; the timeout counts from
// arrival.
class Builder {
  constructor(projectDir) {
    this.projectDir = projectDir;
    this.running = 0;
    this.waiting = [];
  }

  check(code, entrypoint, timeoutMs) {
    return new Promise((resolve) => {
      const job = { code, entrypoint, timeoutMs, resolve, started: false, done: false, logs: [], bytes: 0,
                    dropped: 0, worker: null, timer: null };
      job.timer = setTimeout(() => {
        this.end(job, false, `loading the module took longer than ${timeoutMs} ms`);
      }, timeoutMs);
      if (this.running < MAX_BUILDS) this.start(job);
      else this.waiting.push(job);
    });
  }

  start(job) {
    let worker;
    try {
      worker = this.spawn(job);
    } catch (error) {
      log(`cannot start a build check: ${errorMessage(error)}`);
      this.end(job, false, `the build check could not be started: ${errorMessage(error)}`);
      return;
    }
    this.running++;
    job.started = true;
    job.worker = worker;
    worker.stdout.resume();
    worker.stderr.resume();
    worker.on('message', (message) => {
      if (message === null || typeof message !== 'object') return;
      if (message.t === 'log' && message.line && job.logs.length < MAX_LOG_LINES) {
        const line = message.line;
        job.logs.push(`${line.time} ${String(line.level).toUpperCase()} ${line.message}`);
      } else if (message.t === 'built') {
        job.dropped += Number(message.dropped) || 0;
        const handlers = Array.isArray(message.handlers) ? message.handlers.filter((h) => typeof h === 'string') : [];
        this.end(job, message.ok === true, message.ok === true ? null : String(message.error), handlers);
      }
    });
    worker.on('error', (error) => {
      if (error && error.code === 'ERR_WORKER_OUT_OF_MEMORY') {
        this.end(job, false, `loading the module exceeded the memory limit of ${BUILD_HEAP_MIB} MB`);
      } else {
        this.end(job, false, `the module failed while loading: ${errorMessage(error)}`);
      }
    });
    worker.on('exit', (code) => this.end(job, false, `the module ended its thread while loading (code ${code})`));
  }

  spawn(job) {
    return new Worker(WORKER_SCRIPT, {
      name: 'build check',
      env: {},
      workerData: {
        mode: 'build', code: job.code, entrypoint: job.entrypoint, projectDir: this.projectDir,
        filename: path.join(this.projectDir, 'functions', 'build-check.js'), maxLogLines: MAX_LOG_LINES,
        maxLogBytes: MAX_LOG_BYTES, maxResultBytes: MAX_RESULT_BYTES,
      },
      resourceLimits: { maxOldGenerationSizeMb: BUILD_HEAP_MIB, maxYoungGenerationSizeMb: youngGeneration(BUILD_HEAP_MIB) },
      stdin: false,
      stdout: true,
      stderr: true,
      trackUnmanagedFds: true,
    });
  }

  end(job, ok, error, handlers = []) {
    if (job.done) return;
    job.done = true;
    clearTimeout(job.timer);
    if (job.started) {
      job.worker.terminate().catch(() => {});
      this.running--;
      const next = this.waiting.shift();
      if (next !== undefined) this.start(next);
    } else {
      const at = this.waiting.indexOf(job);
      if (at >= 0) this.waiting.splice(at, 1);
    }
    let logs = job.logs.join('\n');
    if (job.dropped > 0) logs += `\n(${job.dropped} more log lines were dropped)`;
    job.resolve({ ok, error, logs, handlers });
  }
}

// --- the runtime ------------------------------------------------------------------------------------------

function main() {
  const major = Number(process.versions.node.split('.')[0]);
  if (major < MIN_NODE_MAJOR) fail(`Node.js ${MIN_NODE_MAJOR}+ is required, this is ${process.versions.node}`);

  if (!process.argv[2]) fail('usage: node runtime-v2.js <runtime.json>');
  const configPath = path.resolve(process.argv[2]);
  const config = loadConfig(configPath);
  const projectDir = path.dirname(configPath);
  const functionsDir = path.join(projectDir, 'functions');
  const PROJECT_ENV = buildProjectEnv(config);
  const ENV_KEYS = Object.freeze(Object.keys(PROJECT_ENV).sort());
  const ENV_DIGEST = digestEnv(PROJECT_ENV, ENV_KEYS);
  const TOKEN_DIGEST = crypto.createHash('sha256').update(config.token, 'utf8').digest();
  const pool = new FunctionPool(projectDir, config.memoryMib);
  const builder = new Builder(projectDir);

  // The deployed functions (files written by the provider).
  let names = [];
  try {
    names = fs.readdirSync(functionsDir).filter((name) => name.endsWith('.json')).sort();
  } catch (error) {
    if (error.code !== 'ENOENT') log(`cannot read ${functionsDir}: ${error.message}`);
  }
  for (const name of names) {
    try {
      const spec = checkSpec(JSON.parse(fs.readFileSync(path.join(functionsDir, name), 'utf8')), name.slice(0, -5));
      pool.load(spec);
    } catch (error) {
      log(`function file ${name} not loaded: ${errorMessage(error)}`);
    }
  }

  // Handlers get (req, res, params) and answer; they may be async. An HttpError becomes a JSON error answer.
  function health(req, res) {
    sendJson(res, 200, {
      status: 'ok',
      version: VERSION,
      node: process.versions.node,
      projectId: config.projectId,
      pid: process.pid,
      uptimeMs: Math.round(process.uptime() * 1000),
      envKeys: ENV_KEYS,
      envDigest: ENV_DIGEST,
      functions: pool.hosts.size,
    });
  }

  function listFunctions(req, res) {
    sendJson(res, 200, pool.list());
  }

  async function putFunction(req, res, params) {
    if (!SLUG.test(params.slug)) throw new HttpError(400, 'invalid function slug');
    const body = await readJson(req, MAX_SPEC_BODY);
    let spec;
    try {
      spec = checkSpec(body, params.slug);
    } catch (error) {
      throw new HttpError(400, `invalid function: ${error.message}`);
    }
    const host = pool.load(spec);
    log(`function ${spec.slug} loaded (version ${spec.version ?? '?'})`);
    await pool.prewarm(host); // answered once a worker has the module loaded (1 s at most)
    sendEmpty(res, 204);
  }

  function deleteFunction(req, res, params) {
    if (!pool.unload(params.slug)) throw new HttpError(404, `no function ${params.slug} is deployed`);
    log(`function ${params.slug} unloaded`);
    sendEmpty(res, 204);
  }

  async function build(req, res) {
    const body = await readJson(req, MAX_SPEC_BODY);
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new HttpError(400, 'not a JSON object');
    const { code, entrypoint } = body;
    if (typeof code !== 'string') throw new HttpError(400, 'code must be a string');
    if (typeof entrypoint !== 'string' || entrypoint === '') throw new HttpError(400, 'entrypoint must be a name');
    let timeoutMs = BUILD_TIMEOUT_MS;
    if (body.timeoutMs !== undefined && body.timeoutMs !== null) {
      if (typeof body.timeoutMs !== 'number' || !(body.timeoutMs > 0)) throw new HttpError(400, 'invalid timeoutMs');
      timeoutMs = Math.max(1, Math.min(BUILD_TIMEOUT_MS, Math.round(body.timeoutMs)));
    }
    sendJson(res, 200, await builder.check(code, entrypoint, timeoutMs));
  }

  async function invoke(req, res, params, arrived) {
    const body = await readBody(req, MAX_INVOKE_BODY);
    pool.invoke(params.slug, body, res, arrived);
  }

  // The route table: [method, pattern, handler].
  const ROUTES = compile([
    ['GET', '/health', health],
    ['GET', '/functions', listFunctions],
    ['PUT', '/functions/:slug', putFunction],
    ['DELETE', '/functions/:slug', deleteFunction],
    ['POST', '/build', build],
    ['POST', '/invoke/:slug', invoke],
  ]);

  async function dispatch(req, res, arrived) {
    if (!tokenMatches(req.headers[TOKEN_HEADER], TOKEN_DIGEST)) {
      sendJson(res, 401, { error: 'unauthorized' });
      return;
    }
    const url = req.url ?? '/';
    const query = url.indexOf('?');
    const parts = (query < 0 ? url : url.slice(0, query)).split('/');
    const allowed = [];
    for (const route of ROUTES) {
      let params;
      try {
        params = match(route, parts);
      } catch {
        sendJson(res, 400, { error: 'malformed path' });
        return;
      }
      if (params === null) continue;
      if (route.method !== req.method) {
        allowed.push(route.method);
        continue;
      }
      try {
        await route.handler(req, res, params, arrived);
      } catch (error) {
        if (!(error instanceof HttpError)) throw error;
        if (!res.headersSent) sendJson(res, error.status, { error: error.message }, error.status === 413 ? { Connection: 'close' } : {});
      }
      return;
    }
    if (allowed.length > 0) {
      sendJson(res, 405, { error: 'method not allowed' }, { Allow: allowed.join(', ') });
    } else {
      sendJson(res, 404, { error: 'not found' });
    }
  }

  const server = http.createServer((req, res) => {
    dispatch(req, res, performance.now()).catch((error) => {
      log(`error: ${req.method} ${req.url}: ${error && error.stack ? error.stack : error}`);
      if (!res.headersSent) sendJson(res, 500, { error: 'internal error' });
      else res.destroy();
    });
  });
  server.keepAliveTimeout = KEEP_ALIVE_MS;
  server.headersTimeout = KEEP_ALIVE_MS + 1000;

  server.on('error', (error) => {
    log(`fatal: cannot listen on ${config.host}:${config.port}: ${error.message}`);
    process.exit(1);
  });

  server.listen({ host: config.host, port: config.port, exclusive: true }, () => {
    log(`started: project ${config.projectId}, listening on ${config.host}:${config.port}, ` +
        `node ${process.versions.node}, ${ENV_KEYS.length} environment keys, ${pool.hosts.size} functions`);
  });

  setInterval(() => pool.endIdle(Date.now()), IDLE_CHECK_MS).unref();

  let stopping = false;
  function shutdown(signal) {
    if (stopping) return;
    stopping = true;
    log(`stopping on ${signal}`);
    server.close(() => {
      pool.terminateAll();
      log('stopped');
      process.exit(0);
    });
    server.closeIdleConnections();
    setTimeout(() => {
      server.closeAllConnections();
      log('stopped (open connections closed)');
      process.exit(0);
    }, SHUTDOWN_GRACE_MS).unref();
  }
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));

  // Orphaned (the parent died and we were re-parented): stop like on SIGTERM.
  const parentPid = config.parentPid ?? process.ppid;
  function watchParent() {
    if (process.ppid !== parentPid) shutdown(`exit of parent process ${parentPid}`);
  }
  watchParent();
  setInterval(watchParent, PARENT_CHECK_MS).unref();
}

main();
