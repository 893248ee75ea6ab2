/** The CPU anomaly-map builder (scan's map path): A · D · Aᵀ with a sparse A, checked against the dense reference. */
import test from 'ava';
import { AnomalyMapBuilder } from '../models/anomaly-map.js';
import { anomalyMap } from '../models/patchcore-math.js';
import { Random } from '../models/random.js';

test('a constant patch grid gives a constant map', (t) => {
  const map = new AnomalyMapBuilder(8, 64).build(new Float32Array(64).fill(2.5));
  for (const v of map) t.true(Math.abs(v - 2.5) < 1e-6, `${v}`);
});

test('one hot patch peaks at its pixels and the map is symmetric about it', (t) => {
  const d = new Float32Array(64);
  d[1 * 8 + 1] = 1; // patch (1, 1) covers pixels 8–15
  const map = new AnomalyMapBuilder(8, 64).build(d);
  let peak = 0;
  for (let j = 1; j < map.length; j++) if (map[j]! > map[peak]!) peak = j;
  const [py, px] = [Math.floor(peak / 64), peak % 64];
  t.true(py >= 11 && py <= 12 && px >= 11 && px <= 12, `peak at ${py},${px}`);
  for (let y = 0; y < 64; y++) for (let x = 0; x < 64; x++) t.is(map[y * 64 + x], map[x * 64 + y]);
});

test('matches the dense float64 reference on random distances (28 → 224)', (t) => {
  const rng = new Random(7);
  const d = Float32Array.from({ length: 784 }, () => rng.nextFloat() * 3);
  const ref = anomalyMap(d, 28, 224);
  const out = new Float32Array(224 * 224).fill(Number.NaN);
  const got = new AnomalyMapBuilder(28, 224).build(d, out);
  t.is(got, out, 'writes into the given buffer');
  let worst = 0;
  for (let j = 0; j < ref.length; j++) worst = Math.max(worst, Math.abs(ref[j]! - got[j]!));
  t.true(worst <= 1e-6, `max abs diff ${worst}`);
});

test('wrong sizes are refused with what was expected', (t) => {
  const b = new AnomalyMapBuilder(8, 64);
  t.throws(() => b.build(new Float32Array(15)), { message: '8×8 patch distances expected, got 15' });
  t.throws(() => b.build(new Float32Array(64), new Float32Array(10)), { message: '64×64 map expected, got 10' });
  t.throws(() => new AnomalyMapBuilder(8, 4), { instanceOf: RangeError });
});
