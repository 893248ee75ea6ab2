/**
 * An anomaly open when the agent stops survives the restart (agent/debounce-store.ts): the whole
 * agent, twice on the same state dir, against a REAL mosquitto and the small real PatchCore model
 * (test/helpers/agent-scene.ts). Run 1 raises `new` for slot S1 and stops while S1 is still
 * anomalous; run 2 first sees the blotch again, then normal frames. Every event of run 2 must carry
 * run 1's event id and end it — no second `new` under another id — and the retained slot state
 * must name that event until the `end`.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Agent } from '../agent/agent.js';
import { configFromObject, type AgentConfig } from '../agent/config.js';
import { DEBOUNCE_STATE_FILES, DEBOUNCE_STATE_VERSION, encodeDebounceStateFile, readDebounceStateFile } from '../agent/debounce-store.js';
import type { DebounceState } from '../pipelines/debounce.js';
import type { AnomalyEvent, SlotStatePayload } from '../pipelines/events.js';
import { captureLogger, registerAgentScene, tileSlots, until } from './helpers/agent-scene.js';
import { sharedAvailable } from './helpers/fitted-model.js';
import { startMosquitto } from './helpers/mosquitto.js';
import { eventSubscriber, recordingSubscriber, type Received } from './helpers/mqtt-subscribers.js';

const available = sharedAvailable();
const serial = available ? test.serial : test.serial.skip;

const THRESHOLD = 4;
/** N N A A: raise after 2 of 3 → 'new' at the 4th frame; the camera ends with S1 anomalous. */
const RUN1 = [false, false, true, true];
/** After the restart: A A (the same anomaly, still open), then N N N: clear after 2 → 'end'. */
const RUN2 = [true, true, false, false, false];

const scene = registerAgentScene(test, 'shelfwatch-restart-it-', RUN1);
const ROOT = 'shelfwatch/store-1';

function agentConfig(brokerUrl: string, stateDir: string, dir: string): AgentConfig {
  return configFromObject(
    {
      agent: { id: 'store-1', stateDir },
      mqtt: { url: brokerUrl, keepaliveSeconds: 5 },
      models: { tile: { path: scene.modelPath, threshold: THRESHOLD } },
      inference: { provider: 'cpu', batchSize: 8, batchWaitMs: 10, maxPendingFrames: 32 },
      debounce: { raiseAfter: 2, window: 3, clearAfter: 2 },
      metrics: { enabled: false },
      logging: { level: 'info' },
      cameras: [{ id: 'shelf', source: { type: 'replay', dir, intervalMs: 150 }, slots: tileSlots(scene.normal) }],
    },
    { origin: 'agent-restart.integration', env: {} },
  );
}

const eventsOf = (messages: Received[]): AnomalyEvent[] => messages.filter((m) => m.topic === `${ROOT}/events`).map((m) => JSON.parse(m.payload.toString()) as AnomalyEvent);
const s1StatesOf = (messages: Received[]): SlotStatePayload[] => messages.filter((m) => m.topic === `${ROOT}/shelf/S1/state`).map((m) => JSON.parse(m.payload.toString()) as SlotStatePayload);

async function savedStates(stateDir: string): Promise<Record<string, DebounceState> | null> {
  return ((await readDebounceStateFile(stateDir))?.slots as Record<string, DebounceState> | undefined) ?? null;
}

/** Runs one agent over the replay folder `dir` to its end, then stops it; returns what it raised. */
async function runAgent(t: { teardown(fn: () => unknown): void }, config: AgentConfig, lines: string[], logger: ReturnType<typeof captureLogger>['logger'], beforeStop?: (agent: Agent) => Promise<void>): Promise<{ agent: Agent; raised: AnomalyEvent[] }> {
  const agent = new Agent(config, { logger, reconnect: { minDelayMs: 100, maxDelayMs: 500 } });
  const raised: AnomalyEvent[] = [];
  agent.on('event', (e) => raised.push(e));
  t.teardown(() => agent.stop());
  await agent.start();
  await agent.finished;
  await until('the outbox to drain', () => agent.mqtt!.outbox.depth().records === 0, 15_000, lines);
  await beforeStop?.(agent);
  await agent.stop();
  return { agent, raised };
}

