/**
 * File-name globs for the folder and replay sources (chokidar 4+ dropped glob support).
 * Supports `*`, `?`, `[abc]` / `[!abc]` and `{jpg,png}`; matches the base name only, ignoring case
 * (cameras that upload over FTP like `IMG_0001.JPG`).
 */
export const DEFAULT_IMAGE_PATTERN = '*.{jpg,jpeg,png,webp,tif,tiff,bmp}';

export function globToRegExp(pattern: string): RegExp {
  if (pattern.includes('/')) throw new Error(`file pattern ${JSON.stringify(pattern)} must match a file name, without '/'`);
  let re = '';
  let braces = 0;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 2);
      if (end < 0) throw new Error(`file pattern ${JSON.stringify(pattern)} has an unclosed '['`);
      let set = pattern.slice(i + 1, end).replace(/\\/g, '\\\\');
      if (set.startsWith('!')) set = `^${set.slice(1)}`;
      re += `[${set}]`;
      i = end;
    } else if (c === '{') {
      braces++;
      re += '(?:';
    } else if (c === '}' && braces > 0) {
      braces--;
      re += ')';
    } else if (c === ',' && braces > 0) re += '|';
    else re += c.replace(/[.+^$()|\\\]{}]/g, '\\$&');
  }
  if (braces > 0) throw new Error(`file pattern ${JSON.stringify(pattern)} has an unclosed '{'`);
  try {
    return new RegExp(`^${re}$`, 'i');
  } catch (e) {
    // e.g. '[z-a]': "Invalid regular expression: /^[z-a]$/i: Range out of order in character class".
    const why = String((e as Error).message).replace(/^.*:\s*/s, '');
    throw new Error(`file pattern ${JSON.stringify(pattern)} is not a valid glob (${why})`);
  }
}
