// The test VM carries only the files test/vm/initramfs.ts lists. Checked here, on the host,
// so that a new run-time dependency missing from the image fails `npm test` in a second,
// not `npm run test:vm` after minutes of booting.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectFiles } from './vm/initramfs.js';

const ROOT = join(__dirname, '..', '..');

test('the VM image holds every module the built code loads: each file of src/ and the CLI load from it alone', (t) => {
  const image = mkdtempSync(join(tmpdir(), 'postcopy-vm-image-'));
  t.after(() => rmSync(image, { recursive: true, force: true }));
  const files = projectFiles(ROOT);
  for (const path of files) cpSync(join(ROOT, path), join(image, path));
  const sources = files.filter((path) => path.startsWith('dist-test/src/'));
  assert.ok(sources.some((path) => path.endsWith('/serve/metrics.js')), 'the image lists the built sources');
  const load = `for (const file of ${JSON.stringify(sources)}) require('./' + file);`;
  const loaded = spawnSync(process.execPath, ['-e', load], { cwd: image, encoding: 'utf8' });
  assert.equal(loaded.status, 0, `a built file fails to load from the image:\n${loaded.stderr}`);
  const help = spawnSync(process.execPath, ['dist-test/src/cli/main.js', '--help'], { cwd: image, encoding: 'utf8' });
  assert.equal(help.status, 0, help.stderr);
  assert.match(help.stdout, /postcopy/);
});
