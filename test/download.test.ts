import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cacheDir, resolveCacheDir } from '../agent/cache-dir.js';
import { DownloadError, downloadVerified, sha256File } from '../agent/download.js';
import { fetchBackbone, resolveDescriptor, selectBackbone } from '../agent/backbones.js';
import { BackboneError, MOBILENETV2_INT8 } from '../models/backbone.js';
import { BACKBONE_PATH, sharedAvailable } from './helpers/fitted-model.js';

const payload = randomBytes(256 * 1024 + 123);
const payloadSha = createHash('sha256').update(payload).digest('hex');
const otherSha = createHash('sha256').update('something else').digest('hex');

/** A real HTTP server on 127.0.0.1 serving the routes the tests need; counts requests. */
async function startServer(t: ExecutionContext) {
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    const path = req.url ?? '/';
    requests.push(path);
    switch (path) {
      case '/file':
        res.writeHead(200, { 'content-length': payload.length, 'content-type': 'application/octet-stream' });
        res.end(payload);
        return;
      case '/chunked': // no Content-Length: chunked transfer encoding
        res.writeHead(200);
        for (let i = 0; i < payload.length; i += 16384) res.write(payload.subarray(i, i + 16384));
        res.end();
        return;
      case '/truncated': // promises the whole payload, sends 1000 bytes, then cuts the connection
        res.writeHead(200, { 'content-length': payload.length });
        res.write(payload.subarray(0, 1000), () => setTimeout(() => res.socket?.destroy(), 20));
        return;
      case '/hang': // headers, then silence
        res.writeHead(200, { 'content-length': payload.length });
        res.flushHeaders();
        return;
      case '/drip': { // a byte every 20 ms: never idle, but slow
        res.writeHead(200, { 'content-length': payload.length });
        const timer = setInterval(() => res.write(payload.subarray(0, 1)), 20);
        res.on('close', () => clearInterval(timer));
        return;
      }
      case '/r1':
        res.writeHead(302, { location: '/r2' }).end(); // relative, absolute path
        return;
      case '/r2':
        res.writeHead(301, { location: `http://127.0.0.1:${port()}/dir/r3` }).end(); // absolute
        return;
      case '/dir/r3':
        res.writeHead(307, { location: '../file' }).end(); // relative to /dir/
        return;
      case '/loop':
        res.writeHead(302, { location: '/loop' }).end();
        return;
      case '/to-ftp':
        res.writeHead(302, { location: 'ftp://127.0.0.1/file' }).end();
        return;
      case '/redirect-to-404':
        res.writeHead(303, { location: '/missing' }).end();
        return;
      case '/500':
        res.writeHead(500).end('boom');
        return;
      default:
        res.writeHead(404).end('not here');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = () => (server.address() as AddressInfo).port;
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { base: `http://127.0.0.1:${port()}`, requests };
}

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-dl-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The directory holds exactly `names`: no `.part-*` leftovers, no unexpected dest. */
async function assertDirHolds(t: ExecutionContext, dir: string, names: string[]) {
  t.deepEqual((await readdir(dir)).sort(), [...names].sort());
}

async function assertFails(
  t: ExecutionContext,
  promise: Promise<unknown>,
  expected: Array<{ url: string; reason: RegExp }>,
) {
  const err = await t.throwsAsync(promise, { instanceOf: DownloadError });
  if (!err) return;
  t.is(err.attempts.length, expected.length, err.message);
  expected.forEach((e, i) => {
    t.is(err.attempts[i]!.url, e.url);
    t.regex(err.attempts[i]!.reason, e.reason);
    t.true(err.message.includes(e.url), 'message lists every URL');
  });
}

test('downloads a good file, verifies it and reports progress', async (t) => {
  const { base, requests } = await startServer(t);
  const dir = await tempDir(t);
  const dest = join(dir, 'model.onnx');
  const progress: Array<[number, number | undefined]> = [];
  const result = await downloadVerified({
    urls: [`${base}/file`],
    sha256: payloadSha.toUpperCase(), // case-insensitive
    dest,
    onProgress: (received, total) => progress.push([received, total]),
  });
  t.deepEqual(result, { path: dest, url: `${base}/file`, bytes: payload.length, sha256: payloadSha, cached: false });
  t.true((await readFile(dest)).equals(payload));
  t.deepEqual(progress.at(-1), [payload.length, payload.length]);
  t.deepEqual(requests, ['/file']);
  await assertDirHolds(t, dir, ['model.onnx']);
});

test('downloads a chunked body without Content-Length', async (t) => {
  const { base } = await startServer(t);
  const dir = await tempDir(t);
  const dest = join(dir, 'sub', 'deeper', 'model.onnx'); // directories are created
  const result = await downloadVerified({ urls: [`${base}/chunked`], sha256: payloadSha, dest });
  t.is(result.bytes, payload.length);
  t.is(await sha256File(dest), payloadSha);
});

test('wrong hash: sha256 mismatch names both digests, nothing is left behind', async (t) => {
  const { base } = await startServer(t);
  const dir = await tempDir(t);
  await assertFails(t, downloadVerified({ urls: [`${base}/file`], sha256: otherSha, dest: join(dir, 'm.onnx') }), [
    { url: `${base}/file`, reason: new RegExp(`^sha256 mismatch: expected ${otherSha}, got ${payloadSha}$`) },
  ]);
  await assertDirHolds(t, dir, []);
});

test('connection cut before Content-Length is reached: truncated', async (t) => {
  const { base } = await startServer(t);
  const dir = await tempDir(t);
  await assertFails(t, downloadVerified({ urls: [`${base}/truncated`], sha256: payloadSha, dest: join(dir, 'm.onnx') }), [
    { url: `${base}/truncated`, reason: new RegExp(`^truncated \\(got 1000 of ${payload.length} bytes\\)$`) },
  ]);
  await assertDirHolds(t, dir, []);
});

test('HTTP 404 names the status', async (t) => {
  const { base } = await startServer(t);
  const dir = await tempDir(t);
  await assertFails(t, downloadVerified({ urls: [`${base}/nope`], sha256: payloadSha, dest: join(dir, 'm.onnx') }), [
    { url: `${base}/nope`, reason: /^HTTP 404 Not Found$/ },
  ]);
  await assertDirHolds(t, dir, []);
});

test('a server that sends headers and then nothing hits the idle timeout', async (t) => {
  const { base } = await startServer(t);
  const dir = await tempDir(t);
  const started = Date.now();
  await assertFails(
    t,
    downloadVerified({ urls: [`${base}/hang`], sha256: payloadSha, dest: join(dir, 'm.onnx'), idleTimeoutMs: 200 }),
    [{ url: `${base}/hang`, reason: /^no data for 0\.2 s$/ }],
  );
  t.true(Date.now() - started < 5000);
  await assertDirHolds(t, dir, []);
});

test('a slow but never idle transfer hits the whole-transfer timeout, not the idle one', async (t) => {
  const { base } = await startServer(t);
  const dir = await tempDir(t);
  await assertFails(
    t,
    downloadVerified({
      urls: [`${base}/drip`],
      sha256: payloadSha,
      dest: join(dir, 'm.onnx'),
      idleTimeoutMs: 250, // a byte arrives every 20 ms, so every chunk must restart the idle clock
      timeoutMs: 600,
    }),
    [{ url: `${base}/drip`, reason: /^timed out after 0\.6 s \(whole transfer\)$/ }],
  );
  await assertDirHolds(t, dir, []);
});

/** A drip server in its own process: it keeps sending while this process is stalled. Sends
 *  `chunks` single bytes, one every `everyMs`; resolves with its URL and the body's sha256. */
async function startChildDrip(t: ExecutionContext, chunks: number, everyMs: number) {
  const script = `
    const http = require('node:http');
    const server = http.createServer((req, res) => {
      res.writeHead(200, { 'content-length': ${chunks} });
      let sent = 0;
      const timer = setInterval(() => {
        res.write('x');
        if (++sent === ${chunks}) { clearInterval(timer); res.end(); }
      }, ${everyMs});
      res.on('close', () => clearInterval(timer));
    });
    server.listen(0, '127.0.0.1', () => process.stdout.write(server.address().port + '\\n'));`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => void child.kill());
  const port = await new Promise<number>((resolvePort, reject) => {
    child.stdout.once('data', (d: Buffer) => resolvePort(Number(d.toString().trim())));
    child.once('exit', (code) => reject(new Error(`drip server exited with ${code}`)));
  });
  const sha = createHash('sha256').update('x'.repeat(chunks)).digest('hex');
  return { url: `http://127.0.0.1:${port}/`, sha };
}

