/**
 * The MQTT client and outbox against a REAL mosquitto (test/helpers/mosquitto.ts): availability
 * and last will, QoS 1 events, retained state for late subscribers, a broker killed and
 * restarted mid-stream, an agent restarted with a non-empty outbox, password auth, inbound
 * commands, and the embedded aedes broker.
 */
import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { connect, type IClientOptions } from 'mqtt';
import { startMqttClient, MqttConnectError, type AgentMqttClient, type MqttClientOptions } from '../agent/mqtt/client.js';
import { startEmbeddedBroker } from '../agent/mqtt/embedded-broker.js';
import { agentTopics } from '../agent/mqtt/topics.js';
import { mosquittoPasswordFile, startMosquitto, waitForAutosave } from './helpers/mosquitto.js';
import { recordingSubscriber, type Received, type TeardownContext } from './helpers/mqtt-subscribers.js';

/** A plain mqtt.js subscriber that records everything it receives (reconnecting every 100 ms). */
const subscriber = (url: string, filter: string, t: TeardownContext, options: IClientOptions = {}) => recordingSubscriber(url, filter, t, { reconnectPeriod: 100, ...options });

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function tempDir(t: TeardownContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-mqtt-it-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function agentClient(t: TeardownContext, options: Partial<MqttClientOptions> & Pick<MqttClientOptions, 'url' | 'topics'>, outboxDir?: string): Promise<AgentMqttClient> {
  const client = await startMqttClient({
    outbox: { dir: outboxDir ?? join(await tempDir(t), 'outbox'), maxRecords: 10000, maxBytes: 64 << 20 },
    reconnect: { minDelayMs: 100, maxDelayMs: 500 },
    keepaliveSeconds: 5,
    ...options,
  });
  t.teardown(() => client.stop({ flushTimeoutMs: 0 }));
  return client;
}

const ids = (messages: Received[]) => messages.map((m) => JSON.parse(m.payload.toString()).id as string);

test('availability: online (retained) on connect, offline as the last will when the agent process is killed', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const topics = agentTopics('shelfwatch', 'crashy');
  const watcher = await subscriber(broker.url, topics.availability, t);
  const outboxDir = join(await tempDir(t), 'outbox');
  // The agent runs in a child process so it can really die (SIGKILL: no DISCONNECT is sent).
  const script = `
    import { startMqttClient } from './agent/mqtt/client.js';
    import { agentTopics } from './agent/mqtt/topics.js';
    const client = await startMqttClient({ url: ${JSON.stringify(broker.url)}, topics: agentTopics('shelfwatch', 'crashy'),
      keepaliveSeconds: 5, outbox: { dir: ${JSON.stringify(outboxDir)}, maxRecords: 100, maxBytes: 1000000 } });
    await client.waitUntilConnected(10000);
    console.log('connected');
    setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => child.kill('SIGKILL'));
  await until('the agent to connect', () => watcher.messages.some((m) => m.payload.toString() === 'online'), 30000);

  // A late subscriber sees the retained `online`.
  const late = await subscriber(broker.url, topics.availability, t);
  await until('retained online', () => late.messages.length > 0);
  t.like(late.messages[0], { retain: true });
  t.is(late.messages[0].payload.toString(), 'online');

  child.kill('SIGKILL');
  await until('the last will', () => watcher.messages.some((m) => m.payload.toString() === 'offline'));
  t.deepEqual(watcher.messages.map((m) => m.payload.toString()), ['online', 'offline']);
  // The will was published retained: a newcomer learns the agent is gone.
  const newcomer = await subscriber(broker.url, topics.availability, t);
  await until('retained offline', () => newcomer.messages.length > 0);
  t.is(newcomer.messages[0].payload.toString(), 'offline');
});

test('QoS 1 events arrive; retained state and thumbnail reach a late subscriber, events do not; stop() says offline', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const topics = agentTopics('shelfwatch', 'box-1');
  const slot = topics.slot('aisle3', 'A1');
  const live = await subscriber(broker.url, topics.events, t);
  const client = await agentClient(t, { url: broker.url, topics });
  await client.waitUntilConnected(10000);
  t.is(client.state, 'connected');

  const jpeg = Buffer.from([0xff, 0xd8, 0xff, 0xe0, 1, 2, 3, 0, 255, 0xff, 0xd9]);
  for (let i = 0; i < 10; i++) await client.publish({ id: `ev-${i}`, topic: topics.events, payload: JSON.stringify({ id: `ev-${i}`, type: 'new' }) });
  await client.publish({ id: 'A1:state:1', topic: slot.state, payload: JSON.stringify({ state: 'ok', score: 1 }), retain: true });
  await client.publish({ id: 'A1:state:2', topic: slot.state, payload: JSON.stringify({ state: 'anomalous', score: 14.2 }), retain: true });
  await client.publish({ id: 'A1:thumb', topic: slot.thumbnail, payload: jpeg, retain: true });
  await until('all events', () => live.messages.length >= 10);
  t.deepEqual(ids(live.messages), Array.from({ length: 10 }, (_, i) => `ev-${i}`));
  await until('the outbox to empty', () => client.outbox.depth().records === 0);
  t.like(client.metrics(), { state: 'connected', connects: 1 });

  const late = await subscriber(broker.url, `${topics.root}/#`, t);
  await until('retained messages', () => late.messages.length >= 3);
  await new Promise((r) => setTimeout(r, 200));
  const byTopic = new Map(late.messages.map((m) => [m.topic, m]));
  t.false(byTopic.has(topics.events), 'events are not retained');
  t.is(byTopic.get(topics.availability)?.payload.toString(), 'online');
  t.like(JSON.parse(byTopic.get(slot.state)!.payload.toString()), { state: 'anomalous', score: 14.2 });
  t.true(byTopic.get(slot.thumbnail)!.payload.equals(jpeg), 'thumbnail bytes unchanged');
  t.true(late.messages.every((m) => m.retain));

  await client.stop();
  t.is(client.state, 'offline');
  await until('offline availability', () => late.messages.some((m) => m.topic === topics.availability && m.payload.toString() === 'offline'));
});

