/** zod validation problems as `path: message` lines (`root` names the whole value when the path is empty). */
export function issueLines(issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }>, root: string): string[] {
  return issues.map((i) => `${i.path.map(String).join('.') || root}: ${i.message}`);
}
