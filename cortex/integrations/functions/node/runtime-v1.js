// Cortex functions runtime, version v1 (Node.js 20+, built-in modules only).
//
// One process per activated project, started by a Cortex runtime provider (cortex/integrations/functions/) as
//
//     node runtime-v1.js <path of runtime.json>
//
// with the project's directory as working directory (its node_modules/ holds the project's npm dependencies)
// and an environment that holds nothing of the server's. Everything it needs comes from runtime.json:
//
//     {"projectId": "...", "env": {"KEY": "value"}, "apiUrl": "https://...", "version": "v1",
//      "host": "127.0.0.1", "port": 41234, "token": "...", "memoryMib": 512, "parentPid": 1234}
//
// It serves HTTP on host:port — loopback only — and answers only requests that carry the token in the
// X-Cortex-Runtime-Token header. Routes live in one table (ROUTES below); the next version adds
// PUT /functions/:slug (load a function's code) and POST /invoke/:slug (run it in a worker thread whose
// process.env is FUNCTION_ENV and whose heap is capped by memoryMib through the worker's resourceLimits).
//
// It exits on its own when the Cortex process that started it (parentPid) is gone: nobody else would stop it, and
// another Cortex process taking the project over starts its own runtime.
//
// Functions' require() must resolve from the project directory (module.createRequire(<cwd>/package.json)), not
// from this file's location.
//
// This file is immutable once released: a change of behaviour is a new runtime-vN.js.
// Do not set process.title: the provider recognises this process by its command line.

'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');

const VERSION = 'v1';
const MIN_NODE_MAJOR = 20;
const TOKEN_HEADER = 'x-cortex-runtime-token';
const SHUTDOWN_GRACE_MS = 800; // SIGTERM → exit within a second, even with requests still open
const PARENT_CHECK_MS = 1000; // how often the runtime looks whether its parent is still there

function log(message) {
  process.stdout.write(`${new Date().toISOString()} runtime ${VERSION} [${process.pid}] ${message}\n`);
}

function fail(message) {
  log(`fatal: ${message}`);
  process.exit(2);
}

// --- configuration ----------------------------------------------------------------------------------------

function loadConfig(path) {
  if (!path) fail('usage: node runtime-v1.js <runtime.json>');
  let config;
  try {
    config = JSON.parse(fs.readFileSync(path, 'utf8'));
  } catch (error) {
    fail(`cannot read config ${path}: ${error.message}`);
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
  return config;
}

// The environment functions will see as process.env: config.env plus the reserved CORTEX_ keys (which win).
// Built once and frozen. It is deliberately NOT copied into this process's own process.env.
function buildFunctionEnv(config) {
  return Object.freeze({ ...config.env, CORTEX_API_URL: config.apiUrl ?? '', CORTEX_PROJECT_ID: config.projectId });
}

// SHA-256 (hex) of the environment as compact JSON with keys sorted: lets Cortex check what was delivered
// (cortex.integrations.functions.provider.env_digest computes the same) without the values leaving this process.
// Written out key by key: an object would put integer-like keys first, whatever their sorted place.
function digestEnv(env, keys) {
  const json = `{${keys.map((key) => `${JSON.stringify(key)}:${JSON.stringify(env[key])}`).join(',')}}`;
  return crypto.createHash('sha256').update(json, 'utf8').digest('hex');
}

// --- HTTP plumbing ----------------------------------------------------------------------------------------

function sendJson(res, status, body, headers = {}) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(data),
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(data);
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

// --- the runtime ------------------------------------------------------------------------------------------

function main() {
  const major = Number(process.versions.node.split('.')[0]);
  if (major < MIN_NODE_MAJOR) fail(`Node.js ${MIN_NODE_MAJOR}+ is required, this is ${process.versions.node}`);

  const config = loadConfig(process.argv[2]);
  const FUNCTION_ENV = buildFunctionEnv(config);
  const ENV_KEYS = Object.freeze(Object.keys(FUNCTION_ENV).sort());
  const ENV_DIGEST = digestEnv(FUNCTION_ENV, ENV_KEYS);
  const TOKEN_DIGEST = crypto.createHash('sha256').update(config.token, 'utf8').digest();

  // Handlers get (req, res, params) and answer with sendJson; they may be async.
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
    });
  }

  // The route table: [method, pattern, handler].
  const ROUTES = compile([
    ['GET', '/health', health],
  ]);

  async function dispatch(req, res) {
    if (!tokenMatches(req.headers[TOKEN_HEADER], TOKEN_DIGEST)) {
      sendJson(res, 401, { error: 'unauthorized' });
      return;
    }
    const path = (req.url ?? '/').split('?', 1)[0];
    const parts = path.split('/');
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
      await route.handler(req, res, params);
      return;
    }
    if (allowed.length > 0) {
      sendJson(res, 405, { error: 'method not allowed' }, { Allow: allowed.join(', ') });
    } else {
      sendJson(res, 404, { error: 'not found' });
    }
  }

  const server = http.createServer((req, res) => {
    dispatch(req, res).catch((error) => {
      log(`error: ${req.method} ${req.url}: ${error && error.stack ? error.stack : error}`);
      if (!res.headersSent) sendJson(res, 500, { error: 'internal error' });
      else res.destroy();
    });
  });

  server.on('error', (error) => {
    log(`fatal: cannot listen on ${config.host}:${config.port}: ${error.message}`);
    process.exit(1);
  });

  server.listen({ host: config.host, port: config.port, exclusive: true }, () => {
    log(`started: project ${config.projectId}, listening on ${config.host}:${config.port}, ` +
        `node ${process.versions.node}, ${ENV_KEYS.length} environment keys`);
  });

  let stopping = false;
  function shutdown(signal) {
    if (stopping) return;
    stopping = true;
    log(`stopping on ${signal}`);
    server.close(() => {
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