test('broker stopped and restarted mid-stream: every one of 200 messages arrives, in order', async (t) => {
  // Persistence keeps the subscriber's session (clean=false, QoS 1) across the restart, so
  // messages that reach the restarted broker before the subscriber is back are queued for it: a
  // lost message can only be the publisher's fault. The broker is stopped (SIGTERM), not killed:
  // mosquitto PUBACKs a message before its next autosave, so a SIGKILL can lose a message it has
  // already acknowledged, which no client can prevent (a clean-clone CI run under load lost one
  // that way). The publisher sees the same thing either way: its connection drops mid-stream.
  const broker = await startMosquitto({ persistence: true });
  t.teardown(() => broker.dispose());
  const topics = agentTopics('shelfwatch', 'box-2');
  const sub = await subscriber(broker.url, topics.events, t, { clientId: 'it-persistent-sub', clean: false });
  await waitForAutosave(); // the subscription must be on disk before the restart
  const client = await agentClient(t, { url: broker.url, topics });
  await client.waitUntilConnected(10000);
  const states: string[] = [];
  client.on('state', (s) => states.push(s));

  const total = 200;
  const publish = (i: number) => client.publish({ id: `m-${i}`, topic: topics.events, payload: JSON.stringify({ id: `m-${i}` }) });
  // First half as one burst; the broker is SIGKILLed while it streams (records in flight).
  const burst = Promise.all(Array.from({ length: 100 }, (_, i) => publish(i)));
  await until('the stream to be under way', () => sub.messages.length >= 30);
  await broker.stop();
  await burst;
  const pendingWhileDown = client.outbox.depth().records;
  // Second half while the broker is down: it can only go to the outbox.
  for (let i = 100; i < total; i++) await publish(i);
  await broker.restart();
  await until('all 200 messages at the subscriber', () => new Set(ids(sub.messages)).size === total, 30000);
  const received = ids(sub.messages);
  const firstSeen = [...new Set(received)];
  t.deepEqual(firstSeen, Array.from({ length: total }, (_, i) => `m-${i}`), 'none lost, first deliveries in publish order');
  t.true(pendingWhileDown > 0, 'the stop happened mid-stream');
  t.log(`${pendingWhileDown} of the first 100 pending at the stop; received ${received.length} messages for ${total} ids (${received.length - total} duplicates from lost PUBACKs)`);
  await until('the outbox to empty', () => client.outbox.depth().records === 0);
  t.true(states.includes('reconnecting') && states.at(-1) === 'connected', `states: ${states.join(' → ')}`);
  t.like(client.metrics(), { connectionLosses: 1, state: 'connected' });
});

