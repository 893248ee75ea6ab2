/**
 * A failed download attempt closes its connection (agent/download.ts): a response left unread
 * (an error status with a body, a size refused up front, a temp file that cannot be created)
 * kept its socket open, and with it the process — `shelfwatch backbone fetch` printed its error
 * and then did not exit until the server gave up on the connection.
 */
import test from 'ava';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { downloadVerified } from '../agent/download.js';

/** Larger than the socket buffers, so that an unread body keeps the server writing. */
const body = Buffer.alloc(8 * 1024 * 1024, 7);

async function server(t: import('ava').ExecutionContext) {
  const sockets = new Set<Socket>();
  const closed: Array<Promise<void>> = [];
  const srv = http.createServer((req, res) => {
    res.writeHead(req.url === '/404' ? 404 : 200, { 'content-length': body.length });
    res.end(body);
  });
  srv.on('connection', (s) => {
    sockets.add(s);
    closed.push(new Promise((resolve) => s.once('close', () => resolve())));
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    srv.closeAllConnections();
    srv.close(() => resolve());
  }));
  /** Resolves true once every connection so far is closed, false if one is still open after `ms`. */
  const allClosed = async (ms: number) => {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<false>((resolve) => { timer = setTimeout(() => resolve(false), ms); });
    const r = await Promise.race([Promise.all(closed).then(() => true as const), late]);
    clearTimeout(timer);
    return r;
  };
  return { base: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, allClosed, count: () => closed.length };
}

async function tempDir(t: import('ava').ExecutionContext) {
  const dir = await mkdtemp(join(tmpdir(), 'sw-dl-sock-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('an error status with a body, and a size refused up front, close their connection', async (t) => {
  const { base, allClosed, count } = await server(t);
  const dir = await tempDir(t);
  await t.throwsAsync(downloadVerified({ urls: [`${base}/404`], sha256: 'a'.repeat(64), dest: join(dir, 'a.onnx') }), { message: /HTTP 404/ });
  await t.throwsAsync(downloadVerified({ urls: [`${base}/file`], sha256: 'a'.repeat(64), dest: join(dir, 'b.onnx'), maxBytes: 1000 }), { message: /too large/ });
  t.is(count(), 2);
  // Generous: the close follows at once; the old code never closed them (the server kept writing).
  t.true(await allClosed(10_000), 'every connection is closed after the attempt failed');
  t.deepEqual(await readdir(dir), []);
});

test('a local failure (the temp file cannot be created) closes the connection it had opened', async (t) => {
  const { base, allClosed, count } = await server(t);
  const dir = await tempDir(t);
  // `<dest>.part-<random>` is longer than a file name may be: open() fails with ENAMETOOLONG.
  const dest = join(dir, 'x'.repeat(250));
  await t.throwsAsync(downloadVerified({ urls: [`${base}/file`], sha256: 'a'.repeat(64), dest }), { message: /^cannot create .*ENAMETOOLONG/ });
  t.is(count(), 1);
  t.true(await allClosed(10_000), 'the connection is closed after the local error');
});
