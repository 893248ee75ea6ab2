import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom, from, Subject, take, timeout, toArray } from 'rxjs';
import sharp from 'sharp';
import type { Frame } from '../pipelines/types.js';
import { capFps, latestFrame, scanTrigger, validateCron } from '../agent/schedule.js';
import { createCameraFeed } from '../agent/sources/index.js';

const jpeg = await sharp({ create: { width: 16, height: 16, channels: 3, background: '#808080' } }).jpeg().toBuffer();

function frame(sequence: number, capturedAt: number): Frame {
  return { id: `cam-${capturedAt}-${sequence}`, camera: 'cam', capturedAt, sequence, data: jpeg, origin: 'test' };
}

test('validateCron accepts 5- and 6-field expressions', (t) => {
  t.notThrows(() => validateCron('*/5 8-22 * * *'));
  t.notThrows(() => validateCron('*/10 * * * * *'));
  t.notThrows(() => validateCron('0 9 * * mon-fri'));
});

test('validateCron names the expression, where it came from and the wrong field', (t) => {
  t.throws(() => validateCron('61 * * * *', 'cameras[0].schedule'), {
    message: 'invalid cron expression "61 * * * *" (cameras[0].schedule): minute: 61 is a invalid expression for minute',
  });
  t.throws(() => validateCron('* 25 * * *'), { message: /"\* 25 \* \* \*" \(schedule\): hour: 25 is a invalid expression for hour/ });
  t.throws(() => validateCron('* * *'), { message: /expected 5 or 6 fields but got 3/ });
  t.throws(() => validateCron('every day'), { message: /invalid cron expression "every day"/ });
  t.throws(() => validateCron(''), { message: /invalid cron expression "" \(schedule\): expected 5 fields/ });
});

test('scanTrigger: a seconds cron expression fires, stamped by the injected clock', async (t) => {
  let now = 5000;
  const ticks = await firstValueFrom(scanTrigger({ schedule: '* * * * * *' }, () => (now += 1)).pipe(take(2), toArray(), timeout(4000)));
  t.deepEqual(ticks, [5001, 5002]);
});

test('scanTrigger: continuous ticks at maxFps; bad specs are rejected up front', async (t) => {
  const started = Date.now();
  const ticks = await firstValueFrom(scanTrigger({ continuous: { maxFps: 20 } }).pipe(take(4), toArray()));
  t.is(ticks.length, 4);
  t.true(Date.now() - started >= 150, '4 ticks at 20 fps take ~200 ms');
  t.throws(() => scanTrigger({ schedule: '* * * * *', continuous: { maxFps: 1 } }, { camera: 'c1' }), { message: 'camera c1: give either schedule or continuous, not both' });
  t.throws(() => scanTrigger({}, { camera: 'c1' }), { message: 'camera c1: needs a schedule (cron expression) or continuous: { maxFps }' });
  t.throws(() => scanTrigger({ continuous: { maxFps: 0 } }, { camera: 'c1' }), { message: 'camera c1 continuous.maxFps must be a positive number, got 0' });
  t.throws(() => scanTrigger({ schedule: '99 * * * *' }, { camera: 'c1' }), { message: /invalid cron expression "99 \* \* \* \*" \(camera c1 schedule\): minute/ });
});

test('capFps drops values that arrive sooner than 1/maxFps after the last one let through', async (t) => {
  const arrivals = [0, 100, 400, 500, 900, 999, 1000, 1600];
  let i = 0;
  const clock = () => arrivals[i++];
  const passed = await firstValueFrom(from(arrivals).pipe(capFps(2, clock), toArray()));
  t.deepEqual(passed, [0, 500, 1000, 1600]);
  t.throws(() => capFps(-1), { message: /capFps.maxFps must be a positive number/ });
});

test('latestFrame emits the newest frame at each trigger, once, and skips stale ones', (t) => {
  const frames = new Subject<Frame>();
  const trigger = new Subject<void>();
  let now = 10_000;
  const out: number[] = [];
  const sub = frames.pipe(latestFrame(trigger, { maxAgeMs: 1000, clock: () => now })).subscribe((f) => out.push(f.sequence));
  trigger.next(); // nothing yet
  frames.next(frame(0, 9_900));
  frames.next(frame(1, 9_950));
  trigger.next(); // → 1
  trigger.next(); // no new frame → nothing
  frames.next(frame(2, 10_000));
  now = 12_000;
  trigger.next(); // frame 2 is 2 s old → skipped
  frames.next(frame(3, 12_000));
  trigger.next(); // → 3
  sub.unsubscribe();
  t.deepEqual(out, [1, 3]);
});

test('camera feed: replay on a seconds schedule scans the latest frame each tick', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-sched-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  for (const n of [1, 2, 3]) await writeFile(join(dir, `f${n}.jpg`), jpeg);
  const feed = createCameraFeed({ id: 'cam', source: { type: 'replay', dir, intervalMs: 100, loop: true }, schedule: '* * * * * *' });
  const scans = await firstValueFrom(feed.scans$.pipe(take(2), toArray(), timeout(5000)));
  t.is(scans.length, 2);
  // ~10 replay frames per second but one scan per second: the sequence jumps.
  t.true(scans[1].sequence - scans[0].sequence >= 5, `sequences ${scans[0].sequence}, ${scans[1].sequence}`);
  t.is(feed.source.status().state, 'stopped');
});

test('camera feed: http-snapshot continuous polls at maxFps; replay continuous passes every file', async (t) => {
  let hits = 0;
  const server = createServer((_req, res) => {
    hits++;
    res.writeHead(200, { 'content-type': 'image/jpeg' }).end(jpeg);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/snap.jpg`;
  const feed = createCameraFeed({ id: 'snap', source: { type: 'http-snapshot', url }, continuous: { maxFps: 20 } });
  const frames = await firstValueFrom(feed.scans$.pipe(take(3), toArray(), timeout(3000)));
  t.deepEqual(frames.map((f) => f.sequence), [0, 1, 2]);
  t.is(hits, 3);
  t.throws(() => createCameraFeed({ id: 'snap', source: { type: 'http-snapshot', url } }), { message: /camera snap: needs a schedule/ });

  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-sched-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  for (const n of [1, 2, 3, 4]) await writeFile(join(dir, `f${n}.jpg`), jpeg);
  const replay = createCameraFeed({ id: 'r', source: { type: 'replay', dir, intervalMs: 0 }, continuous: { maxFps: 1 } });
  const all = await firstValueFrom(replay.scans$.pipe(toArray()));
  t.is(all.length, 4);
});
