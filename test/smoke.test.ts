import test from 'ava';
import type { Normalization } from '../models/types.js';

test('toolchain runs TypeScript tests', (t) => {
  const n: Normalization = { mean: [0, 0, 0], std: [1, 1, 1] };
  t.is(n.std.length, 3);
});
