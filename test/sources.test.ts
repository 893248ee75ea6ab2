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

// ---------- review fixes: ffmpeg version, continuous maxFps, auth challenges, '%' in credentials, early folder files ----------
// (imports are hoisted: these are here to leave the tests above untouched)
import { writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { interval, tap } from 'rxjs';
import { capFpsKeepLatest, classifyInput, createCameraFeed, ffmpegArgs, parseFfmpegMajor } from '../agent/sources/index.js';
import { parseChallenge, parseChallenges, splitCredentials } from '../agent/sources/http-auth.js';

test('ffmpeg version: the major version is read from release, distro, n-prefixed and git builds', (t) => {
  const lines = (...l: string[]) => l.join('\n');
  t.is(parseFfmpegMajor(lines('ffmpeg version 4.4.2-0ubuntu0.22.04.1 Copyright (c) 2000-2021 the FFmpeg developers', 'built with gcc 11 (Ubuntu 11.2.0-19ubuntu1)', 'libavformat    58. 76.100 / 58. 76.100')), 4);
  t.is(parseFfmpegMajor('ffmpeg version 4.2.7-0ubuntu0.1 Copyright (c) 2000-2022 the FFmpeg developers'), 4);
  t.is(parseFfmpegMajor('ffmpeg version 5.1.9-0+deb12u1 Copyright (c) 2000-2026 the FFmpeg developers'), 5);
  t.is(parseFfmpegMajor('ffmpeg version n6.1 Copyright (c) 2000-2023 the FFmpeg developers'), 6);
  t.is(parseFfmpegMajor('ffmpeg version 7.0.2-static https://johnvansickle.com/ffmpeg/  Copyright (c) 2000-2024 the FFmpeg developers'), 7);
  t.is(parseFfmpegMajor('ffmpeg version 10.0 Copyright'), 10);
  // Git builds: no release number; libavformat tells 4.x from 5.0 on.
  t.is(parseFfmpegMajor(lines('ffmpeg version N-113411-g3c1d7a7e5c Copyright (c) 2000-2024 the FFmpeg developers', 'libavutil      58. 36.101 / 58. 36.101', 'libavformat    60. 20.100 / 60. 20.100')), 6);
  t.is(parseFfmpegMajor(lines('ffmpeg version N-100123-gabcdef0 Copyright (c) 2000-2020 the FFmpeg developers', 'libavformat    58. 64.100 / 58. 64.100')), 4);
  // Unknown: the caller treats it as a current ffmpeg. A date is not a version.
  t.is(parseFfmpegMajor('ffmpeg version N-111234-gdeadbeef Copyright (c) 2000-2023 the FFmpeg developers'), undefined);
  t.is(parseFfmpegMajor('ffmpeg version 2023-03-05-git-912ac82a3c-essentials_build-www.gyan.dev Copyright (c) 2000-2023'), undefined);
  t.is(parseFfmpegMajor(''), undefined);
  t.is(parseFfmpegMajor('avconv version 12.3'), undefined);
});

test('ffmpeg args: the RTSP timeout is -stimeout for ffmpeg 4.x and -timeout for 5+ or an unknown version; other inputs do not change', (t) => {
  const spec = { type: 'stream', input: 'rtsp://cam/stream1', fps: 2 } as const;
  const timeoutArgs = (major?: number) => {
    const args = ffmpegArgs(spec, 0, major);
    return args.slice(args.indexOf('-rtsp_transport'), args.indexOf('-i') + 2);
  };
  t.deepEqual(timeoutArgs(4), ['-rtsp_transport', 'tcp', '-stimeout', '10000000', '-i', 'rtsp://cam/stream1']);
  t.deepEqual(timeoutArgs(3), ['-rtsp_transport', 'tcp', '-stimeout', '10000000', '-i', 'rtsp://cam/stream1']);
  for (const major of [5, 6, 7, undefined]) t.deepEqual(timeoutArgs(major), ['-rtsp_transport', 'tcp', '-timeout', '10000000', '-i', 'rtsp://cam/stream1'], `ffmpeg ${major}`);
  t.deepEqual(ffmpegArgs(spec), ffmpegArgs(spec, 0, 5), 'no version given: the current options');
  t.true(ffmpegArgs({ ...spec, transport: 'udp' }, 0, 4).join(' ').includes('-rtsp_transport udp -stimeout 10000000 -i'));
  for (const input of ['http://cam/video.mjpg', '/dev/video0', './shelf.mp4', 'srt://cam:9000']) {
    t.deepEqual(ffmpegArgs({ type: 'stream', input }, 0, 4), ffmpegArgs({ type: 'stream', input }, 0, 6), input);
  }
});

test('stream inputs: V4L2 devices by number and by their stable udev names, URLs and files', (t) => {
  for (const input of ['/dev/video0', '/dev/video12', '/dev/v4l/by-id/usb-046d_HD_Webcam_C615-video-index0', '/dev/v4l/by-path/pci-0000:00:14.0-usb-0:1:1.0-video-index0']) {
    t.is(classifyInput(input), 'v4l2', input);
    t.true(ffmpegArgs({ type: 'stream', input }).join(' ').includes(`-f v4l2 -i ${input}`), input);
  }
  t.is(classifyInput('rtsp://cam/s'), 'rtsp');
  t.is(classifyInput('https://cam/v.mjpg'), 'http');
  t.is(classifyInput('srt://cam:9000'), 'url');
  for (const input of ['/dev/v4l/by-id', '/srv/videos/shelf.mp4', '/dev/video']) t.is(classifyInput(input), 'file', input);
});

test('continuous maxFps caps replay cameras: every file of the sequence, at least 1/maxFps apart', async (t) => {
  const dir = await tempDir(t);
  for (const n of [1, 2, 3, 4]) await writeFile(join(dir, `f${n}.jpg`), smallJpeg);
  const feed = createCameraFeed({ id: 'cam', source: { type: 'replay', dir, intervalMs: 0 }, continuous: { maxFps: 10 } });
  const times: number[] = [];
  const frames = await firstValueFrom(feed.scans$.pipe(tap(() => times.push(performance.now())), toArray(), timeout(10_000)));
  t.deepEqual(frames.map((f) => basename(f.origin)), ['f1.jpg', 'f2.jpg', 'f3.jpg', 'f4.jpg'], 'no file skipped');
  for (let i = 1; i < times.length; i++) t.true(times[i]! - times[i - 1]! >= 95, `gap ${i}: ${(times[i]! - times[i - 1]!).toFixed(1)} ms (cap 100 ms)`);

  // A longer intervalMs than the cap is kept.
  const slow = createCameraFeed({ id: 'cam', source: { type: 'replay', files: [join(dir, 'f1.jpg'), join(dir, 'f2.jpg')], intervalMs: 300 }, continuous: { maxFps: 10 } });
  const started = performance.now();
  t.is((await firstValueFrom(slow.scans$.pipe(toArray(), timeout(10_000)))).length, 2);
  t.true(performance.now() - started >= 290);
  t.throws(() => createCameraFeed({ id: 'cam', source: { type: 'replay', dir }, continuous: { maxFps: 0 } }), { message: /maxFps must be a positive number, got 0/ });
});

test('continuous maxFps caps folder cameras: a burst is thinned to its first and newest file, the newest after 1/maxFps', async (t) => {
  const dir = await tempDir(t);
  const feed = createCameraFeed({ id: 'cam', source: { type: 'folder', path: dir, pattern: '*.jpg', stableMs: 50 }, continuous: { maxFps: 1 } });
  const scans: Array<{ frame: Frame; at: number }> = [];
  const sub = feed.scans$.subscribe((frame) => scans.push({ frame, at: performance.now() }));
  t.teardown(() => sub.unsubscribe());
  await waitForStatus(feed.source.status$, (s) => s.state === 'running');
  for (const n of [1, 2, 3]) writeFileSync(join(dir, `burst${n}.jpg`), smallJpeg);
  await waitForStatus(feed.source.status$, (s) => s.frames === 3);
  await firstValueFrom(interval(20).pipe(filter(() => scans.length >= 2), timeout(3000)));
  await sleep(300); // nothing else may come
  t.deepEqual(scans.map((s) => s.frame.sequence), [0, 2], 'the first file at once, the newest (last emitted) once 1 s has passed');
  t.true(scans[1]!.at - scans[0]!.at >= 999, `${(scans[1]!.at - scans[0]!.at).toFixed(1)} ms apart`);

  // A file long after the last scan goes through at once.
  await sleep(800);
  const before = performance.now();
  await writeFile(join(dir, 'later.jpg'), smallJpeg);
  await firstValueFrom(interval(10).pipe(filter(() => scans.length >= 3), timeout(3000)));
  t.true(scans[2]!.at - before < 800, 'not held back');
  t.is(basename(scans[2]!.frame.origin), 'later.jpg');
});

test('capFpsKeepLatest: holds the newest value that came too soon, lets it through after 1/maxFps, and completes after it', async (t) => {
  const input = new Subject<string>();
  const out: Array<{ v: string; at: number }> = [];
  let completedAt = 0;
  const start = performance.now();
  input.pipe(capFpsKeepLatest(20)).subscribe({ next: (v) => out.push({ v, at: performance.now() - start }), complete: () => (completedAt = performance.now() - start) });
  input.next('a');
  input.next('b');
  input.next('c');
  input.complete();
  t.deepEqual(out.map((o) => o.v), ['a']);
  t.is(completedAt, 0, 'waits for the held value');
  await sleep(120);
  t.deepEqual(out.map((o) => o.v), ['a', 'c']);
  t.true(out[1]!.at - out[0]!.at >= 50);
  t.true(completedAt >= out[1]!.at);
  t.throws(() => capFpsKeepLatest(0), { message: /maxFps must be a positive number, got 0/ });
});

test('http-snapshot: a camera offering Digest and Basic (two WWW-Authenticate headers, either order) is answered with Digest and the Digest realm', async (t) => {
  const nonce = 'n1';
  const got: string[] = [];
  const md5 = (s: string) => createHash('md5').update(s).digest('hex');
  const server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0]!;
    const auth = req.headers.authorization ?? '';
    got.push(`${path} ${auth.split(' ')[0] || '-'}`);
    const p: Record<string, string> = {};
    for (const m of auth.matchAll(/(\w+)=(?:"([^"]*)"|([^,\s]+))/g)) p[m[1]!] = m[2] ?? m[3]!;
    const ha1 = md5('admin:Digest realm:s3cret');
    const ha2 = md5(`GET:${p.uri}`);
    if (auth.startsWith('Digest ') && p.realm === 'Digest realm' && p.response === md5(`${ha1}:${nonce}:${p.nc}:${p.cnonce}:${p.qop}:${ha2}`)) {
      res.writeHead(200, { 'content-type': 'image/jpeg' }).end(smallJpeg);
      return;
    }
    const digest = `Digest realm="Digest realm", nonce="${nonce}", qop="auth", opaque="o, p"`;
    const basic = 'Basic realm="Basic realm", charset="UTF-8"';
    res.writeHead(401, [['WWW-Authenticate', path === '/basic-first' ? basic : digest], ['WWW-Authenticate', path === '/basic-first' ? digest : basic]]).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => stopServer(server));
  const base = `http://admin:s3cret@127.0.0.1:${(server.address() as AddressInfo).port}`;
  for (const path of ['/digest-first', '/basic-first']) {
    const src = new HttpSnapshotSource('cam', { type: 'http-snapshot', url: `${base}${path}` });
    t.true((await src.snapshot()).data.equals(smallJpeg), path);
  }
  t.deepEqual(got, ['/digest-first -', '/digest-first Digest', '/basic-first -', '/basic-first Digest'], 'no Basic answer sent: the password never went out in clear');
});

