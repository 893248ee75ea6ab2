/**
 * Bad input against the running agent (real mosquitto, real model): each must give a clear
 * error that names what is wrong and where, be counted, leave the agent running, and lose
 * nothing already captured (every event raised still reaches a subscriber).
 *
 *  - folder source: a truncated JPEG, a zero-byte file, a text file named .jpg, and a crafted
 *    PNG whose header claims 20000×20000 pixels, dropped mid-run between good frames;
 *  - http-snapshot: a camera URL that never answers, and one that answers an HTML page;
 *  - MQTT commands: a malformed (non-JSON) command and an oversized one.
 */
import test from 'ava';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { deflateSync, crc32 } from 'node:zlib';
import { Agent } from '../agent/agent.js';
import { configFromObject } from '../agent/config.js';
import { eventMessageId } from '../agent/extensions/events-publisher.js';
import { captureLogger, registerAgentScene, tileSlots, until } from './helpers/agent-scene.js';
import { sharedAvailable } from './helpers/fitted-model.js';
import { startMosquitto } from './helpers/mosquitto.js';
import { eventSubscriber } from './helpers/mqtt-subscribers.js';

const available = sharedAvailable();
const serial = available ? test.serial : test.serial.skip;
const ROOT = 'shelfwatch/store-1';

const scene = registerAgentScene(test, 'shelfwatch-bad-input-');

/** A valid PNG (signature, IHDR, IDAT, IEND, correct CRCs) whose header says width × height. */
function pngHeaderOnly(width: number, height: number): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([signature, chunk('IHDR', ihdr), chunk('IDAT', deflateSync(Buffer.alloc(16))), chunk('IEND', Buffer.alloc(0))]);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

