import test, { type ExecutionContext } from 'ava';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  assertRunnable,
  checkConfigFiles,
  ConfigError,
  configFromObject,
  configWarnings,
  defaultConfig,
  formatConfigSummary,
  loadConfig,
  parseConfig,
  type ParseConfigOptions,
} from '../agent/config.js';
import { expandEnvString } from '../agent/config-env.js';
import { formatBytes, formatDurationMs, parseByteSize, parseDurationMs } from '../agent/duration.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const examplePath = join(repoRoot, 'deploy', 'shelfwatch.example.yaml');
const exampleEnv = { MQTT_USER: 'shelf-agent', MQTT_PASSWORD: 'pw-from-env-123', CAMERA_TOKEN: 'cam-token-456' };

/** A minimal valid config to break in one place at a time. */
const BASE = `
agent: { id: store-1 }
models:
  drinks: { path: /models/drinks.onnx }
cameras:
  - id: cam1
    source: { type: http-snapshot, url: http://cam/snap.jpg }
    schedule: '*/5 * * * *'
    slots:
      - { id: A1, box: [0, 0, 100, 100], model: drinks }
      - { id: A2, box: [100, 0, 100, 100], model: drinks }
      - { id: A3, box: [200, 0, 100, 100], model: drinks }
`;

function configError(t: ExecutionContext, text: string, options: ParseConfigOptions = {}): ConfigError {
  const error = t.throws(() => parseConfig(text, { origin: 'test.yaml', env: {}, ...options }), {
    instanceOf: ConfigError,
  });
  return error as ConfigError;
}

/** The issue at `path`, failing the test if there is none. */
function issueAt(t: ExecutionContext, error: ConfigError, path: string) {
  const issue = error.issues.find((i) => i.path === path);
  if (!issue) t.fail(`no issue at ${path}; got:\n${error.format()}`);
  return issue!;
}

// --- the example file -------------------------------------------------------------------------

test('the annotated example in deploy/ parses, with env values substituted and defaults filled', async (t) => {
  const config = await loadConfig(examplePath, { env: exampleEnv });
  const deployDir = dirname(examplePath);
  t.is(config.agent.id, 'store-042-box-1');
  t.is(config.mqtt.username, 'shelf-agent');
  t.is(config.mqtt.password, 'pw-from-env-123');
  t.false(config.mqtt.embedded);
  t.is(config.outbox.maxBytes, 268_435_456);
  // Absolute under the state dir: next to the installed config (/etc/shelfwatch) it would be read-only.
  t.is(config.models.snacks!.path, '/var/lib/shelfwatch/models/snacks.onnx');
  t.is(config.models.drinks!.threshold, 12.5);
  t.deepEqual(
    config.cameras.map((c) => c.source.type),
    ['http-snapshot', 'stream', 'folder', 'replay'],
  );
  const [snapshot, stream, folder, replay] = config.cameras;
  t.is(snapshot!.schedule, '*/5 8-22 * * *');
  t.is(snapshot!.source.type === 'http-snapshot' && snapshot!.source.timeoutMs, 5000);
  t.is(snapshot!.source.type === 'http-snapshot' && snapshot!.source.headers.Authorization, 'Bearer cam-token-456');
  t.deepEqual(snapshot!.slots[0]!.box, { x: 120, y: 40, width: 300, height: 420 });
  t.deepEqual(stream!.continuous, { maxFps: 0.5 });
  t.is(folder!.continuous, undefined, 'folder cameras default to every file as it comes');
  t.is(replay!.source.type === 'replay' && replay!.source.dir, join(deployDir, 'frames'));
  t.is(snapshot!.slots[1]!.refine, false);
  t.true(snapshot!.shrinkOnLoad);
  t.true(stream!.shrinkOnLoad, 'shrinkOnLoad defaults to true');
});

test('cameras[].shrinkOnLoad takes a boolean and names the camera when it is not one', (t) => {
  const off = parseConfig(BASE.replace("schedule: '*/5 * * * *'", "schedule: '*/5 * * * *'\n    shrinkOnLoad: false"), { origin: 'test.yaml', env: {} });
  t.false(off.cameras[0]!.shrinkOnLoad);
  const err = configError(t, BASE.replace("schedule: '*/5 * * * *'", "schedule: '*/5 * * * *'\n    shrinkOnLoad: sometimes"));
  t.regex(issueAt(t, err, 'cameras[0].shrinkOnLoad').message, /sometimes|boolean/);
});

test('the example names the env variables it needs when they are missing', (t) => {
  return loadConfig(examplePath, { env: {} }).then(
    () => t.fail('expected a ConfigError'),
    (e: unknown) => {
      t.true(e instanceof ConfigError);
      const err = e as ConfigError;
      t.regex(issueAt(t, err, 'mqtt.username').message, /MQTT_USER is not set/);
      t.regex(issueAt(t, err, 'mqtt.password').message, /MQTT_PASSWORD is not set/);
      t.regex(issueAt(t, err, 'cameras[0].source.headers.Authorization').message, /CAMERA_TOKEN/);
      t.is(err.issues.length, 3);
      t.true(err.issues.every((i) => typeof i.line === 'number'));
    },
  );
});

// --- defaults ---------------------------------------------------------------------------------

test('defaults are filled in and derived values computed', (t) => {
  const config = parseConfig('agent: { id: box-1 }\n', { origin: '/etc/shelfwatch/agent.yaml', env: {} });
  t.deepEqual(config.agent, { id: 'box-1', stateDir: '/etc/shelfwatch/.shelfwatch' });
  t.true(config.mqtt.embedded);
  t.is(config.mqtt.url, 'mqtt://127.0.0.1:1883');
  t.is(config.mqtt.clientId, 'shelfwatch-box-1');
  t.is(config.mqtt.baseTopic, 'shelfwatch');
  t.is(config.mqtt.keepaliveSeconds, 30);
  t.is(config.mqtt.statsIntervalSeconds, 60);
  t.deepEqual(config.mqtt.homeAssistant, { enabled: false, discoveryPrefix: 'homeassistant' });
  t.deepEqual(config.mqtt.commands, { maxPayloadBytes: 65536, ratePerSecond: 5, burst: 10, maxDownloadMiB: 512 });
  t.deepEqual(config.outbox, { dir: '/etc/shelfwatch/.shelfwatch/outbox', maxRecords: 10_000, maxBytes: 268_435_456 });
  t.deepEqual(config.inference, { provider: 'auto', batchSize: 8, batchWaitMs: 25, maxPendingFrames: 4, workerThread: true, intraOpThreads: 0, replicas: 'auto', spinWait: false });
  t.deepEqual(config.debounce, { raiseAfter: 2, window: 3, clearAfter: 3 });
  t.deepEqual(config.thumbnails, { maxSize: 320, quality: 80, dir: null, keep: 1000 });
  t.deepEqual(config.metrics, { enabled: true, host: '127.0.0.1', port: 9464 });
  t.deepEqual(config.logging, { level: 'info' });
  t.deepEqual(config.models, {});
  t.deepEqual(config.cameras, []);
});

