/**
 * Hostile input against the real camera sources — a local HTTP server, a real temp folder, the
 * real ffmpeg — for what test/sources.test.ts and sources-ffmpeg.integration.test.ts do not
 * cover. Each test reproduces a problem the sources had:
 *
 *  - http-snapshot: a password in the query string reached logs, status and frame origins; fetch
 *    followed redirects to any host (sending the configured headers there) and said only
 *    "redirect count exceeded" for a loop; a truncated PNG body became a frame; bad header
 *    values and timeouts failed on every request instead of at start;
 *  - folder: a named pipe with an image name blocked the source forever, a symlink to /dev/zero
 *    filled memory; a PNG paused mid-upload was emitted half-written; a removed and re-created
 *    folder was never watched again while the status said `running`;
 *  - replay: a named pipe in the sequence blocked it;
 *  - stream: ffmpeg echoes the input URL on stderr, so camera passwords reached status and logs;
 *    the watchdog's restart was reported as "killed by SIGKILL"; images over maxFrameBytes were
 *    passed on when they arrived in one chunk, and silently dropped otherwise.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { appendFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { filter, firstValueFrom, timeout, toArray, type Observable } from 'rxjs';
import sharp from 'sharp';
import type { Frame } from '../pipelines/types.js';
import {
  Backoff,
  FfmpegStreamSource,
  FolderWatchSource,
  HttpSnapshotSource,
  JpegSplitter,
  ReplaySource,
  type SourceLogger,
  type SourceStatus,
} from '../agent/sources/index.js';

const run = promisify(execFile);

const jpeg = await sharp({ create: { width: 32, height: 24, channels: 3, background: '#c03030' } }).jpeg().toBuffer();
/** Noise, so the PNG is large enough to be cut in half meaningfully. */
const png = await sharp(Buffer.from(Array.from({ length: 64 * 48 * 3 }, (_, i) => (i * 7919) % 251)), { raw: { width: 64, height: 48, channels: 3 } })
  .png()
  .toBuffer();

function waitForStatus(status$: Observable<SourceStatus>, pred: (s: SourceStatus) => boolean, ms = 8000): Promise<SourceStatus> {
  return firstValueFrom(status$.pipe(filter(pred), timeout(ms)));
}

function captureLogs(): { logger: SourceLogger; text: () => string } {
  const lines: string[] = [];
  return { logger: (level, msg, fields) => lines.push(JSON.stringify({ level, msg, ...fields })), text: () => lines.join('\n') };
}

async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void, port = 0): Promise<{ server: Server; port: number; url: string }> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  const p = (server.address() as AddressInfo).port;
  return { server, port: p, url: `http://127.0.0.1:${p}` };
}

async function stop(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const s = await listen(() => {});
  await stop(s.server);
  return s.port;
}

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-badsrc-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

// ---------- http-snapshot ----------

test('http-snapshot: a password in the query string appears nowhere: not in errors, status, logs or frame origins', async (t) => {
  let fail = true;
  const srv = await listen((_req, res) => {
    if (fail) res.writeHead(500, 'Internal Server Error').end();
    else res.writeHead(200, { 'content-type': 'image/jpeg' }).end(jpeg);
  });
  t.teardown(() => stop(srv.server));
  const logs = captureLogs();
  // Foscam-style snapshot URL; the userinfo password as well.
  const url = `${srv.url.replace('http://', 'http://admin:userinfo-pw@')}/cgi-bin/CGIProxy.fcgi?cmd=snapPicture2&usr=admin&pwd=query-pw`;
  const src = new HttpSnapshotSource('cam', { type: 'http-snapshot', url }, { logger: logs.logger });
  const err = await t.throwsAsync(src.snapshot());
  t.is(err?.message, `GET ${srv.url.replace('http://', 'http://admin:***@')}/cgi-bin/CGIProxy.fcgi?cmd=snapPicture2&usr=admin&pwd=*** answered HTTP 500 Internal Server Error`);
  fail = false;
  const frame = await src.snapshot();
  const seen = [err?.message, src.origin, frame.origin, JSON.stringify(src.status()), logs.text()].join('\n');
  t.false(seen.includes('query-pw'), seen);
  t.false(seen.includes('userinfo-pw'), seen);
  t.true(frame.origin.endsWith('cmd=snapPicture2&usr=admin&pwd=***'));
});