serial('an anomaly open at the stop keeps its event id across a restart and is ended under it', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const live = await recordingSubscriber(broker.url, `${ROOT}/#`, t);
  const stateDir = join(scene.work, 'state');
  const run2Dir = join(scene.work, 'frames-run2');
  await mkdir(run2Dir, { recursive: true });
  await Promise.all(RUN2.map((bad, i) => writeFile(join(run2Dir, `frame${String(i).padStart(3, '0')}.jpg`), bad ? scene.anomalous.jpeg : scene.normal.jpeg)));
  const { logger, lines } = captureLogger();

  // Run 1: 'new' for S1, and the state file says so as soon as the event is out (a crash from
  // here on would not lose it), before the stop writes it once more.
  const first = await runAgent(t, agentConfig(broker.url, stateDir, scene.framesDir), lines, logger, async () => {
    await until('the new event on the broker', () => eventsOf(live.messages).length === 1, 15_000, lines);
    await until('S1 anomalous in the state file', async () => (await savedStates(stateDir))?.['shelf/S1']?.state === 'anomalous', 5_000, lines);
    t.like((await savedStates(stateDir))?.['shelf/S1'], { state: 'anomalous', raises: 1 }, 'saved on the event, before the stop');
  });
  const run1Events = eventsOf(live.messages);
  t.deepEqual(run1Events.map((e) => e.type), ['new']);
  t.deepEqual(first.raised.map((e) => e.after.id), run1Events.map((e) => e.after.id));
  const id = run1Events[0]!.after.id;
  t.regex(id, /^shelf-S1-\d{13}-[0-9a-f]{8}$/);
  const saved = await savedStates(stateDir);
  t.like(saved?.['shelf/S1'], { camera: 'shelf', slot: 'S1', state: 'anomalous', raises: 1, raisedIn: first.agent.runTag });
  t.like(saved?.['shelf/S0'], { state: 'ok', raises: 0 });
  t.like(s1StatesOf(live.messages).at(-1), { state: 'anomalous', eventId: id });
  const run1Count = live.messages.length;

  // Run 2, same state dir: the anomaly is still there, then it goes away.
  const second = await runAgent(t, agentConfig(broker.url, stateDir, run2Dir), lines, logger, async () => {
    await until('the end event on the broker', () => eventsOf(live.messages).some((e) => e.type === 'end'), 15_000, lines);
  });
  t.not(second.agent.runTag, first.agent.runTag, 'a fresh run tag: without the restored state the ids would differ');
  t.true(lines.some((l) => l.includes('"msg":"debounce states restored from the previous run"') && l.includes('"anomalous":["shelf/S1"]')), 'the restore is logged');

  const run2Messages = live.messages.slice(run1Count);
  const run2Events = eventsOf(run2Messages);
  t.true(run2Events.length >= 1, 'run 2 raised events');
  t.deepEqual(second.raised.map((e) => [e.type, e.after.id]), run2Events.map((e) => [e.type, e.after.id]));
  t.deepEqual(run2Events.map((e) => e.after.id), run2Events.map(() => id), 'every event of run 2 continues the event of run 1');
  t.is(run2Events.at(-1)!.type, 'end');
  t.false(run2Events.some((e) => e.type === 'new' && e.after.id !== id), 'no second new under another id');
  t.deepEqual(eventsOf(live.messages).filter((e) => e.type === 'new' && e.after.id !== id), []);
  const end = run2Events.at(-1)!;
  if (end.type !== 'end') return;
  t.is(end.before.id, id);
  t.is(end.after.startTime, run1Events[0]!.after.startTime, 'the period started in run 1');
  t.true(end.after.endTime !== null && end.after.endTime > end.after.startTime);
  t.true(end.before.score > THRESHOLD && end.before.regions.length >= 1, 'the end describes the last anomalous scan');
  t.true(end.after.topScore >= run1Events[0]!.after.score);

  // Retained state: anomalous with the event of run 1 until the end, then ok without an event.
  const states = s1StatesOf(run2Messages);
  t.true(states.length >= 2, `${states.length} state messages in run 2`);
  t.deepEqual(states.slice(0, -1).map((s) => [s.state, s.eventId]), states.slice(0, -1).map(() => ['anomalous', id]));
  t.like(states.at(-1), { state: 'ok', eventId: null });
  const late = await recordingSubscriber(broker.url, `${ROOT}/shelf/S1/state`, t);
  await until('the retained state', () => late.messages.length >= 1, 10_000);
  t.like(JSON.parse(late.messages[0]!.payload.toString()), { state: 'ok', eventId: null });

  // And on disk, for the next start: S1 ok, its one raise counted.
  t.like((await savedStates(stateDir))?.['shelf/S1'], { state: 'ok', raises: 1, raisedIn: first.agent.runTag });
});

serial('events a crash left written ahead but not in the outbox are published by the next run, under their own ids, and then cleared', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const live = await recordingSubscriber(broker.url, `${ROOT}/events`, t);
  const stateDir = join(scene.work, 'state-journal');
  await mkdir(stateDir, { recursive: true });
  // What the journal of a run killed between its write and the outbox leaves (agent/event-journal.ts).
  const pending = [
    { id: 'shelf-S1-1700000000000-0badf00d:new:shelf-1', payload: JSON.stringify({ type: 'new', after: { id: 'shelf-S1-1700000000000-0badf00d' } }) },
    { id: 'shelf-S0-1700000000000-0badf00d:end:shelf-2', payload: JSON.stringify({ type: 'end', after: { id: 'shelf-S0-1700000000000-0badf00d' } }) },
  ];
  const json = JSON.stringify({ version: DEBOUNCE_STATE_VERSION, savedAt: 1, slots: {}, pending });
  await writeFile(join(stateDir, DEBOUNCE_STATE_FILES[0]), encodeDebounceStateFile(json, 1));
  const { logger, lines } = captureLogger();

  await runAgent(t, agentConfig(broker.url, stateDir, scene.normalDir), lines, logger, async () => {
    await until('both events on the broker', () => live.messages.length >= 2, 15_000, lines);
  });
  t.deepEqual(live.messages.map((m) => m.payload.toString()), pending.map((p) => p.payload), 'the same payloads, in their order');
  t.true(lines.some((l) => l.includes('"msg":"events written ahead by the previous run enqueued again"') && l.includes('"events":2')));
  t.deepEqual((await readDebounceStateFile(stateDir))?.pending, [], 'cleared once the outbox had them');
});

