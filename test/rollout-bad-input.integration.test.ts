/**
 * Hostile input to a RUNNING agent's model rollout, against a real mosquitto, a real HTTP server
 * on 127.0.0.1 and real small PatchCore models:
 *   1. `command/model` payloads that are not JSON, not an object, miss or mistype a field, carry a
 *      bad sha256 or a file:/ftp:/javascript: URL, or name an unknown model; downloads that answer
 *      404, an HTML page, a body too large or with another hash; files that are ONNX but not a
 *      shelfwatch model, or built for another backbone or input size;
 *   2. the same command twice, a newer command while a download runs (the newer one wins), the
 *      agent stopped mid-download, and a retained command seen again after a restart;
 *   3. the models directory: a zero-byte file, a non-model `.onnx`, a file deleted right after it
 *      appears, and a file that grows while it is being checked.
 * Every time the serving model keeps scanning, the refusal is logged with its reason and counted
 * (rollout stats, which feed /metrics and the retained `status`), and no downloaded part is left behind.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, mkdtemp, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type MqttClient } from 'mqtt';
import { Agent } from '../agent/agent.js';
import { loadConfig } from '../agent/config.js';
import { Logger } from '../agent/logger.js';
import { MANIFEST_KEY } from '../models/manifest.js';
import { decodeModel, encodeModel } from '../models/onnx/proto.js';
import type { ShelfOutput } from '../pipelines/shelf-pipeline.js';
import { fittedModel, magneticTileTrain, sharedAvailable } from './helpers/fitted-model.js';
import { startMosquitto } from './helpers/mosquitto.js';
import { tileFrame, unseenTiles } from './helpers/shelf-frames.js';

const available = sharedAvailable();
const serial = available ? test.serial : test.serial.skip;
const ROOT = 'shelfwatch/store-9';

let work: string;
let framesDir: string;
let box: [number, number, number, number];
/** Model files by name, and their digests. */
const bytes = new Map<string, Buffer>();
const digest = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const sha = (name: string) => digest(bytes.get(name)!);

/** The model `a` with its manifest edited (or removed, with `null`): other bytes, same graph. */
function variant(a: Buffer, edit: ((manifest: Record<string, any>) => void) | null): Buffer {
  const model = decodeModel(a, 'a.onnx');
  const entry = model.metadataProps!.find((p) => p.key === MANIFEST_KEY)!;
  if (edit === null) model.metadataProps = model.metadataProps!.filter((p) => p !== entry);
  else {
    const manifest = JSON.parse(entry.value);
    edit(manifest);
    entry.value = JSON.stringify(manifest);
  }
  return Buffer.from(encodeModel(model));
}

test.before(async () => {
  if (!available) return;
  work = await mkdtemp(join(tmpdir(), 'shelfwatch-rollout-bad-'));
  // The same fits as model-rollout.integration.test.ts: cached on disk, shared.
  const images = await magneticTileTrain(24);
  const a = await readFile(await fittedModel(images, { name: 'rollout-a', seed: 1 }));
  bytes.set('a', a);
  bytes.set('b', await readFile(await fittedModel(images, { name: 'rollout-b', seed: 2 })));
  // Valid models of their own digest, cheaper than more fits.
  for (const n of ['c', 'd', 'e']) bytes.set(n, variant(a, (m) => void (m.createdAt = `2026-02-0${'cde'.indexOf(n) + 1}T00:00:00.000Z`)));
  bytes.set('no-manifest', variant(a, null));
  bytes.set('other-backbone', variant(a, (m) => void (m.backbone.sha256 = 'f'.repeat(64))));
  bytes.set('other-size', variant(a, (m) => void (m.inputSize = 320)));
  const tiles = await unseenTiles(2);
  const frame = await tileFrame(tiles);
  const b0 = frame.boxes[0]!;
  box = [b0.x, b0.y, b0.width, b0.height];
  framesDir = join(work, 'frames');
  await mkdir(framesDir);
  for (let i = 0; i < 8; i++) await writeFile(join(framesDir, `frame${i}.jpg`), frame.jpeg);
});

