/**
 * What deploy/install.sh and the two Dockerfiles ship is enough to build and run the agent.
 *
 * No Docker engine runs on the CI machine, so the images themselves are not built here; this
 * checks what can drift without one: the files each recipe copies, the build from exactly those
 * files (a real `tsc` in a scratch folder, then the CLI started from the result), and the paths
 * and ports the Dockerfiles hard-code against the code that defines them.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { chmod, cp, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { configFromObject } from '../agent/config.js';
import { HEAP_FLOOR_FLAG } from '../agent/v8-heap.js';

const exec = promisify(execFile);
const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DOCKERFILES = ['deploy/Dockerfile', 'deploy/Dockerfile.jetson'];

/** Sources of the COPY instructions that copy from the build context (not `--from=`). */
function contextCopies(dockerfile: string): string[] {
  const out: string[] = [];
  for (const line of dockerfile.split('\n')) {
    const m = /^COPY\s+(?!--from)(.+)$/.exec(line.trim());
    if (!m) continue;
    const words = m[1]!.trim().split(/\s+/);
    out.push(...words.slice(0, -1)); // the last word is the destination
  }
  return out;
}

/** The files and folders install.sh copies from a checkout (its `for item in …` list). */
function installerItems(script: string): string[] {
  const m = /for item in ([^;]+); do/.exec(script);
  if (!m) throw new Error('deploy/install.sh: no `for item in …; do` list found');
  return m[1]!.trim().split(/\s+/);
}

test('each Dockerfile copies every source folder install.sh ships, and each copied path exists', async (t) => {
  const items = installerItems(await readFile(join(repo, 'deploy/install.sh'), 'utf8'));
  const needed = items.filter((i) => !['README.md', 'LICENSE'].includes(i)); // docs: not needed to build or run
  for (const name of DOCKERFILES) {
    const copies = contextCopies(await readFile(join(repo, name), 'utf8'));
    t.deepEqual([...new Set(copies)].sort(), [...needed].sort(), `${name} copies ${copies.join(' ')}`);
    for (const c of copies) await t.notThrowsAsync(stat(join(repo, c)), `${name}: COPY ${c} names nothing in the repository`);
  }
});

test('the agent builds from exactly the files install.sh and the Dockerfiles ship, and its CLI starts', async (t) => {
  const items = installerItems(await readFile(join(repo, 'deploy/install.sh'), 'utf8'));
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-context-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  for (const item of items) {
    const from = join(repo, item);
    const exists = await stat(from).then(() => true, () => false);
    if (exists) await cp(from, join(dir, item), { recursive: true });
  }
  await symlink(join(repo, 'node_modules'), join(dir, 'node_modules'), 'dir');
  // The same command as `npm run build` (tsconfig's test/bench globs match nothing here).
  const tsc = join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
  await t.notThrowsAsync(exec(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: dir }), 'tsc failed on the shipped files');
  const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as { bin: Record<string, string> };
  const cli = join(dir, pkg.bin.shelfwatch!);
  const { stdout } = await exec(process.execPath, [cli, '--help'], { cwd: dir });
  t.regex(stdout, /\brun\b/);
  t.regex(stdout, /\bmodel\b/);

  // Run as a command (npm links the bin with its exec bit), its shebang starts node with the
  // agent's V8 heap floor: a preload prints the flags node got.
  await chmod(cli, 0o755);
  const preload = join(dir, 'print-exec-argv.cjs');
  await writeFile(preload, "process.stderr.write('EXEC_ARGV ' + JSON.stringify(process.execArgv) + '\\n');\n");
  const direct = await exec(cli, ['--version'], { cwd: dir, env: { ...process.env, NODE_OPTIONS: `--require ${preload}` } });
  const execArgv = JSON.parse(/^EXEC_ARGV (.*)$/m.exec(direct.stderr)?.[1] ?? 'null') as string[] | null;
  t.deepEqual(execArgv, [HEAP_FLOOR_FLAG], direct.stderr);
  t.regex(direct.stdout, /^\d+\.\d+\.\d+/);
});

test('the paths and ports the Dockerfiles hard-code match the code', async (t) => {
  const pkg = JSON.parse(await readFile(join(repo, 'package.json'), 'utf8')) as { bin: Record<string, string> };
  const install = await readFile(join(repo, 'deploy/install.sh'), 'utf8');
  const cudaLib = /cuda_lib=\$stage\/(\S+)/.exec(install)?.[1];
  t.truthy(cudaLib, 'install.sh names the CUDA provider library it checks for');
  const metricsPort = configFromObject({ agent: { id: 'defaults' }, cameras: [] }, { origin: '<defaults>', env: {} }).metrics.port;
  for (const name of DOCKERFILES) {
    const text = await readFile(join(repo, name), 'utf8');
    const entry = /^ENTRYPOINT\s+(\[.*\])$/m.exec(text);
    t.truthy(entry, `${name}: no exec-form ENTRYPOINT`);
    const argv = JSON.parse(entry![1]!) as string[];
    t.true(argv.includes(`/opt/shelfwatch/${pkg.bin.shelfwatch}`), `${name}: ENTRYPOINT ${argv.join(' ')} does not start ${pkg.bin.shelfwatch}`);
    // /healthz, not /metrics: /metrics answers 200 while inference is stuck or every camera failed.
    const healthcheck = /^HEALTHCHECK .*\\\n\s*CMD (.*)$/m.exec(text)?.[1] ?? '';
    t.regex(healthcheck, new RegExp(`127\\.0\\.0\\.1:${metricsPort}/healthz`), `${name}: HEALTHCHECK does not probe /healthz on the default metrics port ${metricsPort}`);
    if (name === 'deploy/Dockerfile') {
      t.true(text.includes(`test -f ${cudaLib}`), `${name}: the build does not check for ${cudaLib}`);
      t.regex(text, /ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci/);
    } else {
      t.regex(text, /ONNXRUNTIME_NODE_INSTALL=skip npm ci/);
    }
  }
});