function blockEventLoop(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    // a GC pause or a starved CPU, as on a busy edge box
  }
}

test('a stall of this process longer than the idle timeout is not taken for a silent server', async (t) => {
  const { url, sha } = await startChildDrip(t, 40, 20); // 0.8 s, never idle on the server's side
  const dir = await tempDir(t);
  let stalled = false;
  const result = await downloadVerified({
    urls: [url],
    sha256: sha,
    dest: join(dir, 'm.onnx'),
    idleTimeoutMs: 200,
    onProgress: (received) => {
      // Stall once, outside the download's own callbacks: the bytes the server sent meanwhile
      // wait in the socket when the idle timer comes due.
      if (received >= 5 && !stalled) { // >=: under load several bytes may arrive as one chunk
        stalled = true;
        setImmediate(() => blockEventLoop(500));
      }
    },
  });
  t.true(stalled);
  t.is(result.bytes, 40);
});

test('follows a redirect chain with relative and absolute Locations', async (t) => {
  const { base, requests } = await startServer(t);
  const dir = await tempDir(t);
  const dest = join(dir, 'm.onnx');
  const result = await downloadVerified({ urls: [`${base}/r1`], sha256: payloadSha, dest });
  t.deepEqual(requests, ['/r1', '/r2', '/dir/r3', '/file']);
  t.is(result.url, `${base}/r1`, 'reports the listed mirror');
  t.true((await readFile(dest)).equals(payload));
});

