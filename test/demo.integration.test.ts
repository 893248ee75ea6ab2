/**
 * The demo (`npm start`) end to end, as a newcomer would run it: a simulated shelf camera, a
 * model fitted on first use (cached between runs of this test in the OS temp dir), the embedded
 * broker, and the demo's own MQTT subscriber printing events. A short run must show the first
 * scripted defect (a bottle losing its cap on slot-1) raised with a thumbnail, and no false
 * alarm on slot-2, whose can never gets a defect.
 */
import test from 'ava';
import { rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { defectsAt, runDemo } from '../agent/demo.js';
import { BACKBONE_PATH, sharedAvailable } from './helpers/fitted-model.js';

const maybe = sharedAvailable() ? test : test.skip;

maybe('the demo fits (or reuses) its model, raises the scripted defect and writes thumbnails; a busy 1883 falls back to a free port', async (t) => {
  // The README's quick start installs mosquitto, which listens on 1883: the demo must still run.
  const blocker = createServer();
  await new Promise<void>((resolve) => blocker.once('error', () => resolve()).listen(1883, '127.0.0.1', () => resolve()));
  t.teardown(() => new Promise<void>((resolve) => (blocker.listening ? blocker.close(() => resolve()) : resolve())));
  const dir = join(tmpdir(), 'shelfwatch-demo-it');
  // Keep the fitted model and rendered frames between runs; start from a fresh agent state.
  await rm(join(dir, 'state'), { recursive: true, force: true });
  const lines: string[] = [];
  const result = await runDemo({
    dir,
    durationSec: 12,
    log: (l) => lines.push(l),
    handleSignals: false,
    env: { ...process.env, SHELFWATCH_BACKBONE: BACKBONE_PATH },
  });
  const transcript = lines.join('\n');
  t.log(`model ${result.fitted ? 'fitted' : 'from cache'}; ${result.events.length} events`);

  t.regex(transcript, /shelfwatch demo — a simulated camera 'shelf-demo' watching 4 products/);
  t.regex(transcript, /port 1883 is taken \(another broker\?\); the embedded broker takes a free port instead/);
  t.regex(transcript, /MQTT broker \(embedded\)\s+mqtt:\/\/127\.0\.0\.1:\d+/);
  // The bottle on slot-1 loses its cap from frame 6 on (3 s into the loop).
  t.deepEqual(defectsAt(6), [{ slot: 0, defect: 'cap_open' }]);
  const first = result.events.find((e) => e.type === 'new');
  t.truthy(first, `a 'new' event within 12 s:\n${transcript}`);
  t.like(first, { camera: 'shelf-demo', slot: 'slot-1' });
  t.true(first!.score > first!.threshold);
  t.false(result.events.some((e) => e.slot === 'slot-2'), `no false alarm on the can of slot-2:\n${transcript}`);
  // One printed line per event received over MQTT.
  const printed = lines.filter((l) => /^\d\d:\d\d:\d\d {2}(NEW|UPDATE|END)/.test(l));
  t.is(printed.length, result.events.length);
  t.regex(printed[0]!, /NEW {5}shelf-demo\/slot-1 \(\S+\) {2}score \d+\.\d\d > \d+\.\d\d {2}\d+ regions?: \[\d+,\d+ \d+×\d+\]/);

  t.true(result.thumbnails.length >= 1, 'thumbnails were written');
  for (const file of result.thumbnails) {
    const meta = await sharp(file).metadata();
    t.is(meta.format, 'jpeg');
    t.true(Math.max(meta.width!, meta.height!) <= 320);
  }
  t.regex(transcript, /demo stopped: \d+ events?, \d+ thumbnails?/);
});
