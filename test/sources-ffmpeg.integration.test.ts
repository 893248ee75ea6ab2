/**
 * The stream source against the real ffmpeg: a generated test video, a local HTTP MJPEG camera
 * that dies mid-stream and comes back, and process cleanup on unsubscribe.
 * Serial: the leftover-process checks look at all children of this worker.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { filter, firstValueFrom, Subject, timeout, toArray, type Observable } from 'rxjs';
import sharp from 'sharp';
import type { Frame } from '../pipelines/types.js';
import { latestFrame } from '../agent/schedule.js';
import { FfmpegStreamSource, ffmpegArgs, type SourceStatus } from '../agent/sources/index.js';

const run = promisify(execFile);

const workDir = await mkdtemp(join(tmpdir(), 'shelfwatch-ffmpeg-'));
const video = join(workDir, 'testsrc.mp4');
// 3 s of the lavfi test pattern at 10 fps, 640x480.
await run('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'lavfi', '-i', 'testsrc=size=640x480:rate=10', '-t', '3', '-c:v', 'mpeg4', '-q:v', '5', video]);

test.after.always(() => rm(workDir, { recursive: true, force: true }));

function waitForStatus(status$: Observable<SourceStatus>, pred: (s: SourceStatus) => boolean, ms = 10_000): Promise<SourceStatus> {
  return firstValueFrom(status$.pipe(filter(pred), timeout(ms)));
}

/** ffmpeg processes that are children of this test worker. */
async function ffmpegChildren(): Promise<number[]> {
  const { stdout } = await run('ps', ['-o', 'pid=,comm=', '--ppid', String(process.pid)]);
  return stdout
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter(([, comm]) => comm === 'ffmpeg')
    .map(([pid]) => Number(pid));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test.serial('ffmpeg command lines per input kind', (t) => {
  const rtsp = ffmpegArgs({ type: 'stream', input: 'rtsp://cam/stream1', fps: 2 });
  t.deepEqual(rtsp.slice(rtsp.indexOf('-rtsp_transport'), rtsp.indexOf('-i') + 2), ['-rtsp_transport', 'tcp', '-timeout', '10000000', '-i', 'rtsp://cam/stream1']);
  t.true(rtsp.join(' ').includes('-vf fps=2 -f image2pipe -vcodec mjpeg -q:v 3 pipe:1'));
  t.true(ffmpegArgs({ type: 'stream', input: '/dev/video0' }).join(' ').includes('-f v4l2 -i /dev/video0'));
  t.true(ffmpegArgs({ type: 'stream', input: './shelf.mp4', loop: true }).join(' ').includes('-re -stream_loop -1 -i ./shelf.mp4'));
  t.false(ffmpegArgs({ type: 'stream', input: './shelf.mp4' }).includes('-re'));
  t.throws(() => ffmpegArgs({ type: 'stream', input: 'rtsp://cam/s', loop: true }), { message: 'stream loop applies to video files only, not rtsp input rtsp://cam/s' });
  t.throws(() => ffmpegArgs({ type: 'stream', input: 'x.mp4', fps: 0 }), { message: 'stream fps must be > 0, got 0' });
  const src = new FfmpegStreamSource('c', { type: 'stream', input: 'rtsp://admin:pw@cam/s' });
  t.is(src.origin, 'ffmpeg:rtsp://admin:***@cam/s');
});

test.serial('a 3 s video read at 5 fps gives ~15 decodable 640x480 JPEG frames, then completes', async (t) => {
  const src = new FfmpegStreamSource('vid', { type: 'stream', input: video, fps: 5 });
  const frames: Frame[] = await firstValueFrom(src.frames$.pipe(toArray(), timeout(30_000)));
  t.true(frames.length >= 14 && frames.length <= 16, `${frames.length} frames`);
  t.deepEqual(frames.map((f) => f.sequence), frames.map((_, i) => i));
  for (const f of frames) {
    const { info } = await sharp(f.data).raw().toBuffer({ resolveWithObject: true });
    t.is(info.width, 640);
    t.is(info.height, 480);
    t.is(f.origin, `ffmpeg:${video}`);
  }
  t.like(src.status(), { state: 'stopped', frames: frames.length, errors: 0, reconnects: 0 });
  t.is(src.childPid(), undefined);
});

/** A camera serving multipart/x-mixed-replace MJPEG at 10 fps, that can be killed and restarted on its port. */
async function startMjpegCamera(port = 0): Promise<{ server: Server; port: number; stop(): Promise<void> }> {
  const colours = ['#ff0000', '#00ff00', '#0000ff', '#ffff00'];
  const jpegs = await Promise.all(colours.map((c) => sharp({ create: { width: 320, height: 240, channels: 3, background: c } }).jpeg().toBuffer()));
  const timers = new Set<NodeJS.Timeout>();
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'multipart/x-mixed-replace; boundary=frame', 'cache-control': 'no-cache' });
    let i = 0;
    const timer = setInterval(() => {
      const jpeg = jpegs[i++ % jpegs.length];
      res.write(`--frame\r\nContent-Type: image/jpeg\r\nContent-Length: ${jpeg.length}\r\n\r\n`);
      res.write(jpeg);
      res.write('\r\n');
    }, 100);
    timers.add(timer);
    req.on('close', () => {
      clearInterval(timer);
      timers.delete(timer);
    });
  });
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return {
    server,
    port: (server.address() as AddressInfo).port,
    stop: async () => {
      for (const timer of timers) clearInterval(timer);
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

test.serial('an HTTP MJPEG camera that dies mid-stream: reconnecting, then recovery when it comes back', async (t) => {
  let camera = await startMjpegCamera();
  t.teardown(() => camera.stop().catch(() => {}));
  const url = `http://127.0.0.1:${camera.port}/video.mjpg`;
  const src = new FfmpegStreamSource('mjpeg', { type: 'stream', input: url, fps: 5 }, { backoff: { initialMs: 100, maxMs: 300, jitter: 0 } });
  const frames: Frame[] = [];
  const sub = src.frames$.subscribe((f) => frames.push(f));
  t.teardown(() => sub.unsubscribe());

  await waitForStatus(src.status$, (s) => s.frames >= 3);
  const firstPid = src.childPid();
  await camera.stop(); // the camera goes away mid-stream
  const down = await waitForStatus(src.status$, (s) => s.state === 'reconnecting');
  t.regex(down.lastError ?? '', new RegExp(`^ffmpeg exited with code \\d+ reading ffmpeg:${url.replace(/[.]/g, '\\.')}`));
  await sleep(700); // a few failed restarts against the closed port
  const failing = src.status();
  t.is(failing.state, 'reconnecting');
  t.true(failing.reconnects >= 2, `${failing.reconnects} reconnects while down`);
  t.regex(failing.lastError ?? '', /Connection refused/);

  const framesBefore = src.status().frames;
  camera = await startMjpegCamera(camera.port);
  const up = await waitForStatus(src.status$, (s) => s.state === 'running' && s.frames >= framesBefore + 3);
  t.true(up.reconnects >= failing.reconnects);
  t.not(src.childPid(), firstPid);
  for (const f of frames.slice(-3)) t.is((await sharp(f.data).metadata()).width, 320);
  // Sequence numbers stay monotonic across restarts: ids stay unique.
  t.is(new Set(frames.map((f) => f.id)).size, frames.length);
  t.deepEqual(frames.map((f) => f.sequence), frames.map((_, i) => i));
});

test.serial('unsubscribing kills ffmpeg: no leftover process', async (t) => {
  const src = new FfmpegStreamSource('loop', { type: 'stream', input: video, fps: 5, loop: true });
  const trigger = new Subject<void>();
  const scans: Frame[] = [];
  const sub = src.frames$.pipe(latestFrame(trigger)).subscribe((f) => scans.push(f));
  await waitForStatus(src.status$, (s) => s.frames >= 2);
  trigger.next();
  t.is(scans.length, 1, 'the latest frame at trigger time');
  t.is(scans[0].sequence, src.status().frames - 1);
  const pid = src.childPid();
  t.truthy(pid);
  t.deepEqual(await ffmpegChildren(), [pid!]);
  sub.unsubscribe();
  t.is(src.status().state, 'stopped');
  for (let i = 0; i < 50 && alive(pid!); i++) await sleep(50);
  t.false(alive(pid!), 'ffmpeg is gone');
  t.deepEqual(await ffmpegChildren(), []);
});

test.serial('a missing ffmpeg binary fails the source with a clear error', async (t) => {
  const src = new FfmpegStreamSource('nocam', { type: 'stream', input: video }, { ffmpegPath: join(workDir, 'no-ffmpeg') });
  await t.throwsAsync(firstValueFrom(src.frames$), { message: /camera nocam: cannot run ffmpeg \(.*no-ffmpeg\): spawn .* ENOENT; install ffmpeg or set its path/ });
  t.is(src.status().state, 'failed');
});

test.serial('a video file whose ffmpeg dies part-way resumes after the frames sent: none twice, none skipped', async (t) => {
  // 6 s whose brightness rises with time: frame means must keep rising if nothing is replayed.
  const ramp = join(workDir, 'ramp.mp4');
  await run('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'lavfi', '-i', 'color=c=black:s=64x48:r=10:d=6', '-vf', "geq=lum='clip(16+T*35,0,255)':cb=128:cr=128", '-c:v', 'mpeg4', '-q:v', '2', ramp]);
  // The first ffmpeg run is killed (SIGKILL) once it has sent 3 frames; the second run finishes.
  // Killed on a frame count, not after a fixed time: a loaded machine can start ffmpeg slowly.
  const argsLog = join(workDir, 'ffmpeg-args.log');
  const wrapper = join(workDir, 'ffmpeg-logged.sh');
  await writeFile(wrapper, `#!/bin/sh\necho "$*" >> '${argsLog}'\nexec ffmpeg "$@"\n`);
  await chmod(wrapper, 0o755);
  const src = new FfmpegStreamSource('ramp', { type: 'stream', input: ramp, fps: 2, realtime: true }, { ffmpegPath: wrapper, backoff: { initialMs: 100, maxMs: 100, jitter: 0 } });
  const frames: Frame[] = [];
  await new Promise<void>((resolve, reject) => {
    src.frames$.pipe(timeout(30_000)).subscribe({
      next: (f) => {
        frames.push(f);
        if (frames.length === 3) process.kill(src.childPid()!, 'SIGKILL');
      },
      error: reject,
      complete: resolve,
    });
  });
  const runs = (await readFile(argsLog, 'utf8')).trim().split('\n');
  t.is(runs.length, 2, runs.join('\n'));
  t.false(runs[0]!.includes('-ss'));
  t.regex(runs[1]!, /-ss \d+\.\d{3} -i /);
  t.true(frames.length >= 11 && frames.length <= 13, `${frames.length} frames (a replay from the start would give ~15)`);
  const means: number[] = [];
  for (const f of frames) means.push((await sharp(f.data).greyscale().stats()).channels[0]!.mean);
  for (let i = 1; i < means.length; i++) t.true(means[i]! > means[i - 1]! + 5, `frame ${i} mean ${means[i]!.toFixed(1)} after ${means[i - 1]!.toFixed(1)}: ${means.map((m) => m.toFixed(0)).join(' ')}`);
  t.like(src.status(), { state: 'stopped', reconnects: 1, errors: 1 });
});

test.serial('a video file ffmpeg keeps failing on without a new frame fails the source with ffmpeg\'s words', async (t) => {
  const wrapper = join(workDir, 'ffmpeg-broken-file.sh');
  await writeFile(wrapper, '#!/bin/sh\necho "[mov,mp4] moov atom not found" >&2\nexit 1\n');
  await chmod(wrapper, 0o755);
  const src = new FfmpegStreamSource('broken', { type: 'stream', input: join(workDir, 'broken.mp4'), fps: 2 }, { ffmpegPath: wrapper, backoff: { initialMs: 50, maxMs: 50, jitter: 0 } });
  const err = await t.throwsAsync(firstValueFrom(src.frames$.pipe(toArray(), timeout(15_000))));
  t.regex(err!.message, /camera broken: ffmpeg failed 3 times in a row reading the video file ffmpeg:.*broken\.mp4 without a new frame \(after 0 frame\(s\)\); giving up: \[mov,mp4\] moov atom not found/);
  // Three failed runs, each an error, and the giving-up itself.
  t.like(src.status(), { state: 'failed', reconnects: 2, errors: 4 });
});

// ---------- the ffmpeg version decides the RTSP timeout option ----------
// (imports are hoisted: here to leave the tests above untouched)
import { ffmpegMajorVersion, parseFfmpegMajor } from '../agent/sources/index.js';

/** A fake ffmpeg: answers -version with `versionLine` (counting the calls), logs any other command line and fails like a refused camera. */
async function fakeFfmpeg(name: string, versionLine: string | null): Promise<{ path: string; runs: () => Promise<string[]>; versionCalls: () => Promise<number> }> {
  const path = join(workDir, `${name}.sh`);
  const runsLog = join(workDir, `${name}.runs`);
  const versionLog = join(workDir, `${name}.version`);
  const answer = versionLine === null ? 'exit 1' : `echo '${versionLine}'\n  exit 0`;
  await writeFile(path, `#!/bin/sh\nif [ "$1" = "-version" ]; then\n  echo x >> '${versionLog}'\n  ${answer}\nfi\necho "$*" >> '${runsLog}'\necho "Connection refused" >&2\nexit 1\n`);
  await chmod(path, 0o755);
  const lines = async (file: string) => (await readFile(file, 'utf8').catch(() => '')).split('\n').filter(Boolean);
  return { path, runs: () => lines(runsLog), versionCalls: async () => (await lines(versionLog)).length };
}

async function firstRun(src: FfmpegStreamSource, runs: () => Promise<string[]>): Promise<string> {
  const sub = src.frames$.subscribe({ error: () => {} });
  try {
    for (let i = 0; i < 500; i++) {
      const [line] = await runs();
      if (line) return line;
      await sleep(10);
    }
    throw new Error('ffmpeg was never run');
  } finally {
    sub.unsubscribe();
  }
}

test.serial('RTSP with ffmpeg 4.x is given -stimeout (its -timeout would listen), with 5+ -timeout; the version is asked once per binary', async (t) => {
  const backoff = { initialMs: 50, maxMs: 50, jitter: 0 };
  const input = 'rtsp://admin:pw@127.0.0.1:9/stream1';
  const old = await fakeFfmpeg('ffmpeg-4.4', 'ffmpeg version 4.4.2-0ubuntu0.22.04.1 Copyright (c) 2000-2021 the FFmpeg developers');
  const a = new FfmpegStreamSource('a', { type: 'stream', input }, { ffmpegPath: old.path, backoff });
  const line = await firstRun(a, old.runs);
  t.true(line.includes(`-rtsp_transport tcp -stimeout 10000000 -i ${input}`), line);
  t.false(line.includes('-timeout'), line);
  t.true(a.args.includes('-stimeout'));
  // A second camera on the same binary, and restarts after failures, do not ask again.
  const b = new FfmpegStreamSource('b', { type: 'stream', input, transport: 'udp' }, { ffmpegPath: old.path, backoff });
  const sub = b.frames$.subscribe({ error: () => {} });
  await waitForStatus(b.status$, (s) => s.reconnects >= 2);
  sub.unsubscribe();
  t.true((await old.runs()).some((l) => l.includes('-rtsp_transport udp -stimeout 10000000 -i')));
  t.is(await old.versionCalls(), 1);

  const current = await fakeFfmpeg('ffmpeg-n6.1', 'ffmpeg version n6.1 Copyright (c) 2000-2023 the FFmpeg developers');
  const c = new FfmpegStreamSource('c', { type: 'stream', input }, { ffmpegPath: current.path, backoff });
  t.true((await firstRun(c, current.runs)).includes(`-rtsp_transport tcp -timeout 10000000 -i ${input}`));

  // No answer to -version: taken as a current ffmpeg, and asked again next time (not cached).
  const mute = await fakeFfmpeg('ffmpeg-mute', null);
  const d = new FfmpegStreamSource('d', { type: 'stream', input }, { ffmpegPath: mute.path, backoff });
  t.true((await firstRun(d, mute.runs)).includes('-rtsp_transport tcp -timeout 10000000 -i'));
  t.is(await ffmpegMajorVersion(mute.path), undefined);
  t.true((await mute.versionCalls()) >= 2);

  // Files, HTTP and devices never ask.
  const file = await fakeFfmpeg('ffmpeg-file', 'ffmpeg version 4.4.2');
  const e = new FfmpegStreamSource('e', { type: 'stream', input: join(workDir, 'x.mp4') }, { ffmpegPath: file.path, backoff });
  await firstRun(e, file.runs);
  t.is(await file.versionCalls(), 0);
});

test.serial('the installed ffmpeg\'s version is read', async (t) => {
  const { stdout } = await run('ffmpeg', ['-version']);
  const major = await ffmpegMajorVersion('ffmpeg');
  t.is(major, parseFfmpegMajor(stdout));
  t.true(typeof major === 'number' && major >= 3 && major < 100, `${major} from ${stdout.split('\n')[0]}`);
});
