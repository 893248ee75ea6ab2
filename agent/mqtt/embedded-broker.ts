/**
 * A small in-process MQTT broker (aedes over a TCP server) for machines without one: when the
 * config has no `mqtt` section the agent starts this and connects to it, so the main job runs
 * on a fresh machine. It listens on loopback only unless told otherwise, keeps everything in
 * memory (retained messages are lost on restart) and has no authentication — it is for a
 * single box, not for a network.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { Aedes } from 'aedes';

export interface EmbeddedBrokerOptions {
  /** Default 127.0.0.1. Anything else exposes an unauthenticated broker to the network. */
  host?: string;
  /** Default 1883; 0 picks a free port. */
  port?: number;
}

export interface EmbeddedBroker {
  /** e.g. mqtt://127.0.0.1:1883 */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** Disconnects every client and stops listening. */
  close(): Promise<void>;
}

export async function startEmbeddedBroker(options: EmbeddedBrokerOptions = {}): Promise<EmbeddedBroker> {
  const host = options.host ?? '127.0.0.1';
  const requestedPort = options.port ?? 1883;
  if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
    throw new RangeError(`embedded broker port must be an integer in 0..65535, got ${JSON.stringify(options.port)}`);
  }
  const aedes = await Aedes.createBroker();
  // Client-side errors (a peer resetting its socket) are the peer's problem, not the agent's.
  aedes.on('clientError', () => undefined);
  aedes.on('connectionError', () => undefined);
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    aedes.handle(socket);
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(requestedPort, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(`embedded MQTT broker cannot listen on ${host}:${requestedPort}${code ? ` (${code})` : ''}: ${(err as Error).message}`);
  }
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : requestedPort;
  const urlHost = host.includes(':') ? `[${host}]` : host;
  let closing: Promise<void> | null = null;
  return {
    url: `mqtt://${urlHost}:${port}`,
    host,
    port,
    close() {
      closing ??= (async () => {
        await new Promise<void>((resolve) => aedes.close(() => resolve()));
        for (const socket of sockets) socket.destroy();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      })();
      return closing;
    },
  };
}
