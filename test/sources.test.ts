import test from 'ava';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile, appendFile, readdir, mkdir } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { filter, firstValueFrom, Subject, take, timeout, toArray, type Observable } from 'rxjs';
import sharp from 'sharp';
import type { Frame } from '../pipelines/types.js';
import {
  Backoff,
  checkImage,
  createSource,
  FolderWatchSource,
  HttpSnapshotSource,
  JpegSplitter,
  ReplaySource,
  type SourceState,
  type SourceStatus,
} from '../agent/sources/index.js';
import { globToRegExp } from '../agent/sources/file-pattern.js';

// ---------- fixtures ----------

/** Deterministic PRNG so chunk boundaries are reproducible. */
function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function noiseJpeg(width: number, height: number, seed: number, progressive = false): Promise<Buffer> {
  const rnd = mulberry32(seed);
  const raw = Buffer.alloc(width * height * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = Math.floor(rnd() * 256);
  return sharp(raw, { raw: { width, height, channels: 3 } }).jpeg({ quality: 95, progressive }).toBuffer();
}

/** A JPEG with an APP1 segment that holds an embedded "thumbnail" — an FF D8 … FF D9 inside a segment. */
function withEmbeddedThumbnail(jpeg: Buffer, thumbnail: Buffer): Buffer {
  const payload = Buffer.concat([Buffer.from('Exif\0\0'), thumbnail]);
  const header = Buffer.from([0xff, 0xe1, 0, 0]);
  header.writeUInt16BE(payload.length + 2, 2);
  return Buffer.concat([jpeg.subarray(0, 2), header, payload, jpeg.subarray(2)]);
}

const smallJpeg = await sharp({ create: { width: 32, height: 24, channels: 3, background: '#c03030' } }).jpeg().toBuffer();
const smallPng = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#30c030' } }).png().toBuffer();

function waitForStatus(status$: Observable<SourceStatus>, pred: (s: SourceStatus) => boolean, ms = 5000): Promise<SourceStatus> {
  return firstValueFrom(status$.pipe(filter(pred), timeout(ms)));
}

/** Status is updated just before the frame is handed on: give the consumer its turn. */
const tick = () => new Promise<void>((r) => setImmediate(r));

function fakeClock(start = 1_700_000_000_000, step = 1000): () => number {
  let t = start - step;
  return () => (t += step);
}

// ---------- JPEG splitter ----------

test('splitter: concatenated JPEGs split at arbitrary chunk boundaries come out byte-identical', async (t) => {
  const baseline = await noiseJpeg(64, 48, 1);
  const progressive = await noiseJpeg(48, 40, 2, true); // several SOS segments
  const embedded = withEmbeddedThumbnail(await noiseJpeg(40, 32, 3), smallJpeg); // FF D9 inside APP1
  t.true(embedded.includes(Buffer.from([0xff, 0xd9])) && embedded.indexOf(Buffer.from([0xff, 0xd9])) < embedded.length - 2);
  t.true(baseline.includes(Buffer.from([0xff, 0x00])), 'noise makes byte stuffing in the entropy data');
  const images = [baseline, progressive, embedded, smallJpeg, baseline];
  const garbage = Buffer.from([0x00, 0xff, 0x12, 0xff, 0x00]);
  const stream = Buffer.concat(images.flatMap((img) => [img, garbage]));

  for (const seed of [1, 2, 3]) {
    const rnd = mulberry32(seed);
    const splitter = new JpegSplitter();
    const out: Buffer[] = [];
    for (let i = 0; i < stream.length; ) {
      const n = 1 + Math.floor(rnd() * 700);
      out.push(...splitter.push(stream.subarray(i, i + n)));
      i += n;
    }
    t.is(out.length, images.length, `seed ${seed}`);
    out.forEach((img, i) => t.true(img.equals(images[i]), `seed ${seed} image ${i}`));
    t.is(splitter.stats.skippedBytes, garbage.length * images.length);
  }

  const byByte = new JpegSplitter();
  const out: Buffer[] = [];
  for (let i = 0; i < stream.length; i++) out.push(...byByte.push(stream.subarray(i, i + 1)));
  t.is(out.length, images.length);
  out.forEach((img, i) => t.true(img.equals(images[i]), `byte-by-byte image ${i}`));
  t.is(byByte.buffered, 0);
});

test('splitter: a truncated image is dropped and the next one is found', async (t) => {
  const a = await noiseJpeg(32, 32, 4);
  const b = await noiseJpeg(32, 32, 5);
  const splitter = new JpegSplitter();
  const out = splitter.push(Buffer.concat([a.subarray(0, Math.floor(a.length * 0.6)), b]));
  t.is(out.length, 1);
  t.true(out[0].equals(b));
  t.is(splitter.stats.corrupt, 1);
});

test('splitter: an image over maxFrameBytes is dropped, memory stays bounded, later images pass', async (t) => {
  const big = await noiseJpeg(128, 128, 6);
  const splitter = new JpegSplitter(8 * 1024);
  t.true(big.length > 8 * 1024);
  const out: Buffer[] = [];
  const stream = Buffer.concat([big, smallJpeg]);
  for (let i = 0; i < stream.length; i += 1000) {
    out.push(...splitter.push(stream.subarray(i, i + 1000)));
    t.true(splitter.buffered <= 8 * 1024 + 1000);
  }
  t.is(out.length, 1);
  t.true(out[0].equals(smallJpeg));
  t.is(splitter.stats.oversized, 1);
});

// ---------- image check ----------

test('checkImage recognises image formats and names what a non-image is', async (t) => {
  t.is(checkImage(smallJpeg, 'x'), 'jpeg');
  t.is(checkImage(smallPng, 'x'), 'png');
  t.is(checkImage(await sharp(smallPng).webp().toBuffer(), 'x'), 'webp');
  t.is(checkImage(await sharp(smallPng).tiff().toBuffer(), 'x'), 'tiff');
  t.throws(() => checkImage(Buffer.from('<html>login</html>'), 'GET http://cam/snap', 'text/html; charset=utf-8'), {
    message: /GET http:\/\/cam\/snap answered text\/html, not an image \(body starts with "<html>login<\/html>"\)/,
  });
  t.throws(() => checkImage(smallJpeg.subarray(0, smallJpeg.length - 40), '/drop/a.jpg'), { message: /\/drop\/a\.jpg is a truncated JPEG/ });
  t.throws(() => checkImage(Buffer.alloc(0), '/drop/b.jpg'), { message: '/drop/b.jpg is empty, not an image' });
});

test('backoff grows exponentially to the cap, jitters down, and resets', (t) => {
  const b = new Backoff({ initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5, random: () => 0 });
  t.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next(), b.next()], [100, 200, 400, 800, 1000, 1000]);
  t.is(b.attempts, 6);
  b.reset();
  t.is(b.next(), 100);
  const jittered = new Backoff({ initialMs: 100, jitter: 0.5, random: () => 0.999 });
  t.is(jittered.next(), 50);
  t.throws(() => new Backoff({ initialMs: 100, maxMs: 50 }), { message: /maxMs \(50\) must be >= initialMs \(100\)/ });
});