test('http-snapshot: redirects are followed on the same host only; another host, another scheme and a loop are refused by name', async (t) => {
  const elsewhere: Array<Record<string, unknown>> = [];
  const other = await listen((req, res) => {
    elsewhere.push(req.headers);
    res.writeHead(200, { 'content-type': 'image/jpeg' }).end(jpeg);
  });
  t.teardown(() => stop(other.server));
  const srv = await listen((req, res) => {
    const path = req.url ?? '';
    if (path === '/snapshot.jpg') res.writeHead(302, { location: '/cgi-bin/snap?ch=1' }).end();
    else if (path === '/cgi-bin/snap?ch=1') res.writeHead(200, { 'content-type': 'image/jpeg' }).end(jpeg);
    else if (path === '/away') res.writeHead(302, { location: `http://localhost:${other.port}/grab?token=t0k` }).end();
    else if (path === '/file') res.writeHead(301, { location: 'file:///etc/passwd' }).end();
    else if (path === '/loop') res.writeHead(307, { location: '/loop' }).end();
    else res.writeHead(404).end();
  });
  t.teardown(() => stop(srv.server));
  const snap = (path: string) =>
    new HttpSnapshotSource('cam', { type: 'http-snapshot', url: `${srv.url}${path}`, headers: { 'x-api-key': 'k3y' } }).snapshot();

  const frame = await snap('/snapshot.jpg');
  t.true(frame.data.equals(jpeg), 'a same-host redirect (a camera pointing at its CGI) is followed');
  await t.throwsAsync(snap('/away'), {
    message: `GET ${srv.url}/away redirected to http://localhost:${other.port}/grab?token=***, another host; not followed — put the snapshot URL the camera means in the config`,
  });
  t.is(elsewhere.length, 0, 'the API key header was never sent to the other host');
  await t.throwsAsync(snap('/file'), { message: /redirected to file:\/\/\/etc\/passwd, not an http\(s\) URL; not followed/ });
  await t.throwsAsync(snap('/loop'), { message: `GET ${srv.url}/loop: more than 5 redirects (a loop?), the last to ${srv.url}/loop` });
});

test('http-snapshot: a truncated PNG body is an error, not a frame', async (t) => {
  const srv = await listen((_req, res) => {
    const cut = png.subarray(0, png.length - 40); // a camera that closed early, Content-Length of what it sent
    res.writeHead(200, { 'content-type': 'image/png', 'content-length': String(cut.length) }).end(cut);
  });
  t.teardown(() => stop(srv.server));
  const src = new HttpSnapshotSource('cam', { type: 'http-snapshot', url: `${srv.url}/snap.png` });
  await t.throwsAsync(src.snapshot(), { message: `GET ${srv.url}/snap.png is a truncated PNG (${png.length - 40} bytes, no IEND chunk)` });
  t.like(src.status(), { frames: 0, errors: 1 });
});

test('bad source settings fail at construction, naming the setting (and never quoting a header value)', (t) => {
  const url = 'http://127.0.0.1:9/snap.jpg';
  const err = t.throws(() => new HttpSnapshotSource('cam', { type: 'http-snapshot', url, headers: { authorization: 'Bearer s3cret\r\nX-Evil: 1' } }));
  t.is(err?.message, 'camera cam: http-snapshot header "authorization" has an invalid value (line break, NUL or a character above U+00FF)');
  t.throws(() => new HttpSnapshotSource('cam', { type: 'http-snapshot', url, headers: { 'bad name': 'x' } }), {
    message: 'camera cam: http-snapshot header "bad name" is not a valid header name',
  });
  // setTimeout turns Infinity (or > 2^31-1) into 1 ms: every request would "time out".
  t.throws(() => new HttpSnapshotSource('cam', { type: 'http-snapshot', url, timeoutMs: Infinity }), { message: /timeoutMs must be > 0 and <= 2147483647, got Infinity/ });
  t.throws(() => new HttpSnapshotSource('cam', { type: 'http-snapshot', url, maxBytes: Infinity }), { message: /maxBytes must be a finite number > 0, got Infinity/ });
  t.throws(() => new Backoff({ maxMs: 3e10 }), { message: 'backoff maxMs must be at most 2147483647 ms, got 30000000000' });
  t.throws(() => new FfmpegStreamSource('cam', { type: 'stream', input: 'shelf\0.mp4' }), { message: /stream input must be a non-empty file path, device or URL without NUL bytes/ });
  t.throws(() => new FfmpegStreamSource('cam', { type: 'stream', input: 'shelf.mp4', fps: Infinity }), { message: 'stream fps must be a finite number, got Infinity' });
});

// ---------- folder ----------

