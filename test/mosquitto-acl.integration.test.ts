/**
 * deploy/mosquitto/ for real: mosquitto runs the shipped mosquitto.conf, acl and acl.readers
 * (paths and ports rewritten to a temp dir and free 127.0.0.1 ports) with certificates made by
 * make-test-ca.sh. Checks that each agent is confined to shelfwatch/<its id>/#, consumers are
 * read-only, and TLS refuses a wrong CA, a missing client certificate and a wrong host name.
 * Needs: mosquitto, mosquitto_passwd, openssl.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { connect, type IClientOptions, type MqttClient } from 'mqtt';
import { startMqttClient } from '../agent/mqtt/client.js';
import { agentTopics } from '../agent/mqtt/topics.js';
import { freePort } from './helpers/mosquitto.js';

const exec = promisify(execFile);
const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const shipped = join(repo, 'deploy', 'mosquitto');

interface Broker {
  dir: string;
  /** mTLS agents, password agents, consumers. */
  ports: { certAgents: number; passwordAgents: number; readers: number };
  file: (name: string) => string;
  log: () => Promise<string>;
}

const READER_PASSWORDS = { dashboard: 'dash-secret', operator: 'op-secret' };
const AGENT_PASSWORDS = { 'store-3': 'store3-secret' };

let broker: Broker;
let process_: ChildProcess | null = null;
let workDir = '';

