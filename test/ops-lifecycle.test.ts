/**
 * The agent's life cycle under systemd (ops review, findings 1, 4 and 5):
 * - every camera ended and one failed → runAgent rejects (CamerasFailedError; the CLI exits 1, so
 *   Restart=on-failure restarts it) after a clean stop; a replay that simply ended → 'cameras-ended';
 * - stop() during start() is not undone: start() gives up and tears everything down, stop()
 *   resolves once it has, and every stop() call while stopping gets the same promise;
 * - `agent.timezone` reaches every camera's cron schedule.
 */
import test from 'ava';
import { createConnection } from 'node:net';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import cron from 'node-cron';
import { stringify } from 'yaml';
import { Agent, AgentStoppedError, type AgentState } from '../agent/agent.js';
import { CamerasFailedError, runAgent } from '../agent/commands/run.js';
import { configFromObject } from '../agent/config.js';
import type { Extension } from '../agent/extensions/types.js';
import { captureLogger, registerAgentScene, tileSlots, until } from './helpers/agent-scene.js';
import { sharedAvailable } from './helpers/fitted-model.js';

const scene = registerAgentScene(test, 'shelfwatch-ops-life-', [false, true, false]);
const maybe = sharedAvailable() ? test.serial : test.serial.skip;

let n = 0;
/** A config file in the scene's work dir; each its own state dir (an outbox is locked per process). */
async function configFile(cameras: Array<Record<string, unknown>>, agent: Record<string, unknown> = {}): Promise<string> {
  const name = `cfg-${++n}`;
  const file = join(scene.work, `${name}.yaml`);
  await writeFile(
    file,
    stringify({
      agent: { id: 'store-1', stateDir: join(scene.work, `state-${name}`), ...agent },
      models: { tile: { path: scene.modelPath, threshold: 4 } },
      inference: { provider: 'cpu', batchSize: 8, batchWaitMs: 10 },
      metrics: { enabled: false },
      mqtt: { embeddedPort: 0 },
      cameras,
    }),
  );
  return file;
}

/** A replay camera that fails: looping over files none of which is an image. */
async function brokenReplay(id: string): Promise<Record<string, unknown>> {
  const dir = join(scene.work, `broken-${id}`);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'frame000.jpg'), 'not a jpeg');
  return { id, source: { type: 'replay', dir, intervalMs: 20, loop: true }, slots: tileSlots(scene.normal) };
}

maybe('every camera ended and one failed: runAgent stops cleanly, then rejects with CamerasFailedError', async (t) => {
  const ended = { id: 'ended', source: { type: 'replay', dir: scene.framesDir, intervalMs: 20 }, slots: tileSlots(scene.normal) };
  const file = await configFile([await brokenReplay('broken'), ended]);
  const { logger, lines } = captureLogger();
  let agent: Agent | undefined;
  const err = await t.throwsAsync(runAgent(file, { handleSignals: false, agent: { logger }, onStarted: (a) => (agent = a) }), { instanceOf: CamerasFailedError });
  t.is(err!.outcome, 'cameras-failed');
  t.deepEqual(err!.failed.map((f) => f.camera), ['broken']);
  t.regex(err!.failed[0]!.error, /none of 1 files could be read/);
  t.regex(err!.message, /every camera has stopped and 1 failed \(broken\)/);
  t.is(agent?.state, 'stopped', 'stopped cleanly before rejecting');
  const records = lines.map((l) => JSON.parse(l) as { level: string; msg: string; failed?: unknown });
  t.true(records.some((r) => r.level === 'error' && r.msg === 'every camera has stopped; 1 of 2 failed'), lines.join(''));
  t.true(records.some((r) => r.level === 'error' && /^exiting with an error/.test(r.msg)));
});

maybe('a replay that simply ended is a clean end (exit status 0)', async (t) => {
  const file = await configFile([{ id: 'shelf', source: { type: 'replay', dir: scene.framesDir, intervalMs: 20 }, slots: tileSlots(scene.normal) }]);
  const { logger } = captureLogger();
  t.is(await runAgent(file, { handleSignals: false, agent: { logger } }), 'cameras-ended');
});

