/**
 * The agent's V8 heap floor (agent/v8-heap.ts): reading it from node's flags, the warning when
 * it is missing, and every launcher passing the same flag. That the shipped command's shebang
 * really hands it to node is checked by test/build-context.test.ts, which runs the built CLI.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HEAP_FLOOR_FLAG, HEAP_FLOOR_MB, heapFloorMb, heapFloorWarning } from '../agent/v8-heap.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const text = (path: string) => readFile(join(repo, path), 'utf8');

test('heapFloorMb reads --initial-old-space-size in either spelling; the last one wins; other flags are ignored', (t) => {
  t.is(heapFloorMb([]), null);
  t.is(heapFloorMb(['--max-old-space-size=4096', '--enable-source-maps']), null);
  t.is(heapFloorMb([HEAP_FLOOR_FLAG]), HEAP_FLOOR_MB);
  t.is(heapFloorMb(['--initial_old_space_size=200']), 200);
  t.is(heapFloorMb(['--initial-old-space-size=128', '--initial-old-space-size=64']), 64);
  t.is(heapFloorMb(['--initial-old-space-size']), null, 'no value: not a floor');
  t.is(heapFloorMb(['--initial-old-space-size=big']), null);
});

test('heapFloorWarning: none at or above the floor; otherwise it says what node got and the flag to use', (t) => {
  t.is(heapFloorWarning([HEAP_FLOOR_FLAG]), null);
  t.is(heapFloorWarning([`--initial-old-space-size=${HEAP_FLOOR_MB * 2}`]), null);
  const none = heapFloorWarning(['--enable-source-maps']);
  t.regex(none ?? '', /started without it/);
  t.true(none?.includes(HEAP_FLOOR_FLAG));
  t.regex(heapFloorWarning(['--initial-old-space-size=32']) ?? '', /started with 32 MB: start it with --initial-old-space-size=96/);
});

test('every launcher starts node with the heap floor: the unit, both Dockerfiles, npm start, bench:pipeline, the shebang', async (t) => {
  const unit = await text('systemd/shelfwatch.service');
  t.regex(unit, new RegExp(`^ExecStart=/usr/bin/node ${HEAP_FLOOR_FLAG} /opt/shelfwatch/dist/agent/cli\\.js run `, 'm'));
  for (const name of ['deploy/Dockerfile', 'deploy/Dockerfile.jetson']) {
    const entry = /^ENTRYPOINT\s+(\[.*\])$/m.exec(await text(name));
    const argv = JSON.parse(entry?.[1] ?? '[]') as string[];
    t.is(argv[argv.indexOf('node') + 1], HEAP_FLOOR_FLAG, `${name}: ENTRYPOINT ${argv.join(' ')}`);
  }
  const scripts = (JSON.parse(await text('package.json')) as { scripts: Record<string, string> }).scripts;
  t.true(scripts.start!.includes(`node ${HEAP_FLOOR_FLAG} dist/agent/cli.js demo`), scripts.start);
  t.true(scripts['bench:pipeline']!.startsWith(`node ${HEAP_FLOOR_FLAG} --import tsx `), scripts['bench:pipeline']);
  t.is((await text('agent/cli.ts')).split('\n')[0], `#!/usr/bin/env -S node ${HEAP_FLOOR_FLAG}`);
});
