/**
 * Checks of the files and folders a parsed config names (`checkConfigFiles`): readable model, TLS
 * and source files, writable state/outbox/thumbnail folders, and the warnings about folders the
 * agent could not write to (installed config: /etc/shelfwatch, INSTALLED_WRITABLE_DIRS).
 */
import { constants as fsConstants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { dirname, resolve, sep } from 'node:path';
import type { ConfigPath } from './config-env.js';
import { ConfigError, formatPath, type Problem } from './config-errors.js';
import { looksLikeUrl, type AgentConfig } from './config-schema.js';

// ---------------------------------------------------------------------------------------------
// Files on disk
// ---------------------------------------------------------------------------------------------

/** Where the installed config lives (deploy/install.sh, the Docker images). */
export const INSTALLED_CONFIG_DIR = '/etc/shelfwatch';
/**
 * The only places the agent may write when run from the installed config: the systemd unit
 * (ProtectSystem=strict; StateDirectory=, CacheDirectory=) and the Docker images (read_only root,
 * volumes) make everything else read-only.
 */
export const INSTALLED_WRITABLE_DIRS: readonly string[] = ['/var/lib/shelfwatch', '/var/cache/shelfwatch'];

/** Per checked config: warnings about the files and folders it names (see checkConfigFiles). */
export const FILE_WARNINGS = new WeakMap<object, string[]>();

function isInside(dir: string, parent: string): boolean {
  const d = resolve(dir);
  return d === parent || d.startsWith(parent.endsWith(sep) ? parent : parent + sep);
}

/**
 * Checks that every file and folder the config names is usable: model files and TLS files are
 * readable regular files, folder sources and replay dirs are readable directories, replay files
 * and local stream inputs exist, and stateDir/outbox/thumbnails directories exist or can be
 * created. Throws one `ConfigError` listing every problem. `origin` names the file in messages.
 *
 * Warnings (configWarnings and `config check` show them; `run` logs them): a model's folder that
 * is not writable — replacing a model while running (a new file, command/model, command/rollback)
 * writes a temp file and `<model>.previous` next to it — and, for the installed config
 * (/etc/shelfwatch/…), a state, outbox, thumbnail or model folder outside /var/lib/shelfwatch and
 * /var/cache/shelfwatch, which the systemd unit and the Docker images keep read-only (checked by
 * path: `config check` run as root could write there, the service cannot).
 */
export async function checkConfigFiles(config: AgentConfig, origin = '<config>'): Promise<void> {
  const checks: Array<Promise<Problem | undefined>> = [];
  const need = (path: ConfigPath, file: string, kind: 'file' | 'dir' | 'any') => {
    checks.push(fileProblem(file, kind).then((message) => (message ? { path, message, value: file, showValue: true } : undefined)));
  };
  const writable = (path: ConfigPath, dir: string, hint = '') => {
    checks.push(writableDirProblem(dir).then((message) => (message ? { path, message: message + hint, value: dir, showValue: true } : undefined)));
  };
  const installed = origin !== '<config>' && isInside(dirname(resolve(origin)), INSTALLED_CONFIG_DIR);

  for (const [name, model] of Object.entries(config.models)) need(['models', name, 'path'], model.path, 'file');
  const tls = config.mqtt.tls;
  if (tls) {
    for (const k of ['ca', 'cert', 'key'] as const) {
      const file = tls[k];
      if (file) need(['mqtt', 'tls', k], file, 'file');
    }
  }
  config.cameras.forEach((cam, ci) => {
    const src = cam.source;
    const at: ConfigPath = ['cameras', ci, 'source'];
    if (src.type === 'folder') need([...at, 'path'], src.path, 'dir');
    else if (src.type === 'replay') {
      if (src.dir) need([...at, 'dir'], src.dir, 'dir');
      src.files?.forEach((f, fi) => need([...at, 'files', fi], f, 'file'));
    } else if (src.type === 'stream' && !looksLikeUrl(src.input)) need([...at, 'input'], src.input, 'any');
  });
  writable(
    ['agent', 'stateDir'],
    config.agent.stateDir,
    ` (the agent keeps its outbox, debounce states and downloaded models there; installed: agent.stateDir: ${INSTALLED_WRITABLE_DIRS[0]}. The default ./.shelfwatch lies next to the config file)`,
  );
  writable(['outbox', 'dir'], config.outbox.dir);
  if (config.thumbnails.dir) writable(['thumbnails', 'dir'], config.thumbnails.dir);

  const warnings: Array<Promise<string | undefined>> = [];
  // Model folders: one warning per folder, naming its models.
  const modelDirs = new Map<string, string[]>();
  for (const [name, model] of Object.entries(config.models)) {
    const dir = dirname(resolve(model.path));
    modelDirs.set(dir, [...(modelDirs.get(dir) ?? []), name]);
  }
  for (const [dir, names] of modelDirs) {
    const keys = names.map((n) => `models.${n}.path`).join(', ');
    warnings.push(
      fileProblem(dir, 'dir').then(async (missing) => {
        if (missing) return undefined; // the model file itself is reported as an error
        const problem = await writableDirProblem(dir);
        return problem
          ? `${keys}: the folder ${dir} is not writable by this user (${problem}): replacing a model while running (a new file, command/model, command/rollback) writes a temp file and <model>.previous there and would fail; keep models under ${INSTALLED_WRITABLE_DIRS[0]}/models or make the folder writable`
          : undefined;
      }),
    );
  }
  if (installed) {
    const readOnly = (what: string, dir: string) => {
      if (!INSTALLED_WRITABLE_DIRS.some((w) => isInside(dir, w))) {
        warnings.push(
          Promise.resolve(
            `${what}: ${resolve(dir)} is outside ${INSTALLED_WRITABLE_DIRS.join(' and ')}, which are the only places the systemd unit (ProtectSystem=strict) and the Docker images let the agent write: use a path under ${INSTALLED_WRITABLE_DIRS[0]}, or add ReadWritePaths= in a drop-in (systemctl edit shelfwatch) / a volume`,
          ),
        );
      }
    };
    readOnly('agent.stateDir', config.agent.stateDir);
    readOnly('outbox.dir', config.outbox.dir);
    if (config.thumbnails.dir) readOnly('thumbnails.dir', config.thumbnails.dir);
    for (const [dir, names] of modelDirs) readOnly(`${names.map((n) => `models.${n}.path`).join(', ')} (its folder: model rollout writes there)`, dir);
  }
  FILE_WARNINGS.set(config, (await Promise.all(warnings)).filter((w): w is string => w !== undefined));

  const problems = (await Promise.all(checks)).filter((p): p is Problem => p !== undefined);
  if (problems.length === 0) return;
  // File paths are shown (they are not secrets) — TLS key paths included, since "which file is
  // missing" is the whole point of the message.
  const issues = problems.map((p) => ({
    path: formatPath(p.path),
    message: p.message,
    value: JSON.stringify(p.value),
  }));
  throw new ConfigError(origin, issues, 'files named in');
}

async function fileProblem(file: string, kind: 'file' | 'dir' | 'any'): Promise<string | undefined> {
  let info;
  try {
    info = await stat(file);
  } catch (e) {
    return `${kind === 'dir' ? 'directory' : 'file'} not found or not accessible (${fsReason(e)})`;
  }
  if (kind === 'file' && !info.isFile()) return 'expected a regular file';
  if (kind === 'dir' && !info.isDirectory()) return 'expected a directory';
  const mode = kind === 'dir' ? fsConstants.R_OK | fsConstants.X_OK : fsConstants.R_OK;
  try {
    await access(file, mode);
  } catch (e) {
    return `not readable by this user (${fsReason(e)})`;
  }
  return undefined;
}

/** The directory exists and is writable, or its nearest existing ancestor is (mkdir -p works). */
async function writableDirProblem(dir: string): Promise<string | undefined> {
  let current = resolve(dir);
  for (;;) {
    try {
      const info = await stat(current);
      if (!info.isDirectory()) {
        return current === resolve(dir) ? 'expected a directory' : `cannot be created: ${current} is not a directory`;
      }
      try {
        await access(current, fsConstants.W_OK | fsConstants.X_OK);
      } catch {
        return current === resolve(dir) ? 'directory is not writable' : `cannot be created: ${current} is not writable`;
      }
      return undefined;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return `not accessible (${fsReason(e)})`;
      const parent = dirname(current);
      if (parent === current) return 'no existing parent directory';
      current = parent;
    }
  }
}

export function fsReason(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  switch (err.code) {
    case 'ENOENT':
      return 'ENOENT: does not exist';
    case 'EACCES':
    case 'EPERM':
      return `${err.code}: permission denied`;
    case 'ENOTDIR':
      return 'ENOTDIR: a parent is not a directory';
    case 'EISDIR':
      return 'EISDIR: is a directory';
    default:
      return err.code ? `${err.code}: ${err.message}` : String(err.message ?? e);
  }
}