test('redirect failures: loops, foreign schemes, and errors at the target are reported', async (t) => {
  const { base, requests } = await startServer(t);
  const dir = await tempDir(t);
  await assertFails(
    t,
    downloadVerified({
      urls: [`${base}/loop`, `${base}/to-ftp`, `${base}/redirect-to-404`],
      sha256: payloadSha,
      dest: join(dir, 'm.onnx'),
    }),
    [
      { url: `${base}/loop`, reason: /^too many redirects \(more than 5\)/ },
      { url: `${base}/to-ftp`, reason: /^redirect to unsupported scheme 'ftp:'/ },
      { url: `${base}/redirect-to-404`, reason: new RegExp(`^HTTP 404 Not Found \\(at ${base}/missing\\)$`) },
    ],
  );
  t.is(requests.filter((r) => r === '/loop').length, 6, 'the original request plus 5 redirects');
  await assertDirHolds(t, dir, []);
});

test('falls back to the next mirror after a failure', async (t) => {
  const { base, requests } = await startServer(t);
  const dir = await tempDir(t);
  const result = await downloadVerified({
    urls: ['ftp://127.0.0.1/file', 'not a url', `${base}/500`, `${base}/file`],
    sha256: payloadSha,
    dest: join(dir, 'm.onnx'),
  });
  t.is(result.url, `${base}/file`);
  t.deepEqual(requests, ['/500', '/file']);
  await assertDirHolds(t, dir, ['m.onnx']);
});