test('agent restarted with a non-empty outbox: the new process delivers everything and empties it', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const topics = agentTopics('shelfwatch', 'box-3');
  const outboxDir = join(await tempDir(t), 'outbox');
  await broker.stop();

  // First life: the broker is down; everything lands in the outbox only.
  const first = await agentClient(t, { url: broker.url, topics }, outboxDir);
  for (let i = 0; i < 50; i++) await first.publish({ id: `r-${i}`, topic: topics.events, payload: JSON.stringify({ id: `r-${i}` }) });
  await first.publish({ id: 'state', topic: topics.slot('c', 's').state, payload: '{"state":"ok"}', retain: true });
  t.not(first.state, 'connected');
  await first.stop();
  t.is((await readdir(outboxDir)).filter((n) => n.endsWith('.rec')).length, 51);

  // The broker comes back, then a new agent process opens the same outbox.
  await broker.restart();
  const sub = await subscriber(broker.url, `${topics.root}/#`, t);
  const second = await agentClient(t, { url: broker.url, topics }, outboxDir);
  t.is(second.outbox.depth().records, 51);
  await until('all 50 events', () => new Set(ids(sub.messages.filter((m) => m.topic === topics.events))).size === 50);
  t.deepEqual([...new Set(ids(sub.messages.filter((m) => m.topic === topics.events)))], Array.from({ length: 50 }, (_, i) => `r-${i}`));
  await until('the outbox to empty after PUBACKs', () => second.outbox.depth().records === 0);
  t.is((await readdir(outboxDir)).filter((n) => n.endsWith('.rec')).length, 0);
  t.true(sub.messages.some((m) => m.topic === topics.slot('c', 's').state));
});

