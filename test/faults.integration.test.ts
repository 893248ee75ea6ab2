/**
 * Fault tests for the whole agent against a REAL mosquitto, with exact event accounting: every
 * anomaly event the agent raises (its 'event' emitter) must reach a subscriber, exactly once per
 * event message id after de-duplication (at-least-once: raw duplicates are counted, not failed).
 *
 * Faults: broker down at agent start; the network to the broker stalled (keepalive must notice)
 * and cut, through test/helpers/tcp-proxy.ts; the agent SIGKILLed (child process) with a
 * non-empty outbox and restarted on the same state dir; the outbox directory unwritable
 * (replaced by a file) while the network is down, then restored; the wall clock stepped back
 * and forward mid-run (AgentOptions.clock), where event ids must stay unique per anomaly.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect } from 'mqtt';
import { Agent, type AgentOptions } from '../agent/agent.js';
import { configFromObject, type AgentConfig } from '../agent/config.js';
import { eventMessageId } from '../agent/extensions/events-publisher.js';
import type { Logger } from '../agent/logger.js';
import type { AnomalyEvent } from '../pipelines/events.js';
import { captureLogger, registerAgentScene, tileSlots, until } from './helpers/agent-scene.js';
import { sharedAvailable } from './helpers/fitted-model.js';
import { startMosquitto, waitForAutosave } from './helpers/mosquitto.js';
import { eventSubscriber, type EventSubscriber, type TeardownContext } from './helpers/mqtt-subscribers.js';
import { startTcpProxy } from './helpers/tcp-proxy.js';

const available = sharedAvailable();
const serial = available ? test.serial : test.serial.skip;

const THRESHOLD = 4;
/** N A A N N: with raise 2-of-3 / clear-after 2, one 'new' and one 'end' per pass. */
const SEQUENCE = [false, true, true, false, false];
const ROOT = 'shelfwatch/store-1';

const scene = registerAgentScene(test, 'shelfwatch-faults-', SEQUENCE);

/** Collects every event message (raw ids, duplicates included) on a persistent QoS 1 session. */
async function persistentEventSubscriber(url: string, t: TeardownContext, clientId: string): Promise<EventSubscriber> {
  const sub = await eventSubscriber(url, ROOT, t, { clientId, clean: false });
  // Several tests SIGKILL the broker right after this.
  await waitForAutosave();
  return sub;
}

function faultConfig(brokerUrl: string, stateDir: string, source: Record<string, unknown>, keepaliveSeconds = 5): AgentConfig {
  return configFromObject(
    {
      agent: { id: 'store-1', stateDir },
      mqtt: { url: brokerUrl, keepaliveSeconds, statsIntervalSeconds: 60 },
      models: { tile: { path: scene.modelPath, threshold: THRESHOLD } },
      inference: { provider: 'cpu', batchSize: 8, batchWaitMs: 10, maxPendingFrames: 32 },
      debounce: { raiseAfter: 2, window: 3, clearAfter: 2 },
      thumbnails: { maxSize: 64, quality: 70 },
      metrics: { enabled: false },
      logging: { level: 'info' },
      cameras: [
        {
          id: 'shelf',
          source,
          slots: tileSlots(scene.normal),
        },
      ],
    },
    { origin: 'faults.integration', env: {} },
  );
}

const looping = () => ({ type: 'replay', dir: scene.framesDir, intervalMs: 100, loop: true });

type AccountContext = { deepEqual(a: unknown, b: unknown, m?: string): void; log(...v: unknown[]): void };

/** Exact accounting: raised ⊆ delivered (deduplicated) and delivered ⊆ raised. Returns the figures. */
function account(t: AccountContext, name: string, raised: string[], deliveredRaw: string[]) {
  const delivered = new Set(deliveredRaw);
  t.deepEqual(raised.filter((id) => !delivered.has(id)), [], `${name}: no raised event lost`);
  t.deepEqual([...delivered].filter((id) => !raised.includes(id)), [], `${name}: nothing delivered that was not raised`);
  const figures = { raised: raised.length, uniqueRaised: new Set(raised).size, delivered: delivered.size, duplicates: deliveredRaw.length - delivered.size };
  t.log(`${name}: ${JSON.stringify(figures)}`);
  return figures;
}