test.before(async () => {
  workDir = await mkdtemp(join(tmpdir(), 'shelfwatch-acl-'));
  const dir = join(workDir, 'etc');
  await mkdir(dir);
  // The broker CA (with agent certificates), and a second, unrelated CA.
  await exec('bash', [join(shipped, 'make-test-ca.sh'), dir, '--host', 'broker.local', '--agent', 'store-1', '--agent', 'store-2']);
  await exec('bash', [join(shipped, 'make-test-ca.sh'), join(workDir, 'other-ca'), '--host', 'broker.local', '--agent', 'store-1']);
  for (const name of ['acl', 'acl.readers']) await writeFile(join(dir, name), await readFile(join(shipped, name)));
  await passwords(join(dir, 'passwords.readers'), READER_PASSWORDS);
  await passwords(join(dir, 'passwords.agents'), AGENT_PASSWORDS);

  const ports = { certAgents: await freePort(), passwordAgents: await freePort(), readers: await freePort() };
  const shippedConf = await readFile(join(shipped, 'mosquitto.conf'), 'utf8');
  const conf = [
    shippedConf
      .replaceAll('/etc/mosquitto/shelfwatch/', `${dir}/`)
      .replace('persistence true', 'persistence false')
      .replace(/^log_dest stdout$/m, `log_dest file ${join(workDir, 'mosquitto.log')}`)
      .replace(/^listener 8883$/m, `listener ${ports.certAgents} 127.0.0.1`)
      .replace(/^listener 8885$/m, `listener ${ports.passwordAgents} 127.0.0.1`)
      .replace(/^listener 8884$/m, `listener ${ports.readers} 127.0.0.1`),
    'log_type debug',
    'log_type subscribe',
    // As root, mosquitto would switch to user `mosquitto`, who cannot read the temp dir.
    process.getuid?.() === 0 ? 'user root' : '',
  ].join('\n');
  for (const port of [8883, 8884, 8885]) {
    if (new RegExp(`^listener ${port}$`, 'm').test(conf)) throw new Error(`listener ${port} was not rewritten`);
  }
  await writeFile(join(workDir, 'mosquitto.conf'), conf);
  process_ = spawn('mosquitto', ['-c', join(workDir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  // If the run is cut short (timeout) and after.always does not get to run, do not leave it behind.
  const child = process_;
  process.once('exit', () => child.kill('SIGKILL'));
  let stderr = '';
  process_.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const log = () => readFile(join(workDir, 'mosquitto.log'), 'utf8').catch(() => '');
  await waitFor(async () => (await log()).includes(`Opening ipv4 listen socket on port ${ports.readers}`) || process_?.exitCode !== null, 5000);
  if (process_.exitCode !== null) throw new Error(`mosquitto exited (${process_.exitCode}): ${stderr}\n${await log()}`);
  broker = { dir, ports, file: (name) => join(dir, name), log };
});

test.after.always(async () => {
  if (process_ && process_.exitCode === null) {
    const exited = new Promise((r) => process_!.once('exit', r));
    process_.kill('SIGTERM');
    await exited;
  }
  if (workDir) await rm(workDir, { recursive: true, force: true });
});

async function passwords(path: string, users: Record<string, string>): Promise<void> {
  await writeFile(path, '', { mode: 0o600 });
  for (const [user, password] of Object.entries(users)) await exec('mosquitto_passwd', ['-b', path, user, password]);
}

async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

type Outcome = { connected: MqttClient } | { refused: string };

/** Connects once (no reconnects) and reports whether the broker let us in, and why not. */
function tryConnect(t: ExecutionContext, port: number, options: IClientOptions): Promise<Outcome> {
  return new Promise((resolveOutcome) => {
    const client = connect(`mqtts://127.0.0.1:${port}`, {
      servername: 'broker.local',
      rejectUnauthorized: true,
      reconnectPeriod: 0,
      connectTimeout: 4000,
      protocolVersion: 4,
      ...options,
    });
    t.teardown(() => client.end(true));
    let done = false;
    const finish = (outcome: Outcome) => {
      if (done) return;
      done = true;
      if ('refused' in outcome) client.end(true);
      resolveOutcome(outcome);
    };
    client.once('connect', () => finish({ connected: client }));
    client.once('error', (err: Error & { code?: string | number }) => finish({ refused: `${err.code ?? ''} ${err.message}`.trim() }));
    client.once('close', () => finish({ refused: 'connection closed before CONNACK' }));
  });
}

async function mustConnect(t: ExecutionContext, port: number, options: IClientOptions): Promise<MqttClient> {
  const outcome = await tryConnect(t, port, options);
  if ('refused' in outcome) throw new Error(`connection refused: ${outcome.refused}\n${(await broker.log()).split('\n').slice(-15).join('\n')}`);
  return outcome.connected;
}

const ca = () => readFile(broker.file('ca.pem'));
const agentCert = async (id: string, dir = broker.dir) => ({ cert: await readFile(join(dir, `${id}.pem`)), key: await readFile(join(dir, `${id}.key`)) });
const certAgent = async (t: ExecutionContext, id: string, extra: IClientOptions = {}) =>
  mustConnect(t, broker.ports.certAgents, { ca: await ca(), ...(await agentCert(id)), clientId: uniqueId(`shelfwatch-${id}`), ...extra });
const reader = async (t: ExecutionContext, user: keyof typeof READER_PASSWORDS) =>
  mustConnect(t, broker.ports.readers, { ca: await ca(), username: user, password: READER_PASSWORDS[user], clientId: uniqueId(user) });

/** Tests run concurrently: a shared client id would make the broker drop the older connection. */
function uniqueId(prefix: string): string {
  return `${prefix}-${Math.random().toString(36).slice(2, 10)}`;
}

/** Rejects after `ms` instead of hanging the test run. */
function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Collects what `client` receives on `filter` (after the SUBACK). */
async function collect(client: MqttClient, filter: string): Promise<{ messages: Array<{ topic: string; payload: string }>; granted: number }> {
  const messages: Array<{ topic: string; payload: string }> = [];
  client.on('message', (topic, payload) => messages.push({ topic, payload: payload.toString() }));
  const granted = await client.subscribeAsync(filter, { qos: 1 });
  return { messages, granted: granted[0]?.qos ?? -1 };
}

/**
 * Publishes `denied` then, on the same connection, an allowed `marker`. The broker handles
 * one connection's publishes in order, so once the marker has arrived the denied message
 * would have too — its absence then means it was dropped, not merely late.
 */
async function assertDropped(
  t: ExecutionContext,
  publisher: MqttClient,
  denied: string,
  marker: string,
  seen: Array<{ topic: string; payload: string }>,
): Promise<void> {
  const tag = Math.random().toString(36).slice(2);
  await within(5000, publisher.publishAsync(denied, `denied-${tag}`, { qos: 1 }), `publish ${denied}`); // 3.1.1: PUBACK comes anyway
  await within(5000, publisher.publishAsync(marker, `marker-${tag}`, { qos: 1 }), `publish ${marker}`);
  await waitFor(() => seen.some((m) => m.payload === `marker-${tag}`), 5000);
  t.false(seen.some((m) => m.payload === `denied-${tag}`), `${denied} must not be delivered`);
}

test('an agent with its certificate publishes under its own prefix; consumers receive it', async (t) => {
  const dashboard = await reader(t, 'dashboard');
  const { messages, granted } = await collect(dashboard, 'shelfwatch/#');
  t.is(granted, 1);

  // The agent's own MQTT client, configured the way mqtt.tls is in the agent config.
  const outboxDir = join(workDir, 'outbox-store-1');
  const agent = await startMqttClient({
    url: `mqtts://127.0.0.1:${broker.ports.certAgents}`,
    topics: agentTopics('shelfwatch', 'store-1'),
    tls: { ca: broker.file('ca.pem'), cert: broker.file('store-1.pem'), key: broker.file('store-1.key'), servername: 'broker.local' },
    outbox: { dir: outboxDir, maxRecords: 100, maxBytes: 1 << 20, fsync: false },
  });
  t.teardown(() => agent.stop({ flushTimeoutMs: 500 }));
  await agent.waitUntilConnected(5000);
  // (Other tests run at the same time and publish to store-1's events too: match the payload.)
  await agent.publish({ id: 'e1', topic: 'shelfwatch/store-1/events', payload: '{"type":"new","id":"e1"}' });
  await waitFor(() => messages.some((m) => m.payload === '{"type":"new","id":"e1"}'), 5000);
  t.deepEqual(messages.find((m) => m.payload === '{"type":"new","id":"e1"}'), { topic: 'shelfwatch/store-1/events', payload: '{"type":"new","id":"e1"}' });
  t.true(messages.some((m) => m.topic === 'shelfwatch/store-1/availability' && m.payload === 'online'), 'its availability (and so its last will topic) is allowed');
  t.regex(await broker.log(), /New client connected .* as shelfwatch-store-1 \(.*u'store-1'\)/, 'the certificate CN became the username');
});

test('an agent cannot publish into another agent\'s prefix (MQTT 3.1.1: silently dropped)', async (t) => {
  const dashboard = await reader(t, 'dashboard');
  const { messages } = await collect(dashboard, 'shelfwatch/#');
  const store1 = await certAgent(t, 'store-1');
  await assertDropped(t, store1, 'shelfwatch/store-2/events', 'shelfwatch/store-1/events', messages);
  await assertDropped(t, store1, 'shelfwatch/store-2/A/1/state', 'shelfwatch/store-1/events', messages);
  await assertDropped(t, store1, 'shelfwatch/other-topic', 'shelfwatch/store-1/events', messages);
  await assertDropped(t, store1, 'elsewhere/store-1/events', 'shelfwatch/store-1/events', messages);
  t.regex(await broker.log(), /Denied PUBLISH from shelfwatch-store-1-\w+ .*'shelfwatch\/store-2\/events'/);
});

test('MQTT 5: the denied publish is answered with reason code 0x87 (not authorized)', async (t) => {
  const store1 = await certAgent(t, 'store-1', { protocolVersion: 5 });
  await t.notThrowsAsync(within(5000, store1.publishAsync('shelfwatch/store-1/events', 'ok', { qos: 1 }), 'allowed publish'));
  const err = await t.throwsAsync(within(5000, store1.publishAsync('shelfwatch/store-2/events', 'spoof', { qos: 1 }), 'denied publish'));
  t.regex(String((err as Error & { code?: number }).code ?? err?.message), /135|[Nn]ot authorized/);
});

test('the agent client (MQTT 5 by default) sets aside a publish the ACL refuses and delivers the rest', async (t) => {
  const dashboard = await reader(t, 'dashboard');
  const { messages } = await collect(dashboard, 'shelfwatch/#');
  const outboxDir = join(workDir, 'outbox-refused');
  const lines: string[] = [];
  const log = (level: string) => (message: string, fields?: Record<string, unknown>) => lines.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`);
  const agent = await startMqttClient({
    url: `mqtts://127.0.0.1:${broker.ports.certAgents}`,
    topics: agentTopics('shelfwatch', 'store-1'),
    clientId: uniqueId('shelfwatch-store-1'),
    tls: { ca: broker.file('ca.pem'), cert: broker.file('store-1.pem'), key: broker.file('store-1.key'), servername: 'broker.local' },
    outbox: { dir: outboxDir, maxRecords: 100, maxBytes: 1 << 20, fsync: false },
    logger: { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') },
  });
  t.teardown(() => agent.stop({ flushTimeoutMs: 500 }));
  await agent.waitUntilConnected(5000);
  const tag = Math.random().toString(36).slice(2);
  // A misconfigured base topic: outside the agent's ACL prefix. Then a message that is allowed.
  await agent.publish({ id: `spoof-${tag}`, topic: 'shelfwatch/store-2/events', payload: `spoof-${tag}` });
  await agent.publish({ id: `ok-${tag}`, topic: 'shelfwatch/store-1/events', payload: `ok-${tag}` });
  await waitFor(() => messages.some((m) => m.payload === `ok-${tag}`), 5000);
  await waitFor(() => agent.outbox.depth().records === 0, 5000);
  t.false(messages.some((m) => m.payload === `spoof-${tag}`));
  const m = agent.metrics();
  t.like(m, { protocolVersion: 5, publishRefused: 1, connectionLosses: 0 });
  t.is(m.outbox.counters.deadLettered, 1);
  const refusal = lines.find((l) => l.startsWith('error the broker refused this message'));
  t.truthy(refusal, lines.join('\n'));
  t.regex(refusal!, /"reasonCode":"0x87"/);
  t.regex(refusal!, /shelfwatch\/store-2\/events/);
  t.regex(refusal!, /broker ACL/);
  // The dead copy is written to a .tmp file and renamed: wait for the renamed one.
  const deadRecords = async () => (await readdir(join(outboxDir, 'dead')).catch(() => [])).filter((f) => f.endsWith('.rec'));
  await waitFor(async () => (await deadRecords()).length > 0, 5000);
  const dead = await deadRecords();
  t.is(dead.length, 1);
  t.true((await readFile(join(outboxDir, 'dead', dead[0]!))).includes(`spoof-${tag}`), 'the refused record is kept for a post-mortem');
});

test('an agent cannot read another agent\'s topics; it does get its own commands', async (t) => {
  // Mosquitto 2.0 grants the subscription and filters each message on delivery.
  const store1 = await certAgent(t, 'store-1');
  const seenByStore1 = await collect(store1, 'shelfwatch/#');
  const dashboard = await reader(t, 'dashboard');
  const seenByDashboard = await collect(dashboard, 'shelfwatch/#');
  const store2 = await certAgent(t, 'store-2');
  await within(5000, store2.publishAsync('shelfwatch/store-2/events', 'store-2 private', { qos: 1 }), 'store-2 publish');
  await waitFor(() => seenByDashboard.messages.some((m) => m.payload === 'store-2 private'), 5000);
  // Once the broker has fanned the message out (the dashboard has it), anything for store-1
  // published afterwards queues behind it: when the command arrives, the event would have.
  const operator = await reader(t, 'operator');
  await within(5000, operator.publishAsync('shelfwatch/store-1/command/rescan', '{}', { qos: 1 }), 'operator command');
  await waitFor(() => seenByStore1.messages.some((m) => m.topic === 'shelfwatch/store-1/command/rescan'), 5000);
  t.false(seenByStore1.messages.some((m) => m.payload === 'store-2 private'), 'store-1 must not read store-2');
});

test('an agent with a password (listener 8885) is confined by username the same way', async (t) => {
  const dashboard = await reader(t, 'dashboard');
  const { messages } = await collect(dashboard, 'shelfwatch/#');
  const store3 = await mustConnect(t, broker.ports.passwordAgents, { ca: await ca(), username: 'store-3', password: AGENT_PASSWORDS['store-3'], clientId: 'shelfwatch-store-3' });
  await assertDropped(t, store3, 'shelfwatch/store-1/events', 'shelfwatch/store-3/events', messages);
  const wrong = await tryConnect(t, broker.ports.passwordAgents, { ca: await ca(), username: 'store-3', password: 'guess' });
  t.true('refused' in wrong);
  // Consumers' accounts do not exist on the agent listeners.
  const dashAsAgent = await tryConnect(t, broker.ports.passwordAgents, { ca: await ca(), username: 'dashboard', password: READER_PASSWORDS.dashboard });
  t.true('refused' in dashAsAgent);
});

test('consumers are read-only: a dashboard cannot publish events or states', async (t) => {
  const watcher = await reader(t, 'operator');
  const { messages } = await collect(watcher, 'shelfwatch/#');
  const dashboard = await reader(t, 'dashboard');
  const tag = 'from-dashboard';
  await within(5000, dashboard.publishAsync('shelfwatch/store-1/events', tag, { qos: 1 }), 'dashboard publish');
  await within(5000, dashboard.publishAsync('shelfwatch/dashboard/events', tag, { qos: 1 }), 'dashboard publish');
  // Marker from a real agent, published after the dashboard's attempts were processed.
  const store1 = await certAgent(t, 'store-1');
  await store1.publishAsync('shelfwatch/store-1/events', 'marker-readonly', { qos: 1 });
  await waitFor(() => messages.some((m) => m.payload === 'marker-readonly'), 5000);
  t.false(messages.some((m) => m.payload === tag));
  t.regex(await broker.log(), /Denied PUBLISH from dashboard-/);
});

test('TLS: no client certificate, a certificate from another CA, or an unknown user are refused', async (t) => {
  const noCert = await tryConnect(t, broker.ports.certAgents, { ca: await ca() });
  t.true('refused' in noCert, 'no client certificate');
  const foreign = await tryConnect(t, broker.ports.certAgents, { ca: await ca(), ...(await agentCert('store-1', join(workDir, 'other-ca'))) });
  t.true('refused' in foreign, 'client certificate signed by another CA');
  const stranger = await tryConnect(t, broker.ports.readers, { ca: await ca(), username: 'mallory', password: 'x' });
  t.true('refused' in stranger, 'unknown user');
  const anonymous = await tryConnect(t, broker.ports.readers, { ca: await ca() });
  t.true('refused' in anonymous, 'anonymous');
});

test('TLS: the agent refuses a broker it cannot verify (wrong CA) or whose name does not match', async (t) => {
  const wrongCa = await tryConnect(t, broker.ports.certAgents, { ca: await readFile(join(workDir, 'other-ca', 'ca.pem')), ...(await agentCert('store-1')) });
  t.true('refused' in wrongCa);
  if ('refused' in wrongCa) t.regex(wrongCa.refused, /certificate|SELF_SIGNED|UNABLE_TO_VERIFY/i);
  const wrongName = await tryConnect(t, broker.ports.certAgents, { ca: await ca(), ...(await agentCert('store-1')), servername: 'evil.example' });
  t.true('refused' in wrongName);
  if ('refused' in wrongName) t.regex(wrongName.refused, /ERR_TLS_CERT_ALTNAME_INVALID|does not match|altnames/i);
  // Same settings with the right name connect: the refusals above are about CA and name only.
  t.truthy(await certAgent(t, 'store-1'));
});
