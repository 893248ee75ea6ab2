/**
 * Long-run lifecycle of the stream and replay sources, against fake ffmpeg binaries (shell
 * scripts) and the real one. Each test reproduces a problem the sources had:
 *
 *  - stream: with two subscriptions, unsubscribing one killed the other's ffmpeg and left its own
 *    running forever; spawn() throwing (an input over 128 KiB, ENOTDIR) was an unhandled rejection
 *    for RTSP (the agent died) and a bare "spawn E2BIG" elsewhere; the restart backoff was reset
 *    by any frame, so a camera that drops each connection after one frame had ffmpeg restarted
 *    twice a second forever; frames ffmpeg sent in the chunk that made the consumer leave
 *    (firstValueFrom) were still counted and put the stopped source back to `running`; an fps
 *    below ~1.4e-6 overflowed the watchdog's timer, which then killed every ffmpeg after 1 ms;
 *    an ffmpeg that ignores SIGTERM on `-version` left every RTSP camera `starting` forever;
 *  - replay: unsubscribing while a file was read counted a frame never delivered and put the
 *    stopped source back to `running`.
 * Serial: the leftover-process checks look at all children of this worker.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { chmod, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { filter, firstValueFrom, timeout, type Observable } from 'rxjs';
import sharp from 'sharp';
import { FfmpegStreamSource, ReplaySource, type SourceLogger, type SourceStatus } from '../agent/sources/index.js';

const run = promisify(execFile);

const workDir = mkdtempSync(join(tmpdir(), 'shelfwatch-lifecycle-'));
const jpegFile = join(workDir, 'frame.jpg');
test.before(async () => {
  await writeFile(jpegFile, await sharp({ create: { width: 16, height: 12, channels: 3, background: '#30a030' } }).jpeg().toBuffer());
});
test.after.always(() => rm(workDir, { recursive: true, force: true }));

/** A fake ffmpeg: answers `-version` like ffmpeg 6.1, otherwise runs `body` (sh). */
async function fakeFfmpeg(name: string, body: string): Promise<string> {
  const path = join(workDir, `${name}.sh`);
  await writeFile(path, `#!/bin/sh\nif [ "$1" = "-version" ]; then echo 'ffmpeg version 6.1'; exit 0; fi\n${body}\n`);
  await chmod(path, 0o755);
  return path;
}

/** A node one-liner the fake runs in place of ffmpeg (exec: the pid is the child's). */
const node = (code: string) => `exec '${process.execPath}' -e '${code}' '${jpegFile}'`;
const readJpeg = 'const img = require("fs").readFileSync(process.argv[1]);';

function waitForStatus(status$: Observable<SourceStatus>, pred: (s: SourceStatus) => boolean, ms = 10_000): Promise<SourceStatus> {
  return firstValueFrom(status$.pipe(filter(pred), timeout(ms)));
}

/** pids of the processes this worker started whose command line mentions `marker`. */
async function children(marker: string): Promise<number[]> {
  const { stdout } = await run('ps', ['-ww', '-o', 'pid=,args=', '--ppid', String(process.pid)]).catch(() => ({ stdout: '' }));
  return stdout
    .split('\n')
    .filter((line) => line.includes(marker))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

async function until(pred: () => Promise<boolean>, ms = 5000): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(50)) if (await pred()) return true;
  return pred();
}

test.serial('stream: two subscriptions each stop their own ffmpeg; none is left behind', async (t) => {
  const ffmpeg = await fakeFfmpeg('live', node(`/*live*/ ${readJpeg} setInterval(() => process.stdout.write(img), 50);`));
  const src = new FfmpegStreamSource('cam', { type: 'stream', input: 'http://127.0.0.1:9/live.mjpg', fps: 5 }, { ffmpegPath: ffmpeg, killTimeoutMs: 500 });
  let a = 0;
  let b = 0;
  const subA = src.frames$.subscribe(() => a++);
  const subB = src.frames$.subscribe(() => b++);
  t.teardown(() => {
    subA.unsubscribe();
    subB.unsubscribe();
  });
  t.true(await until(async () => a > 0 && b > 0 && (await children('/*live*/')).length === 2), 'both ffmpegs run');
  const [first, second] = await children('/*live*/');

  subA.unsubscribe();
  t.true(await until(async () => (await children('/*live*/')).length === 1), 'one ffmpeg stopped');
  t.deepEqual(await children('/*live*/'), [second], "A's ffmpeg is the one stopped, B's runs on");
  t.not(first, second);
  const bBefore = b;
  await sleep(300);
  t.true(b > bBefore, 'B still gets frames');
  t.is(src.status().reconnects, 0, 'B was not restarted');

  subB.unsubscribe();
  t.true(await until(async () => (await children('/*live*/')).length === 0), 'no ffmpeg left');
});

