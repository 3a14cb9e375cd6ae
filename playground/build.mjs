// Builds the playground page into gateway/assets/playground/ (index.html, playground.js,
// playground.css), where the gateway embeds it. With --check, builds in memory and exits 1
// when the committed files differ from a fresh build (playground/test.sh runs it).
//
// The build is deterministic: the same sources and package-lock.json give the same bytes
// (esbuild with fixed options, no timestamps, no absolute paths).

import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', 'gateway', 'assets', 'playground');
const check = process.argv.includes('--check');

const banner =
  '/* Sluice playground. Bundles CodeMirror 6 (MIT, Marijn Haverbeke and others), xterm.js (MIT, the xterm.js authors) ' +
  'and the sluice-client TypeScript client; see playground/package-lock.json for their versions. */';

const common = {
  bundle: true,
  minify: true,
  write: false,
  target: 'es2022',
  legalComments: 'none',
  logLevel: 'warning',
  absWorkingDir: here,
};

const script = await build({
  ...common,
  entryPoints: ['src/main.ts'],
  format: 'esm',
  platform: 'browser',
  outfile: 'playground.js',
  banner: { js: banner },
});
const style = await build({
  ...common,
  entryPoints: ['src/style.css'],
  outfile: 'playground.css',
  banner: { css: banner },
});

const files = new Map([
  ['index.html', readFileSync(join(here, 'src', 'index.html'))],
  ['playground.js', Buffer.from(script.outputFiles[0].contents)],
  ['playground.css', Buffer.from(style.outputFiles[0].contents)],
]);

let stale = 0;
for (const [name, bytes] of files) {
  const path = join(out, name);
  if (check) {
    let committed;
    try {
      committed = readFileSync(path);
    } catch {
      committed = Buffer.alloc(0);
    }
    if (!committed.equals(bytes)) {
      stale += 1;
      console.error(`build.mjs: ${path} differs from a fresh build (${committed.length} bytes committed, ${bytes.length} built)`);
    }
  } else {
    writeFileSync(path, bytes);
    console.log(`build.mjs: wrote ${path} (${bytes.length} bytes)`);
  }
}
if (stale > 0) {
  console.error('build.mjs: run `npm run build` in playground/ (or scripts/build-playground.sh) and commit the assets');
  process.exit(1);
}
if (check) console.log('build.mjs: the committed assets match a fresh build');
