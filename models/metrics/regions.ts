/**
 * Connected regions of a binary mask (non-zero = anomalous): used for AUPRO (8-connectivity,
 * MVTec AD) and by the agent to report anomalous regions and their boxes.
 *
 * Labelling by runs (horizontal stretches of foreground) with union-find over provisional labels;
 * final labels 1..count are given in raster order of each region's first pixel, so region k-1 of
 * `sizes` is label k.
 */

export type Connectivity = 4 | 8;

export interface RegionLabels {
  /** Per pixel, row-major: 0 = background, 1..count = region. */
  labels: Int32Array;
  count: number;
  /** sizes[k - 1] = number of pixels of region k. */
  sizes: Int32Array;
}

function checkShape(what: string, length: number, width: number, height: number): void {
  if (!Number.isInteger(width) || width <= 0 || !Number.isInteger(height) || height <= 0) {
    throw new RangeError(`${what}: width and height must be positive integers, got ${width}×${height}`);
  }
  if (length !== width * height) {
    throw new RangeError(`${what}: expected ${width}×${height} = ${width * height} values, got ${length}`);
  }
}

function findRoot(parent: Int32Array, a: number): number {
  let root = a;
  while (parent[root] !== root) root = parent[root];
  while (parent[a] !== root) {
    const next = parent[a];
    parent[a] = root;
    a = next;
  }
  return root;
}

function union(parent: Int32Array, a: number, b: number): number {
  const ra = findRoot(parent, a);
  const rb = findRoot(parent, b);
  if (ra === rb) return ra;
  if (ra < rb) {
    parent[rb] = ra;
    return ra;
  }
  parent[ra] = rb;
  return rb;
}

/**
 * The foreground runs of a mask (maximal horizontal stretches of non-zero pixels), in raster
 * order, each with its region's final label: the connected regions without a label per pixel.
 * Labelling runs instead of pixels keeps the union-find work proportional to the runs and lets
 * a caller that only needs boxes, areas or peaks (the agent, per anomalous crop) visit the
 * foreground alone instead of every pixel again.
 */
export interface RegionRuns {
  count: number;
  /** sizes[k - 1] = number of pixels of region k. */
  sizes: Int32Array;
  /** Number of runs; entries past it in the arrays below are unused. */
  length: number;
  row: Int32Array;
  /** First pixel of the run (x). */
  start: Int32Array;
  /** One past its last pixel (x). */
  end: Int32Array;
  /** Region label, 1..count. */
  label: Int32Array;
}

/**
 * The runs of `mask` (row-major, width × height, non-zero = foreground) and their regions;
 * final labels 1..count are given in raster order of each region's first pixel.
 */
export function labelRuns(mask: ArrayLike<number>, width: number, height: number, connectivity: Connectivity = 8): RegionRuns {
  checkShape('labelRuns', mask.length, width, height);
  if (connectivity !== 4 && connectivity !== 8) {
    throw new RangeError(`labelRuns: connectivity must be 4 or 8, got ${String(connectivity)}`);
  }
  // Runs of the previous row touch a run [s, e) when they overlap [s − reach, e + reach).
  const reach = connectivity === 8 ? 1 : 0;
  let cap = 64;
  let row = new Int32Array(cap);
  let start = new Int32Array(cap);
  let end = new Int32Array(cap);
  let label = new Int32Array(cap);
  // Union-find forest over provisional labels, one per run at most.
  let parent = new Int32Array(cap + 1);
  let next = 1;
  let n = 0;
  let prevFirst = 0;
  let prevLast = 0; // runs prevFirst…prevLast − 1 are the previous row's
  for (let y = 0; y < height; y++) {
    const base = y * width;
    const rowFirst = n;
    let p = prevFirst;
    let x = 0;
    while (x < width) {
      if (mask[base + x] === 0) {
        x++;
        continue;
      }
      const s = x;
      while (x < width && mask[base + x] !== 0) x++;
      if (n === cap) {
        cap *= 2;
        row = grow(row, cap);
        start = grow(start, cap);
        end = grow(end, cap);
        label = grow(label, cap);
        parent = grow(parent, cap + 1);
      }
      let l = 0;
      // Previous-row runs ending before this one can reach are passed for good (runs are sorted).
      while (p < prevLast && end[p] + reach <= s) p++;
      for (let q = p; q < prevLast && start[q] < x + reach; q++) l = l === 0 ? findRoot(parent, label[q]) : union(parent, l, label[q]);
      if (l === 0) {
        parent[next] = next;
        l = next++;
      }
      row[n] = y;
      start[n] = s;
      end[n] = x;
      label[n] = l;
      n++;
    }
    prevFirst = rowFirst;
    prevLast = n;
  }
  // Provisional → final labels in raster order of first appearance.
  const final = new Int32Array(next);
  let count = 0;
  let sizes = new Int32Array(16);
  for (let i = 0; i < n; i++) {
    const root = findRoot(parent, label[i]);
    let f = final[root];
    if (f === 0) {
      f = ++count;
      final[root] = f;
      if (count > sizes.length) sizes = grow(sizes, sizes.length * 2);
    }
    label[i] = f;
    sizes[f - 1] += end[i] - start[i];
  }
  return { count, sizes: sizes.slice(0, count), length: n, row, start, end, label };
}

