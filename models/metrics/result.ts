/**
 * A metric value that may be undefined for a reason (no anomalous sample, no normal sample, no
 * ground-truth region). An undefined metric is never NaN and never a number: callers must look at
 * `defined` before they can reach `value`, and reports print the reason instead.
 */
export type MetricValue =
  | { readonly defined: true; readonly value: number }
  | { readonly defined: false; readonly reason: string };

export function definedMetric(value: number): MetricValue {
  return { defined: true, value };
}

export function undefinedMetric(reason: string): MetricValue {
  return { defined: false, reason };
}

/** The number, or null when the metric is undefined (for JSON output). */
export function metricOrNull(metric: MetricValue): number | null {
  return metric.defined ? metric.value : null;
}

/** `0.9013` or `n/a (no anomalous image)`: what a table cell shows. */
export function formatMetric(metric: MetricValue, digits = 4): string {
  return metric.defined ? metric.value.toFixed(digits) : `n/a (${metric.reason})`;
}
