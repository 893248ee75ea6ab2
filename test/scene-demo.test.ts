/**
 * The demo against what the outside can do to it: anybody may publish on its embedded broker
 * (a message on the events topic that is not an event must not crash it), and a cached model's
 * threshold file cut short by a crash must not make every later start fail.
 */
import test from 'ava';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'mqtt';
import { cachedThreshold, parseDemoEvent, runDemo, thumbnailFile } from '../agent/demo.js';
import type { AnomalyEvent, AnomalyEventSnapshot } from '../pipelines/events.js';
import { BACKBONE_PATH, sharedAvailable } from './helpers/fitted-model.js';

const maybe = sharedAvailable() ? test : test.skip;

const snapshot: AnomalyEventSnapshot = {
  id: 'cam-A1-1700000000000-0123abcd',
  camera: 'cam',
  slot: 'A1',
  product: null,
  category: null,
  score: 3,
  topScore: 3,
  normalizedScore: 1.5,
  threshold: 2,
  regions: [{ box: { x: 1, y: 2, width: 3, height: 4 }, area: 12, peak: 3 }],
  frameId: 'cam-1700000000000-0',
  frameTime: 1700000000000,
  startTime: 1700000000000,
  endTime: null,
  modelId: 'm',
  modelDigest: 'd',
  thumbnail: true,
};

test('demo: only well-formed events are printed; a snapshot without a thumbnail points at no file', (t) => {
  for (const junk of ['', 'not json', '{}', 'null', '[1]', '{"type":"new","after":{}}', '{"type":"new"}', '{"type":"other","after":{}}', JSON.stringify({ type: 'end', before: snapshot, after: snapshot })]) {
    t.is(parseDemoEvent(Buffer.from(junk)), null, junk);
  }
  const event: AnomalyEvent = { type: 'new', before: null, after: snapshot };
  t.deepEqual(parseDemoEvent(Buffer.from(JSON.stringify(event))), event);
  t.regex(thumbnailFile(event, '/tmp/thumbs')!, /\/tmp\/thumbs\/cam-A1-1700000000000-0123abcd-new\.jpg$/);
  t.is(thumbnailFile({ type: 'new', before: null, after: { ...snapshot, thumbnail: false } }, '/tmp/thumbs'), undefined);
  t.is(thumbnailFile({ type: 'end', before: snapshot, after: { ...snapshot, endTime: 1700000005000 } }, '/tmp/thumbs'), undefined);
});

test('demo: a damaged threshold sidecar reads as no cached threshold', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-scene-demo-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'shelf.json');
  for (const [text, expected] of [['{"threshold": 2.5}\n', 2.5], ['{"thresh', undefined], ['', undefined], ['null', undefined], ['{"threshold": -1}', undefined], ['{"threshold": "2"}', undefined]] as const) {
    await writeFile(file, text);
    t.is(await cachedThreshold(file), expected, text);
  }
  t.is(await cachedThreshold(join(dir, 'missing.json')), undefined);
});

maybe('demo: junk on its events topic is ignored, and a damaged cached threshold refits instead of failing every start', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-scene-demo-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const env = { ...process.env, SHELFWATCH_BACKBONE: BACKBONE_PATH };
  let published: Promise<void> | undefined;
  const lines: string[] = [];
  const log = (line: string) => {
    lines.push(line);
    const url = /^ {2}MQTT broker \(embedded\)\s+(mqtt:\/\/\S+)/.exec(line)?.[1];
    if (!url) return;
    published = new Promise<void>((resolve, reject) => {
      const c = connect(url, { clientId: 'scene-demo-junk' });
      c.on('error', reject);
      c.on('connect', async () => {
        for (const junk of ['{}', 'null', '[1]', '{"type":"new","after":{}}', '{"type":"update","after":{"camera":"x"}}']) {
          await c.publishAsync('shelfwatch/demo/events', junk, { qos: 1 });
        }
        c.end(false, {}, () => resolve());
      });
    });
  };
  // Before the fix the first junk message threw in the demo's MQTT handler: an uncaught
  // exception that ended the process.
  const first = await runDemo({ dir, durationSec: 3, port: 0, log, handleSignals: false, env });
  await published;
  t.true(first.fitted);
  t.false(first.events.some((e) => e.camera === undefined || e.camera === 'x'), JSON.stringify(first.events));

  // A crash while the sidecar was written leaves it cut short.
  const modelDir = join(dir, 'model');
  const sidecar = (await readdir(modelDir)).find((f) => f.endsWith('.json'))!;
  await writeFile(join(modelDir, sidecar), '{"thresh');
  lines.length = 0;
  const second = await runDemo({ dir, durationSec: 1, port: 0, log: (l) => lines.push(l), handleSignals: false, env });
  t.true(second.fitted, 'fitted again');
  t.true(lines.some((l) => /is unreadable or damaged: fitting again/.test(l)), lines.join('\n'));
  t.true((await cachedThreshold(join(modelDir, sidecar)))! > 0, 'and the sidecar is whole again');
});
