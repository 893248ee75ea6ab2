/**
 * deploy/install.sh end to end — always inside a throwaway --prefix root, never against this
 * machine's own /opt, /etc or systemd. npm is replaced (SHELFWATCH_NPM) by a stand-in that
 * links the checkout's node_modules and writes a one-file dist/, so no package is downloaded
 * and no TypeScript build runs; the stand-in logs each call with its ONNXRUNTIME_NODE_INSTALL.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { chmod, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, writeFile, appendFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { arch as osArch, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const exec = promisify(execFile);
const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const script = join(repo, 'deploy', 'install.sh');

interface Sandbox {
  dir: string;
  /** The --prefix root (not created up front). */
  root: string;
  npmLog: string;
  env: NodeJS.ProcessEnv;
}

async function sandbox(t: ExecutionContext): Promise<Sandbox> {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-install-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const npmLog = join(dir, 'npm.log');
  const npm = join(dir, 'npm');
  await writeFile(
    npm,
    `#!/bin/sh
printf '%s | ORT=%s\\n' "$*" "\${ONNXRUNTIME_NODE_INSTALL:-}" >> '${npmLog}'
[ "\${STUB_NPM_FAIL:-}" = "$1" ] && { echo "stub npm: $1 failed" >&2; exit 1; }
case "$1" in
  ci) ln -s '${join(repo, 'node_modules')}' node_modules ;;
  run) mkdir -p dist/agent && echo 'console.log("shelfwatch")' > dist/agent/cli.js ;;
esac
exit 0
`,
  );
  await chmod(npm, 0o755);
  // The caller's ONNXRUNTIME_NODE_INSTALL (CI sets it) must not leak into the script's later npm calls.
  const { ONNXRUNTIME_NODE_INSTALL: _ort, ...env } = process.env;
  return { dir, root: join(dir, 'root'), npmLog, env: { ...env, SHELFWATCH_NPM: npm } };
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function install(box: Sandbox, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  // Belt and braces: this test must never touch the real system.
  const full = ['--prefix', box.root, '--node', process.execPath, ...args];
  try {
    const { stdout, stderr } = await exec('bash', [script, ...full], { env: { ...box.env, ...env } });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

const npmCalls = (box: Sandbox) => readFile(box.npmLog, 'utf8').then((s) => s.trim().split('\n'), () => [] as string[]);
const exists = (p: string) => lstat(p).then(() => true, () => false);
const mode = async (p: string) => ((await stat(p)).mode & 0o777).toString(8);

test('--dry-run prints every step and changes nothing', async (t) => {
  const box = await sandbox(t);
  const r = await install(box, ['--dry-run', '--gpu', 'none']);
  t.is(r.code, 0, r.stderr);
  const out = r.stdout;
  const root = box.root;
  for (const expected of [
    'dry run: nothing is changed',
    '+ useradd --system --user-group --home-dir /var/lib/shelfwatch --no-create-home --shell /usr/sbin/nologin shelfwatch   # skipped: --prefix',
    `+ install -d -m 0750 ${root}/etc/shelfwatch`,
    `+ chown root:shelfwatch ${root}/etc/shelfwatch   # skipped: --prefix`,
    `+ install -d -m 0750 ${root}/var/lib/shelfwatch`,
    `+ install -d -m 0750 ${root}/var/lib/shelfwatch/models`,
    `+ install -d -m 0750 ${root}/var/lib/shelfwatch/outbox`,
    `+ chown shelfwatch:shelfwatch ${root}/var/lib/shelfwatch/outbox   # skipped: --prefix`,
    `+ cp -R ${repo}/package-lock.json ${root}/opt/shelfwatch.new/`,
    `+ (cd ${root}/opt/shelfwatch.new && env ONNXRUNTIME_NODE_INSTALL=skip ${box.env.SHELFWATCH_NPM} ci --no-audit --no-fund)`,
    `+ (cd ${root}/opt/shelfwatch.new && ${box.env.SHELFWATCH_NPM} run build)`,
    `+ (cd ${root}/opt/shelfwatch.new && ${box.env.SHELFWATCH_NPM} prune --omit=dev --no-audit --no-fund)`,
    `+ mv ${root}/opt/shelfwatch.new ${root}/opt/shelfwatch`,
    `+ install -m 0640 ${repo}/deploy/shelfwatch.example.yaml ${root}/etc/shelfwatch/shelfwatch.yaml`,
    `+ install -m 0640 ${repo}/systemd/shelfwatch.env.example ${root}/etc/shelfwatch/shelfwatch.env`,
    `> ${root}/etc/systemd/system/shelfwatch.service`,
    '+ systemctl daemon-reload   # skipped: --prefix',
    '+ systemctl enable shelfwatch.service   # skipped: --prefix',
    'shelfwatch.yaml is still the example: edit it',
  ]) {
    t.true(out.includes(expected), `missing step: ${expected}\n--- output ---\n${out}`);
  }
  t.false(await exists(root), 'the prefix was not even created');
  t.deepEqual(await npmCalls(box), [], 'npm was not run');
});

test('install, re-install (idempotent upgrade), uninstall, purge — in a temp prefix', async (t) => {
  const box = await sandbox(t);
  const root = box.root;
  const app = join(root, 'opt/shelfwatch');
  const config = join(root, 'etc/shelfwatch/shelfwatch.yaml');
  const secrets = join(root, 'etc/shelfwatch/shelfwatch.env');
  const unit = join(root, 'etc/systemd/system/shelfwatch.service');

  // 1. Fresh install.
  const first = await install(box, ['--gpu', 'none']);
  t.is(first.code, 0, first.stderr);
  t.true(await exists(join(app, 'dist/agent/cli.js')));
  t.true(await exists(join(app, 'agent/cli.ts')), 'the source tree was copied');
  t.is(await readlink(join(app, 'node_modules')), join(repo, 'node_modules'));
  t.deepEqual((await readdir(join(root, 'opt'))).sort(), ['shelfwatch'], 'no .new/.old left behind');
  t.is(await readFile(config, 'utf8'), await readFile(join(repo, 'deploy/shelfwatch.example.yaml'), 'utf8'));
  t.is(await readFile(secrets, 'utf8'), await readFile(join(repo, 'systemd/shelfwatch.env.example'), 'utf8'));
  t.is(await mode(config), '640');
  t.is(await mode(secrets), '640');
  for (const d of ['etc/shelfwatch', 'var/lib/shelfwatch', 'var/lib/shelfwatch/models', 'var/lib/shelfwatch/outbox', 'var/cache/shelfwatch']) {
    t.is(await mode(join(root, d)), '750', d);
  }
  const unitText = await readFile(unit, 'utf8');
  t.is(await mode(unit), '644');
  t.true(unitText.includes(`\nExecStart=${process.execPath} --initial-old-space-size=96 /opt/shelfwatch/dist/agent/cli.js run --config /etc/shelfwatch/shelfwatch.yaml\n`), 'unit runs the node it was given, real paths');
  t.is(unitText.replace(`ExecStart=${process.execPath} `, 'ExecStart=/usr/bin/node '), await readFile(join(repo, 'systemd/shelfwatch.service'), 'utf8'));
  t.deepEqual(await npmCalls(box), ['ci --no-audit --no-fund | ORT=skip', 'run build | ORT=', 'prune --omit=dev --no-audit --no-fund | ORT=']);
  t.regex(first.stdout, /still the example: edit it/);
  t.notRegex(first.stdout, /systemctl restart/, 'an unedited example config is not started');

  // 2. The operator edits the config, models and events accumulate; then an upgrade.
  await appendFile(config, '# edited by the operator\n');
  const editedConfig = await readFile(config, 'utf8');
  await writeFile(join(root, 'var/lib/shelfwatch/models/drinks.onnx'), 'model');
  await writeFile(join(root, 'var/lib/shelfwatch/outbox/0001.json'), '{}');
  await writeFile(join(app, 'stale-file-from-old-version'), 'x');
  const second = await install(box, ['--gpu', 'none']);
  t.is(second.code, 0, second.stderr);
  t.is(await readFile(config, 'utf8'), editedConfig, 'config untouched');
  t.regex(second.stdout, /keeping .*shelfwatch\.yaml/);
  t.regex(second.stdout, /keeping .*shelfwatch\.env/);
  t.regex(second.stdout, /\+ systemctl restart shelfwatch\.service {3}# skipped: --prefix/, 'an edited config gets (re)started');
  t.false(await exists(join(app, 'stale-file-from-old-version')), 'the app tree was replaced, not merged');
  t.true(await exists(join(app, 'dist/agent/cli.js')));
  t.deepEqual((await readdir(join(root, 'opt'))).sort(), ['shelfwatch']);
  t.is(await readFile(join(root, 'var/lib/shelfwatch/models/drinks.onnx'), 'utf8'), 'model');

  // 3. Uninstall keeps config and state.
  const removed = await install(box, ['--uninstall']);
  t.is(removed.code, 0, removed.stderr);
  t.false(await exists(app));
  t.false(await exists(unit));
  t.is(await readFile(config, 'utf8'), editedConfig);
  t.true(await exists(secrets));
  t.true(await exists(join(root, 'var/lib/shelfwatch/outbox/0001.json')));
  t.regex(removed.stdout, /\+ systemctl disable --now shelfwatch\.service {3}# skipped: --prefix/);
  t.regex(removed.stdout, /kept .*etc\/shelfwatch/);
  t.true((await install(box, ['--uninstall'])).code === 0, 'uninstalling twice is fine');

  // 4. Purge removes the rest.
  const purged = await install(box, ['--uninstall', '--purge']);
  t.is(purged.code, 0, purged.stderr);
  for (const d of ['etc/shelfwatch', 'var/lib/shelfwatch', 'var/cache/shelfwatch', 'opt/shelfwatch']) t.false(await exists(join(root, d)), d);
  t.regex(purged.stdout, /\+ userdel shelfwatch {3}# skipped: --prefix/);
});

test('the installed unit passes systemd-analyze verify as written', async (t) => {
  const box = await sandbox(t);
  t.is((await install(box, ['--gpu', 'none', '--no-start'])).code, 0);
  const unit = join(box.root, 'etc/systemd/system/shelfwatch.service');
  try {
    const { stdout, stderr } = await exec('systemd-analyze', ['verify', unit]);
    t.is((stdout + stderr).trim(), '');
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    t.fail(err.code === 'ENOENT' ? 'systemd-analyze is not installed (apt-get install systemd)' : `verify failed: ${err.stderr}`);
  }
});

test('a failed build leaves the installed version in place', async (t) => {
  const box = await sandbox(t);
  t.is((await install(box, ['--gpu', 'none'])).code, 0);
  const app = join(box.root, 'opt/shelfwatch');
  await writeFile(join(app, 'marker'), 'old version');
  const failed = await install(box, ['--gpu', 'none'], { STUB_NPM_FAIL: 'run' });
  t.not(failed.code, 0);
  t.regex(failed.stderr, /stub npm: run failed/);
  t.is(await readFile(join(app, 'marker'), 'utf8'), 'old version');
  t.true(await exists(join(app, 'dist/agent/cli.js')));
  // The next successful run cleans up the half-built tree.
  t.is((await install(box, ['--gpu', 'none'])).code, 0);
  t.deepEqual((await readdir(join(box.root, 'opt'))).sort(), ['shelfwatch']);
});

test('--tarball installs a prebuilt tree with production dependencies only', async (t) => {
  const box = await sandbox(t);
  const tree = join(box.dir, 'tree');
  await mkdir(join(tree, 'dist/agent'), { recursive: true });
  await writeFile(join(tree, 'dist/agent/cli.js'), 'console.log("prebuilt")');
  await writeFile(join(tree, 'package.json'), '{"name":"shelfwatch","version":"9.9.9"}');
  await writeFile(join(tree, 'package-lock.json'), '{}');
  const tarball = join(box.dir, 'shelfwatch.tgz');
  await exec('tar', ['-czf', tarball, '-C', tree, '.']);
  const r = await install(box, ['--gpu', 'none', '--tarball', tarball]);
  t.is(r.code, 0, r.stderr);
  t.deepEqual(await npmCalls(box), ['ci --omit=dev --no-audit --no-fund | ORT=skip']);
  t.is(await readFile(join(box.root, 'opt/shelfwatch/dist/agent/cli.js'), 'utf8'), 'console.log("prebuilt")');
  t.regex(r.stdout, /done: shelfwatch 9\.9\.9/);
  t.true(await exists(join(box.root, 'etc/systemd/system/shelfwatch.service')));
});

test('--gpu cuda asks onnxruntime-node for its CUDA 12 provider (x64) or refuses (arm64)', async (t) => {
  const box = await sandbox(t);
  const r = await install(box, ['--dry-run', '--gpu', 'cuda']);
  if (osArch() === 'x64') {
    t.is(r.code, 0, r.stderr);
    t.regex(r.stdout, /env ONNXRUNTIME_NODE_INSTALL=cuda12 \S+ ci --no-audit --no-fund/);
    t.regex(r.stdout, /CUDA 12 provider \(needs CUDA 12\.x \+ cuDNN 9\.x/);
  } else {
    t.not(r.code, 0);
    t.regex(r.stderr, /no prebuilt CUDA provider for linux\//);
  }
});

test('an NVIDIA box missing the Vulkan loader or GLVND is told what WebGPU needs; one that has them, or has no GPU, is not', async (t) => {
  const box = await sandbox(t);
  const bin = join(box.dir, 'bin');
  await mkdir(bin);
  // Stand-ins: a visible NVIDIA GPU (nvidia-smi) and the loader cache listing (ldconfig -p).
  await writeFile(join(bin, 'nvidia-smi'), '#!/bin/sh\nexit 0\n');
  await writeFile(join(bin, 'ldconfig'), '#!/bin/sh\ncat "$LDCONFIG_LISTING"\n');
  await Promise.all(['nvidia-smi', 'ldconfig'].map((f) => chmod(join(bin, f), 0o755)));
  const listing = join(box.dir, 'ld.so.cache.txt');
  const line = (lib: string) => `\t${lib} (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/${lib}\n`;
  const env = { PATH: `${bin}:${process.env.PATH}`, LDCONFIG_LISTING: listing };

  await writeFile(listing, `4 libs found in cache\n${line('libvulkan.so.1')}${line('libGLX.so.0')}${line('libc.so.6')}`);
  const partial = await install(box, ['--dry-run', '--gpu', 'none'], env);
  t.is(partial.code, 0, partial.stderr);
  t.regex(partial.stderr, /warning: WebGPU needs libGLdispatch\.so\.0 libEGL\.so\.1 to reach the NVIDIA GPU .*apt-get install libvulkan1 libglvnd0 libglx0 libegl1/);

  await writeFile(listing, ['libvulkan.so.1', 'libGLdispatch.so.0', 'libGLX.so.0', 'libEGL.so.1'].map(line).join(''));
  const complete = await install(box, ['--dry-run', '--gpu', 'none'], env);
  t.is(complete.code, 0, complete.stderr);
  t.notRegex(complete.stderr, /WebGPU needs/);

  await rm(join(bin, 'nvidia-smi'));
  await writeFile(listing, '');
  const noGpu = await install(box, ['--dry-run'], env);
  t.is(noGpu.code, 0, noGpu.stderr);
  if (!existsSyncNvidia()) t.notRegex(noGpu.stderr, /WebGPU needs/, 'no GPU: nothing to say');
});

test('a box without libturbojpeg is told that JPEG frames decode slower and what to install; one with it is not', async (t) => {
  const box = await sandbox(t);
  const bin = join(box.dir, 'bin');
  await mkdir(bin);
  await writeFile(join(bin, 'ldconfig'), '#!/bin/sh\ncat "$LDCONFIG_LISTING"\n');
  await chmod(join(bin, 'ldconfig'), 0o755);
  const listing = join(box.dir, 'ld.so.cache.txt');
  const env = { PATH: `${bin}:${process.env.PATH}`, LDCONFIG_LISTING: listing };
  await writeFile(listing, '1 libs found in cache\n\tlibc.so.6 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libc.so.6\n');
  const without = await install(box, ['--dry-run', '--gpu', 'none'], env);
  t.is(without.code, 0, without.stderr);
  t.regex(without.stderr, /warning: libturbojpeg\.so\.0 not found: JPEG frames will decode through libvips, with about 2\.5× the CPU: apt-get install libturbojpeg0/);
  await writeFile(listing, '\tlibturbojpeg.so.0 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libturbojpeg.so.0\n');
  const withIt = await install(box, ['--dry-run', '--gpu', 'none'], env);
  t.is(withIt.code, 0, withIt.stderr);
  t.notRegex(withIt.stderr, /libturbojpeg/);
});

test('bad arguments and an old node are refused with a clear message', async (t) => {
  const box = await sandbox(t);
  const cases: Array<[string[], RegExp]> = [
    [['--gpu', 'rocm'], /--gpu must be auto, cuda or none, got 'rocm'/],
    [['--purge'], /--purge only goes with --uninstall/],
    [['--frobnicate'], /unknown argument '--frobnicate'/],
    [['--tarball', join(box.dir, 'missing.tgz')], /--tarball .*missing\.tgz: no such file/],
  ];
  for (const [args, message] of cases) {
    const r = await install(box, args);
    t.not(r.code, 0, args.join(' '));
    t.regex(r.stderr, message);
  }
  const oldNode = join(box.dir, 'node18');
  await writeFile(oldNode, '#!/bin/sh\necho 18.19.0\n');
  await chmod(oldNode, 0o755);
  const fresh = { ...box, root: join(box.dir, 'root-old-node') };
  const r = await install(fresh, ['--node', oldNode]);
  t.not(r.code, 0);
  t.regex(r.stderr, /Node\.js >= 20 needed, .*node18 is 18\.19\.0/);
  t.false(await exists(fresh.root), 'refused before changing anything');
});

function existsSyncNvidia(): boolean {
  return ['/dev/nvidia0', '/dev/nvgpu', '/dev/nvhost-gpu'].some((d) => existsSync(d));
}

test('ffmpeg: missing or off the service PATH is a warning, louder when the installed config has stream cameras', async (t) => {
  const box = await sandbox(t);
  const missing = await install(box, ['--dry-run', '--gpu', 'none'], { SHELFWATCH_FFMPEG: join(box.dir, 'no-such-ffmpeg') });
  t.is(missing.code, 0, missing.stderr);
  t.regex(missing.stderr, /warning: ffmpeg not found: `stream` cameras \(RTSP, V4L2, video files\) need it: apt-get install ffmpeg/);

  // An existing config with a stream camera (an upgrade): the warning says so.
  await mkdir(join(box.root, 'etc/shelfwatch'), { recursive: true });
  await writeFile(join(box.root, 'etc/shelfwatch/shelfwatch.yaml'), 'cameras:\n  - id: a\n    source:\n      type: stream\n');
  const upgrade = await install(box, ['--dry-run', '--gpu', 'none'], { SHELFWATCH_FFMPEG: join(box.dir, 'no-such-ffmpeg') });
  t.is(upgrade.code, 0, upgrade.stderr);
  t.regex(upgrade.stderr, /ffmpeg not found: .* need it — and .*etc\/shelfwatch\/shelfwatch\.yaml has stream cameras, which cannot start without it: apt-get install ffmpeg/);

  // One that the service would not find (not in /usr/bin, /usr/local/bin, /bin, ...).
  const own = join(box.dir, 'ffmpeg');
  await writeFile(own, '#!/bin/sh\nexit 0\n');
  await chmod(own, 0o755);
  const elsewhere = await install(box, ['--dry-run', '--gpu', 'none'], { SHELFWATCH_FFMPEG: own });
  t.regex(elsewhere.stderr, new RegExp(`warning: ffmpeg is ${own.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}, outside the service's PATH`));

  // In the usual place: one line on stdout, no warning.
  const usual = await install(box, ['--dry-run', '--gpu', 'none'], { SHELFWATCH_FFMPEG: 'sh' }); // /bin/sh or /usr/bin/sh stands in
  t.regex(usual.stdout, /==> ffmpeg at \/(usr\/)?bin\/sh/);
  t.notRegex(usual.stderr, /ffmpeg/);
});
