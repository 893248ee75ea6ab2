/**
 * Config for an installed agent (ops review, findings 5 and 6):
 * - `agent.timezone`: an IANA zone name, checked at its key; absent → the system's zone;
 * - the example config keeps everything the agent writes under /var/lib/shelfwatch, which is what
 *   the systemd unit (StateDirectory=, ProtectSystem=strict) and install.sh make writable;
 * - `config check` warns about a model folder the agent cannot write to (model rollout writes its
 *   temp and .previous files there), and — for the installed config in /etc/shelfwatch — about
 *   state, outbox or model folders outside the writable places.
 */
import test from 'ava';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  checkConfigFiles,
  ConfigError,
  configFromObject,
  configWarnings,
  formatConfigSummary,
  INSTALLED_WRITABLE_DIRS,
  loadConfig,
  timeZoneProblem,
} from '../agent/config.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const examplePath = join(repo, 'deploy', 'shelfwatch.example.yaml');
const exampleEnv = { MQTT_USER: 'shelf-agent', MQTT_PASSWORD: 'pw-from-env-123', CAMERA_TOKEN: 'cam-token-456' };
const INSTALLED = '/etc/shelfwatch/shelfwatch.yaml';

test('agent.timezone: IANA names are accepted, anything else is an error at the key (with a suggestion)', (t) => {
  const load = (timezone: unknown) => configFromObject({ agent: { id: 'a', timezone } }, { origin: 'tz.yaml', env: {} });
  t.is(load('Europe/Berlin').agent.timezone, 'Europe/Berlin');
  t.is(load('UTC').agent.timezone, 'UTC');
  t.is(load('America/Argentina/Buenos_Aires').agent.timezone, 'America/Argentina/Buenos_Aires');
  t.is(configFromObject({ agent: { id: 'a' } }, { env: {} }).agent.timezone, undefined, 'default: the system zone');
  t.throws(() => load('Mars/Olympus_Mons'), { message: /agent\.timezone: expected an IANA time zone name such as 'Europe\/Berlin'/ });
  t.throws(() => load('Europe/Berln'), { message: /agent\.timezone: .*did you mean 'Europe\/Berlin'\?/ });
  t.throws(() => load('+01:00'), { message: /agent\.timezone: expected an IANA time zone name/ });
  t.throws(() => load(''), { message: /agent\.timezone/ });
  t.throws(() => load(5), { message: /agent\.timezone/ });
  t.is(timeZoneProblem('Asia/Tokyo'), undefined);
});

