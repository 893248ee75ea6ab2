/** The `shelfwatch` CLI as an operator runs it: a child process from the repository root. */
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `shelfwatch <args…>` with process.env plus `env` (stack traces off unless `env` turns them on). */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliRun> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'agent/cli.ts', ...args], {
      cwd: ROOT,
      env: { ...process.env, SHELFWATCH_DEBUG: '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.on('error', fail);
    child.on('close', (code) => done({ code, stdout, stderr }));
  });
}