test('file pattern globs match base names, case-insensitively', (t) => {
  const re = globToRegExp('*.{jpg,jpeg}');
  t.true(re.test('IMG_0001.JPG'));
  t.true(re.test('a.jpeg'));
  t.false(re.test('a.jpg.part'));
  t.true(globToRegExp('cam?-[!x]*.png').test('cam1-a.png'));
  t.false(globToRegExp('cam?-[!x]*.png').test('cam1-x.png'));
  t.throws(() => globToRegExp('a/*.jpg'), { message: /must match a file name/ });
});

// ---------- http-snapshot ----------

interface SnapServer {
  url: string;
  server: Server;
  hits: Record<string, number>;
  flakyFailures: number;
  closedHang: Promise<void>;
}

async function startSnapServer(): Promise<SnapServer> {
  let onHangClosed!: () => void;
  const state: SnapServer = {
    url: '',
    server: undefined as unknown as Server,
    hits: {},
    flakyFailures: 0,
    closedHang: new Promise((r) => (onHangClosed = r)),
  };
  const digestNonce = 'n0nce';
  state.server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '').split('?')[0];
    state.hits[path] = (state.hits[path] ?? 0) + 1;
    switch (path) {
      case '/good':
        res.writeHead(200, { 'content-type': 'image/jpeg' }).end(smallJpeg);
        return;
      case '/png':
        res.writeHead(200, { 'content-type': 'image/png' }).end(smallPng);
        return;
      case '/500':
        res.writeHead(500, 'Internal Server Error').end('boom');
        return;
      case '/html':
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end('<!DOCTYPE html><html><body>Please log in</body></html>');
        return;
      case '/hang':
        req.on('close', onHangClosed);
        return; // accept and never answer
      case '/trickle':
        res.writeHead(200, { 'content-type': 'image/jpeg' });
        res.write(smallJpeg.subarray(0, 20)); // headers and a few bytes, then silence
        return;
      case '/big': {
        res.writeHead(200, { 'content-type': 'image/jpeg' }); // chunked: no content-length to check up front
        res.write(smallJpeg.subarray(0, 2));
        res.end(Buffer.alloc(200_000));
        return;
      }
      case '/flaky':
        if (state.flakyFailures > 0) {
          state.flakyFailures--;
          res.writeHead(503, 'Service Unavailable').end();
        } else res.writeHead(200, { 'content-type': 'image/jpeg' }).end(smallJpeg);
        return;
      case '/digest': {
        // Independent check of RFC 7616 (MD5, qop=auth) as a camera does it.
        const auth = req.headers.authorization ?? '';
        const p: Record<string, string> = {};
        for (const m of auth.matchAll(/(\w+)=(?:"([^"]*)"|([^,\s]+))/g)) p[m[1]] = m[2] ?? m[3];
        const md5 = (s: string) => createHash('md5').update(s).digest('hex');
        const ha1 = md5(`admin:cam:s3cret`);
        const ha2 = md5(`GET:${p.uri}`);
        const ok = auth.startsWith('Digest ') && p.username === 'admin' && p.nonce === digestNonce && p.uri === req.url &&
          p.response === md5(`${ha1}:${p.nonce}:${p.nc}:${p.cnonce}:${p.qop}:${ha2}`);
        if (!ok) {
          res.writeHead(401, { 'www-authenticate': `Digest realm="cam", qop="auth", nonce="${digestNonce}", opaque="op"` }).end();
        } else res.writeHead(200, { 'content-type': 'image/jpeg' }).end(smallJpeg);
        return;
      }
      default:
        res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => state.server.listen(0, '127.0.0.1', r));
  state.url = `http://127.0.0.1:${(state.server.address() as AddressInfo).port}`;
  return state;
}