test('folder: a named pipe and a symlink to /dev/zero with image names are rejected without blocking the watch or filling memory', async (t) => {
  const dir = await tempDir(t);
  const logs = captureLogs();
  const src = new FolderWatchSource('cam', { type: 'folder', path: dir, stableMs: 100 }, { logger: logs.logger });
  const frames: Frame[] = [];
  const sub = src.frames$.subscribe((f) => frames.push(f));
  t.teardown(() => sub.unsubscribe());
  await waitForStatus(src.status$, (s) => s.state === 'running');

  await run('mkfifo', [join(dir, 'pipe.jpg')]);
  await waitForStatus(src.status$, (s) => s.errors >= 1);
  await symlink('/dev/zero', join(dir, 'zero.jpg'));
  await waitForStatus(src.status$, (s) => s.errors >= 2);
  await writeFile(join(dir, 'good.jpg'), jpeg);
  await waitForStatus(src.status$, (s) => s.frames === 1);
  t.true(frames[0].data.equals(jpeg));
  t.true(frames[0].origin.endsWith('good.jpg'));
  const log = logs.text();
  t.true(log.includes(`${join(dir, 'pipe.jpg')} is a named pipe, not a regular file`), log);
  t.true(log.includes(`${join(dir, 'zero.jpg')} is a character device, not a regular file`), log);
  t.is(src.status().state, 'running');
});

test('folder: a PNG whose upload pauses longer than stableMs is never emitted half-written', async (t) => {
  const dir = await tempDir(t);
  const src = new FolderWatchSource('cam', { type: 'folder', path: dir, stableMs: 100 });
  const frames: Frame[] = [];
  const sub = src.frames$.subscribe((f) => frames.push(f));
  t.teardown(() => sub.unsubscribe());
  await waitForStatus(src.status$, (s) => s.state === 'running');

  const path = join(dir, 'upload.png');
  const half = Math.floor(png.length / 2);
  await writeFile(path, png.subarray(0, half));
  const s = await waitForStatus(src.status$, (x) => x.errors >= 1); // the stalled upload looked finished
  t.is(s.lastError, `${path} is a truncated PNG (${half} bytes, no IEND chunk)`);
  await appendFile(path, png.subarray(half));
  await waitForStatus(src.status$, (x) => x.frames >= 1);
  await sleep(300); // a second frame, if any, would be here by now
  t.is(frames.length, 1);
  t.true(frames[0].data.equals(png), 'the one frame is the whole file');
});

test('folder: a watched folder that is removed and re-created is watched again, and the files in it are emitted', async (t) => {
  const dir = join(await tempDir(t), 'drop');
  await mkdir(dir);
  const src = new FolderWatchSource('cam', { type: 'folder', path: dir, stableMs: 50 }, { backoff: { initialMs: 50, maxMs: 200, jitter: 0 }, dirCheckMs: 200 });
  const frames: Frame[] = [];
  const sub = src.frames$.subscribe((f) => frames.push(f));
  t.teardown(() => sub.unsubscribe());
  await waitForStatus(src.status$, (s) => s.state === 'running');
  await writeFile(join(dir, 'before.jpg'), jpeg);
  await waitForStatus(src.status$, (s) => s.frames === 1);

  await rm(dir, { recursive: true }); // the share went away / a cleanup script removed the folder
  const down = await waitForStatus(src.status$, (s) => s.state === 'reconnecting');
  t.is(down.lastError, `folder source path ${dir} was removed`);
  await mkdir(dir);
  await writeFile(join(dir, 'after.jpg'), jpeg); // may land before the new watch is ready: must not be lost
  await waitForStatus(src.status$, (s) => s.frames === 2);
  t.true(frames[1].origin.endsWith('after.jpg'));
  t.is(src.status().state, 'running');
});

// ---------- replay ----------

test('replay: a named pipe in the sequence is a counted error and the replay goes on', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'f1.jpg'), jpeg);
  await run('mkfifo', [join(dir, 'f2.jpg')]);
  await writeFile(join(dir, 'f3.jpg'), jpeg);
  const src = new ReplaySource('cam', { type: 'replay', dir, intervalMs: 0 });
  const frames = await firstValueFrom(src.frames$.pipe(toArray(), timeout(5000)));
  t.deepEqual(frames.map((f) => f.origin.split('/').at(-1)), ['f1.jpg', 'f3.jpg']);
  t.like(src.status(), { errors: 1, lastError: `${join(dir, 'f2.jpg')} is a named pipe, not a regular file` });
});

// ---------- stream (real ffmpeg) ----------

