import test from 'ava';
import { splitCpu, threadSeconds, threadTicks } from '../bench/thread-cpu.js';

test('splitCpu: the main thread, the N busiest others as the model, the rest', (t) => {
  const seconds = new Map([
    [100, 0.5], // main
    [101, 1.8],
    [102, 0.1],
    [103, 1.7],
    [104, 0.2],
  ]);
  const s = splitCpu(seconds, 2, 100);
  t.is(s.main, 0.5);
  t.is(s.model, 1.8 + 1.7);
  t.true(Math.abs(s.other - 0.3) < 1e-12);
  t.deepEqual(splitCpu(seconds, 0, 100), { model: 0, main: 0.5, other: 1.8 + 0.1 + 1.7 + 0.2 });
});

test('threadSeconds: ticks to seconds over a window; a thread that started inside it counts from zero', (t) => {
  const before = new Map([[1, 100], [2, 50]]);
  const after = new Map([[1, 250], [2, 50], [3, 30]]);
  t.deepEqual([...threadSeconds(before, after)], [[1, 1.5], [2, 0], [3, 0.3]]);
});

test('threadTicks reads this process\'s threads from /proc on Linux, with the main thread among them', (t) => {
  const ticks = threadTicks();
  if (process.platform !== 'linux') {
    t.is(ticks, null);
    return;
  }
  const end = Date.now() + 300;
  let x = 0;
  while (Date.now() < end) x += Math.sqrt(x + 1); // burn a little CPU on the main thread
  const after = threadTicks()!;
  t.true(after.has(process.pid), 'the main thread (tid = pid) is listed');
  t.true(after.get(process.pid)! >= ticks!.get(process.pid)!, 'ticks only grow');
  t.true(after.get(process.pid)! > 0 && x > 0);
});
