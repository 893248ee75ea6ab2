/**
 * Secrets in logs and in the retained status (ops review, finding 2):
 * - the logger redacts URLs anywhere — in the message, in field strings, in Error messages,
 *   causes and stacks — not only a string that starts with one;
 * - a download that was redirected names where it ended up without the pre-signed URL's
 *   signature, credential or token (download.ts; model-rollout.ts builds the status reason
 *   from it);
 * - values substituted from `${VAR}` are logger secrets (config.ts environmentSecrets, agent.ts
 *   configSecrets), so a camera password in a query parameter whose name does not look secret is
 *   scrubbed too.
 */
import test from 'ava';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'mqtt';
import { Agent, configSecrets, defaultLogger } from '../agent/agent.js';
import { configFromObject, environmentSecrets, parseConfig } from '../agent/config.js';
import { DownloadError, downloadVerified } from '../agent/download.js';
import { Logger } from '../agent/logger.js';
import { redactText, redactUrl } from '../agent/redact.js';
import { captureLogger, registerAgentScene, tileSlots, until } from './helpers/agent-scene.js';
import { sharedAvailable } from './helpers/fitted-model.js';

const SIGNED = 'X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=SIGSECRET123456&token=TOKSECRET987';
const LEAKS = /SIGSECRET|TOKSECRET|AKIAEXAMPLE|pw-in-text|pw-in-field|pw-in-error|pw-in-cause|pw-in-stack/;