function startAgent(t: TeardownContext, config: AgentConfig, logger: Logger, keepRaised: string[], extra: AgentOptions = {}): Agent {
  const agent = new Agent(config, { logger, outboxFsync: false, reconnect: { minDelayMs: 100, maxDelayMs: 400 }, flushTimeoutMs: 1000, ...extra });
  agent.on('event', (e) => keepRaised.push(eventMessageId(e)));
  t.teardown(() => agent.stop());
  return agent;
}

/**
 * The link faults' setup: a persistent broker behind a TCP proxy (to stall or cut the link), a
 * persistent subscriber on the broker itself, and an agent on state dir `state-<name>` that
 * connects through the proxy, started and with a first event delivered.
 */
async function agentBehindProxy(t: TeardownContext, name: string, keepaliveSeconds?: number) {
  const broker = await startMosquitto({ persistence: true });
  t.teardown(() => broker.dispose());
  const proxy = await startTcpProxy(broker.port);
  t.teardown(() => proxy.close());
  const sub = await persistentEventSubscriber(broker.url, t, `faults-${name}`);
  const stateDir = join(scene.work, `state-${name}`);
  const raised: string[] = [];
  const { logger, lines } = captureLogger();
  const agent = startAgent(t, faultConfig(proxy.url, stateDir, looping(), keepaliveSeconds), logger, raised);
  await agent.start();
  await until('a first delivered event', () => sub.ids.length >= 1, 30_000, lines);
  return { proxy, sub, stateDir, raised, lines, agent };
}

/** Once a fault is over: what was raised so far arrives, the agent stops, its stop flush arrives; then the exact accounting. */
async function deliverAllAndStop(t: AccountContext, name: string, agent: Agent, raised: string[], sub: EventSubscriber, lines: string[]): Promise<void> {
  const snapshot = raised.length;
  await until('everything raised to arrive', () => raised.slice(0, snapshot).every((id) => sub.ids.includes(id)), 20_000, lines);
  await agent.stop();
  await until('the stop flush to arrive', () => raised.every((id) => sub.ids.includes(id)), 5_000, lines);
  account(t, name, raised, sub.ids);
}

serial('broker down when the agent starts: events wait in the outbox and all arrive once it is up', async (t) => {
  const broker = await startMosquitto({ persistence: true });
  t.teardown(() => broker.dispose());
  const sub = await persistentEventSubscriber(broker.url, t, 'faults-down-at-start');
  await broker.kill();

  const raised: string[] = [];
  const { logger, lines } = captureLogger();
  const agent = startAgent(t, faultConfig(broker.url, join(scene.work, 'state-down'), looping()), logger, raised);
  await agent.start(); // does not wait for the broker
  t.is(agent.state, 'running');
  await until('events raised with no broker', () => raised.length >= 4, 30_000, lines);
  t.not(agent.mqtt!.state, 'connected');
  t.true(agent.mqtt!.outbox.depth().records >= 4, 'the events are queued in the outbox');
  t.is(sub.ids.length, 0);

  await broker.restart();
  await until('the agent to connect', () => agent.mqtt!.state === 'connected', 15_000, lines);
  const snapshot = raised.length;
  await until('everything raised to arrive', () => raised.slice(0, snapshot + 2).every((id) => sub.ids.includes(id)) && raised.length >= snapshot + 2, 30_000, lines);
  await agent.stop();
  await until('the stop flush to arrive', () => raised.every((id) => sub.ids.includes(id)), 5_000, lines);
  account(t, 'broker down at start', raised, sub.ids);
});