test('all mirrors failing lists each with its own reason', async (t) => {
  const { base } = await startServer(t);
  const dir = await tempDir(t);
  await assertFails(
    t,
    downloadVerified({
      urls: ['ftp://127.0.0.1/file', 'not a url', `${base}/500`, 'http://127.0.0.1:1/refused'],
      sha256: payloadSha,
      dest: join(dir, 'm.onnx'),
    }),
    [
      { url: 'ftp://127.0.0.1/file', reason: /^unsupported scheme 'ftp:'/ },
      { url: 'not a url', reason: /^invalid URL$/ },
      { url: `${base}/500`, reason: /^HTTP 500 Internal Server Error$/ },
      { url: 'http://127.0.0.1:1/refused', reason: /ECONNREFUSED/ },
    ],
  );
  await assertDirHolds(t, dir, []);
});

test('a cached file with the right hash is reused without any request', async (t) => {
  const { base, requests } = await startServer(t);
  const dir = await tempDir(t);
  const dest = join(dir, 'm.onnx');
  await downloadVerified({ urls: [`${base}/file`], sha256: payloadSha, dest });
  const mtime = statSync(dest).mtimeMs;
  const again = await downloadVerified({ urls: [`${base}/file`], sha256: payloadSha, dest });
  t.deepEqual(again, { path: dest, url: null, bytes: payload.length, sha256: payloadSha, cached: true });
  t.is(requests.length, 1);
  t.is(statSync(dest).mtimeMs, mtime);
});

test('a stale cached file is replaced; a failed download leaves it untouched', async (t) => {
  const { base, requests } = await startServer(t);
  const dir = await tempDir(t);
  const dest = join(dir, 'm.onnx');
  const old = Buffer.from('an older model version');
  await writeFile(dest, old);

  await assertFails(t, downloadVerified({ urls: [`${base}/truncated`], sha256: payloadSha, dest }), [
    { url: `${base}/truncated`, reason: /^truncated/ },
  ]);
  t.true((await readFile(dest)).equals(old), 'the old file survives a failed download');
  await assertDirHolds(t, dir, ['m.onnx']);

  const result = await downloadVerified({ urls: [`${base}/file`], sha256: payloadSha, dest });
  t.false(result.cached);
  t.true((await readFile(dest)).equals(payload));
  t.deepEqual(requests, ['/truncated', '/file']);
  await assertDirHolds(t, dir, ['m.onnx']);
});

test('maxBytes: refused up front when announced, aborted mid-stream when chunked', async (t) => {
  const { base } = await startServer(t);
  const dir = await tempDir(t);
  const dest = join(dir, 'm.onnx');
  const maxBytes = 100_000;
  await assertFails(t, downloadVerified({ urls: [`${base}/file`, `${base}/chunked`], sha256: payloadSha, dest, maxBytes }), [
    { url: `${base}/file`, reason: new RegExp(`^too large: server announces ${payload.length} bytes, maxBytes is ${maxBytes}$`) },
    { url: `${base}/chunked`, reason: new RegExp(`^exceeds maxBytes \\(more than ${maxBytes} bytes\\)$`) },
  ]);
  await assertDirHolds(t, dir, []);
});

test('expectedBytes: a different announced size fails before any body is stored', async (t) => {
  const { base } = await startServer(t);
  const dir = await tempDir(t);
  const expectedBytes = payload.length + 1;
  await assertFails(
    t,
    downloadVerified({ urls: [`${base}/file`], sha256: payloadSha, dest: join(dir, 'm.onnx'), expectedBytes }),
    [{ url: `${base}/file`, reason: new RegExp(`^size mismatch: server announces ${payload.length} bytes, expected ${expectedBytes}$`) }],
  );
  await assertDirHolds(t, dir, []);
});

