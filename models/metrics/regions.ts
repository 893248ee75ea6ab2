/**
 * Connected regions of a binary mask (non-zero = anomalous): used for AUPRO (8-connectivity,
 * MVTec AD) and by the agent to report anomalous regions and their boxes.
 *
 * Two-pass labelling with union-find over provisional labels; final labels 1..count are given in
 * raster order of each region's first pixel, so region k-1 of `sizes` is label k.
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
  // Union-find forest over provisional labels (grown on demand).
  let parent = new Int32Array(64);
  let next = 1;
  const diag = connectivity === 8;
  for (let y = 0; y < height; y++) {
    const row = y * width;
    for (let x = 0; x < width; x++) {
      const i = row + x;
      if (mask[i] === 0) continue;
      let label = 0;
      if (x > 0) label = labels[i - 1];
      if (y > 0) {
        const up = i - width;
        const n0 = labels[up];
        if (n0 !== 0) label = label === 0 ? n0 : union(parent, label, n0);
        if (diag) {
          if (x > 0) {
            const nw = labels[up - 1];
            if (nw !== 0) label = label === 0 ? nw : union(parent, label, nw);
          }
          if (x + 1 < width) {
            const ne = labels[up + 1];
            if (ne !== 0) label = label === 0 ? ne : union(parent, label, ne);
          }
        }
      }
      if (label === 0) {
        if (next >= parent.length) {
          const grown = new Int32Array(parent.length * 2);
          grown.set(parent);
          parent = grown;
        }
        parent[next] = next;
        label = next++;
      }
      labels[i] = label;
    }
  }
  if (next === 1) return { labels, count: 0, sizes: new Int32Array(0) };
  // Second pass: provisional → final labels in raster order of first appearance.
  const final = new Int32Array(next);
  let count = 0;
  let sizes = new Int32Array(16);
  for (let i = 0; i < n; i++) {
    const p = labels[i];
    if (p === 0) continue;
    const root = findRoot(parent, p);
    let f = final[root];
    if (f === 0) {
      f = ++count;
      final[root] = f;
      if (count > sizes.length) {
        const grown = new Int32Array(sizes.length * 2);
        grown.set(sizes);
        sizes = grown;
      }
    }
    labels[i] = f;
    sizes[f - 1]++;
  }
  return { labels, count, sizes: sizes.slice(0, count) };
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