/** pids of every process on the machine whose command line mentions `marker` (grandchildren too). */
async function processes(marker: string): Promise<number[]> {
  const { stdout } = await run('ps', ['-e', '-ww', '-o', 'pid=,args=']).catch(() => ({ stdout: '' }));
  return stdout
    .split('\n')
    .filter((line) => line.includes(marker) && !line.includes(' ps '))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

test.serial('stream: a wrapper script that runs ffmpeg without exec is stopped with what it started (process group)', async (t) => {
  // The wrapper stays the parent; the "ffmpeg" is its child and ignores SIGTERM, as a busy one may.
  const wrapped = `'${process.execPath}' -e 'process.on("SIGTERM", () => {}); /*wrapped*/ ${readJpeg} setInterval(() => process.stdout.write(img), 50);' '${jpegFile}'`;
  const ffmpeg = await fakeFfmpeg('wrapper', wrapped);
  const src = new FfmpegStreamSource('cam', { type: 'stream', input: 'http://127.0.0.1:9/w.mjpg', fps: 5 }, { ffmpegPath: ffmpeg, killTimeoutMs: 300 });
  let frames = 0;
  const sub = src.frames$.subscribe(() => frames++);
  t.teardown(() => sub.unsubscribe());
  t.true(await until(async () => frames > 0 && (await processes('/*wrapped*/')).length === 1), 'the wrapped ffmpeg runs');
  sub.unsubscribe();
  t.true(await until(async () => (await processes('/*wrapped*/')).length === 0, 5000), 'nothing of it is left');
});

test.serial('stream: a wrapper that started ffmpeg in the background and exited: unsubscribing still stops that ffmpeg', async (t) => {
  const marker = `/*ffmpeg-group-bg-${process.pid}*/`;
  // The wrapper (group leader) exits at once; its "ffmpeg" keeps our stdout and ignores SIGTERM.
  const code = `process.on("SIGTERM", () => {}); ${marker} ${readJpeg} setInterval(() => process.stdout.write(img), 50);`;
  const ffmpeg = await fakeFfmpeg('bg-wrapper', `'${process.execPath}' -e '${code}' '${jpegFile}' &\nexit 0`);
  const src = new FfmpegStreamSource('cam', { type: 'stream', input: 'http://127.0.0.1:9/w.mjpg', fps: 5 }, { ffmpegPath: ffmpeg, killTimeoutMs: 300 });
  let frames = 0;
  const sub = src.frames$.subscribe(() => frames++);
  t.teardown(async () => {
    sub.unsubscribe();
    for (const pid of await processes(marker)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {}
    }
  });
  t.true(await until(async () => frames > 0 && (await processes(marker)).length === 1), 'the background ffmpeg runs and sends frames');
  sub.unsubscribe();
  t.true(await until(async () => (await processes(marker)).length === 0), 'nothing of it is left');
});

test.serial('stream: spawn() throwing (an input over 128 KiB) fails the source naming the cause, for RTSP too (no unhandled rejection)', async (t) => {
  const long = 'x'.repeat(200_000);
  for (const input of [`rtsp://127.0.0.1:9/${long}`, join(workDir, `${long}.mp4`)]) {
    const src = new FfmpegStreamSource('cam', { type: 'stream', input });
    const err = await t.throwsAsync(firstValueFrom(src.frames$.pipe(timeout(10_000))));
    t.regex(err!.message, /^camera cam: cannot run ffmpeg \(ffmpeg\) reading ffmpeg:.*: spawn E2BIG \(the input is too long for a command line\)$/s);
    t.like(src.status(), { state: 'failed', errors: 1 });
  }
  // ENOTDIR: a path through a file. Also thrown by spawn() rather than emitted.
  const src = new FfmpegStreamSource('cam', { type: 'stream', input: 'rtsp://127.0.0.1:9/s' }, { ffmpegPath: join(jpegFile, 'ffmpeg') });
  const err = await t.throwsAsync(firstValueFrom(src.frames$.pipe(timeout(15_000))));
  t.regex(err!.message, /^camera cam: cannot run ffmpeg \(.*frame\.jpg\/ffmpeg\) reading ffmpeg:rtsp:\/\/127\.0\.0\.1:9\/s: spawn ENOTDIR$/);
  t.is(src.status().state, 'failed');
});

test.serial('stream: a camera that drops every connection right after a frame is restarted with growing delays; a run that keeps sending resets them', async (t) => {
  const flap = await fakeFfmpeg('flap', `cat '${jpegFile}'\necho 'Connection reset by peer' >&2\nexit 1`);
  const delays: number[] = [];
  const logger: SourceLogger = (_level, msg, fields) => {
    if (msg.startsWith('source reconnecting')) delays.push(fields!.delayMs as number);
  };
  const src = new FfmpegStreamSource('cam', { type: 'stream', input: 'http://127.0.0.1:9/x' }, { ffmpegPath: flap, logger, backoff: { initialMs: 20, maxMs: 10_000, jitter: 0 } });
  const sub = src.frames$.subscribe();
  t.teardown(() => sub.unsubscribe());
  const s = await waitForStatus(src.status$, (x) => x.reconnects >= 5, 20_000);
  sub.unsubscribe();
  t.true(s.frames >= 5, `${s.frames} frames, one per connection`);
  t.deepEqual(delays.slice(0, 5), [20, 40, 80, 160, 320]);

  // Frames for longer than healthyRunMs, then the camera drops: the backoff starts over each time.
  const steady = await fakeFfmpeg('steady', node(`${readJpeg} let n = 0; const i = setInterval(() => { process.stdout.write(img); if (++n === 6) process.exit(1); }, 30);`));
  delays.length = 0;
  const healthy = new FfmpegStreamSource('cam', { type: 'stream', input: 'http://127.0.0.1:9/x' }, { ffmpegPath: steady, logger, healthyRunMs: 60, backoff: { initialMs: 20, maxMs: 10_000, jitter: 0 } });
  const sub2 = healthy.frames$.subscribe();
  t.teardown(() => sub2.unsubscribe());
  await waitForStatus(healthy.status$, (x) => x.reconnects >= 3, 20_000);
  sub2.unsubscribe();
  t.deepEqual(delays.slice(0, 3), [20, 20, 20]);
});

test.serial('stream: frames after the one that made the consumer leave are not counted; the source stays stopped', async (t) => {
  // Three JPEGs in one write: they reach the splitter in one chunk.
  const burst = await fakeFfmpeg('burst', node(`/*burst*/ ${readJpeg} process.stdout.write(Buffer.concat([img, img, img])); setInterval(() => {}, 1000);`));
  const src = new FfmpegStreamSource('cam', { type: 'stream', input: 'http://127.0.0.1:9/x' }, { ffmpegPath: burst, killTimeoutMs: 500 });
  const frame = await firstValueFrom(src.frames$.pipe(timeout(10_000)));
  t.is(frame.sequence, 0);
  await sleep(100);
  t.like(src.status(), { state: 'stopped', frames: 1 });
  t.true(await until(async () => (await children('/*burst*/')).length === 0), 'ffmpeg stopped');
});

test.serial('stream: an fps far below one frame a day does not make the watchdog kill ffmpeg at once', async (t) => {
  const once = await fakeFfmpeg('once', node(`${readJpeg} process.stdout.write(img); setInterval(() => {}, 1000);`));
  const src = new FfmpegStreamSource('cam', { type: 'stream', input: 'http://127.0.0.1:9/x', fps: 1e-6 }, { ffmpegPath: once, killTimeoutMs: 500 });
  const sub = src.frames$.subscribe();
  t.teardown(() => sub.unsubscribe());
  await waitForStatus(src.status$, (s) => s.frames >= 1);
  await sleep(500);
  t.like(src.status(), { state: 'running', frames: 1, errors: 0, reconnects: 0 });
  sub.unsubscribe();
});

test.serial('stream: an ffmpeg that ignores SIGTERM on -version does not leave an RTSP camera starting forever', async (t) => {
  // The probe times out after 10 s; then the camera runs (here: it fails like a refused camera).
  const path = join(workDir, 'deaf.sh');
  await writeFile(path, `#!/bin/sh\nif [ "$1" = "-version" ]; then trap '' TERM; while :; do sleep 1; done; fi\necho 'Connection refused' >&2\nexit 1\n`);
  await chmod(path, 0o755);
  const src = new FfmpegStreamSource('cam', { type: 'stream', input: 'rtsp://127.0.0.1:9/s' }, { ffmpegPath: path, backoff: { initialMs: 50, maxMs: 50 } });
  const sub = src.frames$.subscribe({ error: () => {} });
  t.teardown(() => sub.unsubscribe());
  const s = await waitForStatus(src.status$, (x) => x.errors >= 1, 20_000);
  t.regex(s.lastError ?? '', /Connection refused/);
  sub.unsubscribe();
});

test.serial('replay: unsubscribing while a file is read leaves the source stopped, the undelivered frame not counted', async (t) => {
  const src = new ReplaySource('cam', { type: 'replay', files: [jpegFile, jpegFile], intervalMs: 0 });
  let delivered = 0;
  const sub = src.frames$.subscribe(() => delivered++);
  sub.unsubscribe(); // the first read is under way
  await sleep(200);
  t.is(delivered, 0);
  t.like(src.status(), { state: 'stopped', frames: 0 });

  // take(1): the second file is not read, the status says what was delivered.
  const frame = await firstValueFrom(src.frames$);
  await sleep(100);
  t.is(frame.sequence, 0);
  t.like(src.status(), { state: 'stopped', frames: 1 });
});