test('embeddedPort moves the embedded broker; an explicit stateDir moves the outbox', (t) => {
  const config = parseConfig('agent: { id: a, stateDir: state }\nmqtt: { embeddedPort: 18830 }', {
    origin: '/srv/cfg/a.yaml',
    env: {},
  });
  t.is(config.mqtt.url, 'mqtt://127.0.0.1:18830');
  t.is(config.outbox.dir, '/srv/cfg/state/outbox');
});

test('sizes, durations and numeric strings are converted', (t) => {
  const config = parseConfig(
    `agent: { id: a }
mqtt: { keepaliveSeconds: 1m30s, statsIntervalSeconds: "120" }
outbox: { maxBytes: 1.5 GiB, maxRecords: "500" }
inference: { batchWaitMs: 1s }
metrics:
  port: \${PORT}
  enabled: \${METRICS:-true}`,
    { env: { PORT: '9100' } },
  );
  t.is(config.mqtt.keepaliveSeconds, 90);
  t.is(config.mqtt.statsIntervalSeconds, 120);
  t.is(config.outbox.maxBytes, 1.5 * 1024 ** 3);
  t.is(config.outbox.maxRecords, 500);
  t.is(config.inference.batchWaitMs, 1000);
  t.is(config.metrics.port, 9100);
  t.true(config.metrics.enabled);
});

test('duration and size helpers', (t) => {
  t.is(parseByteSize('256MB'), 268_435_456);
  t.is(parseByteSize('256 MiB'), 268_435_456);
  t.is(parseByteSize('512'), 512);
  t.is(parseByteSize('2kb'), 2048);
  t.is(parseByteSize('12 parsecs'), undefined);
  t.is(parseByteSize('-1MB'), undefined);
  t.is(parseDurationMs('250ms'), 250);
  t.is(parseDurationMs('1m30s'), 90_000);
  t.is(parseDurationMs('1h 15m'), 4_500_000);
  t.is(parseDurationMs('2.5s'), 2500);
  t.is(parseDurationMs('5'), undefined, 'a bare number has no unit');
  t.is(parseDurationMs('5 fortnights'), undefined);
  t.is(formatBytes(268_435_456), '256 MiB');
  t.is(formatBytes(1500), '1.5 KiB');
  t.is(formatDurationMs(90_000), '1m30s');
  t.is(formatDurationMs(25), '25ms');
});

// --- one kind of mistake at a time ------------------------------------------------------------

test('wrong type names the path, the value and what was expected', (t) => {
  const error = configError(t, BASE.replace('agent: { id: store-1 }', 'agent: { id: store-1 }\nmetrics: { port: abc }'));
  const issue = issueAt(t, error, 'metrics.port');
  t.is(issue.value, '"abc"');
  t.regex(issue.message, /expected a number/);
  t.regex(error.format(), /metrics\.port \(line 3, column \d+\): expected a number; got "abc"/);

  const notObject = configError(t, 'agent: store-1');
  t.regex(issueAt(t, notObject, 'agent').message, /expected an object/);
});

test('missing required keys are reported at their path', (t) => {
  const error = configError(t, BASE.replace('agent: { id: store-1 }', 'agent: {}').replace('box: [0, 0, 100, 100], ', ''));
  t.regex(issueAt(t, error, 'agent.id').message, /required key is missing/);
  t.regex(issueAt(t, error, 'cameras[0].slots[0].box').message, /required key is missing.*\[x, y, width, height\]/);
  t.regex(issueAt(t, configError(t, 'mqtt: {}'), 'agent').message, /required key is missing/);
  t.regex(issueAt(t, configError(t, ''), 'agent').message, /required key is missing/, 'an empty file');
});

test('unknown keys are named with a suggestion for typos', (t) => {
  const text = BASE.replace('{ id: A3, box: [200, 0, 100, 100], model: drinks }', '{ id: A3, box: [200, 0, 100, 100], model: drinks, thresold: 3 }')
    .replace('agent: { id: store-1 }', 'agent: { id: store-1 }\nmqtt: { base_topic: x }\nloging: { level: info }\nzzz: 1');
  const error = configError(t, text);
  const typo = issueAt(t, error, 'cameras[0].slots[2].thresold');
  t.is(typo.message, "unknown key (did you mean 'threshold'?)");
  t.regex(error.format(), /cameras\[0\]\.slots\[2\]\.thresold \(line \d+, column \d+\): unknown key \(did you mean 'threshold'\?\)/);
  t.regex(issueAt(t, error, 'mqtt.base_topic').message, /did you mean 'baseTopic'/);
  t.regex(issueAt(t, error, 'loging').message, /did you mean 'logging'/);
  t.regex(issueAt(t, error, 'zzz').message, /expected one of: agent, mqtt, outbox/);
  t.is(error.issues.length, 4);
});

test('a __proto__ key is an unknown key, not a prototype', (t) => {
  const error = configError(t, 'agent: { id: a }\n__proto__: { polluted: true }');
  t.regex(issueAt(t, error, '__proto__').message, /unknown key/);
  t.is(({} as Record<string, unknown>).polluted, undefined);
});

test('bad enum values list the allowed values', (t) => {
  const error = configError(t, 'agent: { id: a }\ninference: { provider: gpu }\nlogging: { level: verbose }');
  const provider = issueAt(t, error, 'inference.provider');
  t.is(provider.message, 'expected one of: auto, cuda, webgpu, cpu');
  t.is(provider.value, '"gpu"');
  t.regex(issueAt(t, error, 'logging.level').message, /trace, debug, info, warn, error/);

  const source = configError(t, BASE.replace('type: http-snapshot, url: http://cam/snap.jpg', 'type: webcam'));
  const type = issueAt(t, source, 'cameras[0].source.type');
  t.regex(type.message, /http-snapshot, stream, folder, replay/);
  t.is(type.value, '"webcam"');
});

test('duplicate camera ids and duplicate slot ids within a camera are errors', (t) => {
  const twoCameras = `${BASE}
  - id: cam1
    source: { type: folder, path: /srv/in }
    slots:
      - { id: A1, box: [0, 0, 10, 10], model: drinks }
      - { id: A1, box: [0, 0, 10, 10], model: drinks }
`;
  const error = configError(t, twoCameras);
  const cam = issueAt(t, error, 'cameras[1].id');
  t.regex(cam.message, /duplicate camera id.*cameras\[0\]/);
  t.is(cam.value, '"cam1"');
  t.regex(issueAt(t, error, 'cameras[1].slots[1].id').message, /duplicate slot id.*slots\[0\]/);
  t.is(error.issues.length, 2, 'the same slot id in different cameras is fine');
});

test('a slot naming a model that is not in `models` is an error', (t) => {
  const error = configError(t, BASE.replace('{ id: A2, box: [100, 0, 100, 100], model: drinks }', '{ id: A2, box: [100, 0, 100, 100], model: drink }'));
  const issue = issueAt(t, error, 'cameras[0].slots[1].model');
  t.regex(issue.message, /unknown model \(did you mean 'drinks'\? known: drinks\)/);
  t.is(issue.value, '"drink"');
  t.regex(issueAt(t, configError(t, 'agent: { id: a }\nmodels: { "bad name": { path: x.onnx } }'), 'models["bad name"]').message, /model name/);
});