async function stopServer(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
}

test('http-snapshot: a good JPEG and PNG become frames with stable ids', async (t) => {
  const srv = await startSnapServer();
  t.teardown(() => stopServer(srv.server));
  const clock = fakeClock(1_700_000_000_000, 500);
  const src = new HttpSnapshotSource('aisle3', { type: 'http-snapshot', url: `${srv.url}/good` }, { clock });
  const f0 = await src.snapshot();
  t.is(f0.id, 'aisle3-1700000000000-0');
  t.is(f0.camera, 'aisle3');
  t.is(f0.sequence, 0);
  t.is(f0.origin, `${srv.url}/good`);
  t.true(f0.data.equals(smallJpeg));
  const pngSrc = new HttpSnapshotSource('aisle3', { type: 'http-snapshot', url: `${srv.url}/png` }, { clock });
  t.true((await pngSrc.snapshot()).data.equals(smallPng));
  const f1 = await src.snapshot();
  t.is(f1.id, 'aisle3-1700000001000-1');
  t.like(src.status(), { frames: 2, errors: 0, lastFrameAt: 1_700_000_001_000 });
});

test('http-snapshot: 500, HTML login page, hang, trickle, oversize and refused connections give clear errors', async (t) => {
  const srv = await startSnapServer();
  t.teardown(() => stopServer(srv.server));
  const snap = (path: string, extra: object = {}) =>
    new HttpSnapshotSource('cam', { type: 'http-snapshot', url: `${srv.url}${path}`, timeoutMs: 400, ...extra }).snapshot();
  await t.throwsAsync(snap('/500'), { message: `GET ${srv.url}/500 answered HTTP 500 Internal Server Error` });
  await t.throwsAsync(snap('/html'), { message: /answered text\/html, not an image \(body starts with "<!DOCTYPE html>/ });
  const started = Date.now();
  await t.throwsAsync(snap('/hang'), { message: `GET ${srv.url}/hang timed out after 400 ms` });
  t.true(Date.now() - started < 3000);
  await t.throwsAsync(snap('/trickle'), { message: `GET ${srv.url}/trickle timed out after 400 ms` });
  await t.throwsAsync(snap('/big', { maxBytes: 100_000 }), { message: `GET ${srv.url}/big: body exceeds maxBytes 100000` });
  await t.throwsAsync(snap('/404'), { message: /answered HTTP 404/ });
  const closed = await startSnapServer();
  await stopServer(closed.server);
  await t.throwsAsync(snap.call(null, '/good', { url: `${closed.url}/good` }), { message: /^GET http:\/\/127\.0\.0\.1:\d+\/good failed: .*ECONNREFUSED/ });
});

test('http-snapshot: errors are counted and logged with the camera', async (t) => {
  const srv = await startSnapServer();
  t.teardown(() => stopServer(srv.server));
  const logs: Array<[string, string, Record<string, unknown> | undefined]> = [];
  const src = new HttpSnapshotSource('cam7', { type: 'http-snapshot', url: `${srv.url}/500` }, { logger: (l, m, f) => logs.push([l, m, f]) });
  await t.throwsAsync(src.snapshot());
  await t.throwsAsync(src.snapshot());
  t.like(src.status(), { errors: 2, frames: 0, lastError: `GET ${srv.url}/500 answered HTTP 500 Internal Server Error` });
  const warn = logs.find(([l]) => l === 'warn');
  t.truthy(warn);
  t.like(warn![2], { camera: 'cam7', source: 'http-snapshot' });
});

test('http-snapshot: poll retries failures with backoff, folds triggers, recovers and resets', async (t) => {
  const srv = await startSnapServer();
  t.teardown(() => stopServer(srv.server));
  srv.flakyFailures = 3;
  const src = new HttpSnapshotSource('cam', { type: 'http-snapshot', url: `${srv.url}/flaky` }, { backoff: { initialMs: 60, jitter: 0 } });
  const states: SourceState[] = [];
  const statusSub = src.status$.subscribe((s) => {
    if (states.at(-1) !== s.state) states.push(s.state);
  });
  t.teardown(() => statusSub.unsubscribe());
  const trigger = new Subject<void>();
  const frames: Frame[] = [];
  const sub = src.poll(trigger).subscribe((f) => frames.push(f));
  t.teardown(() => sub.unsubscribe());
  trigger.next();
  await waitForStatus(src.status$, (s) => s.state === 'reconnecting');
  trigger.next(); // while a retry is pending: folded into it
  trigger.next();
  await waitForStatus(src.status$, (s) => s.state === 'running');
  await tick();
  t.is(frames.length, 1);
  t.is(srv.hits['/flaky'], 4, 'one request per attempt, none for folded triggers');
  t.like(src.status(), { frames: 1, errors: 3, reconnects: 3, state: 'running' });
  t.deepEqual(states, ['stopped', 'starting', 'reconnecting', 'running']);

  // After the success the backoff starts over: one more failure waits initialMs again.
  srv.flakyFailures = 1;
  const before = Date.now();
  trigger.next();
  await firstValueFrom(src.status$.pipe(filter((s) => s.frames === 2), timeout(2000)));
  t.true(Date.now() - before < 60 * 4, 'retry after a reset waits ~initialMs, not the grown delay');
  sub.unsubscribe();
  t.is(src.status().state, 'stopped');
});

test('http-snapshot: unsubscribing aborts the request in flight', async (t) => {
  const srv = await startSnapServer();
  t.teardown(() => stopServer(srv.server));
  const src = new HttpSnapshotSource('cam', { type: 'http-snapshot', url: `${srv.url}/hang`, timeoutMs: 60_000 });
  const trigger = new Subject<void>();
  const sub = src.poll(trigger).subscribe();
  trigger.next();
  // Wait until the server has the request (a fixed sleep races on a loaded machine).
  for (let i = 0; i < 500 && !srv.hits['/hang']; i++) await sleep(10);
  t.is(srv.hits['/hang'], 1);
  sub.unsubscribe();
  await srv.closedHang; // the server saw the connection go away
  t.is(src.status().state, 'stopped');
  t.is(src.status().errors, 0, 'an abort on unsubscribe is not an error');
});

test('http-snapshot: credentials in the URL answer a Digest challenge and never appear in the origin', async (t) => {
  const srv = await startSnapServer();
  t.teardown(() => stopServer(srv.server));
  const url = srv.url.replace('http://', 'http://admin:s3cret@') + '/digest?ch=1';
  const src = new HttpSnapshotSource('cam', { type: 'http-snapshot', url });
  const frame = await src.snapshot();
  t.true(frame.data.equals(smallJpeg));
  t.is(frame.origin, srv.url.replace('http://', 'http://admin:***@') + '/digest?ch=1');
  await src.snapshot(); // reuses the challenge (nc=2) without a new 401
  t.is(srv.hits['/digest'], 3);
  const wrong = new HttpSnapshotSource('cam', { type: 'http-snapshot', url: url.replace('s3cret', 'nope') });
  await t.throwsAsync(wrong.snapshot(), { message: /answered HTTP 401 Unauthorized \(check the credentials/ });
});

// ---------- folder-watch ----------

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-src-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('folder: only completely written files matching the pattern are emitted, in order', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'old.jpg'), smallJpeg); // existing: ignored by default
  const big = await noiseJpeg(96, 64, 7);
  const src = new FolderWatchSource('cam', { type: 'folder', path: dir, pattern: '*.jpg', stableMs: 250 }, { clock: fakeClock() });
  const frames: Frame[] = [];
  const sub = src.frames$.subscribe((f) => frames.push(f));
  t.teardown(() => sub.unsubscribe());
  await waitForStatus(src.status$, (s) => s.state === 'running');

  // Written slowly in four chunks, 100 ms apart (less than stableMs): must come out whole, once.
  const slow = join(dir, 'slow.jpg');
  const step = Math.ceil(big.length / 4);
  for (let i = 0; i < big.length; i += step) {
    await appendFile(slow, big.subarray(i, i + step));
    await sleep(100);
  }
  await writeFile(join(dir, 'notes.txt'), 'not for us');
  await writeFile(join(dir, 'other.png'), smallPng);
  await writeFile(join(dir, 'SECOND.JPG'), smallJpeg);
  await firstValueFrom(src.status$.pipe(filter((s) => s.frames >= 2), timeout(5000)));
  await sleep(400); // anything else would have arrived by now
  t.is(frames.length, 2);
  t.is(frames[0].origin, slow);
  t.true(frames[0].data.equals(big));
  t.true(frames[1].data.equals(smallJpeg));
  t.deepEqual(frames.map((f) => f.sequence), [0, 1]);
  t.is(src.status().errors, 0);
});

test('folder: includeExisting, deleteAfter, and a broken file is counted without stopping the watch', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'a.jpg'), smallJpeg);
  const src = createSource('cam', { type: 'folder', path: dir, includeExisting: true, deleteAfter: true, stableMs: 100 });
  t.is(src.mode, 'push');
  if (src.mode !== 'push') return;
  const frames: Frame[] = [];
  const sub = src.frames$.subscribe((f) => frames.push(f));
  t.teardown(() => sub.unsubscribe());
  await waitForStatus(src.status$, (s) => s.frames === 1);
  await writeFile(join(dir, 'login.jpg'), '<html>not an image</html>');
  await waitForStatus(src.status$, (s) => s.errors === 1);
  t.regex(src.status().lastError ?? '', /login\.jpg is text, not an image/);
  await writeFile(join(dir, 'b.png'), smallPng);
  await waitForStatus(src.status$, (s) => s.frames === 2);
  await sleep(50);
  t.deepEqual((await readdir(dir)).sort(), ['login.jpg'], 'read files were deleted, the broken one kept');
  t.true(frames[1].data.equals(smallPng));
});

