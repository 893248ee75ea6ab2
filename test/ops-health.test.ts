/**
 * /healthz includes pipeline progress (ops review, finding 3): with inference hung, frames stay in
 * flight and none finishes; after the systemd WatchdogSec (what `shelfwatch run` uses as the limit
 * under a watchdog) /healthz answers 503 'stalled' with the reason, while /metrics keeps
 * answering 200 — which is why the Docker HEALTHCHECK now probes /healthz. An agent with nothing
 * in flight (between scans, or after its replay ended) stays healthy however long it is quiet.
 */
import test from 'ava';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { Agent } from '../agent/agent.js';
import { runAgent } from '../agent/commands/run.js';
import { configFromObject } from '../agent/config.js';
import type { HealthReport } from '../agent/health.js';
import { PatchcoreModel } from '../models/runtime.js';
import { captureLogger, registerAgentScene, tileSlots, until } from './helpers/agent-scene.js';
import { sharedAvailable } from './helpers/fitted-model.js';

const scene = registerAgentScene(test, 'shelfwatch-ops-health-', [false, true, false]);
const serial = sharedAvailable() ? test.serial : test.serial.skip;

serial('hung inference: /healthz turns 503 stalled after WatchdogSec, /metrics stays 200', async (t) => {
  const bin = await mkdtemp(join(tmpdir(), 'shelfwatch-ops-notify-'));
  t.teardown(() => rm(bin, { recursive: true, force: true }));
  await writeFile(join(bin, 'systemd-notify'), '#!/bin/sh\nexit 0\n');
  await chmod(join(bin, 'systemd-notify'), 0o755);
  const file = join(scene.work, 'stuck.yaml');
  await writeFile(
    file,
    stringify({
      agent: { id: 'store-1', stateDir: join(scene.work, 'state-stuck') },
      models: { tile: { path: scene.modelPath, threshold: 4 } },
      // On the main thread, one session: the patched scan below is the one that runs.
      inference: { provider: 'cpu', batchSize: 8, batchWaitMs: 10, workerThread: false, replicas: 1 },
      metrics: { enabled: true, host: '127.0.0.1', port: 0 },
      mqtt: { embeddedPort: 0 },
      cameras: [{ id: 'shelf', source: { type: 'replay', dir: scene.framesDir, intervalMs: 100, loop: true }, slots: tileSlots(scene.normal) }],
    }),
  );
  let calls = 0;
  const original = PatchcoreModel.prototype.scan;
  PatchcoreModel.prototype.scan = function (this: PatchcoreModel, ...args: Parameters<typeof original>) {
    if (++calls > 3) return new Promise(() => undefined); // inference never returns
    return original.apply(this, args);
  } as typeof original;
  t.teardown(() => {
    PatchcoreModel.prototype.scan = original;
  });

  // Under a systemd watchdog of 1 s (stub systemd-notify on the PATH).
  const env = { ...process.env, NOTIFY_SOCKET: '/run/shelfwatch-test-notify', WATCHDOG_USEC: '1000000', PATH: `${bin}:${process.env.PATH}` };
  const { logger, lines } = captureLogger();
  const controller = new AbortController();
  let agent: Agent | undefined;
  const done = runAgent(file, { env, signal: controller.signal, handleSignals: false, agent: { logger, drainTimeoutMs: 500, outboxFsync: false }, onStarted: (a) => (agent = a) });
  t.teardown(() => controller.abort());
  await until('the agent to run', () => agent?.metricsUrl != null, 30_000, lines);
  const healthz = async () => {
    const res = await fetch(`${agent!.metricsUrl}/healthz`);
    return { code: res.status, body: (await res.json()) as HealthReport };
  };
  await until('the first scans', () => calls >= 1, 20_000, lines);
  const early = await healthz();
  t.is(early.code, 200, JSON.stringify(early.body));

  await until('inference to hang', () => calls > 3, 20_000, lines);
  let last = early;
  await until(
    '/healthz 503',
    async () => {
      last = await healthz();
      return last.code === 503;
    },
    10_000,
    lines,
  );
  t.is(last.body.status, 'stalled');
  t.regex(last.body.problems[0]!, /^pipeline stalled: \d+ frames? in flight and none finished for \d+ s \(limit 1 s\): inference or decoding is stuck$/);
  t.true(last.body.pipeline!.inFlight > 0);
  t.is((await fetch(`${agent!.metricsUrl}/metrics`)).status, 200, '/metrics cannot tell');
  t.true(lines.some((l) => l.includes('withholding the systemd watchdog ping')), 'the watchdog saw the same stall');

  controller.abort();
  t.is(await done, 'aborted');
});

serial('nothing in flight: healthy however long the pipeline is quiet', async (t) => {
  const config = configFromObject(
    {
      agent: { id: 'store-1', stateDir: join(scene.work, 'state-idle') },
      models: { tile: { path: scene.modelPath, threshold: 4 } },
      inference: { provider: 'cpu', batchSize: 8, batchWaitMs: 10 },
      metrics: { enabled: false },
      mqtt: { embeddedPort: 0 },
      cameras: [{ id: 'shelf', source: { type: 'replay', dir: scene.framesDir, intervalMs: 20 }, slots: tileSlots(scene.normal) }],
    },
    { env: {} },
  );
  const { logger } = captureLogger();
  const agent = new Agent(config, { logger, outboxFsync: false, stallAfterMs: 200 });
  t.teardown(() => agent.stop());
  await agent.start();
  await agent.finished;
  await new Promise((r) => setTimeout(r, 600));
  const report = agent.health();
  t.is(report.status, 'ok', JSON.stringify(report));
  t.is(report.pipeline!.inFlight, 0);
  t.true(report.pipeline!.secondsSinceProgress !== null);
  t.is(agent.progress.inFlight, 0);
  await agent.stop();
});

test('stallAfterMs must be positive', (t) => {
  const config = configFromObject({ agent: { id: 'a' } }, { env: {} });
  t.throws(() => new Agent(config, { stallAfterMs: 0 }), { message: /stallAfterMs must be a positive number/ });
});