serial('network stalled (no FIN, no RST): keepalive notices, events queue, all arrive after restore', async (t) => {
  const { proxy, raised, lines, agent, sub } = await agentBehindProxy(t, 'stall', 1);

  proxy.stall();
  const stalledAt = Date.now();
  // keepalive 1 s: mqtt.js gives up after ~1.5 keepalive periods without PINGRESP.
  await until('the agent to notice the stalled link', () => agent.mqtt!.metrics().connectionLosses >= 1, 15_000, lines);
  const detectMs = Date.now() - stalledAt;
  t.log(`stall detected after ${detectMs} ms`);
  const before = raised.length;
  await until('events raised while stalled', () => raised.length >= before + 2, 30_000, lines);
  t.not(agent.mqtt!.state, 'connected');

  proxy.restore();
  await until('the agent to reconnect', () => agent.mqtt!.state === 'connected', 20_000, lines);
  await deliverAllAndStop(t, 'network stall', agent, raised, sub, lines);
  t.true(lines.some((l) => l.includes('MQTT connection lost')), 'the loss is logged');
});

serial('network cut (RST) and restored: events queue while cut, all arrive after restore', async (t) => {
  const { proxy, raised, lines, agent, sub } = await agentBehindProxy(t, 'cut');

  proxy.cut();
  await until('the agent to see the cut', () => agent.mqtt!.state !== 'connected', 5_000, lines);
  const before = raised.length;
  await until('events raised while cut', () => raised.length >= before + 3, 30_000, lines);
  t.true(agent.mqtt!.outbox.depth().records > 0);
  const attemptsWhileCut = proxy.accepted;

  proxy.restore();
  await until('the agent to reconnect', () => agent.mqtt!.state === 'connected', 20_000, lines);
  t.true(proxy.accepted > attemptsWhileCut, 'it reconnected through the proxy');
  await deliverAllAndStop(t, 'network cut', agent, raised, sub, lines);
  t.true(agent.mqtt!.metrics().connectionLosses >= 1);
});

