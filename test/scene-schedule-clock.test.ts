/**
 * Cron schedules when the wall clock jumps (NTP stepping the clock of a box without RTC battery,
 * a manual correction). The wall clock is shifted by replacing the global Date in this test
 * process only (ava runs each test file in its own worker); the tests run serially.
 */
import test from 'ava';
import { firstValueFrom, take, tap, timeout, toArray } from 'rxjs';
import { MIN_MAX_FPS, scanTrigger } from '../agent/schedule.js';

const RealDate = Date;
let offset = 0;
class ShiftedDate extends RealDate {
  constructor(...args: unknown[]) {
    if (args.length === 0) super(RealDate.now() + offset);
    else super(...(args as [number]));
  }
  static override now(): number {
    return RealDate.now() + offset;
  }
}

test.before(() => {
  globalThis.Date = ShiftedDate as DateConstructor;
});
test.after.always(() => {
  globalThis.Date = RealDate;
  offset = 0;
});

/** Scans of a seconds schedule; the wall clock moves by `step` ms right after the first one. */
async function scansAcrossStep(start: number, step: number): Promise<{ scans: number; warnings: string[] }> {
  offset = start;
  const warnings: string[] = [];
  let n = 0;
  const ticks = await firstValueFrom(
    scanTrigger({ schedule: '* * * * * *' }, { camera: 'c1', logger: (level, message) => void (level === 'warn' && warnings.push(message)) }).pipe(
      tap(() => {
        if (n++ === 0) offset += step;
      }),
      take(3),
      toArray(),
      // Generous: the bound only keeps a broken schedule from hanging the test.
      timeout(20_000),
    ),
  ).finally(() => (offset = 0));
  return { scans: ticks.length, warnings };
}

test.serial('cron: a wall clock stepped forward a day skips the missed scans with one log line, then scans on', async (t) => {
  // Before the fix node-cron replayed every second of the day: 86,400 "missed execution" lines
  // and a stall of seconds (a month's jump: minutes of stall and gigabytes).
  const { scans, warnings } = await scansAcrossStep(-86_400_000, 86_400_000);
  t.is(scans, 3);
  t.true(warnings.length <= 1, `${warnings.length} warning lines, e.g. ${warnings[0]}`);
  if (warnings.length) t.regex(warnings[0]!, /schedule: the scan due at .* late .*skipped/);
});

test.serial('cron: a wall clock stepped back an hour does not pause a seconds schedule for that hour', async (t) => {
  // Before the fix the next scan stayed at its old wall-clock time, an hour away: the test timed out.
  const { scans, warnings } = await scansAcrossStep(0, -3_600_000);
  t.is(scans, 3);
  t.deepEqual(warnings, []);
});

test('continuous: a maxFps whose frame interval no timer can wait is refused (it polled every 1 ms)', (t) => {
  t.throws(() => scanTrigger({ continuous: { maxFps: 1e-7 } }, { camera: 'c1' }), {
    message: /camera c1 continuous\.maxFps must be at least 4\.66e-7 \(one frame every ~24\.8 days\), got 1e-7; use a cron schedule/,
  });
  t.notThrows(() => scanTrigger({ continuous: { maxFps: MIN_MAX_FPS } }));
});