maybe('stop() during start(): start gives up and tears down, stop waits for it, nothing runs on', async (t) => {
  const file = await configFile([{ id: 'shelf', source: { type: 'replay', dir: scene.framesDir, intervalMs: 50, loop: true }, slots: tileSlots(scene.normal) }]);
  const { loadConfig } = await import('../agent/config.js');
  const config = await loadConfig(file, { env: {} });
  const { logger } = captureLogger();
  const agent = new Agent(config, { logger, outboxFsync: false });
  const states: AgentState[] = [];
  agent.on('state', (s) => states.push(s));
  let outputs = 0;
  agent.on('output', () => outputs++);
  const starting = agent.start();
  const startResult = starting.then(
    () => 'resolved',
    (e: unknown) => e,
  );
  await new Promise((r) => setTimeout(r, 20)); // models are loading
  const first = agent.stop();
  const second = agent.stop();
  t.is(first, second, 'one stop promise');
  await first;
  t.is(agent.state, 'stopped');
  const result = await startResult;
  t.true(result instanceof AgentStoppedError, String(result));
  t.deepEqual(states, ['starting', 'stopping', 'stopped'], 'never running');
  t.is(agent.metricsUrl, null);
  await new Promise((r) => setTimeout(r, 500));
  t.is(outputs, 0, 'no camera runs after stop()');
  await agent.stop(); // still fine
});

maybe('stop() while start() is starting the extensions: the broker, MQTT client and started extensions are stopped', async (t) => {
  const file = await configFile([{ id: 'shelf', source: { type: 'replay', dir: scene.framesDir, intervalMs: 50, loop: true }, slots: tileSlots(scene.normal) }]);
  const { loadConfig } = await import('../agent/config.js');
  const config = await loadConfig(file, { env: {} });
  const { logger } = captureLogger();
  const log: string[] = [];
  let stopDone: Promise<void> | undefined;
  let secondStop: Promise<void> | undefined;
  const agent: Agent = new Agent(config, {
    logger,
    outboxFsync: false,
    extensions: () => {
      const ext = (name: string, onStart?: () => void): Extension => ({
        name,
        start: async () => {
          log.push(`start ${name}`);
          onStart?.();
        },
        stop: async () => {
          log.push(`stop ${name}`);
        },
      });
      // The second extension asks to stop while start() is running (broker and client are up).
      return [ext('one'), ext('two', () => ((stopDone = agent.stop()), (secondStop = agent.stop()))), ext('three')];
    },
  });
  const result = await agent.start().then(
    () => 'resolved',
    (e: unknown) => e,
  );
  t.true(result instanceof AgentStoppedError, String(result));
  t.truthy(stopDone);
  t.is(stopDone, secondStop, 'a stop() while stopping gets the same promise');
  await stopDone;
  t.is(agent.state, 'stopped');
  t.deepEqual(log, ['start one', 'start two', 'stop two', 'stop one'], 'the third never started; the started ones stopped in reverse');
  t.is(agent.mqtt?.state, 'offline');
  // The embedded broker is closed: nothing listens on its port any more.
  const port = Number(new URL(agent.brokerUrl).port);
  const refused = await new Promise<boolean>((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => (socket.destroy(), resolve(false)));
    socket.once('error', () => resolve(true));
  });
  t.true(refused, `broker port ${port} still open`);
});

maybe('agent.timezone reaches every camera schedule (node-cron gets it)', async (t) => {
  const camera = (id: string) => ({ id, source: { type: 'http-snapshot', url: 'http://127.0.0.1:9/snapshot.jpg', timeoutMs: 200 }, schedule: '0 3 * * *', slots: tileSlots(scene.normal) });
  const config = configFromObject(
    {
      agent: { id: 'store-1', stateDir: join(scene.work, 'state-tz'), timezone: 'America/New_York' },
      models: { tile: { path: scene.modelPath, threshold: 4 } },
      inference: { provider: 'cpu' },
      metrics: { enabled: false },
      mqtt: { embeddedPort: 0 },
      cameras: [camera('a'), camera('b')],
    },
    { env: {} },
  );
  const before = new Set(cron.getTasks().keys());
  const { logger, lines } = captureLogger();
  const agent = new Agent(config, { logger, outboxFsync: false });
  t.teardown(() => agent.stop());
  await agent.start();
  const tasks = () => [...cron.getTasks().entries()].filter(([id]) => !before.has(id)).map(([, task]) => task as unknown as { timezone?: string; timeMatcher?: { timezone?: string } });
  await until('two cron tasks', () => tasks().length >= 2, 10_000, lines);
  // node-cron 4's inline task keeps the option as `timezone` and matches times with it.
  t.deepEqual(tasks().map((task) => [task.timezone, task.timeMatcher?.timezone]), [
    ['America/New_York', 'America/New_York'],
    ['America/New_York', 'America/New_York'],
  ]);
  await agent.stop();
});