serial('agent SIGKILLed with a non-empty outbox: a new agent on the same state dir delivers every event', async (t) => {
  const broker = await startMosquitto({ persistence: true });
  t.teardown(() => broker.dispose());
  const sub = await persistentEventSubscriber(broker.url, t, 'faults-sigkill');
  await broker.kill(); // nothing can leave the child: its outbox must hold everything

  const stateDir = join(scene.work, 'state-sigkill');
  // One pass of the sequence (no loop): the child raises a fixed set of events, reports each,
  // reports 'queued' once its outbox holds them all, and is then killed.
  const config = faultConfig(broker.url, stateDir, { type: 'replay', dir: scene.framesDir, intervalMs: 100, loop: false });
  const script = `
    import { Agent } from './agent/agent.js';
    import { eventMessageId } from './agent/extensions/events-publisher.js';
    import { Logger } from './agent/logger.js';
    const config = ${JSON.stringify(config)};
    const agent = new Agent(config, { logger: new Logger({ level: 'error' }), reconnect: { minDelayMs: 100, maxDelayMs: 400 } });
    let raised = 0;
    agent.on('event', (e) => { raised++; console.log(JSON.stringify({ raised: eventMessageId(e) })); });
    await agent.start();
    await agent.finished;
    // Events are enqueued after thumbnails are encoded: wait until nothing new is enqueued for 1 s.
    let last = -1, stableSince = Date.now();
    while (Date.now() - stableSince < 1000) {
      const n = agent.mqtt.outbox.counters().enqueued;
      if (n !== last) { last = n; stableSince = Date.now(); }
      await new Promise((r) => setTimeout(r, 20));
    }
    console.log(JSON.stringify({ queued: agent.mqtt.outbox.depth().records }));
    setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => child.kill('SIGKILL'));
  const raised: string[] = [];
  let queued = -1;
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  let buffer = '';
  child.stdout.on('data', (d: Buffer) => {
    buffer += d.toString();
    for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      if (!line.startsWith('{')) continue;
      const msg = JSON.parse(line) as { raised?: string; queued?: number };
      if (msg.raised) raised.push(msg.raised);
      if (msg.queued !== undefined) queued = msg.queued;
    }
  });
  await until('the child to queue its events', () => queued >= 0 || child.exitCode !== null, 45_000, [stderr]);
  t.true(raised.length >= 2, `the child raised ${raised.length} events${raised.length < 2 ? `; its stderr:\n${stderr.slice(-2000)}` : ''}`);
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
  const onDisk = (await readdir(join(stateDir, 'outbox'))).filter((f) => f.endsWith('.rec'));
  t.true(onDisk.length >= raised.length, `${onDisk.length} records on disk for ${raised.length} raised events`);

  await broker.restart();
  // Barrier: the broker was SIGKILLed right after the subscriber subscribed, so its persisted
  // session may lack the subscription; wait until a probe published now reaches the subscriber
  // (it has reconnected and is subscribed) before the new agent publishes the stranded events.
  const probe = connect(broker.url, { clientId: 'faults-probe', reconnectPeriod: 200 });
  probe.on('error', () => undefined);
  t.teardown(() => probe.end(true));
  const probeId = 'probe:probe:x';
  await until('the subscriber to receive a probe after the broker restart', async () => {
    if (sub.ids.includes(probeId)) return true;
    if (probe.connected) probe.publish(`${ROOT}/events`, JSON.stringify({ type: 'probe', after: { id: 'probe', frameId: 'x' } }), { qos: 1 });
    await new Promise((r) => setTimeout(r, 200));
    return sub.ids.includes(probeId);
  }, 20_000);
  // The dead child's lock is stale (its pid is gone); the new agent must take the outbox over.
  const { logger, lines } = captureLogger();
  const second = startAgent(t, faultConfig(broker.url, stateDir, { type: 'replay', dir: scene.normalDir, intervalMs: 100 }), logger, []);
  await second.start();
  try {
    await until('the stranded events to arrive', () => raised.every((id) => sub.ids.includes(id)), 20_000, lines);
  } catch (err) {
    // Diagnostics for the rare run where the broker never acknowledges (see RELIABILITY.md).
    t.log(`raised: ${raised.join(' ')}\ndelivered: ${sub.ids.join(' ')}\nmqtt: ${JSON.stringify(second.mqtt!.metrics())}\nbroker log:\n${(await broker.log()).split('\n').slice(-40).join('\n')}`);
    throw err;
  }
  await until('the outbox to drain', () => second.mqtt!.outbox.depth().records === 0, 10_000, lines);
  await second.stop();
  account(t, 'SIGKILL with a non-empty outbox', raised, sub.ids.filter((id) => id !== probeId));
});

serial('outbox directory unwritable while offline: records kept in memory, written once restored, all delivered', async (t) => {
  const { proxy, stateDir, raised, lines, agent, sub } = await agentBehindProxy(t, 'disk');
  const outboxDir = join(stateDir, 'outbox');

  // Offline, so records cannot leave; and the outbox dir replaced by a file (we run as root, so
  // a read-only mode would not stop writes): every write fails with ENOTDIR.
  proxy.cut();
  await until('the agent to see the cut', () => agent.mqtt!.state !== 'connected', 5_000, lines);
  await rename(outboxDir, `${outboxDir}.away`);
  await writeFile(outboxDir, 'not a directory');
  const before = raised.length;
  await until('events raised while the disk fails', () => raised.length >= before + 2, 30_000, lines);
  await until('the failed writes to be counted', () => agent.mqtt!.outbox.counters().failedWrites >= 2, 10_000, lines);
  // `raised` counts at the pipeline; the publisher enqueues after the thumbnail is encoded, so the
  // second event's record may still be on its way: wait for it rather than sample once.
  await until('records kept in memory', () => agent.mqtt!.outbox.depth().memoryOnly >= 2, 10_000, lines);
  t.is(agent.state, 'running');
  t.true(lines.some((l) => l.includes('outbox disk error') && l.includes('ENOTDIR')), 'the disk error is logged with its cause');

  // Disk back (the retry timer runs every 5 s), then the network.
  await rm(outboxDir);
  await rename(`${outboxDir}.away`, outboxDir);
  await until('memory-only records written to disk', () => agent.mqtt!.outbox.depth().memoryOnly === 0, 15_000, lines);
  proxy.restore();
  await until('the agent to reconnect', () => agent.mqtt!.state === 'connected', 20_000, lines);
  await deliverAllAndStop(t, 'outbox disk unwritable', agent, raised, sub, lines);
  t.log(`outbox counters: ${JSON.stringify(agent.mqtt!.outbox.counters())}`);
});

serial('wall clock stepped back 1 h, forward 1 day, then reset: every anomaly keeps its own id and is delivered once', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  // A plain subscriber keeping whole events (no broker kill here, so no persistent session).
  const delivered = (await eventSubscriber(broker.url, ROOT, t)).events;

  // The agent's wall clock: real time plus an offset the test steps, read in whole seconds (an
  // RTC's precision). Time stamps therefore repeat — the slot raises about twice a second, and
  // after the reset the clock re-reads the seconds of the first phase — so ids derived from the
  // clock alone would give distinct anomalies the same id (and consumers would drop one).
  const T0 = 1_700_000_000_000;
  let offset = T0 - Date.now();
  const clock = () => Math.floor((Date.now() + offset) / 1000) * 1000;

  const raised: AnomalyEvent[] = [];
  const { logger, lines } = captureLogger();
  const agent = startAgent(t, faultConfig(broker.url, join(scene.work, 'state-clock'), looping()), logger, [], { clock });
  agent.on('event', (e) => raised.push(e));
  await agent.start();
  // A phase holds the frames stamped after its step: the source stamps capture time and sequence
  // together, synchronously, so frames numbered from `fromSeq` on read the stepped clock.
  const phases: Array<{ name: string; fromSeq: number }> = [];
  const seqOf = (e: AnomalyEvent) => Number(e.after.frameId.slice(e.after.frameId.lastIndexOf('-') + 1));
  const phaseOf = (e: AnomalyEvent) => phases.findLast((p) => p.fromSeq <= seqOf(e))?.name;
  const newsIn = (name: string) => raised.filter((e) => e.type === 'new' && phaseOf(e) === name);
  const runPhase = async (name: string, step: () => void) => {
    step();
    phases.push({ name, fromSeq: agent.stats().cameras.shelf?.source.frames ?? 0 });
    await until(`3 anomalies raised in phase '${name}'`, () => newsIn(name).length >= 3, 30_000, lines);
  };
  await runPhase('start', () => undefined);
  const firstStart = Math.min(...newsIn('start').map((e) => e.after.startTime));
  await runPhase('back 1 h', () => (offset -= 3_600_000));
  await runPhase('forward 1 day', () => (offset += 86_400_000));
  // Back to the first raise's second: the clock re-reads the seconds of the first phase.
  await runPhase('reset to start', () => (offset = firstStart - Date.now()));
  await agent.stop();
  await until('every raised event to arrive', () => raised.every((e) => delivered.some((d) => eventMessageId(d) === eventMessageId(e))), 10_000, lines);

  // The clock did what the test says: the step back put raises BEFORE the first ones, the step
  // forward a day ahead, and start times repeat (within a phase, and across the reset).
  t.true(newsIn('back 1 h').every((e) => e.after.startTime < firstStart), 'raised after the step back, stamped before the first raise');
  t.true(newsIn('forward 1 day').every((e) => e.after.startTime >= T0 + 86_400_000 - 3_600_000));
  const news = raised.filter((e) => e.type === 'new');
  const startTimes = news.map((e) => e.after.startTime);
  t.true(new Set(startTimes).size < startTimes.length, 'some distinct anomalies share a start time');
  const startSeconds = new Set(newsIn('start').map((e) => e.after.startTime));
  t.true(newsIn('reset to start').some((e) => startSeconds.has(e.after.startTime)), 'after the reset, raises repeat the first phase\'s times');

  // Exact accounting by the pipeline's own counters: every event it counted was raised here.
  const counted = agent.pipelineStats().cameras.shelf!.events;
  const byType = (type: string) => raised.filter((e) => e.type === type).length;
  t.deepEqual({ new: byType('new'), update: byType('update'), end: byType('end') }, counted, 'events raised = events the pipeline counted');

  // One id per distinct anomaly: every 'new' has its own id, every 'end' closes exactly one of them.
  const newIds = news.map((e) => e.after.id);
  t.is(new Set(newIds).size, newIds.length, 'no two anomalies share an event id');
  const endIds = raised.filter((e) => e.type === 'end').map((e) => e.after.id);
  t.is(new Set(endIds).size, endIds.length, 'each anomaly ends once');
  t.true(endIds.every((id) => newIds.includes(id)), 'each end names an anomaly that was raised');

  // Delivery, de-duplicated by event id (and type: new and end share the id): exactly what was
  // raised, nothing lost, nothing extra.
  const key = (e: AnomalyEvent) => (e.type === 'update' ? `${e.type}:${e.after.id}:${e.after.frameId}` : `${e.type}:${e.after.id}`);
  t.deepEqual(new Set(delivered.map(key)), new Set(raised.map(key)), 'delivered after de-duplication by id = raised');
  t.is(new Set(delivered.map(key)).size, raised.length, 'each raised event survives de-duplication by id');
  account(t, 'clock jumps', raised.map(eventMessageId), delivered.map(eventMessageId));

  // Nothing timed out or was dropped because of the jumps (timers run on the monotonic clock).
  const cam = agent.pipelineStats().cameras.shelf!;
  t.like(cam, { framesDropped: 0, decodeErrors: 0, inferenceErrors: 0, thumbnailErrors: 0 });
  t.is(agent.mqtt!.metrics().connectionLosses, 0, 'the MQTT keepalive was not fooled by the jumps');
  t.is(agent.mqtt!.outbox.depth().records, 0, 'the outbox drained');
  t.log(`phases: ${['start', 'back 1 h', 'forward 1 day', 'reset to start'].map((p) => `${p} ${newsIn(p).length}`).join(', ')}; ${news.length} anomalies, ${raised.length} events`);

  // A reboot with the RTC reset: a new agent on the same state dir (debounce states restored, so
  // it first ends the anomaly the first run left open) re-reads the first run's seconds; its run
  // tag keeps the ids it raises apart from the first run's.
  const again: AnomalyEvent[] = [];
  const second = startAgent(t, faultConfig(broker.url, join(scene.work, 'state-clock'), looping()), captureLogger().logger, [], { clock });
  second.on('event', (e) => again.push(e));
  t.not(second.runTag, agent.runTag);
  await second.start();
  // The first raise comes from the replay's third frame (N A A …), 200 ms from now.
  offset = firstStart - Date.now();
  await until('3 anomalies raised after the restart', () => again.filter((e) => e.type === 'new').length >= 3, 30_000, lines);
  await second.stop();
  await until('the restarted agent\'s events to arrive', () => again.every((e) => delivered.some((d) => eventMessageId(d) === eventMessageId(e))), 10_000, lines);
  const againNews = again.filter((e) => e.type === 'new');
  t.true(againNews.some((e) => startSeconds.has(e.after.startTime)), 'the restarted agent re-reads the first run\'s seconds');
  t.deepEqual(againNews.filter((e) => newIds.includes(e.after.id)).map((e) => e.after.id), [], 'no id of the first run is reused');
  account(t, 'clock reset and restart', [...raised, ...again].map(eventMessageId), delivered.map(eventMessageId));
});