test('an invalid cron expression is an error that says which field', (t) => {
  const error = configError(t, BASE.replace("'*/5 * * * *'", "'61 * * * *'"));
  const issue = issueAt(t, error, 'cameras[0].schedule');
  t.regex(issue.message, /cron expression \(minute/);
  t.is(issue.value, '"61 * * * *"');
  t.regex(issueAt(t, configError(t, BASE.replace("'*/5 * * * *'", 'every five minutes')), 'cameras[0].schedule').message, /cron/);
});

test('boxes need 4 whole numbers, x/y >= 0 and a positive size', (t) => {
  const cases: Array<[string, RegExp]> = [
    ['[0, 0, 0, 100]', /width and height > 0/],
    ['[-5, 0, 10, 10]', /x and y >= 0/],
    ['[0, 0, 10]', /4 numbers, not 3/],
    ['[0, 0, 10.5, 10]', /whole numbers/],
    ['"big"', /\[x, y, width, height\]/],
  ];
  for (const [box, why] of cases) {
    const error = configError(t, BASE.replace('box: [100, 0, 100, 100]', `box: ${box}`));
    const issue = issueAt(t, error, 'cameras[0].slots[1].box');
    t.regex(issue.message, why, box);
    t.truthy(issue.value, box);
  }
  const objectBox = parseConfig(BASE.replace('box: [100, 0, 100, 100]', 'box: { x: 1, y: 2, width: 3, height: 4 }'), { env: {} });
  t.deepEqual(objectBox.cameras[0]!.slots[1]!.box, { x: 1, y: 2, width: 3, height: 4 });
});

test('URL schemes are checked per source type and for the broker', (t) => {
  const snapshot = configError(t, BASE.replace('url: http://cam/snap.jpg', 'url: rtsp://cam/1'));
  const issue = issueAt(t, snapshot, 'cameras[0].source.url');
  t.regex(issue.message, /http:\/\/, https:\/\/ \(not rtsp:\/\/\)/);
  t.is(issue.value, '"rtsp://cam/1"');

  const broker = configError(t, 'agent: { id: a }\nmqtt: { url: "http://broker:1883" }');
  t.regex(issueAt(t, broker, 'mqtt.url').message, /mqtt:\/\/, mqtts:\/\/, ws:\/\/, wss:\/\//);
  t.regex(issueAt(t, configError(t, 'agent: { id: a }\nmqtt: { url: "not a url" }'), 'mqtt.url').message, /expected a URL/);

  const stream = configError(
    t,
    BASE.replace('type: http-snapshot, url: http://cam/snap.jpg', 'type: stream, input: "ftp://cam/x.mp4"'),
  );
  t.regex(issueAt(t, stream, 'cameras[0].source.input').message, /rtsp:\/\/.*or a device or file path/);
  const local = parseConfig(BASE.replace('type: http-snapshot, url: http://cam/snap.jpg', 'type: stream, input: ./shelf.mp4'), {
    origin: '/data/site/agent.yaml',
    env: {},
  });
  t.is(local.cameras[0]!.source.type === 'stream' && local.cameras[0]!.source.input, '/data/site/shelf.mp4');
});

test('baseTopic must be free of MQTT wildcards and stray slashes', (t) => {
  for (const topic of ['shelf/#', 'a/+/b', '/shelf', 'shelf/', 'a//b', '$SYS']) {
    const error = configError(t, `agent: { id: a }\nmqtt: { baseTopic: "${topic}" }`);
    t.truthy(issueAt(t, error, 'mqtt.baseTopic').message, topic);
  }
  t.is(parseConfig('agent: { id: a }\nmqtt: { baseTopic: acme/stores }', { env: {} }).mqtt.baseTopic, 'acme/stores');
});

test('topic prefixes with control characters or unpaired surrogates (brokers drop the client) are refused at their key', (t) => {
  const tab = configError(t, 'agent: { id: a }\nmqtt: { baseTopic: "shelf\\twatch" }');
  t.regex(issueAt(t, tab, 'mqtt.baseTopic').message, /without control characters/);
  const ha = configError(t, 'agent: { id: a }\nmqtt: { homeAssistant: { enabled: true, discoveryPrefix: "home\\u007fassistant" } }');
  t.regex(issueAt(t, ha, 'mqtt.homeAssistant.discoveryPrefix').message, /without control characters/);
  const surrogate = configError(t, '{"agent": {"id": "a"}, "mqtt": {"baseTopic": "shelf\\ud800"}}', { format: 'json' });
  t.regex(issueAt(t, surrogate, 'mqtt.baseTopic').message, /unpaired surrogates/);
  t.is(parseConfig('agent: { id: a }\nmqtt: { baseTopic: "épicerie/étagère" }', { env: {} }).mqtt.baseTopic, 'épicerie/étagère');
});

test('continuous.maxFps below one frame per ~24.8 days (longer than a timer waits) is refused', (t) => {
  const error = configError(t, withSource('{ type: folder, path: /srv/drop }', 'continuous: { maxFps: 1e-7 }'));
  t.regex(issueAt(t, error, 'cameras[0].continuous.maxFps').message, /at least 4\.66e-7.*cron schedule/);
  t.notThrows(() => parseConfig(withSource('{ type: folder, path: /srv/drop }', 'continuous: { maxFps: 0.001 }'), { env: {} }));
  const fps = configError(t, withSource('{ type: stream, input: rtsp://cam/live, fps: 1e-7 }'));
  t.regex(issueAt(t, fps, 'cameras[0].source.fps').message, /at least 4\.66e-7/);
});

test('TLS: cert and key together, and only for an encrypted remote broker', (t) => {
  const half = configError(t, 'agent: { id: a }\nmqtt: { url: "mqtts://b:8883", tls: { cert: c.pem } }');
  t.regex(issueAt(t, half, 'mqtt.tls').message, /'cert' and 'key' together/);
  const plain = configError(t, 'agent: { id: a }\nmqtt: { url: "mqtt://b:1883", tls: { ca: ca.pem } }');
  t.regex(issueAt(t, plain, 'mqtt.url').message, /mqtts:\/\/ or wss:\/\//);
  const embedded = configError(t, 'agent: { id: a }\nmqtt: { tls: { ca: ca.pem } }');
  t.regex(issueAt(t, embedded, 'mqtt.tls').message, /set mqtt\.url/);
  const ok = parseConfig('agent: { id: a }\nmqtt: { url: "mqtts://b:8883", tls: { ca: ca.pem, cert: c.pem, key: k.pem } }', {
    origin: '/etc/sw/a.yaml',
    env: {},
  });
  t.deepEqual(ok.mqtt.tls, { ca: '/etc/sw/ca.pem', cert: '/etc/sw/c.pem', key: '/etc/sw/k.pem', rejectUnauthorized: true });
});

test('each camera has exactly one of schedule and continuous', (t) => {
  const both = configError(t, BASE.replace("schedule: '*/5 * * * *'", "schedule: '*/5 * * * *'\n    continuous: { maxFps: 1 }"));
  t.regex(issueAt(t, both, 'cameras[0]').message, /either 'schedule' or 'continuous', not both/);
  const neither = configError(t, BASE.replace("schedule: '*/5 * * * *'", ''));
  t.regex(issueAt(t, neither, 'cameras[0]').message, /http-snapshot camera needs 'schedule'/);
  t.is(neither.issues.length, 1);
  const replay = parseConfig(
    BASE.replace('type: http-snapshot, url: http://cam/snap.jpg', 'type: replay, files: [a.jpg, b.jpg]').replace("schedule: '*/5 * * * *'", ''),
    { origin: '/x/y.yaml', env: {} },
  );
  const cam = replay.cameras[0]!;
  t.is(cam.continuous, undefined, 'a replay with neither plays every file at its own interval');
  t.is(cam.schedule, undefined);
  t.deepEqual(cam.source.type === 'replay' && cam.source.files, ['/x/a.jpg', '/x/b.jpg']);
});

test('a replay source needs files or dir, not both', (t) => {
  const both = configError(t, BASE.replace('type: http-snapshot, url: http://cam/snap.jpg', 'type: replay, files: [a.jpg], dir: d'));
  t.regex(issueAt(t, both, 'cameras[0].source').message, /either 'files' or 'dir'/);
  const neither = configError(t, BASE.replace('type: http-snapshot, url: http://cam/snap.jpg', 'type: replay'));
  t.regex(issueAt(t, neither, 'cameras[0].source').message, /needs 'files'/);
});

test('debounce.raiseAfter cannot exceed debounce.window', (t) => {
  const error = configError(t, 'agent: { id: a }\ndebounce: { raiseAfter: 4, window: 3 }');
  t.regex(issueAt(t, error, 'debounce.raiseAfter').message, /at most debounce\.window \(3\)/);
});

test('sizes and durations that cannot be read say what format is expected', (t) => {
  const error = configError(t, 'agent: { id: a }\noutbox: { maxBytes: lots }\ninference: { batchWaitMs: soon }');
  t.regex(issueAt(t, error, 'outbox.maxBytes').message, /size such as '256MB'/);
  t.regex(issueAt(t, error, 'inference.batchWaitMs').message, /duration such as '5s'/);
});

// --- ${ENV} -----------------------------------------------------------------------------------

test('a missing env variable is an error naming the variable and the key', (t) => {
  const error = configError(t, 'agent: { id: a }\nmqtt:\n  url: mqtt://b:1883\n  username: ${MQTT_USER}\n', { env: {} });
  const issue = issueAt(t, error, 'mqtt.username');
  t.is(issue.message, 'environment variable MQTT_USER is not set');
  t.is(issue.line, 4);
  t.is(error.issues.length, 1, 'no second error for the unsubstituted value');
});

test('${VAR:-default}, $${ escapes, and values cannot inject structure', (t) => {
  const config = parseConfig(
    `agent: { id: "\${AGENT_ID:-fallback-id}" }
mqtt: { url: "mqtt://b:1883", username: "\${USER_NAME}", password: "$\${not-a-var}" }
models: { m: { path: "\${MODEL_DIR:-/models}/m.onnx" } }`,
    { env: { USER_NAME: 'evil\nagent: { id: other }', MODEL_DIR: '' } },
  );
  t.is(config.agent.id, 'fallback-id');
  t.is(config.mqtt.username, 'evil\nagent: { id: other }', 'the value stays one string');
  t.is(config.mqtt.password, '${not-a-var}');
  t.is(config.models.m!.path, '/models/m.onnx', ':- also applies to an empty variable');

  t.deepEqual(expandEnvString('a${X}b$c$${d}', { X: '1' }).value, 'a1b$c${d}');
  t.regex(expandEnvString('${bad-name}', {}).errors[0]!, /invalid variable reference/);
  t.regex(expandEnvString('${OPEN', {}).errors[0]!, /unterminated/);
});

test('YAML anchors and merge keys work for repeated settings', (t) => {
  const config = parseConfig(
    `agent: { id: a }
models: { drinks: { path: d.onnx } }
cameras:
  - id: c
    source: { type: folder, path: in }
    slots:
      - &slot { id: A1, box: [0, 0, 10, 10], model: drinks, category: drink_bottle, refine: true }
      - { <<: *slot, id: A2, box: [10, 0, 10, 10], refine: false }
`,
    { env: {} },
  );
  const [a1, a2] = config.cameras[0]!.slots;
  t.like(a1, { id: 'A1', category: 'drink_bottle', refine: true });
  t.like(a2, { id: 'A2', model: 'drinks', category: 'drink_bottle', refine: false, box: { x: 10, y: 0, width: 10, height: 10 } });
});

// --- syntax errors ----------------------------------------------------------------------------

test('a YAML syntax error gives the line and column', (t) => {
  const error = configError(t, 'agent:\n  id: a\n  stateDir: a: b\nmqtt: {}\n');
  t.is(error.issues.length, 1);
  t.is(error.issues[0]!.line, 3);
  t.is(error.issues[0]!.column, 13);
  t.regex(error.format(), /^YAML syntax error in test\.yaml/);
  t.regex(error.format(), /\(line 3, column 13\): Nested mappings/);

  // An unterminated quote is reported where the parser gives up: the end of the text.
  const open = configError(t, 'agent:\n  id: a\nmqtt: { url: "mqtt://x\n');
  t.regex(open.format(), /Missing closing "quote/);
  t.is(open.issues[0]!.line, 4);

  const duplicate = configError(t, 'agent: { id: a }\nagent: { id: b }\n');
  t.is(duplicate.issues[0]!.line, 2);
  t.regex(duplicate.issues[0]!.message, /unique/i);
});

// --- JSON -------------------------------------------------------------------------------------

test('JSON configs work, with the same checks and positions', (t) => {
  const json = JSON.stringify(
    {
      agent: { id: 'j1' },
      outbox: { maxBytes: '64MB' },
      models: { drinks: { path: 'drinks.onnx' } },
      cameras: [
        {
          id: 'c',
          source: { type: 'folder', path: 'in' },
          slots: [{ id: 's', box: [1, 2, 3, 4], model: 'drinks' }],
        },
      ],
    },
    null,
    2,
  );
  const config = parseConfig(json, { origin: '/cfg/agent.json', env: {} });
  t.is(config.outbox.maxBytes, 64 * 1024 * 1024);
  t.is(config.models.drinks!.path, '/cfg/drinks.onnx');
  t.is(config.cameras[0]!.continuous, undefined);

  const bad = t.throws(() => parseConfig(json.replace('"drinks"\n', '"drink"\n'), { origin: '/cfg/agent.json', env: {} }), {
    instanceOf: ConfigError,
  }) as ConfigError;
  const issue = issueAt(t, bad, 'cameras[0].slots[0].model');
  t.is(typeof issue.line, 'number');

  const syntax = t.throws(() => parseConfig('{\n  "agent": { "id": "a" },\n}', { format: 'json', env: {} }), {
    instanceOf: ConfigError,
  }) as ConfigError;
  t.is(syntax.issues[0]!.line, 3);
  t.regex(syntax.format(), /JSON syntax error/);
});

// --- all at once, and secrets -----------------------------------------------------------------

test('every problem is reported together, in document order', (t) => {
  const text = `agent: { id: "bad id!" }
mqtt: { url: "http://x", baseTopic: "a/#" }
inference: { provider: tpu, batchSize: 0 }
models: { drinks: { path: d.onnx } }
cameras:
  - id: cam1
    source: { type: http-snapshot, url: http://cam/snap.jpg }
    schedule: 'nope'
    slots:
      - { id: A1, box: [0, 0, 0, 0], model: drinks }
      - { id: A1, box: [0, 0, 1, 1], model: chips, treshold: 1 }
`;
  const error = configError(t, text);
  const paths = error.issues.map((i) => i.path);
  t.deepEqual(paths, [
    'agent.id',
    'mqtt.url',
    'mqtt.baseTopic',
    'inference.provider',
    'inference.batchSize',
    'cameras[0].schedule',
    'cameras[0].slots[0].box',
    'cameras[0].slots[1].id',
    'cameras[0].slots[1].model',
    'cameras[0].slots[1].treshold',
  ]);
  t.is(error.issues.length, 10);
  t.regex(error.format(), /^invalid config test\.yaml \(10 problems\):/);
  t.is(error.format(), error.message);
  t.true(error.issues.every((i) => typeof i.line === 'number'));
});

test('secrets never appear in error messages', (t) => {
  const secret = 'S3cr3t-Pa55';
  const envSecret = 'from-the-env-42';
  const text = `agent: { id: a }
mqtt:
  url: "mqtt://user:${secret}@broker:1883/x y"
  password: 12345678
  pasword: ${secret}
  token: ${secret}x
metrics: { port: "\${PORT_SECRET}" }
models: { m: { path: m.onnx } }
cameras:
  - id: c
    source:
      type: http-snapshot
      url: "ftp://cam/snap.jpg?token=${secret}"
      headers: { Authorization: 42, X-Api: ${secret} }
      timeoutMs: \${PORT_SECRET}
    schedule: '* * * * *'
    slots: [{ id: s, box: [0, 0, 1, 1], model: m }]
`;
  const error = configError(t, text, { env: { PORT_SECRET: envSecret } });
  const message = error.format();
  t.false(message.includes(secret), message);
  t.false(message.includes(envSecret), message);
  t.false(message.includes('12345678'), message);
  t.is(issueAt(t, error, 'mqtt.password').value, '<redacted>');
  t.is(issueAt(t, error, 'metrics.port').value, '<redacted>');
  t.is(issueAt(t, error, 'cameras[0].source.headers.Authorization').value, '<redacted>');
  t.regex(issueAt(t, error, 'mqtt.pasword').message, /did you mean 'password'/);
  t.is(issueAt(t, error, 'mqtt.pasword').value, undefined);
  t.regex(issueAt(t, error, 'cameras[0].source.url').value!, /token=\*\*\*/);
});

// --- files on disk, loading -------------------------------------------------------------------

test('checkConfigFiles reports every missing or unusable file at once', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-config-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'drinks.onnx'), 'onnx');
  await writeFile(join(dir, 'ca.pem'), 'pem');
  await writeFile(join(dir, 'not-a-dir'), 'x');
  await mkdir(join(dir, 'drop'));
  const text = `agent: { id: a, stateDir: state }
mqtt: { url: "mqtts://b:8883", tls: { ca: ca.pem, cert: missing-cert.pem, key: missing.key } }
models: { drinks: { path: drinks.onnx }, snacks: { path: snacks.onnx }, dir: { path: drop } }
cameras:
  - { id: c1, source: { type: folder, path: drop }, slots: [{ id: s, box: [0, 0, 1, 1], model: drinks }] }
  - { id: c2, source: { type: folder, path: not-a-dir }, slots: [{ id: s, box: [0, 0, 1, 1], model: snacks }] }
  - { id: c3, source: { type: replay, files: [gone.jpg] }, slots: [{ id: s, box: [0, 0, 1, 1], model: dir }] }
  - { id: c4, source: { type: stream, input: nothing.mp4 }, continuous: {}, slots: [{ id: s, box: [0, 0, 1, 1], model: drinks }] }
thumbnails: { dir: not-a-dir/thumbs }
`;
  const configPath = join(dir, 'agent.yaml');
  await writeFile(configPath, text);
  const config = await loadConfig(configPath, { env: {} });
  const error = await t.throwsAsync(checkConfigFiles(config, configPath), { instanceOf: ConfigError });
  const paths = error!.issues.map((i) => i.path).sort();
  t.deepEqual(paths, [
    'cameras[1].source.path',
    'cameras[2].source.files[0]',
    'cameras[3].source.input',
    'models.dir.path',
    'models.snacks.path',
    'mqtt.tls.cert',
    'mqtt.tls.key',
    'thumbnails.dir',
  ]);
  t.regex(issueAt(t, error!, 'models.snacks.path').message, /not found.*ENOENT/);
  t.is(issueAt(t, error!, 'models.snacks.path').value, JSON.stringify(join(dir, 'snacks.onnx')));
  t.regex(issueAt(t, error!, 'models.dir.path').message, /expected a regular file/);
  t.regex(issueAt(t, error!, 'cameras[1].source.path').message, /expected a directory/);
  t.regex(issueAt(t, error!, 'thumbnails.dir').message, /is not a directory/);

  // Fix everything: the same config passes.
  if (process.getuid?.() !== 0) {
    await chmod(join(dir, 'drinks.onnx'), 0o000);
    const unreadable = await t.throwsAsync(checkConfigFiles(config), { instanceOf: ConfigError });
    t.regex(issueAt(t, unreadable!, 'models.drinks.path').message, /not readable/);
    await chmod(join(dir, 'drinks.onnx'), 0o644);
  }
  const good = configFromObject(
    { agent: { id: 'a', stateDir: 'state' }, models: { drinks: { path: 'drinks.onnx' } } },
    { baseDir: dir, env: {} },
  );
  await t.notThrowsAsync(checkConfigFiles(good));
});

test('loadConfig: an unreadable file is a ConfigError naming the file', async (t) => {
  const error = await t.throwsAsync(loadConfig('/nonexistent/shelfwatch.yaml'), { instanceOf: ConfigError });
  t.regex(error!.message, /\/nonexistent\/shelfwatch\.yaml/);
  t.regex(error!.message, /ENOENT/);
});

// --- summary ----------------------------------------------------------------------------------

test('formatConfigSummary lists cameras, slots, models and the broker without secrets', async (t) => {
  const env = { ...exampleEnv, MQTT_PASSWORD: 'summary-secret-pw' };
  const config = await loadConfig(examplePath, { env });
  const summary = formatConfigSummary(config, examplePath);
  t.regex(summary, /^OK /);
  t.regex(summary, /broker +mqtts:\/\/broker\.local:8883 \(username set, password set, tls: ca\+cert\+key\)/);
  t.regex(summary, /cameras +4 with 5 slots/);
  t.regex(summary, /aisle3-left: http-snapshot http:\/\/cam-aisle3\.local\/snapshot\.jpg \(headers: Authorization\); schedule '\*\/5 8-22 \* \* \*'/);
  t.regex(summary, /slots: A1→drinks, A2→drinks/);
  t.regex(summary, /models +2/);
  t.false(summary.includes('summary-secret-pw'));
  t.false(summary.includes('cam-token-456'));
  t.false(summary.includes('shelf-agent'));
  t.false(summary.includes('warnings:'));
});

test('a config without cameras is valid, but config check warns and run refuses', (t) => {
  const config = defaultConfig('demo-box', '/tmp/demo');
  t.is(config.agent.stateDir, '/tmp/demo/.shelfwatch');
  t.deepEqual(configWarnings(config), ['no cameras configured: `shelfwatch run` needs at least one entry under `cameras`']);
  t.regex(formatConfigSummary(config), /warnings:\n {2}- no cameras configured/);
  const error = t.throws(() => assertRunnable(config, 'demo.yaml'), { instanceOf: ConfigError }) as ConfigError;
  t.is(error.issues[0]!.path, 'cameras');
  t.notThrows(() => assertRunnable(parseConfig(BASE, { env: {} })));
  const unused = parseConfig(BASE.replace('drinks: { path: /models/drinks.onnx }', 'drinks: { path: /models/drinks.onnx }\n  spare: { path: s.onnx }'), {
    env: {},
  });
  t.deepEqual(configWarnings(unused), ["model 'spare' is not used by any slot"]);
});

test('inference.replicas: auto or a whole number, with a message that says so', (t) => {
  const load = (replicas: unknown) => configFromObject({ agent: { id: 'a' }, inference: { replicas } }, { origin: 'x.yaml', env: {} });
  t.is(load('auto').inference.replicas, 'auto');
  t.is(load(3).inference.replicas, 3);
  t.throws(() => load('x'), { message: /inference\.replicas: expected "auto" or a whole number from 1 to 64; got "x"/ });
  t.throws(() => load(2.5), { message: /inference\.replicas: expected "auto" or a whole number/ });
  t.throws(() => load(0), { message: /inference\.replicas: expected a number >= 1; got 0/ });
});

test('thumbnails.keep: a whole number of files ≥ 1, default 1000', (t) => {
  const load = (thumbnails: unknown) => configFromObject({ agent: { id: 'a' }, thumbnails }, { origin: 'x.yaml', env: {} });
  t.is(load({}).thumbnails.keep, 1000);
  t.is(load({ keep: '25' }).thumbnails.keep, 25);
  t.throws(() => load({ keep: 0 }), { message: /thumbnails\.keep: expected a number >= 1; got 0/ });
  t.throws(() => load({ keep: 2.5 }), { message: /thumbnails\.keep/ });
  t.throws(() => load({ keep: 'many' }), { message: /thumbnails\.keep/ });
  t.throws(() => load({ keep: 1_000_000 }), { message: /thumbnails\.keep: expected a number <= 100000; got 1000000/ });
});

test('mqtt.commands: limits of inbound commands and of model downloads, checked with the key named', (t) => {
  const load = (commands: unknown) => configFromObject({ agent: { id: 'a' }, mqtt: { commands } }, { origin: 'x.yaml', env: {} });
  t.like(load({ ratePerSecond: '0.5', burst: 2, maxDownloadMiB: 64 }).mqtt.commands, { ratePerSecond: 0.5, burst: 2, maxDownloadMiB: 64, maxPayloadBytes: 65536 });
  t.throws(() => load({ ratePerSecond: 0 }), { message: /mqtt\.commands\.ratePerSecond: expected a number > 0; got 0/ });
  t.throws(() => load({ maxDownloadMiB: 8192 }), { message: /mqtt\.commands\.maxDownloadMiB: expected a number <= 4096; got 8192/ });
  t.throws(() => load({ burst: 1.5 }), { message: /mqtt\.commands\.burst/ });
  t.throws(() => load({ maxPayload: 10 }), { message: /mqtt\.commands\.maxPayload/ });
});

test('http-snapshot headers: names and values fetch would refuse are config errors that never echo the value; maxBytes takes a size', (t) => {
  const snapshot = (extra: string) => BASE.replace('type: http-snapshot, url: http://cam/snap.jpg', `type: http-snapshot, url: http://cam/snap.jpg, ${extra}`);
  const ok = parseConfig(snapshot("maxBytes: 5MB, headers: { X-Api-Key: 'k-123' }"), { origin: 'test.yaml', env: {} });
  const src = ok.cameras[0]!.source;
  t.true(src.type === 'http-snapshot' && src.maxBytes === 5 * 1024 * 1024);
  t.is(parseConfig(BASE, { origin: 'test.yaml', env: {} }).cameras[0]!.source.type === 'http-snapshot' && (parseConfig(BASE, { origin: 'test.yaml', env: {} }).cameras[0]!.source as { maxBytes: number }).maxBytes, 20 * 1024 * 1024);

  const value = configError(t, snapshot('headers: { Authorization: "Bearer s3cr3t\\r\\nX-Evil: 1" }'));
  t.regex(issueAt(t, value, 'cameras[0].source.headers.Authorization').message, /without line breaks, NUL or characters above U\+00FF/);
  t.false(value.format().includes('s3cr3t'), value.format());
  t.regex(issueAt(t, configError(t, snapshot('headers: { "Bad Name": x }')), 'cameras[0].source.headers["Bad Name"]').message, /HTTP header name/);
  t.regex(issueAt(t, configError(t, snapshot('maxBytes: lots')), 'cameras[0].source.maxBytes').message, /size such as '256MB'/);
});

// --- review fixes: what `config check` accepts, `Agent.start()` must accept too ------------------
// (imports are hoisted; they sit here to keep the appended block self-contained)
import { createCameraFeed } from '../agent/sources/index.js';

/** BASE with its one camera's source (and trigger) replaced. */
function withSource(source: string, trigger = 'continuous: { maxFps: 1 }'): string {
  return BASE.replace('source: { type: http-snapshot, url: http://cam/snap.jpg }', `source: ${source}`).replace(
    "schedule: '*/5 * * * *'",
    trigger,
  );
}

test('folder patterns the folder source cannot compile are config errors at cameras[i].source.pattern', (t) => {
  for (const [pattern, why] of [
    ['img[', /unclosed '\['/],
    ['*.{jpg,png', /unclosed '\{'/],
    ['sub/*.jpg', /without '\/'/],
    ['[z-a].jpg', /not a valid glob \(Range out of order/],
  ] as const) {
    const error = configError(t, withSource(`{ type: folder, path: /in, pattern: "${pattern}" }`));
    t.is(error.issues.length, 1, error.format());
    const issue = issueAt(t, error, 'cameras[0].source.pattern');
    t.regex(issue.message, /^expected a file-name glob such as '\*\.jpg'/);
    t.regex(issue.message, why);
    t.is(issue.value, JSON.stringify(pattern));
    t.is(typeof issue.line, 'number');
  }
  // What passes starts: the folder source compiles the same pattern.
  const ok = parseConfig(withSource('{ type: folder, path: /in, pattern: "IMG_[0-9]*.{jpg,JPEG}" }'), { env: {} });
  t.notThrows(() => createCameraFeed(ok.cameras[0]!));
});

test('stream loop: true is a config error at cameras[i].source.loop unless the input is a video file', (t) => {
  for (const [input, kind] of [
    ['rtsp://cam/s', /rtsp:\/\//],
    ['http://cam/video.mjpg', /http\(s\):\/\//],
    ['/dev/video0', /V4L2 device/],
  ] as const) {
    const error = configError(t, withSource(`{ type: stream, input: "${input}", loop: true }`));
    const issue = issueAt(t, error, 'cameras[0].source.loop');
    t.regex(issue.message, /^expected loop: false for .* input \(loop applies to video files only\)$/);
    t.regex(issue.message, kind);
    t.is(issue.value, 'true');
  }
  // Reported together with a problem elsewhere in the same source.
  const both = configError(t, withSource('{ type: stream, input: "rtsp://cam/s", loop: "true", fps: 0 }'));
  t.deepEqual(both.issues.map((i) => i.path).sort(), ['cameras[0].source.fps', 'cameras[0].source.loop']);
  const file = parseConfig(withSource('{ type: stream, input: clips/aisle.mp4, loop: true }'), { origin: '/cfg/a.yaml', env: {} });
  t.true(file.cameras[0]!.source.type === 'stream' && file.cameras[0]!.source.loop);
  t.notThrows(() => createCameraFeed(file.cameras[0]!));
});

test('an http-snapshot URL whose credentials cannot be decoded is a config error at .url, password redacted', (t) => {
  const error = configError(t, withSource('{ type: http-snapshot, url: "http://admin:50%off@cam/snap.jpg" }'));
  const issue = issueAt(t, error, 'cameras[0].source.url');
  t.regex(issue.message, /percent-encoded \('%25' for '%'/);
  t.is(issue.value, '"http://admin:***@cam/snap.jpg"');
  t.false(error.format().includes('50%off'), error.format());
  const ok = parseConfig(withSource('{ type: http-snapshot, url: "http://admin:50%25off@cam/snap.jpg" }'), { env: {} });
  t.notThrows(() => createCameraFeed(ok.cameras[0]!));
});

test('JSON syntax errors give line and column and never quote the text (secrets stay out)', (t) => {
  const docs = [
    `{\n  "agent": { "id": "store-1" },\n  "mqtt": { "url": "mqtts://broker:8883", "username": "agent", "password": 'Sup3rS3cretPassw0rd', "keepaliveSeconds": 30 },\n  "cameras": []\n}`,
    `{\n  "agent": { "id": "store-1" },\n  "mqtt": { "url": "mqtts://broker:8883", "username": "agent", "password": Sup3rS3cretPassw0rd, "keepaliveSeconds": 30 },\n  "cameras": []\n}`,
  ];
  for (const text of docs) {
    const error = configError(t, text, { origin: 'c.json' });
    t.regex(error.format(), /^JSON syntax error in c\.json/);
    t.false(/S3cret|Sup3r|Passw0rd/.test(error.format()), error.format());
    t.like(error.issues[0], { path: '', line: 3, column: 76 });
    t.regex(error.issues[0]!.message, /^expected a value: .*double quotes/);
  }
  const short = configError(t, `{"mqtt": {"password": 'hunter22'}}`, { origin: 'c.json' });
  t.false(short.format().includes('hunter22'), short.format());
  t.like(short.issues[0], { line: 1, column: 23 });
  // A single structural character is named; anything else is described, not quoted.
  const trailing = configError(t, '{\n  "agent": { "id": "a" },\n}', { origin: 'c.json' });
  t.regex(trailing.format(), /\(line 3, column 1\): expected a property name in double quotes, not '\}' \(JSON allows no trailing comma\)/);
  const missingComma = configError(t, '{"agent": {"id": "a"} "mqtt": {}}', { origin: 'c.json' });
  t.regex(missingComma.format(), /column 23\): expected ',' or '\}' after a property value, not '"'/);
  t.regex(configError(t, '', { origin: 'c.json' }).format(), /expected a JSON value, found the end of the text/);
});

test('JSON duplicate keys are errors at their key path, as in YAML; a UTF-8 BOM is ignored', (t) => {
  const json = `{"agent": {"id": "a1"}, "models": {"m": {"path": "/tmp/m.onnx"}},
 "cameras": [{"id": "c1", "source": {"type": "replay", "dir": "/tmp"}, "slots": [{"id": "s1", "box": [0, 0, 10, 10], "model": "m"}]}],
 "mqtt": {"username": "u", "password": "first-secret", "password": "second-secret"},
 "cameras": []}`;
  const error = configError(t, json, { origin: 'd.json' });
  t.regex(error.format(), /^JSON syntax error in d\.json \(2 problems\)/);
  t.like(issueAt(t, error, 'mqtt.password'), { line: 3, column: 56 });
  t.like(issueAt(t, error, 'cameras'), { line: 4, column: 2 });
  t.regex(issueAt(t, error, 'cameras').message, /duplicate key: expected each key once in an object/);
  t.false(/first-secret|second-secret/.test(error.format()), error.format());

  t.is(parseConfig('\uFEFF{"agent": {"id": "a"}}', { origin: 'b.json', env: {} }).agent.id, 'a');
  t.is(parseConfig('\uFEFFagent: { id: a }\n', { origin: 'b.yaml', env: {} }).agent.id, 'a');
  // Positions are counted as editors show them, without the BOM.
  t.like(configError(t, '\uFEFF{"agent": {"id": "a"}, }', { origin: 'b.json' }).issues[0], { line: 1, column: 24 });
});

test('YAML aliases: long merge-key slot lists are accepted; alias failures are ConfigErrors naming the file', (t) => {
  // 8 cameras × 16 slots, each slot `<<: *slot` as the deploy example recommends (127 aliases).
  let text = 'agent: { id: a }\nmodels: { drinks: { path: d.onnx } }\ncameras:\n';
  for (let c = 0; c < 8; c++) {
    text += `  - id: cam${c}\n    source: { type: folder, path: in${c} }\n    slots:\n`;
    for (let s = 0; s < 16; s++) {
      text +=
        c === 0 && s === 0
          ? '      - &slot { id: S0, box: [0, 0, 10, 10], model: drinks, category: drink_bottle }\n'
          : `      - { <<: *slot, id: S${s}, box: [${s * 10}, 0, 10, 10] }\n`;
    }
  }
  const config = parseConfig(text, { env: {} });
  t.is(config.cameras.length, 8);
  t.true(config.cameras.every((c) => c.slots.length === 16 && c.slots.every((s) => s.category === 'drink_bottle')));

  let bomb = 'agent: { id: a }\nl0: &l0 [x, x, x, x, x, x, x, x, x, x]\n';
  for (let n = 1; n <= 8; n++) bomb += `l${n}: &l${n} [${Array(10).fill(`*l${n - 1}`).join(', ')}]\n`;
  const tooMany = configError(t, bomb, { origin: 'bomb.yaml' });
  t.regex(tooMany.format(), /^YAML error in bomb\.yaml \(1 problem\):\n {2}- \(document\): expected at most 10000 alias/);

  // Few aliases of a large node: within yaml's count, but expanded it is millions of values.
  const wide = `agent: { id: a }\nbig: &big [${Array(1000).fill('x').join(', ')}]\nmany: [${Array(9000).fill('*big').join(', ')}]\n`;
  t.regex(configError(t, wide, { origin: 'wide.yaml' }).format(), /^YAML error in wide\.yaml[^]*expected at most 500000 values/);

  t.regex(configError(t, 'agent: { id: a }\nx: *nowhere\n').format(), /^YAML error in test\.yaml[^]*Unresolved alias/);
});

test('http-snapshot headers fetch refuses on every request are config errors naming the header', (t) => {
  const snapshot = (headers: string) => withSource(`{ type: http-snapshot, url: http://cam/snap.jpg, headers: { ${headers} } }`);
  const error = configError(
    t,
    snapshot('Connection: upgrade, Keep-Alive: "timeout=5", Transfer-Encoding: chunked, Upgrade: websocket, Expect: 100-continue, Content-Length: lots'),
  );
  t.regex(issueAt(t, error, 'cameras[0].source.headers.Connection').message, /^expected Connection to be 'close' or 'keep-alive'/);
  for (const name of ['Keep-Alive', 'Transfer-Encoding', 'Upgrade', 'Expect']) {
    t.regex(issueAt(t, error, `cameras[0].source.headers.${name}`).message, new RegExp(`^expected no ${name} header: fetch refuses it`));
  }
  t.regex(issueAt(t, error, 'cameras[0].source.headers.Content-Length').message, /whole number of bytes/);
  t.is(error.issues.length, 6);
  t.true(error.issues.every((i) => i.value === '<redacted>'));
  t.false(/websocket|chunked|100-continue|timeout=5/.test(error.format()), error.format());
  // Lower case too: header names are case-insensitive.
  t.truthy(issueAt(t, configError(t, snapshot('transfer-encoding: gzip')), 'cameras[0].source.headers.transfer-encoding'));

  const ok = parseConfig(snapshot('Connection: Keep-Alive, X-Api-Key: k-123, Content-Length: "0"'), { env: {} });
  t.like(ok.cameras[0]!.source, { headers: { Connection: 'Keep-Alive', 'X-Api-Key': 'k-123' } });
  t.notThrows(() => parseConfig(snapshot('connection: close'), { env: {} }));
});

test('a ${ inside a ${...} reference is an error naming the key, whether or not the outer variable is set', (t) => {
  t.regex(expandEnvString('${A:-${B}}', { A: 'x', B: 'y' }).errors[0]!, /nested reference in '\$\{A:-\.\.\.'/);
  t.regex(expandEnvString('${NOPE:-${B}}', { B: 'y' }).errors[0]!, /a '\$\{' inside '\$\{\.\.\.\}' is not supported/);
  t.is(expandEnvString('${A:-${B}}', { A: 'x' }).errors.length, 1);
  for (const env of [{ A: 'store-1', B: 'b' }, { B: 'b' }]) {
    const error = configError(t, 'agent: { id: "${A:-${B}}" }\n', { env });
    t.is(error.issues.length, 1, error.format());
    t.regex(issueAt(t, error, 'agent.id').message, /nested reference/);
  }
  // A plain fallback is unchanged, and text after the reference is kept.
  t.deepEqual(expandEnvString('${NOPE:-x}}/${A}', { A: 'a' }), { value: 'x}/a', substituted: true, fromEnv: ['a'], errors: [] });
});

test('reserved names (__proto__, constructor, prototype) are refused as model names, header names and ids', (t) => {
  const proto = configError(
    t,
    `agent: { id: a1 }
models:
  __proto__: { path: /tmp/m.onnx }
  constructor: { path: /tmp/c.onnx }
cameras:
  - id: c1
    source: { type: replay, dir: /tmp }
    slots: [ { id: s1, box: [0,0,10,10], model: __proto__ } ]
`,
  );
  t.regex(issueAt(t, proto, 'models.__proto__').message, /^expected a model name not one of the reserved names __proto__, constructor, prototype/);
  t.like(issueAt(t, proto, 'models.__proto__'), { line: 3, column: 3 });
  t.truthy(issueAt(t, proto, 'models.constructor'));

  const headers = configError(t, withSource('{ type: http-snapshot, url: http://cam/snap.jpg, headers: { __proto__: x, prototype: y } }'));
  t.regex(issueAt(t, headers, 'cameras[0].source.headers.__proto__').message, /reserved names/);
  t.truthy(issueAt(t, headers, 'cameras[0].source.headers.prototype'));

  const ids = configError(t, BASE.replace('id: cam1', 'id: __proto__').replace('id: A1', 'id: constructor'));
  t.regex(issueAt(t, ids, 'cameras[0].id').message, /^expected a camera id not one of the reserved names/);
  t.is(issueAt(t, ids, 'cameras[0].id').value, '"__proto__"');
  t.regex(issueAt(t, ids, 'cameras[0].slots[0].id').message, /^expected a slot id not one of the reserved names/);

  // JSON keeps '__proto__' as an own key too; it is refused the same way.
  const json = configError(t, '{"agent": {"id": "a"}, "models": {"__proto__": {"path": "/m.onnx"}}}', { origin: 'p.json' });
  t.truthy(issueAt(t, json, 'models.__proto__'));
});

test('a stream input with a NUL character is a config error at .input, not a throw when the camera starts', (t) => {
  const error = configError(t, withSource('{ type: stream, input: "/videos/a\\0.mp4" }'));
  t.regex(issueAt(t, error, 'cameras[0].source.input').message, /without NUL characters/);
});

test('mqtt.protocolVersion: auto by default, 4 or 5 to force; anything else is refused at its key', (t) => {
  t.is(parseConfig('agent: { id: a }', { env: {} }).mqtt.protocolVersion, 'auto');
  t.is(parseConfig('agent: { id: a }\nmqtt: { protocolVersion: 4 }', { env: {} }).mqtt.protocolVersion, 4);
  t.is(parseConfig('agent: { id: a }\nmqtt: { protocolVersion: 5 }', { env: {} }).mqtt.protocolVersion, 5);
  const bad = configError(t, 'agent: { id: a }\nmqtt: { protocolVersion: 3 }');
  t.regex(issueAt(t, bad, 'mqtt.protocolVersion').message, /expected auto, 4 \(MQTT 3\.1\.1\) or 5/);
});