test('folder: a missing directory is retried until it appears', async (t) => {
  const dir = join(await tempDir(t), 'later');
  const src = new FolderWatchSource('cam', { type: 'folder', path: dir, stableMs: 50 }, { backoff: { initialMs: 50, jitter: 0, maxMs: 100 } });
  const sub = src.frames$.subscribe();
  t.teardown(() => sub.unsubscribe());
  const s = await waitForStatus(src.status$, (x) => x.state === 'reconnecting');
  t.is(s.lastError, `folder source path ${dir} does not exist`);
  await mkdir(dir);
  await waitForStatus(src.status$, (x) => x.state === 'running');
  await writeFile(join(dir, 'x.jpg'), smallJpeg);
  await waitForStatus(src.status$, (x) => x.frames === 1);
  t.pass();
});

// ---------- replay ----------

test('replay: a directory plays in natural name order, loops, and skips unreadable files', async (t) => {
  const dir = await tempDir(t);
  const imgs = await Promise.all([10, 2, 1].map(async (n) => [n, await noiseJpeg(8, 8, n)] as const));
  for (const [n, img] of imgs) await writeFile(join(dir, `frame${n}.jpg`), img);
  await writeFile(join(dir, 'readme.txt'), 'ignored');
  const src = new ReplaySource('cam', { type: 'replay', dir, intervalMs: 0, loop: true }, { clock: fakeClock(1000, 1) });
  const frames = await firstValueFrom(src.frames$.pipe(take(7), toArray()));
  t.deepEqual(frames.map((f) => f.origin.split('/').at(-1)), ['frame1.jpg', 'frame2.jpg', 'frame10.jpg', 'frame1.jpg', 'frame2.jpg', 'frame10.jpg', 'frame1.jpg']);
  t.deepEqual(frames.map((f) => f.id).slice(0, 2), ['cam-1000-0', 'cam-1001-1']);
  t.true(frames[2].data.equals(imgs[0][1]));
  t.is(src.status().state, 'stopped');

  const list = new ReplaySource('cam', { type: 'replay', files: [join(dir, 'frame2.jpg'), join(dir, 'missing.jpg'), join(dir, 'frame1.jpg')], intervalMs: 0 });
  const listed = await firstValueFrom(list.frames$.pipe(toArray()));
  t.deepEqual(listed.map((f) => f.origin.split('/').at(-1)), ['frame2.jpg', 'frame1.jpg']);
  t.like(list.status(), { errors: 1, frames: 2, state: 'stopped' });
  t.regex(list.status().lastError ?? '', /replay file .*missing\.jpg does not exist/);
});

