/**
 * The systemd unit (checked by systemd's own tools) and the sd_notify/watchdog helper.
 *
 * sd_notify needs a unix DATAGRAM socket, which Node cannot open. Two ways in:
 * - a stub systemd-notify script that records its arguments (what we ask systemd-notify to say);
 * - the real systemd-notify talking to a python3 datagram socket standing in for PID 1's
 *   $NOTIFY_SOCKET (what actually goes over the wire, barrier included).
 * Needs: systemd-analyze and systemd-notify (apt package `systemd`), python3.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile, spawn } from 'node:child_process';
import { access, chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ProgressGauge, SystemdNotifier, Watchdog, watchdogPingIntervalMs } from '../agent/systemd-notify.js';

const run = promisify(execFile);
const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const unitPath = join(root, 'systemd', 'shelfwatch.service');

async function tempDir(t: ExecutionContext, prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function requireTool(t: ExecutionContext, tool: string, pkg: string): Promise<boolean> {
  try {
    await run('sh', ['-c', `command -v ${tool}`]);
    return true;
  } catch {
    t.fail(`${tool} is not installed: this test needs it (Debian/Ubuntu package '${pkg}': apt-get install ${pkg})`);
    return false;
  }
}

/**
 * The unit as installed, but with ExecStart's node replaced by the node running this test:
 * `systemd-analyze verify` checks that the executable exists. Same file name, own directory.
 */
async function renderUnit(t: ExecutionContext, transform: (unit: string) => string = (u) => u): Promise<string> {
  const unit = await readFile(unitPath, 'utf8');
  t.true(unit.includes('ExecStart=/usr/bin/node '), 'the unit starts /usr/bin/node (install.sh substitutes it)');
  const dir = await tempDir(t, 'shelfwatch-unit-');
  const path = join(dir, 'shelfwatch.service');
  await writeFile(path, transform(unit.replace('ExecStart=/usr/bin/node ', `ExecStart=${process.execPath} `)));
  return path;
}

async function verify(path: string): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await run('systemd-analyze', ['verify', path]);
    return { code: 0, output: (stdout + stderr).trim() };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, output: (err.stdout + err.stderr).trim() };
  }
}

/** The unit's active (uncommented) settings: key → values in order. */
function settings(unit: string): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const line of unit.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (!m) continue;
    map.set(m[1], [...(map.get(m[1]) ?? []), m[2]]);
  }
  return map;
}

test('systemd-analyze verify accepts the unit without a single warning', async (t) => {
  if (!(await requireTool(t, 'systemd-analyze', 'systemd'))) return;
  const result = await verify(await renderUnit(t));
  t.is(result.code, 0, result.output);
  t.is(result.output, '', 'verify printed warnings');
});

test('the verify check catches a misspelled key and a missing executable (so it can fail)', async (t) => {
  if (!(await requireTool(t, 'systemd-analyze', 'systemd'))) return;
  const typo = await verify(await renderUnit(t, (u) => u.replace('LockPersonality=yes', 'LockPersonalty=yes')));
  t.regex(typo.output, /Unknown key 'LockPersonalty'/);
  const missing = await verify(await renderUnit(t, (u) => u.replace(`ExecStart=${process.execPath} `, 'ExecStart=/nonexistent/node ')));
  t.not(missing.code, 0);
  t.regex(missing.output, /nonexistent\/node is not executable/);
});

test('systemd-analyze security rates the unit at most 2.5 (of 10) exposure', async (t) => {
  if (!(await requireTool(t, 'systemd-analyze', 'systemd'))) return;
  const path = await renderUnit(t);
  // --threshold is on a 0-100 scale; exit status is non-zero above it. Needs systemd >= 250.
  const result = await run('systemd-analyze', ['security', '--offline=true', '--threshold=25', '--no-pager', path]).then(
    (r) => ({ code: 0, out: r.stdout + r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }),
  );
  t.is(result.code, 0, result.out.split('\n').filter((l) => l.includes('✗') || l.includes('Overall')).join('\n'));
  t.regex(result.out, /Overall exposure level for shelfwatch\.service: [0-2]\.\d/);
});