/**
 * The journal's promise, end to end: an agent SIGKILLed while it raises `new` for S1, then a
 * second agent on the same state dir sees the anomaly again and then its end. The child holds one
 * of its two writes back by 1 s (a slow card), so the kill lands between them for sure: the
 * outbox's fsync, before which its record file is not in place (the state is on disk, the event
 * is not), or the debounce-state write itself (the other way round). A SIGKILL loses what the
 * process had not handed to the kernel, not what it had written but not yet synced.
 * Whatever the kill cut, the events delivered must tell one consistent story: no update or end of
 * an event whose `new` never came, and no second `new` for S1 while one is still open. Without
 * the journal the first case delivered an update and an end of an event never announced, the
 * second a `new` under another id while the first stayed open.
 */
serial('SIGKILL between the state write and the outbox write: the next run neither loses the new nor raises it twice under two ids', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const run2Dir = join(scene.work, 'frames-kill-run2');
  await mkdir(run2Dir, { recursive: true });
  await Promise.all(RUN2.map((bad, i) => writeFile(join(run2Dir, `frame${String(i).padStart(3, '0')}.jpg`), bad ? scene.anomalous.jpeg : scene.normal.jpeg)));

  for (const slow of ['outbox', 'state'] as const) {
    const sub = await eventSubscriber(broker.url, ROOT, t);
    const stateDir = join(scene.work, `state-kill-${slow}`);
    const script = `
      import { open } from 'node:fs/promises';
      import { Agent } from './agent/agent.js';
      import { Logger } from './agent/logger.js';
      const agent = new Agent(${JSON.stringify(agentConfig(broker.url, stateDir, scene.framesDir))}, { logger: new Logger({ level: 'error' }) });
      agent.on('event', (e) => console.log(JSON.stringify({ raised: e.type })));
      await agent.start();
      const fh = await open(process.execPath, 'r');
      const proto = Object.getPrototypeOf(fh);
      await fh.close();
      const later = () => new Promise((r) => setTimeout(r, 1000));
      if (${JSON.stringify(slow)} === 'outbox') {
        const sync = proto.sync; // the outbox fsyncs a record file before renaming it into place
        proto.sync = async function () { await later(); return sync.call(this); };
      } else {
        const write = proto.write; // the debounce-state file starts with its header line
        proto.write = async function (buffer, ...rest) {
          if (Buffer.isBuffer(buffer) && buffer.subarray(0, 25).toString('latin1') === 'shelfwatch-debounce-state') await later();
          return write.call(this, buffer, ...rest);
        };
      }
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => child.kill('SIGKILL'));
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise((resolve) => child.once('exit', resolve));
    const raised = new Promise<void>((resolve) => child.stdout.on('data', (d: Buffer) => d.toString().includes('"raised"') && resolve()));
    await Promise.race([raised, exited]);
    t.is(child.exitCode, null, `the child raised before it exited; its stderr:\n${stderr.slice(-2000)}`);
    await new Promise((resolve) => setTimeout(resolve, 300)); // the fast write is done, the slow one is not
    child.kill('SIGKILL');
    await exited;

    const { logger, lines } = captureLogger();
    await runAgent(t, agentConfig(broker.url, stateDir, run2Dir), lines, logger, async () => {
      await until('the end of the anomaly on the broker', () => sub.events.some((e) => e.type === 'end'), 15_000, lines);
    });
    // The story of S1, duplicates (the same message id twice: at-least-once) removed.
    const seen = new Set<string>();
    const story = sub.events.filter((e, i) => e.after.slot === 'S1' && !seen.has(sub.ids[i]!) && seen.add(sub.ids[i]!));
    const opened = new Set<string>();
    let open: string | null = null;
    for (const e of story) {
      if (e.type === 'new') {
        t.is(open, null, `slow ${slow}: a second new (${e.after.id}) while ${open} is open`);
        open = e.after.id;
        opened.add(open);
      } else {
        t.true(opened.has(e.after.id), `slow ${slow}: ${e.type} of ${e.after.id} without its new`);
        if (e.type === 'end') open = null;
      }
    }
    t.is(story.at(-1)?.type, 'end', `slow ${slow}: ${story.map((e) => e.type).join(', ')}`);
    sub.client.end(true);
  }
});