test('replay: intervalMs paces frames; onDemand emits one frame per demand', async (t) => {
  const dir = await tempDir(t);
  for (const n of [1, 2, 3]) await writeFile(join(dir, `f${n}.jpg`), smallJpeg);
  const paced = new ReplaySource('cam', { type: 'replay', dir, intervalMs: 120 });
  const started = Date.now();
  const frames = await firstValueFrom(paced.frames$.pipe(toArray()));
  t.is(frames.length, 3);
  t.true(Date.now() - started >= 230, 'two intervals between three frames');

  const pulled = new ReplaySource('cam', { type: 'replay', dir, intervalMs: 0 });
  const demand = new Subject<void>();
  const got: Frame[] = [];
  const sub = pulled.onDemand(demand).subscribe((f) => got.push(f));
  t.teardown(() => sub.unsubscribe());
  await sleep(50);
  t.is(got.length, 0, 'nothing without demand');
  demand.next();
  await waitForStatus(pulled.status$, (s) => s.frames === 1);
  await sleep(50);
  t.is(got.length, 1);
  demand.next();
  demand.next();
  await waitForStatus(pulled.status$, (s) => s.frames === 3);
  await tick();
  t.deepEqual(got.map((f) => f.origin.split('/').at(-1)), ['f1.jpg', 'f2.jpg', 'f3.jpg']);
});