test('WWW-Authenticate: joined challenges are split at each scheme, quoted commas kept, parameters per challenge', (t) => {
  // RFC 7235 §4.1's example, as fetch joins two headers.
  t.deepEqual(parseChallenges('Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"'), [
    { scheme: 'newauth', params: { realm: 'apps', type: '1', title: 'Login to "apps"' } },
    { scheme: 'basic', params: { realm: 'simple' } },
  ]);
  t.deepEqual(parseChallenges('Negotiate YIIabc==, Basic realm="a, b" , charset="UTF-8"'), [
    { scheme: 'negotiate', params: {}, token68: 'YIIabc==' },
    { scheme: 'basic', params: { realm: 'a, b', charset: 'UTF-8' } },
  ]);
  t.deepEqual(parseChallenges('Digest realm = "r" , nonce = abc'), [{ scheme: 'digest', params: { realm: 'r', nonce: 'abc' } }]);
  t.deepEqual(parseChallenges(''), []);
  // The answer: a supported Digest first, then Basic; parameters only those of the chosen challenge.
  t.deepEqual(parseChallenge('Basic realm="B", Digest realm="D", nonce="n", qop="auth"'), { scheme: 'digest', params: { realm: 'D', nonce: 'n', qop: 'auth' } });
  t.deepEqual(parseChallenge('Digest realm="D", nonce="n", Basic realm="B"'), { scheme: 'digest', params: { realm: 'D', nonce: 'n' } });
  t.deepEqual(parseChallenge('Digest realm="D", algorithm=SHA-512-256, nonce="a", Digest realm="D", algorithm=MD5, nonce="b"')?.params.nonce, 'b');
  t.deepEqual(parseChallenge('Digest realm="D", algorithm=SHA-512-256, nonce="a", Basic realm="B"'), { scheme: 'basic', params: { realm: 'B' } });
  t.is(parseChallenge('Digest realm="D", algorithm=SHA-512-256, nonce="a"')?.scheme, 'digest', 'refused by DigestAuth, by name');
  t.is(parseChallenge('Bearer realm="x"')?.scheme, 'bearer');
});