test('username/password: the right password connects; a wrong one gives a clear error without the password', async (t) => {
  const dir = await tempDir(t);
  const passwords = await mosquittoPasswordFile(dir, { agent: 's3cret-pw' });
  const broker = await startMosquitto({ extraConfig: [`password_file ${passwords}`, 'allow_anonymous false'] });
  t.teardown(() => broker.dispose());
  const topics = agentTopics('shelfwatch', 'auth');

  const good = await agentClient(t, { url: broker.url, topics, username: 'agent', password: 's3cret-pw' });
  await good.waitUntilConnected(10000);
  await good.publish({ id: 'x', topic: topics.events, payload: '{}' });
  await until('delivery', () => good.outbox.depth().records === 0);

  const bad = await agentClient(t, { url: broker.url, topics, username: 'agent', password: 'wrong-pw', clientId: 'auth-bad' });
  const err = await t.throwsAsync(bad.waitUntilConnected(10000), { instanceOf: MqttConnectError });
  t.regex(err!.message, /refused client "auth-bad": Connection refused: (Not authorized|Bad username or password) \(code (4|5|134|135)\) \(check mqtt\.username/);
  t.true((err as MqttConnectError).permanent);
  t.false(err!.message.includes('wrong-pw'));
  t.is(bad.state === 'connected', false);
});

/** A throwaway CA and a server certificate for `broker.test` (openssl CLI). */
async function makeCertificates(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const run = (...args: string[]) => promisify(execFile)('openssl', args, { cwd: dir });
  await run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=shelfwatch test CA', '-keyout', 'ca.key', '-out', 'ca.pem');
  await run('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=broker.test', '-keyout', 'server.key', '-out', 'server.csr');
  await writeFile(join(dir, 'san.ext'), 'subjectAltName=DNS:broker.test\n');
  await run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', 'san.ext', '-out', 'server.pem');
  return { ca: join(dir, 'ca.pem'), cert: join(dir, 'server.pem'), key: join(dir, 'server.key') };
}

test('TLS: the CA file and servername from the config verify the broker; without the CA the error says why', async (t) => {
  const dir = await tempDir(t);
  const pem = await makeCertificates(dir);
  // The extra lines apply to the helper's listener, which then speaks TLS only.
  const broker = await startMosquitto({ extraConfig: [`cafile ${pem.ca}`, `certfile ${pem.cert}`, `keyfile ${pem.key}`] });
  t.teardown(() => broker.dispose());
  const url = `mqtts://127.0.0.1:${broker.port}`;
  const topics = agentTopics('shelfwatch', 'tls');

  const good = await agentClient(t, { url, topics, tls: { ca: pem.ca, servername: 'broker.test', rejectUnauthorized: true } });
  await good.waitUntilConnected(10000);
  await good.publish({ id: 'x', topic: topics.events, payload: '{}' });
  await until('delivery over TLS', () => good.outbox.depth().records === 0);

  const untrusted = await agentClient(t, { url, topics, clientId: 'tls-untrusted', tls: { servername: 'broker.test' } });
  const err = await t.throwsAsync(untrusted.waitUntilConnected(1500));
  t.regex(err!.message, new RegExp(`not connected to MQTT broker mqtts://127\\.0\\.0\\.1:${broker.port} after 1500 ms: MQTT connection to .* failed: .*(self-signed|unable to (get|verify))`));

  await t.throwsAsync(startMqttClient({ url, topics, tls: { ca: join(dir, 'missing.pem') }, outbox: { dir: join(dir, 'o'), maxRecords: 1, maxBytes: 1000 } }), {
    message: /^mqtt\.tls\.ca: cannot read .*missing\.pem: ENOENT/,
  });
});

test('TLS: renewed files are read again before the next connection attempt (no restart)', async (t) => {
  const dir = await tempDir(t);
  const [first, second] = [join(dir, 'a'), join(dir, 'b')];
  await Promise.all([first, second].map((d) => mkdir(d)));
  const pemA = await makeCertificates(first);
  const pemB = await makeCertificates(second);
  // The broker's and the agent's files live at fixed paths; a renewal replaces their contents.
  const served = { cert: join(dir, 'server.pem'), key: join(dir, 'server.key'), ca: join(dir, 'broker-ca.pem') };
  const agentCa = join(dir, 'agent-ca.pem');
  const install = async (pem: { ca: string; cert: string; key: string }) => {
    await copyFile(pem.cert, served.cert);
    await copyFile(pem.key, served.key);
    await copyFile(pem.ca, served.ca);
  };
  await install(pemA);
  await copyFile(pemA.ca, agentCa);
  const broker = await startMosquitto({ extraConfig: [`cafile ${served.ca}`, `certfile ${served.cert}`, `keyfile ${served.key}`] });
  t.teardown(() => broker.dispose());
  const url = `mqtts://127.0.0.1:${broker.port}`;
  const topics = agentTopics('shelfwatch', 'tls-renew');
  const lines: string[] = [];
  const log = (level: string) => (message: string, fields?: Record<string, unknown>) => lines.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`);
  const client = await agentClient(t, { url, topics, tls: { ca: agentCa, servername: 'broker.test' }, logger: { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') } });
  await client.waitUntilConnected(10000);
  await client.publish({ id: 'before', topic: topics.events, payload: '{}' });
  await until('delivery with the first CA', () => client.outbox.depth().records === 0);

  // The broker moves to a certificate of another CA, and the agent's CA file is renewed to match.
  await install(pemB);
  await copyFile(pemB.ca, agentCa);
  await broker.restart();
  await client.publish({ id: 'after', topic: topics.events, payload: '{}' });
  await until('delivery with the renewed CA', () => client.outbox.depth().records === 0, 20000);
  t.true(lines.some((l) => l.includes('TLS files changed') && l.includes('"ca"')), lines.join('\n'));

  // A file that cannot be read during a renewal keeps the material read before.
  await rm(agentCa);
  await broker.restart();
  await client.publish({ id: 'during', topic: topics.events, payload: '{}' });
  await until('delivery with the CA read before', () => client.outbox.depth().records === 0, 20000);
  t.true(lines.some((l) => l.startsWith('warn could not read the TLS files again') && l.includes('agent-ca.pem')), lines.join('\n'));
});

test('commands: valid ones reach the handler; oversized, stale retained, unknown and excess ones are refused', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const topics = agentTopics('shelfwatch', 'cmd');
  const sender = connect(broker.url);
  t.teardown(() => sender.end(true));
  const send = (name: string, payload: string | Buffer, retain = false) =>
    new Promise<void>((resolve, reject) => sender.publish(topics.command(name), payload, { qos: 1, retain }, (err) => (err ? reject(err) : resolve())));
  // A retained command left on the broker would otherwise run again on every reconnect.
  await send('rescan', '{"stale":true}', true);

  const client = await agentClient(t, { url: broker.url, topics, commands: { maxPayloadBytes: 100, ratePerSecond: 0.001, burst: 3 } });
  const seen: unknown[] = [];
  client.onCommand('rescan', (cmd) => {
    seen.push(cmd.json());
  });
  client.onCommand('explode', () => {
    throw new Error('handler bug');
  });
  await client.waitUntilConnected(10000);
  await until('the stale retained command', () => client.metrics().commands.rejected.retained === 1);
  await send('rescan', JSON.stringify({ camera: 'aisle3' }));
  await send('rescan', Buffer.alloc(101, 0x20)); // too large: refused before it costs a token
  await send('shutdown', '{}'); // unknown: costs a token
  await send('explode', '{}'); // accepted, the handler throws: counted, not fatal
  await send('rescan', '{"n":2}'); // over the burst of 3
  await until('command processing', () => {
    const c = client.metrics().commands;
    return c.accepted + c.rejected.rateLimited + c.rejected.tooLarge + c.rejected.unknown >= 5;
  });
  t.deepEqual(seen, [{ camera: 'aisle3' }]);
  t.deepEqual(client.metrics().commands, {
    accepted: 2,
    rejected: { tooLarge: 1, rateLimited: 1, retained: 1, unknown: 1, invalidTopic: 0 },
    handlerErrors: 1,
  });
  t.throws(() => client.onCommand('rescan', () => undefined), { message: /already registered/ });
  t.throws(() => client.onCommand('a/b', () => undefined), { message: /command name "a\/b"/ });
});

test('embedded broker: a plain mqtt.js client and the agent client both work against it', async (t) => {
  const broker = await startEmbeddedBroker({ port: 0 });
  t.teardown(() => broker.close());
  t.regex(broker.url, /^mqtt:\/\/127\.0\.0\.1:\d+$/);
  const topics = agentTopics('shelfwatch', 'embedded');
  const sub = await subscriber(broker.url, `${topics.root}/#`, t);
  const lines: string[] = [];
  const log = (level: string) => (message: string) => lines.push(`${level} ${message}`);
  const client = await agentClient(t, { url: broker.url, topics, logger: { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') } });
  await client.waitUntilConnected(10000);
  await client.publish({ id: 'e', topic: topics.events, payload: JSON.stringify({ id: 'e' }) });
  await until('event via aedes', () => sub.messages.some((m) => m.topic === topics.events));
  // aedes speaks MQTT 3.1.1 only: the agent (protocolVersion auto) fell back to it, saying so once.
  t.is(client.metrics().protocolVersion, 4);
  t.is(lines.filter((l) => l.includes('does not speak MQTT 5')).length, 1);
  t.false(lines.some((l) => l.startsWith('error')), lines.join('\n'));
  // Asked for MQTT 5 only, the agent does not fall back: the refusal is the error.
  const strict5 = await agentClient(t, { url: broker.url, topics: agentTopics('shelfwatch', 'embedded-5'), protocolVersion: 5 });
  const err = await t.throwsAsync(strict5.waitUntilConnected(5000));
  t.regex(err!.message, /[Uu]nacceptable protocol version \(code 1\)/);

  const plain = connect(broker.url);
  t.teardown(() => plain.end(true));
  await new Promise<void>((resolve, reject) => plain.publish('plain/retained', 'kept', { qos: 1, retain: true }, (err) => (err ? reject(err) : resolve())));
  const late = await subscriber(broker.url, 'plain/#', t);
  await until('retained via aedes', () => late.messages.length > 0);
  t.is(late.messages[0].payload.toString(), 'kept');
  // A second broker on a taken port fails with a clear error.
  await t.throwsAsync(startEmbeddedBroker({ port: broker.port }), { message: new RegExp(`cannot listen on 127\\.0\\.0\\.1:${broker.port} \\(EADDRINUSE\\)`) });
  await client.stop();
  await broker.close();
  const refused = connect(broker.url, { reconnectPeriod: 0 });
  const error = await new Promise<Error>((resolve) => refused.once('error', resolve));
  refused.end(true);
  t.regex(error.message, /ECONNREFUSED/);
});

test('a message the broker drops the connection on is set aside after a few tries; everything behind it arrives', async (t) => {
  // mosquitto drops a client that sends a packet over max_packet_size (as AWS IoT does past 128 KB).
  // Over MQTT 3.1.1, where the broker cannot announce that limit (MQTT 5 clients are told it in
  // CONNACK and set such a record aside without sending it: mqtt5-broker-limits.test.ts).
  const broker = await startMosquitto({ extraConfig: 'max_packet_size 65536' });
  t.teardown(() => broker.dispose());
  const topics = agentTopics('shelfwatch', 'poison');
  const events = await subscriber(broker.url, topics.events, t);
  const outboxDir = join(await tempDir(t), 'outbox');
  const client = await agentClient(t, { url: broker.url, topics, protocolVersion: 4, poisonAfterLosses: 3, reconnect: { minDelayMs: 50, maxDelayMs: 400, stableMs: 60_000 } }, outboxDir);
  await client.waitUntilConnected(10_000);
  const big = await client.publish({ id: 'big-thumbnail', topic: topics.slot('cam', 'S1').thumbnail, payload: Buffer.alloc(100_000, 1), retain: true });
  for (let i = 0; i < 5; i++) await client.publish({ id: `ev${i}`, topic: topics.events, payload: `event ${i}` });
  await until('the five events', () => events.messages.length === 5, 30_000);
  t.deepEqual(events.messages.map((m) => m.payload.toString()), [0, 1, 2, 3, 4].map((i) => `event ${i}`));
  const m = client.metrics();
  t.is(m.outbox.counters.deadLettered, 1);
  t.is(m.connectionLosses, 3, 'three losses with it at the head, then it was set aside');
  await until('the PUBACKs', () => client.metrics().outbox.depth.records === 0);
  // Kept for inspection, not deleted (written to a .tmp file and renamed: wait for the rename).
  const deadFile = `${String(big.seq).padStart(16, '0')}.rec`;
  await until('the dead copy', async () => (await readdir(join(outboxDir, 'dead'))).includes(deadFile));
  t.deepEqual(await readdir(join(outboxDir, 'dead')), [deadFile]);
});
