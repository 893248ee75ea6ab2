/**
 * agent/sources/ffmpeg-stream.ts stops ffmpeg as a process group: also when the group's leader
 * (a wrapper script) has already exited while what it started still runs and holds the pipe.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { chmod, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { FfmpegStreamSource } from '../agent/sources/index.js';

const run = promisify(execFile);
const workDir = mkdtempSync(join(tmpdir(), 'shelfwatch-ffmpeg-group-'));
const jpegFile = join(workDir, 'frame.jpg');
test.before(async () => {
  await writeFile(jpegFile, await sharp({ create: { width: 16, height: 12, channels: 3, background: '#30a030' } }).jpeg().toBuffer());
});
test.after.always(() => rm(workDir, { recursive: true, force: true }));

async function processes(marker: string): Promise<number[]> {
  const { stdout } = await run('ps', ['-e', '-ww', '-o', 'pid=,args=']).catch(() => ({ stdout: '' }));
  return stdout
    .split('\n')
    .filter((line) => line.includes(marker) && !line.includes(' ps '))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

async function until(cond: () => Promise<boolean>, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await sleep(25);
  }
  return cond();
}

test('stream: a wrapper that started ffmpeg in the background and exited: unsubscribing still stops that ffmpeg', async (t) => {
  const marker = `/*ffmpeg-group-bg-${process.pid}*/`;
  const path = join(workDir, 'bg-wrapper.sh');
  // The wrapper (group leader) exits at once; its "ffmpeg" keeps our stdout and ignores SIGTERM.
  const code = `process.on("SIGTERM", () => {}); ${marker} const img = require("fs").readFileSync(process.argv[1]); setInterval(() => process.stdout.write(img), 50);`;
  await writeFile(path, `#!/bin/sh\nif [ "$1" = "-version" ]; then echo 'ffmpeg version 6.1'; exit 0; fi\n'${process.execPath}' -e '${code}' '${jpegFile}' &\nexit 0\n`);
  await chmod(path, 0o755);
  const src = new FfmpegStreamSource('cam', { type: 'stream', input: 'http://127.0.0.1:9/w.mjpg', fps: 5 }, { ffmpegPath: path, killTimeoutMs: 300 });
  let frames = 0;
  const sub = src.frames$.subscribe(() => frames++);
  t.teardown(async () => {
    sub.unsubscribe();
    for (const pid of await processes(marker)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {}
    }
  });
  t.true(await until(async () => frames > 0 && (await processes(marker)).length === 1), 'the background ffmpeg runs and sends frames');
  sub.unsubscribe();
  t.true(await until(async () => (await processes(marker)).length === 0), 'nothing of it is left');
});