serial('bad files, bad camera URLs and bad MQTT commands: clear errors, counted, agent keeps running, nothing lost', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const { client: sub, ids: delivered } = await eventSubscriber(broker.url, ROOT, t);

  // Camera endpoints: one never answers, one answers a login page.
  const hanging = new Set<import('node:http').ServerResponse>();
  const server: Server = createServer((req, res) => {
    if (req.url === '/hang') {
      hanging.add(res);
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><html><body>Please log in</body></html>');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => {
    for (const res of hanging) res.destroy();
    server.closeAllConnections();
    server.close();
  });
  const port = (server.address() as { port: number }).port;

  const dropDir = join(scene.work, 'drop');
  await mkdir(dropDir);
  const slots = tileSlots(scene.normal);
  const config = configFromObject(
    {
      agent: { id: 'store-1', stateDir: join(scene.work, 'state') },
      mqtt: { url: broker.url, keepaliveSeconds: 5, statsIntervalSeconds: 60 },
      models: { tile: { path: scene.modelPath, threshold: 4 } },
      inference: { provider: 'cpu', batchSize: 4, batchWaitMs: 10, maxPendingFrames: 32 },
      debounce: { raiseAfter: 1, window: 1, clearAfter: 1 },
      thumbnails: { maxSize: 64, quality: 70 },
      metrics: { enabled: false },
      logging: { level: 'info' },
      cameras: [
        { id: 'drop', source: { type: 'folder', path: dropDir, pattern: '*.{jpg,png}' }, slots },
        { id: 'hang', source: { type: 'http-snapshot', url: `http://127.0.0.1:${port}/hang`, timeoutMs: 300 }, continuous: { maxFps: 2 }, slots },
        { id: 'html', source: { type: 'http-snapshot', url: `http://127.0.0.1:${port}/login` }, continuous: { maxFps: 2 }, slots },
      ],
    },
    { origin: 'bad-input.integration', env: {} },
  );
  const { logger, lines } = captureLogger();
  const agent = new Agent(config, { logger, outboxFsync: false, reconnect: { minDelayMs: 100, maxDelayMs: 400 } });
  const raised: string[] = [];
  agent.on('event', (e) => raised.push(eventMessageId(e)));
  t.teardown(() => agent.stop());
  await agent.start();
  await until('the agent to connect', () => agent.mqtt!.state === 'connected', 10_000, lines);
  await sleep(300); // the folder watch is ready

  // Folder: good anomalous frame, four bad files, good normal frame (raise 1 / clear 1: new, end).
  const drop = async (name: string, data: Buffer | string) => {
    await writeFile(join(dropDir, name), data);
    await sleep(250); // keeps the files' completion order
  };
  await drop('01-anomalous.jpg', scene.anomalous.jpeg);
  await drop('02-truncated.jpg', scene.anomalous.jpeg.subarray(0, Math.floor(scene.anomalous.jpeg.length / 2)));
  await drop('03-empty.jpg', Buffer.alloc(0));
  await drop('04-not-an-image.jpg', 'camera offline\n');
  await drop('05-huge.png', pngHeaderOnly(20_000, 20_000));
  await drop('06-normal.jpg', scene.normal.jpeg);

  const dropStats = () => agent.pipelineStats().cameras.drop;
  await until('both good frames scanned and the huge one refused', () => (dropStats()?.framesScanned ?? 0) >= 2 && (dropStats()?.decodeErrors ?? 0) >= 1, 20_000, lines);
  await until('the new and end events to arrive', () => raised.length >= 2 && raised.every((id) => delivered.includes(id)), 15_000, lines);

  // MQTT commands through the agent's client: one handler that wants JSON.
  const received: unknown[] = [];
  agent.mqtt!.onCommand('echo', (command) => void received.push(command.json()));
  await sleep(300); // the client subscribes to <root>/command/# when the first handler appears
  await sub.publishAsync(`${ROOT}/command/echo`, '{"scan": tru', { qos: 1 });
  await sub.publishAsync(`${ROOT}/command/echo`, JSON.stringify({ pad: 'x'.repeat(70_000) }), { qos: 1 });
  await sub.publishAsync(`${ROOT}/command/echo`, '{"ok": true}', { qos: 1 });
  await until('the valid command to be handled', () => received.length === 1, 5_000, lines);

  // Let the http cameras fail a few times while everything else runs.
  await until('http-snapshot errors', () => sourceErrors(agent, 'hang') >= 2 && sourceErrors(agent, 'html') >= 2, 15_000, lines);
  t.is(agent.state, 'running');
  t.deepEqual(received, [{ ok: true }]);

  // Folder errors: each named by file and reason, and counted by the source.
  const log = lines.join('');
  const folderErrors = sourceErrors(agent, 'drop');
  t.is(folderErrors, 3, 'truncated, empty and text files are source errors');
  t.regex(log, /02-truncated\.jpg is a truncated JPEG \(\d+ bytes, no end-of-image marker\)/);
  t.regex(log, /03-empty\.jpg is empty, not an image/);
  t.regex(log, /04-not-an-image\.jpg is text, not an image/);
  // The huge PNG passes the magic check and is refused by the decoder from its header.
  t.is(dropStats()!.decodeErrors, 1);
  t.regex(log, /05-huge\.png.*20000×20000 = 400\.0 megapixels exceeds the limit/);
  t.is(dropStats()!.framesScanned, 2, 'both good frames were scanned');
  t.true(process.memoryUsage().rss < 2 * 1024 ** 3, 'no 1.2 GB pixel buffer was allocated');

  // http-snapshot errors name the URL and the reason.
  t.regex(log, new RegExp(`GET http://127\\.0\\.0\\.1:${port}/hang timed out after 300 ms`));
  t.regex(log, new RegExp(`GET http://127\\.0\\.0\\.1:${port}/login answered text/html, not an image \\(body starts with`));

  // Commands: malformed → a handler error naming the command; oversized → rejected unread.
  const commands = agent.mqtt!.metrics().commands;
  t.is(commands.rejected.tooLarge, 1);
  t.is(commands.handlerErrors, 1);
  t.is(commands.accepted, 2, 'the malformed and the valid command reached the handler');
  t.regex(log, /MQTT command handler failed.*MQTT command echo \(shelfwatch\/store-1\/command\/echo\): payload is not JSON/);
  t.regex(log, /ignored MQTT command: payload too large.*"bytes":700\d\d,"max":65536/);

  // Nothing captured was lost: every raised event was delivered, exactly those.
  const stopped = agent.state;
  await agent.stop();
  t.is(stopped, 'running');
  const uniq = new Set(delivered);
  t.deepEqual(raised.filter((id) => !uniq.has(id)), []);
  t.deepEqual([...uniq].filter((id) => !raised.includes(id)), []);
  t.log(`bad input: raised ${raised.length}, delivered ${uniq.size} (raw ${delivered.length}); folder errors ${folderErrors}, decode errors ${dropStats()!.decodeErrors}, hang errors ${sourceErrors(agent, 'hang')}, html errors ${sourceErrors(agent, 'html')}`);
});

function sourceErrors(agent: Agent, camera: string): number {
  return agent.stats().cameras[camera]?.source.errors ?? 0;
}