test('the unit runs unprivileged, notify-type with a watchdog, hardened, logging to the journal', async (t) => {
  const unit = await readFile(unitPath, 'utf8');
  const s = settings(unit);
  const one = (key: string) => s.get(key)?.join(' | ');
  t.is(one('User'), 'shelfwatch');
  t.is(one('Type'), 'notify');
  t.is(one('NotifyAccess'), 'all', 'messages come from the systemd-notify child process');
  t.is(one('Restart'), 'on-failure');
  t.regex(one('WatchdogSec') ?? '', /^\d+(s|min)$/);
  t.is(one('ExecStart'), '/usr/bin/node --initial-old-space-size=96 /opt/shelfwatch/dist/agent/cli.js run --config /etc/shelfwatch/shelfwatch.yaml');
  t.is(one('EnvironmentFile'), '-/etc/shelfwatch/shelfwatch.env');
  t.is(one('StandardOutput'), 'journal');
  for (const [key, value] of [
    ['NoNewPrivileges', 'yes'],
    ['ProtectSystem', 'strict'],
    ['ProtectHome', 'yes'],
    ['PrivateTmp', 'yes'],
    ['ProtectKernelTunables', 'yes'],
    ['ProtectKernelModules', 'yes'],
    ['ProtectKernelLogs', 'yes'],
    ['ProtectControlGroups', 'yes'],
    ['RestrictNamespaces', 'yes'],
    ['LockPersonality', 'yes'],
    ['SystemCallArchitectures', 'native'],
    ['CapabilityBoundingSet', ''],
    ['AmbientCapabilities', ''],
    ['RestrictAddressFamilies', 'AF_UNIX AF_INET AF_INET6'],
  ]) {
    t.is(one(key), value, key);
  }
  t.true(one('StateDirectory')?.split(' ').includes('shelfwatch/models'));
  t.true(one('StateDirectory')?.split(' ').includes('shelfwatch/outbox'));
  // V8's JIT needs W+X pages: the key must stay off, and the unit must say why.
  t.false(s.has('MemoryDenyWriteExecute'));
  t.regex(unit, /#.*MemoryDenyWriteExecute=yes: V8's JIT/);
  // Device access must not be closed off by default (GPU, cameras); the allow-list is commented.
  t.false(s.has('PrivateDevices') || s.has('DevicePolicy') || s.has('ProtectClock'));
  t.regex(unit, /^#DeviceAllow=char-nvidia-frontend rw$/m);
  t.regex(unit, /^#DeviceAllow=char-video4linux rw$/m);
});

// ---- sd_notify ----

/** A stand-in systemd-notify that appends its arguments (one per line) and a separator to a log. */
async function stubNotify(t: ExecutionContext, { exitCode = 0, stderr = '' } = {}): Promise<{ command: string; calls: () => Promise<string[][]> }> {
  const dir = await tempDir(t, 'shelfwatch-notify-');
  const log = join(dir, 'calls.log');
  const command = join(dir, 'systemd-notify');
  await writeFile(
    command,
    `#!/bin/sh\nfor a in "$@"; do printf '%s\\n' "$a" >> '${log}'; done\nprintf -- '--\\n' >> '${log}'\n${stderr ? `echo '${stderr}' >&2\n` : ''}exit ${exitCode}\n`,
  );
  await chmod(command, 0o755);
  const calls = async () => {
    const text = await readFile(log, 'utf8').catch(() => '');
    return text.split('--\n').filter((c) => c).map((c) => c.trimEnd().split('\n'));
  };
  return { command, calls };
}

test('without NOTIFY_SOCKET every notification is a no-op', async (t) => {
  const stub = await stubNotify(t);
  const notifier = new SystemdNotifier({ env: { PATH: process.env.PATH }, command: stub.command });
  t.false(notifier.enabled);
  t.false(await notifier.ready('up'));
  t.false(await notifier.watchdog());
  t.false(await notifier.stopping());
  t.deepEqual(await stub.calls(), []);
  const watchdog = new Watchdog({ notifier, progressed: () => true, env: { WATCHDOG_USEC: '1000000' } });
  t.is(watchdog.pingIntervalMs, null);
  t.false(watchdog.start());
});

test('notifications become systemd-notify arguments, in call order, newlines flattened', async (t) => {
  const stub = await stubNotify(t);
  const notifier = new SystemdNotifier({ env: { NOTIFY_SOCKET: '/run/systemd/notify' }, command: stub.command, pid: 4242 });
  t.true(notifier.enabled);
  await Promise.all([notifier.ready('watching 2 cameras'), notifier.watchdog(), notifier.status('line one\nline two'), notifier.stopping()]);
  t.deepEqual(await stub.calls(), [
    ['--pid=4242', 'READY=1', 'STATUS=watching 2 cameras'],
    ['--pid=4242', 'WATCHDOG=1'],
    ['--pid=4242', 'STATUS=line one line two'],
    ['--pid=4242', 'STOPPING=1'],
  ]);
  await t.throwsAsync(notifier.notify({ 'bad name': 1 }), { message: /field name 'bad name' is invalid/ });
});

test('a failing or missing systemd-notify rejects with what went wrong', async (t) => {
  const failing = await stubNotify(t, { exitCode: 1, stderr: 'No such file or directory' });
  const notifier = new SystemdNotifier({ env: { NOTIFY_SOCKET: '/run/x' }, command: failing.command });
  await t.throwsAsync(notifier.ready(), { message: /READY=1 failed \(exit code 1\): No such file or directory/ });
  const missing = new SystemdNotifier({ env: { NOTIFY_SOCKET: '/run/x' }, command: '/nonexistent/systemd-notify' });
  await t.throwsAsync(missing.watchdog(), { message: /cannot run \/nonexistent\/systemd-notify: .*ENOENT.*systemd package/ });
  // A failure does not block later messages.
  t.true(await new SystemdNotifier({ env: { NOTIFY_SOCKET: '/run/x' }, command: (await stubNotify(t)).command }).watchdog());
});

/** Python stand-in for PID 1's notify socket: prints each datagram as JSON, closes passed fds. */
const NOTIFY_SOCKET_SERVER = `
import socket, sys, os, array, json
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print(json.dumps({"ready": True}), flush=True)
while True:
    msg, anc, flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(64))
    fds = array.array('i')
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    print(json.dumps({"message": msg.decode(), "fds": len(fds)}), flush=True)
    for fd in fds:
        os.close(fd)  # closing the barrier pipe is how PID 1 says "processed"
`;

test('the real systemd-notify delivers READY, WATCHDOG and STOPPING over a notify socket', async (t) => {
  if (!(await requireTool(t, 'systemd-notify', 'systemd')) || !(await requireTool(t, 'python3', 'python3'))) return;
  const dir = await tempDir(t, 'sw-sd-');
  const socketPath = join(dir, 'notify.sock');
  const server = spawn('python3', ['-c', NOTIFY_SOCKET_SERVER, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => server.kill());
  const messages: Array<{ ready?: boolean; message?: string; fds?: number }> = [];
  let buffered = '';
  const arrived = new Promise<void>((resolveReady) => {
    server.stdout.setEncoding('utf8').on('data', (d: string) => {
      buffered += d;
      for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
        const parsed = JSON.parse(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
        if (parsed.ready) resolveReady();
        else messages.push(parsed);
      }
    });
  });
  await arrived;
  await access(socketPath);

  const notifier = new SystemdNotifier({ env: { ...process.env, NOTIFY_SOCKET: socketPath } });
  t.true(await notifier.ready('watching 1 camera'));
  t.true(await notifier.watchdog());
  t.true(await notifier.stopping('shutting down'));
  // Each message is followed by systemd-notify's barrier (BARRIER=1 with a pipe fd, systemd
  // >= 246); it only returns once that fd was closed, i.e. once "PID 1" processed the message.
  // The server prints each message before it closes the barrier fd, but its stdout may reach us
  // after systemd-notify has returned: wait for the last line rather than race it.
  const deadline = Date.now() + 5000;
  while (messages.length < 6 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  // Lines other than the ones asked for (newer systemd may add some) are ignored.
  const known = /^(MAINPID|READY|WATCHDOG|STOPPING|STATUS|BARRIER)=/;
  const payloads = messages.map((m) => (m.message ?? '').split('\n').filter((l) => known.test(l)).join('\n'));
  t.deepEqual(payloads, [
    `MAINPID=${process.pid}\nREADY=1\nSTATUS=watching 1 camera`,
    'BARRIER=1',
    `MAINPID=${process.pid}\nWATCHDOG=1`,
    'BARRIER=1',
    `MAINPID=${process.pid}\nSTOPPING=1\nSTATUS=shutting down`,
    'BARRIER=1',
  ]);
  t.deepEqual(messages.filter((m) => m.message === 'BARRIER=1').map((m) => m.fds), [1, 1, 1]);
});

// ---- watchdog ----

test('the ping interval is half of WATCHDOG_USEC, for this process only', (t) => {
  t.is(watchdogPingIntervalMs({}), null);
  t.is(watchdogPingIntervalMs({ WATCHDOG_USEC: '120000000' }, 7), 60_000);
  t.is(watchdogPingIntervalMs({ WATCHDOG_USEC: '120000000', WATCHDOG_PID: '7' }, 7), 60_000);
  t.is(watchdogPingIntervalMs({ WATCHDOG_USEC: '120000000', WATCHDOG_PID: '8' }, 7), null);
  t.throws(() => watchdogPingIntervalMs({ WATCHDOG_USEC: '2min' }), { message: "WATCHDOG_USEC must be a positive integer (microseconds), got '2min'" });
});

test('each watchdog round pings only when the pipeline progressed', async (t) => {
  const stub = await stubNotify(t);
  const notifier = new SystemdNotifier({ env: { NOTIFY_SOCKET: '/run/x' }, command: stub.command, pid: 1 });
  let progress = true;
  const stalls: number[] = [];
  const watchdog = new Watchdog({ notifier, progressed: () => progress, env: { WATCHDOG_USEC: '30000000' }, onStall: (ms) => stalls.push(ms) });
  t.is(watchdog.pingIntervalMs, 15_000);
  t.is(await watchdog.tick(), 'pinged');
  progress = false;
  t.is(await watchdog.tick(), 'withheld');
  t.is(await watchdog.tick(), 'withheld');
  progress = true;
  t.is(await watchdog.tick(), 'pinged');
  t.deepEqual(await stub.calls(), [['--pid=1', 'WATCHDOG=1'], ['--pid=1', 'WATCHDOG=1']]);
  t.is(stalls.length, 2);
  t.true(stalls[1] >= stalls[0]);

  const errors: string[] = [];
  const throwing = new Watchdog({ notifier, env: { WATCHDOG_USEC: '30000000' }, progressed: () => { throw new Error('boom'); }, onError: (e) => errors.push(e.message) });
  t.is(await throwing.tick(), 'withheld', 'a failing progress check counts as no progress');
  t.deepEqual(errors, ['watchdog: progressed() threw: boom']);
});

test('the running watchdog pings at half the interval and stops pinging when progress stops', async (t) => {
  const stub = await stubNotify(t);
  const notifier = new SystemdNotifier({ env: { NOTIFY_SOCKET: '/run/x' }, command: stub.command });
  let progress = true;
  const watchdog = new Watchdog({ notifier, progressed: () => progress, env: { WATCHDOG_USEC: '200000' } });
  t.is(watchdog.pingIntervalMs, 100);
  t.true(watchdog.start());
  t.teardown(() => watchdog.stop());
  await sleep(550);
  const whileProgressing = (await stub.calls()).length;
  t.true(whileProgressing >= 2, `${whileProgressing} pings in 550 ms at a 100 ms period`);
  progress = false;
  await sleep(250); // let a ping already under way finish
  const atStall = (await stub.calls()).length;
  await sleep(500);
  t.is((await stub.calls()).length, atStall, 'no ping while the pipeline is stuck');
  progress = true;
  await sleep(400);
  t.true((await stub.calls()).length > atStall, 'pings resume with progress');
  watchdog.stop();
});

test('ProgressGauge: idle counts as progress, work in flight without completions does not', (t) => {
  const gauge = new ProgressGauge();
  const { progressed } = gauge;
  t.true(progressed(), 'idle');
  gauge.started();
  t.false(progressed(), 'a scan started and nothing finished since');
  t.false(progressed());
  gauge.started();
  gauge.finished();
  t.true(progressed(), 'one finished, one still running');
  t.false(progressed(), 'the other one is stuck');
  gauge.beat();
  t.true(progressed());
  gauge.finished();
  t.is(gauge.inFlight, 0);
  t.true(progressed());
  t.true(progressed(), 'idle again');
});

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