test("http-snapshot: a raw '%' in the URL's password or user name is a clear error that does not print the password", (t) => {
  const err = t.throws(() => splitCredentials('http://admin:50%off@cam/snap.jpg'));
  t.is(err?.constructor, Error, 'not a bare URIError');
  t.is(err?.message, `http-snapshot url "http://admin:***@cam/snap.jpg": the password holds a '%' that is not a valid percent-escape; write a literal '%' as %25`);
  t.false(err?.message.includes('50%off'));
  t.throws(() => splitCredentials('http://ad%min:pw@cam/snap.jpg'), { message: /the user name holds a '%' that is not a valid percent-escape; write a literal '%' as %25/ });
  t.throws(() => new HttpSnapshotSource('cam', { type: 'http-snapshot', url: 'http://admin:50%off@cam/snap.jpg' }), { message: /"http:\/\/admin:\*\*\*@cam\/snap\.jpg": the password holds a '%'/ });
  t.deepEqual(splitCredentials('http://admin:50%25off@cam/snap.jpg').credentials, { username: 'admin', password: '50%off' });
});

test('folder: files written right after subscribe, while the watch starts, are emitted once each; files already there are not', async (t) => {
  for (const stableMs of [0, 100]) {
    const dir = await tempDir(t);
    await writeFile(join(dir, 'old.jpg'), smallJpeg);
    const src = new FolderWatchSource('cam', { type: 'folder', path: dir, pattern: '*.jpg', stableMs });
    const frames: Frame[] = [];
    const sub = src.frames$.subscribe((f) => frames.push(f));
    t.teardown(() => sub.unsubscribe());
    // Written synchronously, so no half-written file is ever seen (stableMs 0 reads at once).
    writeFileSync(join(dir, 'early0.jpg'), smallJpeg); // before the watch has even started
    for (const ms of [2, 5, 10, 20, 50]) {
      await sleep(ms);
      writeFileSync(join(dir, `early${ms}.jpg`), smallJpeg);
    }
    await waitForStatus(src.status$, (s) => s.state === 'running');
    await waitForStatus(src.status$, (s) => s.frames >= 6);
    // Another file makes chokidar read the folder again, where it finds any early file it missed: still once each.
    writeFileSync(join(dir, 'later.jpg'), smallJpeg);
    await waitForStatus(src.status$, (s) => s.frames >= 7);
    await sleep(stableMs + 400);
    const names = frames.map((f) => basename(f.origin));
    t.deepEqual([...names].sort(), ['early0.jpg', 'early10.jpg', 'early2.jpg', 'early20.jpg', 'early5.jpg', 'early50.jpg', 'later.jpg'], `stableMs ${stableMs}: ${names.join(' ')}`);
    t.is(names.at(-1), 'later.jpg');
    t.is(src.status().errors, 0);
    sub.unsubscribe();
  }
});

test('folder: an early file still being written when the watch is ready is emitted once, whole; with deleteAfter it is deleted without an error', async (t) => {
  const dir = await tempDir(t);
  const big = await noiseJpeg(96, 64, 11);
  const src = new FolderWatchSource('cam', { type: 'folder', path: dir, stableMs: 300, deleteAfter: true });
  const frames: Frame[] = [];
  const sub = src.frames$.subscribe((f) => frames.push(f));
  t.teardown(() => sub.unsubscribe());
  const path = join(dir, 'upload.jpg');
  writeFileSync(path, big.subarray(0, 500));
  await waitForStatus(src.status$, (s) => s.state === 'running');
  await sleep(100);
  await appendFile(path, big.subarray(500)); // less than stableMs after the first half
  await waitForStatus(src.status$, (s) => s.frames >= 1);
  await sleep(800);
  t.is(frames.length, 1);
  t.true(frames[0]!.data.equals(big), 'the whole file');
  t.deepEqual(await readdir(dir), [], 'deleted after reading');
  t.like(src.status(), { frames: 1, errors: 0 });
});