test('stream: ffmpeg echoing a password-bearing URL on stderr does not put the password in status, logs or the stderr tail', async (t) => {
  const port = await closedPort();
  const logs = captureLogs();
  // An unencoded '@' in the password: ffmpeg splits at the last '@', so must the redaction.
  const input = `rtsp://admin:pa@ss9@127.0.0.1:${port}/stream1?token=tok3n`;
  const src = new FfmpegStreamSource('cam', { type: 'stream', input }, { logger: logs.logger, backoff: { initialMs: 50, maxMs: 100 } });
  const sub = src.frames$.subscribe();
  t.teardown(() => sub.unsubscribe());
  const s = await waitForStatus(src.status$, (x) => x.errors >= 2);
  const safe = `rtsp://admin:***@127.0.0.1:${port}/stream1?token=***`;
  t.is(src.origin, `ffmpeg:${safe}`);
  t.regex(s.lastError ?? '', /^ffmpeg exited with code \d+ reading ffmpeg:rtsp:\/\/admin:\*\*\*@127\.0\.0\.1:\d+\/stream1\?token=\*\*\*: .*Connection refused/);
  const seen = [JSON.stringify(src.status()), logs.text(), src.stderrTail().join('\n'), src.origin].join('\n');
  for (const secret of ['pa@ss9', 'ss9@', 'tok3n']) t.false(seen.includes(secret), `${secret} leaked:\n${seen}`);
});

test('stream: a camera that stalls is restarted by the watchdog, which the status says, and the stream recovers', async (t) => {
  const frame = await sharp({ create: { width: 160, height: 120, channels: 3, background: '#2040c0' } }).jpeg().toBuffer();
  let connections = 0;
  const camera = await listen((req, res) => {
    connections++;
    // Two seconds of frames (ffmpeg probes the first second), then silence with the connection open: a hung camera.
    res.writeHead(200, { 'content-type': 'multipart/x-mixed-replace; boundary=frame' });
    let sent = 0;
    const timer = setInterval(() => {
      if (sent++ >= 20) return clearInterval(timer);
      res.write(`--frame\r\nContent-Type: image/jpeg\r\nContent-Length: ${frame.length}\r\n\r\n`);
      res.write(frame);
      res.write('\r\n');
    }, 100);
    req.on('close', () => clearInterval(timer));
  });
  t.teardown(() => stop(camera.server));
  const src = new FfmpegStreamSource(
    'cam',
    { type: 'stream', input: `${camera.url}/video.mjpg`, fps: 5 },
    { stallTimeoutMs: 2500, killTimeoutMs: 300, backoff: { initialMs: 50, maxMs: 100 } },
  );
  const sub = src.frames$.subscribe();
  t.teardown(() => sub.unsubscribe());
  await waitForStatus(src.status$, (s) => s.frames >= 1, 15_000);
  const stalled = await waitForStatus(src.status$, (s) => s.state === 'reconnecting', 15_000);
  t.regex(stalled.lastError ?? '', new RegExp(`^ffmpeg stalled \\(no frame for 2500 ms, restarted\\) reading ffmpeg:${camera.url.replace(/\./g, '\\.')}/video\\.mjpg`));
  const framesBefore = src.status().frames;
  await waitForStatus(src.status$, (s) => s.state === 'running' && s.frames > framesBefore, 15_000);
  t.true(connections >= 2, 'ffmpeg was started again');
});

test('stream: images over maxFrameBytes are dropped and counted, whether they arrive whole or in pieces', async (t) => {
  // The splitter on its own: one chunk holding a whole oversized image, and the same image in pieces.
  const whole = new JpegSplitter(1000);
  const big = await sharp(Buffer.from(Array.from({ length: 64 * 48 * 3 }, (_, i) => (i * 31) % 253)), { raw: { width: 64, height: 48, channels: 3 } }).jpeg().toBuffer();
  t.true(big.length > 1000);
  t.deepEqual(whole.push(Buffer.concat([big, jpeg])).map((b) => b.length), [jpeg.length]);
  t.is(whole.stats.oversized, 1);
  const pieces = new JpegSplitter(1000);
  const out: Buffer[] = [];
  for (let i = 0; i < big.length; i += 100) out.push(...pieces.push(big.subarray(i, i + 100)));
  t.is(out.length, 0);
  t.is(pieces.stats.oversized, 1);

  // Through ffmpeg: every frame of a 320x240 test video is over a 2000-byte limit.
  const dir = await tempDir(t);
  const video = join(dir, 'testsrc.mp4');
  await run('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=10', '-t', '1', '-c:v', 'mpeg4', video]);
  const src = new FfmpegStreamSource('cam', { type: 'stream', input: video, fps: 5 }, { maxFrameBytes: 2000 });
  const frames = await firstValueFrom(src.frames$.pipe(toArray(), timeout(20_000)));
  t.is(frames.length, 0);
  const s = src.status();
  t.true(s.errors >= 4, `${s.errors} errors`);
  t.regex(s.lastError ?? '', new RegExp(`^ffmpeg sent an image over maxFrameBytes 2000 reading ffmpeg:${video.replace(/[.]/g, '\\.')}; dropped \\(${s.errors} so far\\)$`));
  t.is(s.state, 'stopped', 'the file ended normally');
});