test.after.always(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

async function until(what: string, check: () => boolean | Promise<boolean>, lines: string[], timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\nagent log:\n${lines.slice(-15).join('')}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A model HTTP server: fixed bodies, an HTML page, a 600 MiB announcement, and held bodies. */
async function modelServer(t: ExecutionContext) {
  const requests: string[] = [];
  /** `/held/<name>`: half the body at once, the rest when released (or the client gives up). */
  const held = new Map<string, () => void>();
  const aborted: string[] = [];
  const server = createServer((req, res: ServerResponse) => {
    const url = req.url ?? '';
    requests.push(url);
    if (url === '/page.html') return void res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>Sign in</title>');
    if (url === '/huge.onnx') return void res.writeHead(200, { 'content-length': String(600 * 1024 * 1024) }).write('x');
    const name = /^\/(?:held\/)?([\w-]+)\.onnx$/.exec(url)?.[1];
    const body = name ? bytes.get(name) : undefined;
    if (!body) return void res.writeHead(404, { 'content-length': 0 }).end();
    res.writeHead(200, { 'content-length': body.length });
    if (!url.startsWith('/held/')) return void res.end(body);
    res.write(body.subarray(0, body.length >> 1));
    res.on('close', () => {
      if (!res.writableFinished) aborted.push(url);
    });
    held.set(url, () => res.end(body.subarray(body.length >> 1)));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { base, requests, held, aborted };
}

interface RunningAgent {
  agent: Agent;
  lines: string[];
  outputs: ShelfOutput[];
  modelPath: string;
  stateDir: string;
  /** Outputs, then waits for `n` more scans, all by the model of `digest`. */
  keepsScanning(digest: string, n?: number): Promise<boolean>;
}

async function startAgent(t: ExecutionContext, dir: string, brokerUrl: string, model: string, commands?: Record<string, number>): Promise<RunningAgent> {
  const modelsDir = join(dir, 'models');
  const modelPath = join(modelsDir, 'tile.onnx');
  await mkdir(modelsDir, { recursive: true });
  await writeFile(modelPath, bytes.get(model)!).catch(() => undefined);
  const stateDir = join(dir, 'state');
  const configPath = join(dir, 'agent.json');
  await writeFile(
    configPath,
    JSON.stringify({
      agent: { id: 'store-9', stateDir },
      mqtt: { url: brokerUrl, ...(commands ? { commands } : {}) },
      models: { tile: { path: modelPath, threshold: 4 } },
      inference: { provider: 'cpu', batchSize: 4, batchWaitMs: 10, maxPendingFrames: 512 },
      metrics: { enabled: false },
      cameras: [{ id: 'shelf', source: { type: 'replay', dir: framesDir, intervalMs: 50, loop: true }, continuous: { maxFps: 100 }, slots: [{ id: 'S0', box, model: 'tile' }] }],
    }),
  );
  const lines: string[] = [];
  const logger = new Logger({ level: 'info', sink: { write: (l: string) => lines.push(l) } });
  const agent = new Agent(await loadConfig(configPath, { env: {} }), { logger, outboxFsync: false, modelWatchDebounceMs: 100 });
  const outputs: ShelfOutput[] = [];
  agent.on('output', (o) => outputs.push(o));
  t.teardown(() => agent.stop());
  await agent.start();
  const keepsScanning = async (d: string, n = 3) => {
    const from = outputs.length;
    await until(`${n} more scans`, () => outputs.length >= from + n, lines);
    return outputs.slice(from).every((o) => o.item.prediction.modelDigest === d);
  };
  await until('a first scan', () => outputs.length >= 1, lines);
  return { agent, lines, outputs, modelPath, stateDir, keepsScanning };
}

async function commander(t: ExecutionContext, url: string) {
  const client: MqttClient = connect(url);
  t.teardown(() => client.end(true));
  await new Promise<void>((resolve) => client.once('connect', () => resolve()));
  // The agent takes 5 commands a second (burst 10); more would be refused as a flood.
  let last = 0;
  return async (payload: unknown, opts: { raw?: boolean; retain?: boolean } = {}) => {
    await new Promise((r) => setTimeout(r, Math.max(0, last + 210 - Date.now())));
    last = Date.now();
    await client.publishAsync(`${ROOT}/command/model`, opts.raw ? String(payload) : JSON.stringify(payload), { qos: 1, retain: opts.retain ?? false });
  };
}

/** Files left in `<stateDir>/models/` other than the serving copies. */
async function leftovers(stateDir: string): Promise<string[]> {
  return (await readdir(join(stateDir, 'models')).catch(() => [] as string[])).filter((n) => n !== 'serving');
}

/** Log lines after `from` that mention every one of `words`. */
const logged = (lines: string[], from: number, ...words: Array<string | RegExp>) =>
  lines.slice(from).some((l) => words.every((w) => (typeof w === 'string' ? l.includes(w) : w.test(l))));

serial('command/model: malformed payloads and bad downloads are refused with the reason; the old model keeps serving', async (t) => {
  const http = await modelServer(t);
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const run = await startAgent(t, await mkdtemp(join(work, 'cmd-')), broker.url, 'a');
  const { agent, lines } = run;
  const send = await commander(t, broker.url);
  const a = sha('a');
  const b = sha('b');

  // Payloads: refused before anything is fetched, the problem and its place named.
  const payloads: Array<[string, unknown, boolean, RegExp]> = [
    ['not JSON', '{"model": "tile", "url":', true, /not JSON/],
    ['not an object', '[1, 2]', true, /\(payload\): .*expected object, received array/],
    ['missing sha256', { model: 'tile', url: `${http.base}/b.onnx` }, false, /sha256: /],
    ['sha256 a number', { model: 'tile', url: `${http.base}/b.onnx`, sha256: 42 }, false, /sha256: .*expected string/],
    ['sha256 of 63 digits', { model: 'tile', url: `${http.base}/b.onnx`, sha256: b.slice(1) }, false, /sha256: expected 64 hex digits/],
    ['sha256 not hex', { model: 'tile', url: `${http.base}/b.onnx`, sha256: 'g'.repeat(64) }, false, /sha256: expected 64 hex digits/],
    ['file: URL', { model: 'tile', url: 'file:///etc/passwd', sha256: b }, false, /url: expected an http\(s\) URL/],
    ['ftp: URL', { model: 'tile', url: 'ftp://127.0.0.1/b.onnx', sha256: b }, false, /url: expected an http\(s\) URL/],
    ['javascript: URL', { model: 'tile', url: 'javascript:alert(1)', sha256: b }, false, /url: expected an http\(s\) URL/],
    ['model path traversal', { model: '../tile', url: `${http.base}/b.onnx`, sha256: b }, false, /model: expected a model name/],
  ];
  for (const [what, payload, raw, problem] of payloads) {
    const from = lines.length;
    await send(payload, { raw });
    await until(`the ${what} payload to be refused`, () => logged(lines, from, 'model command refused'), lines);
    t.true(logged(lines, from, 'model command refused', problem), `${what}: ${lines.slice(from).join('')}`);
  }
  t.deepEqual(http.requests, [], 'no malformed command fetched anything');
  t.is(agent.mqtt!.metrics().commands.handlerErrors, 0, 'a bad payload is a refusal, not a handler failure');

  // An unknown model: named, with the ones that exist.
  let from = lines.length;
  await send({ model: 'nope', url: `${http.base}/b.onnx`, sha256: b });
  await until('the unknown model', () => logged(lines, from, 'model command failed', "no loaded model called 'nope' (loaded: tile)"), lines);

  // Downloads and files that fail: each refused, counted, with the URL and the reason.
  const refusals: Array<[string, string, string, RegExp]> = [
    ['a 404', '/missing.onnx', b, /missing\.onnx.*HTTP 404/],
    ['a 404 from a URL with a password', '/missing.onnx', b, /http:\/\/user:\*\*\*@127\.0\.0\.1:\d+\/missing\.onnx: HTTP 404/],
    ['an HTML page', '/page.html', b, /page\.html.*sha256 mismatch.*the server sent text\/html/],
    ['a 600 MiB body', '/huge.onnx', b, /huge\.onnx.*too large: server announces 629145600 bytes/],
    ['another hash', '/c.onnx', b, /c\.onnx.*sha256 mismatch: expected [0-9a-f]{64}, got [0-9a-f]{64}/],
    ['an ONNX file without manifest', '/no-manifest.onnx', sha('no-manifest'), /^http:\/\/127\.0\.0\.1:\d+\/no-manifest\.onnx: not a shelfwatch model/],
    ['a model of another backbone', '/other-backbone.onnx', sha('other-backbone'), /^http:\/\/127\.0\.0\.1:\d+\/other-backbone\.onnx: built on backbone .*expected/],
    ['a model of another input size', '/other-size.onnx', sha('other-size'), /^http:\/\/127\.0\.0\.1:\d+\/other-size\.onnx: input size 320 px, the serving model takes 224 px/],
  ];
  for (const [i, [what, path, sha256, reason]] of refusals.entries()) {
    from = lines.length;
    const url = what.includes('password') ? http.base.replace('//', '//user:s3cret@') + path : http.base + path;
    await send({ model: 'tile', url, sha256 });
    await until(`${what} to be refused`, () => agent.modelRollout!.stats().rejections === i + 1, lines);
    const rejection = agent.modelRollout!.stats().lastRejection!;
    t.is(rejection.path, run.modelPath, what);
    t.regex(rejection.reason, reason, what);
    t.log(`${what}: ${rejection.reason}`);
    t.true(logged(lines, from, /"level":"warn"/, `"reason":${JSON.stringify(rejection.reason)}`), `${what} is logged with the reason: ${lines.slice(from).join('')}`);
    // A refused download is removed right after the refusal is counted.
    await until(`${what}: nothing left under <stateDir>/models`, async () => (await leftovers(run.stateDir)).length === 0, lines, 2000);
  }
  t.false(lines.some((l) => l.includes('s3cret')), 'no password of a URL in the log');
  t.is(digest(await readFile(run.modelPath)), a, 'the configured file is untouched');
  t.true(await run.keepsScanning(a), 'A still scans every frame');
  t.is(agent.modelRollout!.stats().swaps, 0);

  // After all that, a good command still installs.
  await send({ model: 'tile', url: `${http.base}/b.onnx`, sha256: b });
  await until('B installed', () => agent.modelRollout!.stats().swaps === 1, lines);
  t.true(await run.keepsScanning(b));
  t.like(agent.pipelineStats().cameras.shelf, { framesDropped: 0, inferenceErrors: 0, decodeErrors: 0 });
  await agent.stop();
});

serial('command/model: a repeated command downloads once; a newer command supersedes a running download; stop aborts one', async (t) => {
  const http = await modelServer(t);
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const dir = await mkdtemp(join(work, 'race-'));
  const run = await startAgent(t, dir, broker.url, 'a');
  const { agent, lines } = run;
  const send = await commander(t, broker.url);
  const rollout = agent.modelRollout!;

  // The same command twice while its download runs: one download, one swap, no refusal.
  await send({ model: 'tile', url: `${http.base}/held/b.onnx`, sha256: sha('b') });
  await until('the download of B to start', () => http.held.has('/held/b.onnx'), lines);
  let from = lines.length;
  await send({ model: 'tile', url: `${http.base}/held/b.onnx`, sha256: sha('b') });
  await until('the repeat to be noticed', () => logged(lines, from, 'already being installed'), lines);
  http.held.get('/held/b.onnx')!();
  await until('B installed', () => rollout.stats().swaps === 1, lines);
  t.deepEqual(http.requests, ['/held/b.onnx'], 'one download');
  t.true(await run.keepsScanning(sha('b')));

  // C is still downloading when D is asked for: D wins, C is abandoned and never swapped in.
  await send({ model: 'tile', url: `${http.base}/held/c.onnx`, sha256: sha('c') });
  await until('the download of C to start', () => http.held.has('/held/c.onnx'), lines);
  from = lines.length;
  await send({ model: 'tile', url: `${http.base}/d.onnx`, sha256: sha('d') });
  await until('D installed', () => rollout.stats().swaps === 2, lines);
  await until('C abandoned', () => http.aborted.includes('/held/c.onnx'), lines);
  t.true(logged(lines, from, 'superseded', sha('d').slice(0, 12)), 'the abandoned command is logged with the one that replaced it');
  http.held.get('/held/c.onnx')?.();
  t.true(await run.keepsScanning(sha('d'), 6), 'D keeps serving: the older command never lands');
  t.is(rollout.stats().swaps, 2);
  t.is(rollout.stats().rejections, 0, 'superseded is not a refusal of a model');
  t.deepEqual((await leftovers(run.stateDir)).filter((n) => n.includes('.part')), []);

  // Stopped mid-download: the transfer is abandoned, its part file removed, nothing swapped.
  await send({ model: 'tile', url: `${http.base}/held/e.onnx`, sha256: sha('e') });
  await until('the download of E to start', () => http.held.has('/held/e.onnx'), lines);
  await until('its part file', async () => (await leftovers(run.stateDir)).some((n) => n.includes('.part-')), lines);
  await agent.stop();
  t.deepEqual((await leftovers(run.stateDir)).filter((n) => n.includes('.part')), [], 'no part file after stop()');
  t.true(http.aborted.includes('/held/e.onnx'), 'the transfer was abandoned');
  t.is(rollout.stats().swaps, 2);
  t.is(digest(await readFile(run.modelPath)), sha('d'));

  // A retained command left on the broker is not run again when the agent comes back.
  const retainedFrom = http.requests.length;
  await send({ model: 'tile', url: `${http.base}/b.onnx`, sha256: sha('b') }, { retain: true });
  const again = await startAgent(t, dir, broker.url, 'd');
  await until('the retained command to be ignored', () => again.agent.mqtt!.metrics().commands.rejected.retained === 1, again.lines);
  t.true(await again.keepsScanning(sha('d')));
  t.deepEqual(http.requests.slice(retainedFrom), [], 'nothing downloaded');
  t.is(again.agent.modelRollout!.stats().swaps, 0);
  await again.agent.stop();
});

serial('models directory: empty, foreign, vanished and still-growing files are refused or waited for; the old model keeps serving', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const run = await startAgent(t, await mkdtemp(join(work, 'dir-')), broker.url, 'a');
  const { agent, lines, modelPath } = run;
  const rollout = agent.modelRollout!;
  const a = sha('a');

  await writeFile(modelPath, '');
  await until('the empty file refused', () => rollout.stats().rejections === 1, lines);
  t.regex(rollout.stats().lastRejection!.reason, /tile\.onnx.*empty/);
  t.true(await run.keepsScanning(a));

  await writeFile(modelPath, '<!doctype html><title>404</title>');
  await until('the HTML file refused', () => rollout.stats().rejections === 2, lines);
  t.regex(rollout.stats().lastRejection!.reason, /tile\.onnx/);
  t.true(await run.keepsScanning(a));

  // Renamed into place, then deleted before the check: refused, the reason says it is gone.
  const staged = join(run.modelPath, '..', '.tile.onnx.new');
  await writeFile(staged, bytes.get('b')!);
  await rename(staged, modelPath);
  await rm(modelPath);
  await until('the vanished file refused', () => rollout.stats().rejections === 3, lines);
  t.regex(rollout.stats().lastRejection!.reason, /tile\.onnx no longer exists \(deleted or moved away/);
  t.true(await run.keepsScanning(a));

  // Copied slowly: the first half, a pause longer than the quiet time, then the rest while the
  // half is being checked. The half may be refused (it IS truncated), the whole is swapped in.
  const b = bytes.get('b')!;
  const file = await open(modelPath, 'w');
  await file.write(b.subarray(0, b.length >> 1));
  await new Promise((r) => setTimeout(r, 150));
  await file.write(b.subarray(b.length >> 1));
  await file.close();
  await until('B swapped in', () => rollout.stats().swaps === 1, lines);
  t.log(`refused while half-copied: ${rollout.stats().rejections - 3}`);
  t.true(await run.keepsScanning(sha('b')));
  t.like(agent.pipelineStats().cameras.shelf, { framesDropped: 0, inferenceErrors: 0 });
  await agent.stop();
});

serial('mqtt.commands: maxDownloadMiB caps what command/model fetches; ratePerSecond and burst reach the client', async (t) => {
  const http = await modelServer(t);
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const run = await startAgent(t, await mkdtemp(join(work, 'cap-')), broker.url, 'a', { maxDownloadMiB: 1, ratePerSecond: 0.5, burst: 1 });
  const send = await commander(t, broker.url);
  const b = sha('b');
  t.true(bytes.get('b')!.length > 1024 * 1024, 'the test model is larger than the 1 MiB cap');
  await send({ model: 'tile', url: `${http.base}/b.onnx`, sha256: b });
  await until('the oversized model to be refused', () => run.agent.modelRollout!.stats().rejections === 1, run.lines);
  t.regex(run.agent.modelRollout!.stats().lastRejection!.reason, /b\.onnx.*too large/);
  t.true(await run.keepsScanning(sha('a')));
  t.is(run.agent.modelRollout!.stats().swaps, 0);
  // One command per 2 s with a burst of 1: the next one, 210 ms later, is refused as a flood.
  await send({ model: 'tile', url: `${http.base}/b.onnx`, sha256: b });
  await until('the flood to be refused', () => run.agent.mqtt!.metrics().commands.rejected.rateLimited >= 1, run.lines);
});