function grow(a: Int32Array, length: number): Int32Array<ArrayBuffer> {
  const out = new Int32Array(length);
  out.set(a);
  return out;
}

/**
 * Labels the connected regions of `mask` (row-major, width × height, non-zero = foreground).
 * @param out optional scratch/output buffer of at least width × height entries (reused to avoid
 *   allocating per image); the returned `labels` is a view of it.
 */
export function labelRegions(
  mask: ArrayLike<number>,
  width: number,
  height: number,
  connectivity: Connectivity = 8,
  out?: Int32Array,
): RegionLabels {
  checkShape('labelRegions', mask.length, width, height);
  if (connectivity !== 4 && connectivity !== 8) {
    throw new RangeError(`labelRegions: connectivity must be 4 or 8, got ${String(connectivity)}`);
  }
  const n = width * height;
  if (out !== undefined && out.length < n) {
    throw new RangeError(`labelRegions: output buffer holds ${out.length} labels, needs ${n}`);
  }
  const labels = out === undefined ? new Int32Array(n) : out.subarray(0, n);
  labels.fill(0);
  const runs = labelRuns(mask, width, height, connectivity);
  for (let i = 0; i < runs.length; i++) {
    const at = runs.row[i] * width;
    labels.fill(runs.label[i], at + runs.start[i], at + runs.end[i]);
  }
  return { labels, count: runs.count, sizes: runs.sizes };
}

export interface RegionBox {
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface RegionInfo {
  /** The region's label in `labels` (1..count). */
  label: number;
  /** Bounding box in the mask's pixel coordinates (x, y of the top-left pixel; inclusive size). */
  box: RegionBox;
  /** Number of pixels. */
  area: number;
  /** Largest map value inside the region (only when a map was given). */
  peak?: number;
}

/**
 * Bounding box, area and (with `map`) peak value of every region of a labelling, in label order.
 */
export function regionBoxes(
  regions: Pick<RegionLabels, 'labels' | 'count'>,
  width: number,
  height: number,
  map?: ArrayLike<number>,
): RegionInfo[] {
  const { labels, count } = regions;
  checkShape('regionBoxes', labels.length, width, height);
  if (map !== undefined) checkShape('regionBoxes (map)', map.length, width, height);
  const minX = new Int32Array(count).fill(width);
  const minY = new Int32Array(count).fill(height);
  const maxX = new Int32Array(count).fill(-1);
  const maxY = new Int32Array(count).fill(-1);
  const area = new Int32Array(count);
  const peak = new Float64Array(count).fill(-Infinity);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      const l = labels[i];
      if (l === 0) continue;
      if (l < 0 || l > count) throw new RangeError(`regionBoxes: label ${l} at (${x}, ${y}) is outside 1..${count}`);
      const k = l - 1;
      if (x < minX[k]) minX[k] = x;
      if (x > maxX[k]) maxX[k] = x;
      if (y < minY[k]) minY[k] = y;
      if (y > maxY[k]) maxY[k] = y;
      area[k]++;
      if (map !== undefined && map[i] > peak[k]) peak[k] = map[i];
    }
  }
  const out: RegionInfo[] = [];
  for (let k = 0; k < count; k++) {
    if (area[k] === 0) throw new RangeError(`regionBoxes: region ${k + 1} has no pixel`);
    const info: RegionInfo = {
      label: k + 1,
      box: { x: minX[k], y: minY[k], width: maxX[k] - minX[k] + 1, height: maxY[k] - minY[k] + 1 },
      area: area[k],
    };
    if (map !== undefined) info.peak = peak[k];
    out.push(info);
  }
  return out;
}