test('aborting rejects with the signal reason, tries no further mirror, leaves nothing', async (t) => {
  const { base, requests } = await startServer(t);
  const dir = await tempDir(t);
  const controller = new AbortController();
  const reason = new Error('shutting down');
  const pending = downloadVerified({ urls: [`${base}/hang`, `${base}/file`], sha256: payloadSha, dest: join(dir, 'm.onnx'), signal: controller.signal });
  // Abort once the server has the request (a fixed delay races on a loaded machine).
  for (let i = 0; i < 500 && requests.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  controller.abort(reason);
  const err = await t.throwsAsync(pending);
  t.is(err, reason);
  t.deepEqual(requests, ['/hang']);
  await assertDirHolds(t, dir, []);
});

test('an exception from onProgress stops the download and is rethrown', async (t) => {
  const { base } = await startServer(t);
  const dir = await tempDir(t);
  const boom = new Error('progress display broke');
  const err = await t.throwsAsync(
    downloadVerified({
      urls: [`${base}/file`, `${base}/chunked`],
      sha256: payloadSha,
      dest: join(dir, 'm.onnx'),
      onProgress: () => {
        throw boom;
      },
    }),
  );
  t.is(err, boom);
  await assertDirHolds(t, dir, []);
});

test('old .part leftovers of a killed process are swept, young ones are kept', async (t) => {
  const { base } = await startServer(t);
  const dir = await tempDir(t);
  const oldPart = join(dir, 'm.onnx.part-deadbeef0000');
  const youngPart = join(dir, 'm.onnx.part-0123456789ab');
  await writeFile(oldPart, 'half');
  await writeFile(youngPart, 'in progress elsewhere');
  const twoDaysAgo = new Date(Date.now() - 48 * 3600_000);
  await utimes(oldPart, twoDaysAgo, twoDaysAgo);
  await downloadVerified({ urls: [`${base}/file`], sha256: payloadSha, dest: join(dir, 'm.onnx') });
  await assertDirHolds(t, dir, ['m.onnx', 'm.onnx.part-0123456789ab']);
});

test('bad options are rejected with the option named', async (t) => {
  const dest = join(tmpdir(), 'never-written');
  await t.throwsAsync(downloadVerified({ urls: [], sha256: payloadSha, dest }), { message: /urls must be a non-empty array/ });
  await t.throwsAsync(downloadVerified({ urls: ['http://x/'], sha256: 'abc', dest }), { message: /sha256 must be 64 hex digits \(got "abc"\)/ });
  await t.throwsAsync(downloadVerified({ urls: ['http://x/'], sha256: payloadSha, dest, idleTimeoutMs: 0 }), { message: /idleTimeoutMs/ });
  await t.throwsAsync(downloadVerified({ urls: ['http://x/'], sha256: payloadSha, dest, maxBytes: 10, expectedBytes: 11 }), {
    message: /expectedBytes \(11\) exceeds maxBytes \(10\)/,
  });
  t.false(existsSync(dest));
});

test('a dest that is a directory is a clear error, not a download', async (t) => {
  const { base, requests } = await startServer(t);
  const dir = await tempDir(t);
  await t.throwsAsync(downloadVerified({ urls: [`${base}/file`], sha256: payloadSha, dest: dir }), {
    message: `${dir} exists and is not a regular file`,
  });
  t.deepEqual(requests, []);
});

test('sha256File hashes a file by streaming', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'f.bin');
  await writeFile(path, payload);
  t.is(await sha256File(path), payloadSha);
  await writeFile(path, '');
  t.is(await sha256File(path), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
});

test('cacheDir: SHELFWATCH_CACHE, then absolute XDG_CACHE_HOME, then ~/.cache', async (t) => {
  const dir = await tempDir(t);
  t.is(resolveCacheDir({ env: { SHELFWATCH_CACHE: '/srv/sw', XDG_CACHE_HOME: '/xdg' }, homeDir: '/home/u' }), '/srv/sw');
  t.is(resolveCacheDir({ env: { SHELFWATCH_CACHE: '', XDG_CACHE_HOME: '/xdg' }, homeDir: '/home/u' }), '/xdg/shelfwatch');
  t.is(resolveCacheDir({ env: { XDG_CACHE_HOME: 'relative/ignored' }, homeDir: '/home/u' }), '/home/u/.cache/shelfwatch');
  t.is(resolveCacheDir({ env: {}, homeDir: '/home/u' }), '/home/u/.cache/shelfwatch');

  const made = cacheDir({ env: { XDG_CACHE_HOME: join(dir, 'xdg') } });
  t.is(made, join(dir, 'xdg', 'shelfwatch'));
  t.true(statSync(made).isDirectory(), 'created on demand');
  t.is(cacheDir({ env: { XDG_CACHE_HOME: join(dir, 'xdg') } }), made, 'idempotent');
});

