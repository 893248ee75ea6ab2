/**
 * Test helper: a loopback TCP proxy between a client (the agent) and a server (the broker) that
 * can simulate network faults without touching either end.
 *
 *   const proxy = await startTcpProxy(brokerPort);   // agent connects to proxy.url
 *   proxy.stall();    // stop forwarding in both directions, sockets stay open (a dead route)
 *   proxy.cut();      // destroy every connection (RST) and refuse new ones until restore()
 *   proxy.restore();  // forward again; held data flows, new connections are accepted
 *   await proxy.close();
 *
 * While stalled, new connections are accepted and connected upstream but nothing is forwarded;
 * bytes are held (like packets queued on a dead route) and flushed in order on restore(). Only a
 * keepalive timeout on the client can notice a stall.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';

export type ProxyMode = 'forwarding' | 'stalled' | 'cut';

export interface TcpProxy {
  readonly port: number;
  /** mqtt://127.0.0.1:<port> */
  readonly url: string;
  readonly mode: ProxyMode;
  /** Connections accepted so far (each reconnect of the client is one). */
  readonly accepted: number;
  /** Connections open right now. */
  readonly open: number;
  stall(): void;
  cut(): void;
  restore(): void;
  close(): Promise<void>;
}

interface Pair {
  down: Socket;
  up: Socket;
  /** Bytes held while stalled, per direction; flushed in order on restore(). */
  held: { toUp: Buffer[]; toDown: Buffer[] };
}

export async function startTcpProxy(upstreamPort: number, upstreamHost = '127.0.0.1'): Promise<TcpProxy> {
  let mode: ProxyMode = 'forwarding';
  let accepted = 0;
  const pairs = new Set<Pair>();

  const flush = (pair: Pair) => {
    for (const chunk of pair.held.toUp.splice(0)) pair.up.write(chunk);
    for (const chunk of pair.held.toDown.splice(0)) pair.down.write(chunk);
  };

  const server: Server = createServer((down) => {
    accepted++;
    if (mode === 'cut') {
      down.resetAndDestroy();
      return;
    }
    const up = createConnection({ host: upstreamHost, port: upstreamPort });
    const pair: Pair = { down, up, held: { toUp: [], toDown: [] } };
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    down.on('error', drop);
    up.on('error', drop);
    down.on('close', drop);
    up.on('close', drop);
    // Not pipe(): its drain handling would resume a flow we want stopped.
    down.on('data', (chunk: Buffer) => (mode === 'forwarding' ? up.write(chunk) : pair.held.toUp.push(chunk)));
    up.on('data', (chunk: Buffer) => (mode === 'forwarding' ? down.write(chunk) : pair.held.toDown.push(chunk)));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;

  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    get mode() {
      return mode;
    },
    get accepted() {
      return accepted;
    },
    get open() {
      return pairs.size;
    },
    stall() {
      mode = 'stalled';
    },
    cut() {
      mode = 'cut';
      for (const pair of [...pairs]) {
        pairs.delete(pair);
        pair.down.resetAndDestroy();
        pair.up.resetAndDestroy();
      }
    },
    restore() {
      mode = 'forwarding';
      for (const pair of pairs) flush(pair);
    },
    async close() {
      mode = 'cut';
      for (const pair of pairs) {
        pair.down.destroy();
        pair.up.destroy();
      }
      pairs.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
