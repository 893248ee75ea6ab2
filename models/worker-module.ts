/**
 * Where a worker thread's module is: the compiled `<name>.js` next to the caller, or, when the
 * caller runs from source under tsx (tests, benches), the `.ts` source plus tsx's API, which the
 * worker must register itself (tsx on Node 20 installs its hooks on the main thread only).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface WorkerModule {
  /** URL of the module to import in the worker. */
  moduleUrl: string;
  /** URL of tsx's ESM API to register first, or '' for compiled code. */
  loaderUrl: string;
}

/** `name` without extension, resolved against `importMetaUrl` (the caller's `import.meta.url`). */
export function resolveWorkerModule(name: string, importMetaUrl: string, what: string): WorkerModule {
  const js = new URL(`./${name}.js`, importMetaUrl);
  if (existsSync(fileURLToPath(js))) return { moduleUrl: js.href, loaderUrl: '' };
  const ts = new URL(`./${name}.ts`, importMetaUrl);
  let loaderUrl: string;
  try {
    loaderUrl = import.meta.resolve('tsx/esm/api');
  } catch (error) {
    throw new Error(`${what}: ${fileURLToPath(js)} is missing and tsx, needed to run ${fileURLToPath(ts)} in a worker, is not installed (${String(error)})`);
  }
  return { moduleUrl: ts.href, loaderUrl };
}