test('replay: no images, or a loop where nothing is readable, fails the source with a clear error', async (t) => {
  const dir = await tempDir(t);
  const empty = new ReplaySource('cam', { type: 'replay', dir, intervalMs: 0 });
  await t.throwsAsync(firstValueFrom(empty.frames$), { message: `replay source of camera cam has no image files (${dir})` });
  t.is(empty.status().state, 'failed');
  const missing = new ReplaySource('cam', { type: 'replay', dir: join(dir, 'nope'), intervalMs: 0 });
  await t.throwsAsync(firstValueFrom(missing.frames$), { message: `replay dir ${join(dir, 'nope')} does not exist` });
  await writeFile(join(dir, 'bad.jpg'), 'text');
  const unreadable = new ReplaySource('cam', { type: 'replay', dir, intervalMs: 0, loop: true });
  await t.throwsAsync(firstValueFrom(unreadable.frames$), { message: /none of 1 files could be read/ });
  t.throws(() => new ReplaySource('cam', { type: 'replay', intervalMs: 0 }), { message: /needs exactly one of `files` or `dir`/ });
});

test('createSource rejects an unknown type naming the camera', (t) => {
  t.throws(() => createSource('cam9', { type: 'webcam' } as never), { message: 'camera cam9: unknown source type "webcam" (expected http-snapshot, stream, folder or replay)' });
});