test('agent.timezone from the environment, and shown by config check', (t) => {
  const config = configFromObject({ agent: { id: 'a', timezone: '${TZ_NAME}' } }, { env: { TZ_NAME: 'Asia/Tokyo' } });
  t.is(config.agent.timezone, 'Asia/Tokyo');
  t.regex(formatConfigSummary(config), /schedules in Asia\/Tokyo time/);
  t.regex(formatConfigSummary(configFromObject({ agent: { id: 'a' } }, { env: {} })), /schedules in .+, the system's time/);
});

test('the example config writes only under /var/lib/shelfwatch (what the unit and install.sh make writable)', async (t) => {
  const config = await loadConfig(examplePath, { env: exampleEnv });
  for (const [name, model] of Object.entries(config.models)) t.true(model.path.startsWith('/var/lib/shelfwatch/models/'), `models.${name}.path ${model.path}`);
  t.is(config.agent.stateDir, '/var/lib/shelfwatch');
  t.true(config.outbox.dir.startsWith('/var/lib/shelfwatch/'));
  // As installed: the files are missing here (errors), but no folder is outside the writable places.
  await t.throwsAsync(checkConfigFiles(config, INSTALLED), { instanceOf: ConfigError });
  t.deepEqual(configWarnings(config).filter((w) => w.includes('outside')), []);

  // The unit and install.sh agree on those places.
  const unit = await readFile(join(repo, 'systemd', 'shelfwatch.service'), 'utf8');
  const stateDirs = (/^StateDirectory=(.*)$/m.exec(unit)?.[1] ?? '').split(/\s+/).map((d) => `/var/lib/${d}`);
  const cacheDirs = (/^CacheDirectory=(.*)$/m.exec(unit)?.[1] ?? '').split(/\s+/).map((d) => `/var/cache/${d}`);
  t.true(stateDirs.includes(INSTALLED_WRITABLE_DIRS[0]!) && cacheDirs.includes(INSTALLED_WRITABLE_DIRS[1]!), `${stateDirs} ${cacheDirs}`);
  t.true(stateDirs.includes('/var/lib/shelfwatch/models') && stateDirs.includes('/var/lib/shelfwatch/outbox'));
  const install = await readFile(join(repo, 'deploy', 'install.sh'), 'utf8');
  for (const dir of ['"$STATE_DIR"', '"$STATE_DIR/models"', '"$STATE_DIR/outbox"', '"$CACHE_DIR"']) t.true(install.includes(dir), `install.sh creates ${dir}`);
  t.regex(install, /STATE_DIR=\$ROOT\/var\/lib\/shelfwatch/);
});

test('the installed config: state, outbox and model folders outside /var/lib/shelfwatch are warned about', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-ops-cfg-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'm.onnx'), 'onnx');
  // What a relative path in /etc/shelfwatch/shelfwatch.yaml amounts to: folders next to the config.
  const config = configFromObject({ agent: { id: 'a', stateDir: 'state' }, models: { m: { path: 'm.onnx' } } }, { baseDir: dir, env: {} });
  await checkConfigFiles(config, INSTALLED);
  const warnings = configWarnings(config);
  t.true(warnings.some((w) => w.startsWith(`agent.stateDir: ${join(dir, 'state')} is outside /var/lib/shelfwatch and /var/cache/shelfwatch`)), warnings.join('\n'));
  t.true(warnings.some((w) => w.startsWith('outbox.dir: ')));
  t.true(warnings.some((w) => w.startsWith(`models.m.path (its folder: model rollout writes there): ${dir} is outside`)));
  t.regex(formatConfigSummary(config, INSTALLED), /warnings:\n(?: {2}- .*\n)* {2}- agent\.stateDir: .* add ReadWritePaths= in a drop-in/);

  // The same config elsewhere (a demo, a dev checkout): no such warning.
  const dev = configFromObject({ agent: { id: 'a', stateDir: 'state' }, models: { m: { path: 'm.onnx' } } }, { baseDir: dir, env: {} });
  await checkConfigFiles(dev, join(dir, 'agent.yaml'));
  t.deepEqual(configWarnings(dev).filter((w) => w.includes('outside')), []);
});

test('config check: a state dir that cannot be created says where it should be', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-ops-cfg-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'file'), 'x');
  const config = configFromObject({ agent: { id: 'a', stateDir: 'file/state' } }, { baseDir: dir, env: {} });
  const err = await t.throwsAsync(checkConfigFiles(config, join(dir, 'agent.yaml')), { instanceOf: ConfigError });
  t.regex(err!.message, /agent\.stateDir: not accessible \(ENOTDIR: a parent is not a directory\) \(the agent keeps its outbox, debounce states and downloaded models there; installed: agent\.stateDir: \/var\/lib\/shelfwatch/);
});

test('config check: a model folder this user cannot write to is a warning (model rollout writes there)', async (t) => {
  if (process.getuid?.() === 0) {
    t.log('running as root: every folder is writable, nothing to check');
    t.pass();
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-ops-cfg-'));
  const models = join(dir, 'models');
  await mkdir(models);
  t.teardown(async () => {
    await chmod(models, 0o755);
    await rm(dir, { recursive: true, force: true });
  });
  await writeFile(join(models, 'a.onnx'), 'onnx');
  await writeFile(join(models, 'b.onnx'), 'onnx');
  await chmod(models, 0o555);
  const config = configFromObject({ agent: { id: 'x', stateDir: 'state' }, models: { a: { path: 'models/a.onnx' }, b: { path: 'models/b.onnx' } } }, { baseDir: dir, env: {} });
  await checkConfigFiles(config, join(dir, 'agent.yaml'));
  const warnings = configWarnings(config);
  t.is(warnings.filter((w) => w.includes('is not writable')).length, 1, 'one warning per folder');
  t.true(warnings.some((w) => w.startsWith(`models.a.path, models.b.path: the folder ${models} is not writable by this user`)), warnings.join('\n'));
  t.regex(formatConfigSummary(config), /warnings:\n(?: {2}- .*\n)* {2}- models\.a\.path, models\.b\.path: .*<model>\.previous/);
});