function capture(level: 'info' | 'trace' = 'info', secrets: string[] = []) {
  const lines: string[] = [];
  const log = new Logger({ level, secrets, sink: { write: (l: string) => lines.push(l) }, clock: () => 0 });
  return { log, lines, records: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

test('logger: a URL inside the message, a field, an Error message, its cause and its stack is redacted', (t) => {
  const { log, lines, records } = capture('trace');
  log.warn('cannot open rtsp://admin:pw-in-text@cam/s, retrying');
  log.warn('download', { reason: `sha256 mismatch (at https://bucket.example/m.onnx?${SIGNED})`, nested: { list: ['see http://u:pw-in-field@h/x'] } });
  log.error('failed', { error: new Error('GET https://admin:pw-in-error@h/x failed', { cause: new Error(`redirected to https://h/y?${SIGNED}&password=pw-in-cause`) }) });
  const withStack = new Error('boom');
  withStack.stack = 'Error: boom\n    at fetch (https://u:pw-in-stack@h/z)';
  log.error('stack', { error: withStack });
  const text = lines.join('');
  t.notRegex(text, LEAKS, text);
  const [msg, field, error, stack] = records();
  t.is(msg!.msg, 'cannot open rtsp://admin:***@cam/s, retrying', 'the comma after the URL is kept');
  t.is(field!.reason, 'sha256 mismatch (at https://bucket.example/m.onnx?X-Amz-Credential=***&X-Amz-Signature=***&token=***)', 'the closing bracket is kept');
  t.deepEqual(field!.nested, { list: ['see http://u:***@h/x'] });
  t.like(error!.error, {
    name: 'Error',
    message: 'GET https://admin:***@h/x failed',
    cause: { name: 'Error', message: 'redirected to https://h/y?X-Amz-Credential=***&X-Amz-Signature=***&token=***&password=***' },
  });
  t.regex((stack!.error as { stack: string }).stack, /at fetch \(https:\/\/u:\*\*\*@h\/z\)/);
});

test('logger: a string that starts with a URL is still redacted as one (a password with a space)', (t) => {
  const { log, lines } = capture();
  log.info('x', { input: 'rtsp://admin:pass word@cam/stream1' });
  t.is((JSON.parse(lines[0]!) as { input: string }).input, 'rtsp://admin:***@cam/stream1');
});

test('redactText/redactUrl: query secrets by name (signature, token, password, key, loginpas), fragment tokens, punctuation kept', (t) => {
  t.is(redactText(`(at https://h/m?${SIGNED})`), '(at https://h/m?X-Amz-Credential=***&X-Amz-Signature=***&token=***)');
  t.is(redactUrl('http://cam/cgi-bin/snapshot.cgi?loginuse=admin&loginpas=secret1'), 'http://cam/cgi-bin/snapshot.cgi?loginuse=admin&loginpas=***');
  t.is(redactUrl('https://app/cb#access_token=abc&state=1'), 'https://app/cb#access_token=***&state=1');
  t.is(redactUrl('https://h/x?api_key=k1&apikey=k2&sig=s&jwt=j&Password=p&ok=1'), 'https://h/x?api_key=***&apikey=***&sig=***&jwt=***&Password=***&ok=1');
  t.is(redactText('no url here: /dev/video0, C:\\x'), 'no url here: /dev/video0, C:\\x');
});

/** A server on 127.0.0.1 whose /model.onnx redirects to a pre-signed URL serving the wrong bytes; its port. */
async function signedRedirectServer(t: { teardown(fn: () => void): void }): Promise<number> {
  const server = createServer((req, res) => {
    if (req.url === '/model.onnx') {
      res.writeHead(302, { location: `/bucket/model.onnx?${SIGNED}` }).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(Buffer.from('not the model'));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  return (server.address() as AddressInfo).port;
}

test('download: the redirect target in the failure reason and in DownloadError loses its signature and token', async (t) => {
  const port = await signedRedirectServer(t);
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-ops-dl-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const base = `http://127.0.0.1:${port}`;
  const err = await t.throwsAsync(downloadVerified({ urls: [`${base}/model.onnx`], sha256: 'a'.repeat(64), dest: join(dir, 'm.onnx') }), { instanceOf: DownloadError });
  const reason = (err as DownloadError).attempts[0]!.reason;
  t.regex(reason, /^sha256 mismatch: .* \(at http:\/\/127\.0\.0\.1:\d+\/bucket\/model\.onnx\?X-Amz-Credential=\*\*\*&X-Amz-Signature=\*\*\*&token=\*\*\*\)$/, reason);
  t.notRegex(err!.message, LEAKS, err!.message);
});

test('config: values from ${VAR} are logger secrets, except under keys that only name things', (t) => {
  const env = { CAMERA_PASSWORD: 'cam-pass-4711', MQTT_PASSWORD: 'mqtt pass/&=', AGENT_ID: 'store-77', LOG_LEVEL: 'debug', PORT: '9464', STATE: '/var/lib/x' };
  const config = parseConfig(
    `agent: { id: "\${AGENT_ID}", stateDir: "\${STATE}" }
logging: { level: "\${LOG_LEVEL}" }
metrics: { port: "\${PORT}" }
mqtt: { url: "mqtts://broker:8883", username: u, password: "\${MQTT_PASSWORD}" }
models: { m: { path: /models/m.onnx } }
cameras:
  - id: c1
    source: { type: http-snapshot, url: "http://cam/snap.cgi?user=admin&code=\${CAMERA_PASSWORD}" }
    schedule: '*/5 * * * *'
    slots: [{ id: s, box: [0, 0, 10, 10], model: m }]
`,
    { env, origin: 'env.yaml' },
  );
  t.deepEqual([...environmentSecrets(config)].sort(), ['cam-pass-4711', 'mqtt pass/&='].sort());
  const secrets = configSecrets(config);
  t.true(secrets.includes('cam-pass-4711'));
  t.true(secrets.includes(encodeURIComponent('mqtt pass/&=')), 'also as it looks percent-encoded in a URL');
  t.deepEqual(environmentSecrets(configFromObject({ agent: { id: 'a' } }, { env: {} })), []);

  // The agent's default logger scrubs the camera password wherever it shows, even in a query
  // parameter ('code') that redactUrl does not know as secret.
  const lines: string[] = [];
  const write = process.stdout.write;
  process.stdout.write = ((chunk: string) => lines.push(String(chunk)) > 0) as unknown as typeof process.stdout.write;
  try {
    const log = defaultLogger(config);
    log.warn('GET http://cam/snap.cgi?user=admin&code=cam-pass-4711 failed', { url: 'http://cam/snap.cgi?user=admin&code=cam-pass-4711' });
  } finally {
    process.stdout.write = write;
  }
  const text = lines.join('');
  t.false(text.includes('cam-pass-4711'), text);
  t.regex(text, /"agent":"store-77"/, 'an agent id from the environment is still shown');
  t.regex(text, /code=<redacted>/);
});

// ---- the agent: a model command redirected to a pre-signed URL (repro redirect-leak.ts) --------

const scene = registerAgentScene(test, 'shelfwatch-ops-redact-', [false, false]);
const maybe = sharedAvailable() ? test : test.skip;

maybe('agent: a refused model download names the redirect target without its signature, in the log and the retained status', async (t) => {
  const port = await signedRedirectServer(t);
  const config = configFromObject(
    {
      agent: { id: 'store-1', stateDir: join(scene.work, 'state-redact') },
      models: { tile: { path: scene.modelPath, threshold: 4 } },
      inference: { provider: 'cpu', batchSize: 4, batchWaitMs: 10 },
      metrics: { enabled: false },
      mqtt: { embeddedPort: 0 },
      cameras: [{ id: 'shelf', source: { type: 'replay', dir: scene.framesDir, intervalMs: 200, loop: true }, slots: tileSlots(scene.normal) }],
    },
    { env: {} },
  );
  const { logger, lines } = captureLogger();
  const agent = new Agent(config, { logger, outboxFsync: false });
  t.teardown(() => agent.stop());
  await agent.start();
  const client = connect(agent.brokerUrl);
  t.teardown(() => client.end(true));
  await new Promise((resolve) => client.once('connect', resolve));
  let status = '';
  client.on('message', (topic, payload) => {
    if (topic === agent.topics.status) status = payload.toString();
  });
  client.subscribe(agent.topics.status);
  client.publish(agent.topics.command('model'), JSON.stringify({ model: 'tile', url: `http://127.0.0.1:${port}/model.onnx`, sha256: 'a'.repeat(64) }), { qos: 1 });
  await until('the download to be refused', () => agent.modelRollout!.stats().rejections === 1, 20_000, lines);
  await until('the status with the reason', () => status.includes('download failed'), 10_000, lines);
  t.regex(status, /\(at http:\/\/127\.0\.0\.1:\d+\/bucket\/model\.onnx\?X-Amz-Credential=\*\*\*&X-Amz-Signature=\*\*\*&token=\*\*\*\)/);
  t.notRegex(status, LEAKS, 'retained status');
  t.true(lines.some((l) => l.includes('download failed')));
  t.notRegex(lines.join(''), LEAKS, 'log lines');
  await agent.stop();
});