test('selectBackbone: a failed download says how to bring the file in by hand, and caches nothing', async (t) => {
  const { base } = await startServer(t);
  const dir = await tempDir(t);
  const descriptorFile = join(dir, 'mine.json');
  await writeFile(descriptorFile, JSON.stringify({ ...MOBILENETV2_INT8, id: 'mine', fileName: 'mine.onnx', urls: [`${base}/missing`] }));
  const cache = join(dir, 'cache');
  const err = await t.throwsAsync(selectBackbone({ descriptor: descriptorFile, env: { SHELFWATCH_CACHE: cache } }), { instanceOf: BackboneError });
  t.regex(err!.message, new RegExp(`download of .*mine\\.onnx failed from every URL:\\n  - ${base}/missing: HTTP 404`));
  t.true(err!.message.includes(`copy mine.onnx (sha256 ${MOBILENETV2_INT8.sha256}) onto this machine and pass --backbone <file>, set SHELFWATCH_BACKBONE=<file>, or place it at ${join(cache, 'backbones', 'mine.onnx')}`), err!.message);
  t.true(err!.cause instanceof DownloadError);
  t.false(existsSync(join(cache, 'backbones', 'mine.onnx')));
});

// ---- selectBackbone and a damaged cached backbone (served by a local 127.0.0.1 server) -------

/** Serves the real shared backbone at /backbone (everything else 404); counts requests. */
async function startBackboneServer(t: ExecutionContext, bytes: Buffer) {
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    requests.push(req.url ?? '/');
    if (req.url === '/backbone') res.writeHead(200, { 'content-length': bytes.length }).end(bytes);
    else res.writeHead(404).end('not here');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  }));
  return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests };
}

/** A descriptor file for the shared backbone under another id, fetched from `url`, and a cache holding `cachedBytes`. */
async function damagedCache(t: ExecutionContext, url: string, cachedBytes: Buffer) {
  const dir = await tempDir(t);
  const descriptorFile = join(dir, 'mine.json');
  await writeFile(descriptorFile, JSON.stringify({ ...MOBILENETV2_INT8, id: 'mine', fileName: 'mine.onnx', urls: [url] }));
  const cache = join(dir, 'cache');
  const cached = join(cache, 'backbones', 'mine.onnx');
  await mkdir(join(cache, 'backbones'), { recursive: true });
  await writeFile(cached, cachedBytes);
  return { descriptorFile, env: { SHELFWATCH_CACHE: cache }, cached, cacheDir: join(cache, 'backbones') };
}

const backboneTest = sharedAvailable() ? test : test.skip;

backboneTest('selectBackbone: a damaged cached backbone is fetched again and replaced (fit/eval fetch implicitly)', async (t) => {
  const good = await readFile(BACKBONE_PATH);
  const { base, requests } = await startBackboneServer(t, good);
  const c = await damagedCache(t, `${base}/backbone`, good.subarray(0, 100_000));
  const loaded = await selectBackbone({ descriptor: c.descriptorFile, env: c.env });
  t.is(loaded.path, c.cached);
  t.is(await sha256File(c.cached), MOBILENETV2_INT8.sha256, 'the cached file is whole again');
  t.deepEqual(requests, ['/backbone']);
  await assertDirHolds(t, c.cacheDir, ['mine.onnx']);
  // Now verified: no more network.
  await selectBackbone({ descriptor: c.descriptorFile, env: c.env });
  t.is(requests.length, 1);
});

