// The structure of src/, checked on the source itself: every import points down the layers
// (the pure codecs never reach the kernel; snapshots never reach a migration engine), no file
// grows past 500 lines and no function past 60. See docs/architecture.md, "The map".
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import * as ts from 'typescript';

const SRC = join(__dirname, '..', '..', 'src');
const MAX_FILE_LINES = 500;
const MAX_FUNCTION_LINES = 60;

/** What each folder of src/ may import besides itself: the map, in import order. */
const MAY_IMPORT: Record<string, string[]> = {
  base: [],
  kernel: ['base'],
  memory: ['base'],
  wire: ['base', 'memory'],
  guest: ['base', 'kernel', 'memory'],
  transport: ['base', 'kernel', 'memory', 'wire'],
  pager: ['base', 'kernel', 'memory', 'wire'],
  incoming: ['base', 'kernel', 'memory', 'wire', 'transport', 'pager'],
  outgoing: ['base', 'kernel', 'memory', 'wire', 'transport', 'pager'],
  snapshot: ['base', 'kernel', 'memory', 'wire', 'pager'],
  serve: ['base', 'kernel', 'memory', 'wire', 'transport', 'pager', 'incoming', 'outgoing', 'snapshot'],
  testing: ['base', 'kernel', 'memory', 'wire', 'transport', 'guest'],
  cli: ['base', 'kernel', 'memory', 'wire', 'transport', 'pager', 'incoming', 'outgoing', 'snapshot', 'serve', 'testing'],
  '.': ['base', 'kernel', 'memory', 'wire', 'transport', 'pager', 'incoming', 'outgoing', 'snapshot', 'serve'],
};

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
}

/** The folder of src/ a file is in ('.' for src/ itself). */
function folderOf(file: string): string {
  const rel = relative(SRC, file);
  return rel.includes(sep) ? rel.split(sep)[0] : '.';
}

const files = sources(SRC).map((path) => ({ path, name: relative(SRC, path), text: readFileSync(path, 'utf8') }));

test('house: every import of src/ points down the layers', () => {
  assert.ok(files.length > 50, `only ${files.length} source files found under ${SRC}`);
  const wrong: string[] = [];
  for (const file of files) {
    const from = folderOf(file.path);
    const allowed = MAY_IMPORT[from];
    assert.ok(allowed, `src/${from}/ is not on the map in test/house.test.ts: add it where it belongs`);
    for (const [, spec] of file.text.matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)) {
      const to = folderOf(join(dirname(file.path), spec));
      if (to !== from && !allowed.includes(to)) wrong.push(`src/${file.name} imports ${spec} (${from} may import ${allowed.join(', ') || 'nothing'})`);
    }
  }
  assert.deepEqual(wrong, []);
});

test(`house: no file of src/ over ${MAX_FILE_LINES} lines, no function over ${MAX_FUNCTION_LINES}`, () => {
  const long: string[] = [];
  for (const file of files) {
    const lines = file.text.split('\n').length;
    if (lines > MAX_FILE_LINES) long.push(`src/${file.name}: ${lines} lines`);
    const source = ts.createSourceFile(file.path, file.text, ts.ScriptTarget.Latest, true);
    const visit = (node: ts.Node): void => {
      if (ts.isFunctionLike(node) && (node as ts.FunctionLikeDeclaration).body) {
        const first = source.getLineAndCharacterOfPosition(node.getStart()).line;
        const length = source.getLineAndCharacterOfPosition(node.end).line - first + 1;
        const name = (node as ts.FunctionLikeDeclaration).name?.getText() ?? 'a function';
        if (length > MAX_FUNCTION_LINES) long.push(`src/${file.name}:${first + 1} ${name}: ${length} lines`);
      }
      ts.forEachChild(node, visit);
    };
    visit(source);
  }
  assert.deepEqual(long, []);
});
