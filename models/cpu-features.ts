/**
 * What the CPU can do, where it changes how onnxruntime should be driven.
 *
 * On x86, onnxruntime's default int8 kernels (u8s8) multiply with VPMADDUBSW, which adds pairs of
 * products into 16-bit lanes that saturate: about 40 % of the int8 backbone's feature values then
 * differ from exact arithmetic. `session.x64quantprecision` switches to exact u8u8 kernels, at
 * about twice the backbone time. CPUs with VNNI (AVX512-VNNI, or AVX-VNNI on hybrid cores) take a
 * VPDPBUSD path instead, which accumulates in 32 bits: exact and fast, so the switch is not needed.
 */
import { readFileSync } from 'node:fs';

/** The `flags` of the first processor in a /proc/cpuinfo text (empty when there is none). */
export function cpuFlags(cpuinfo: string): Set<string> {
  const line = cpuinfo.split('\n').find((l) => /^flags\s*:/.test(l));
  return new Set(line ? line.slice(line.indexOf(':') + 1).trim().split(/\s+/).filter(Boolean) : []);
}

/**
 * True when onnxruntime's default int8 kernels would saturate on this CPU, so sessions must ask
 * for the exact path: an x64 CPU without VNNI, or one whose flags could not be read (the safe
 * side). Other architectures never take the x64 path.
 */
export function int8NeedsExactPath(arch: string, flags: ReadonlySet<string> | null): boolean {
  if (arch !== 'x64') return false;
  if (!flags) return true;
  return !(flags.has('avx512_vnni') || flags.has('avx_vnni'));
}

let cached: boolean | undefined;

/** int8NeedsExactPath for this machine (reads /proc/cpuinfo once). */
export function thisCpuNeedsExactInt8Path(): boolean {
  if (cached === undefined) {
    let flags: Set<string> | null = null;
    try {
      flags = cpuFlags(readFileSync('/proc/cpuinfo', 'utf8'));
      if (flags.size === 0) flags = null;
    } catch {
      flags = null;
    }
    cached = int8NeedsExactPath(process.arch, flags);
  }
  return cached;
}

/** How this machine runs int8 on the CPU, for logs: which onnxruntime path and why. */
export function int8PathNote(): string {
  if (process.arch !== 'x64') return 'default kernels';
  return thisCpuNeedsExactInt8Path() ? 'exact u8u8 kernels (this CPU has no VNNI: its fast kernels would saturate; about 2× the backbone time)' : 'fast VNNI kernels (exact on this CPU)';
}
