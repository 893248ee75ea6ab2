/**
 * The pipeline benchmark's event consumer, in a process of its own: like the systems that
 * subscribe to a store's alerts, it is not the agent, so its CPU (receiving, acknowledging and
 * parsing every event) must not count as pipeline overhead in the benchmark's per-thread figures.
 *
 *   node --import tsx bench/event-subscriber.ts <broker url> <topic> <client id>
 *
 * Started with an IPC channel (child_process.fork). Sends {type: 'ready'} once subscribed (QoS 1).
 * For each event it keeps when it arrived and the capture time of the frame it is about. Answers
 * {type: 'report', from, to} with {type: 'latencies', latencies} for the events that arrived in
 * [from, to] (Date.now() milliseconds: the same clock in both processes), and exits on {type: 'stop'}
 * or when the benchmark's end of the channel closes.
 */
import { connect } from 'mqtt';
import type { AnomalyEvent } from '../pipelines/events.js';

const [url, topic, clientId] = process.argv.slice(2);
if (!url || !topic || !clientId || !process.send) {
  console.error('usage: fork("bench/event-subscriber.ts", [brokerUrl, topic, clientId]) with an IPC channel');
  process.exit(2);
}
const send = process.send.bind(process);
const arrivals: Array<[received: number, captured: number]> = [];
const client = connect(url, { clientId });
client.on('error', (err) => console.error(`event subscriber: ${err.message}`));
client.on('message', (_topic, payload) => {
  const received = Date.now();
  const e = JSON.parse(payload.toString()) as AnomalyEvent;
  arrivals.push([received, e.type === 'end' ? e.after.endTime! : e.after.frameTime]);
});
client.once('connect', () => client.subscribe(topic, { qos: 1 }, () => send({ type: 'ready' })));
// The benchmark ended without saying stop (it failed): do not outlive it.
process.on('disconnect', () => process.exit(0));
process.on('message', (m: { type: 'report'; from: number; to: number } | { type: 'stop' }) => {
  if (m.type === 'report') {
    const latencies = arrivals.filter(([r]) => r >= m.from && r <= m.to).map(([r, c]) => r - c);
    send({ type: 'latencies', latencies });
  } else client.end(true, () => process.exit(0));
});