backboneTest('selectBackbone without fetching: a damaged cached backbone is named, with `shelfwatch backbone fetch`, which replaces it', async (t) => {
  const good = await readFile(BACKBONE_PATH);
  const { base, requests } = await startBackboneServer(t, good);
  const damaged = Buffer.from(good);
  damaged[damaged.length >> 1] ^= 0xff; // one flipped byte: same size
  const c = await damagedCache(t, `${base}/backbone`, damaged);
  const err = await t.throwsAsync(selectBackbone({ descriptor: c.descriptorFile, env: c.env, fetch: false }), { instanceOf: BackboneError });
  t.true(err!.message.includes(`the cached ${c.cached} is damaged (sha256 `), err!.message);
  t.regex(err!.message, /run `shelfwatch backbone fetch` to replace it/);
  t.deepEqual(requests, [], 'no implicit download');
  t.true((await readFile(c.cached)).equals(damaged), 'left as it was');
  // What `shelfwatch backbone fetch` runs: the bad cached file is replaced.
  const fetched = await fetchBackbone(await resolveDescriptor(c.descriptorFile), { env: c.env });
  t.false(fetched.cached);
  t.is(await sha256File(c.cached), MOBILENETV2_INT8.sha256);
  t.is((await selectBackbone({ descriptor: c.descriptorFile, env: c.env, fetch: false })).path, c.cached);
  await assertDirHolds(t, c.cacheDir, ['mine.onnx']);
});

backboneTest('selectBackbone: a damaged cached backbone that cannot be fetched again says so and how to bring it in; the file is untouched', async (t) => {
  const good = await readFile(BACKBONE_PATH);
  const { base } = await startBackboneServer(t, good);
  const c = await damagedCache(t, `${base}/missing`, good.subarray(0, 100_000));
  const err = await t.throwsAsync(selectBackbone({ descriptor: c.descriptorFile, env: c.env }), { instanceOf: BackboneError });
  t.true(err!.message.includes(`the cached ${c.cached} is damaged`), err!.message);
  t.regex(err!.message, new RegExp(`${base}/missing: HTTP 404`));
  t.true(err!.message.includes(`or place it at ${c.cached} (replacing the damaged file)`), err!.message);
  t.true(err!.cause instanceof DownloadError);
  t.is((await readFile(c.cached)).length, 100_000, 'the damaged file stays until a verified one replaces it');
  await assertDirHolds(t, c.cacheDir, ['mine.onnx']);
});

backboneTest('selectBackbone: a wrong file the user names (--backbone / SHELFWATCH_BACKBONE) is refused, never fetched over', async (t) => {
  const good = await readFile(BACKBONE_PATH);
  const { base, requests } = await startBackboneServer(t, good);
  const c = await damagedCache(t, `${base}/backbone`, good);
  const mine = join(c.cacheDir, 'user-given.onnx');
  await writeFile(mine, good.subarray(0, 100_000));
  await t.throwsAsync(selectBackbone({ descriptor: c.descriptorFile, env: c.env, file: mine }), { instanceOf: BackboneError, message: /user-given\.onnx: sha256 .* \(wrong or corrupted file\)/ });
  await t.throwsAsync(selectBackbone({ descriptor: c.descriptorFile, env: { ...c.env, SHELFWATCH_BACKBONE: mine } }), { message: /wrong or corrupted file/ });
  t.deepEqual(requests, []);
  t.is((await readFile(mine)).length, 100_000);
});

test('backbone fetch interrupted by Ctrl-C exits 130 and leaves no .part file in the cache', async (t) => {
  const { base } = await startServer(t);
  const cache = await tempDir(t);
  const child = spawn(process.execPath, ['--import', 'tsx', 'agent/cli.ts', 'backbone', 'fetch', '--url', `${base}/drip`], {
    env: { ...process.env, SHELFWATCH_CACHE: cache },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const backbones = join(cache, 'backbones');
  const parts = async () => (await readdir(backbones).catch(() => [] as string[])).filter((n) => n.includes('.part-'));
  for (let i = 0; i < 300 && (await parts()).length === 0; i++) await new Promise((r) => setTimeout(r, 50));
  t.is((await parts()).length, 1, 'the download had started');
  child.kill('SIGINT');
  t.is(await exited, 130);
  t.regex(stderr, /backbone fetch interrupted \(SIGINT\): nothing was cached/);
  t.deepEqual(await readdir(backbones), [], 'no .part file, no cache entry');
});
