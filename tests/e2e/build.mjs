// Bundles page/app.js (with mediasoup-client) into dist/ and copies the page's HTML.
import { build } from 'esbuild';
import { copyFile, mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');

await mkdir(dist, { recursive: true });
await build({
  entryPoints: [join(here, 'page', 'app.js')],
  outfile: join(dist, 'app.js'),
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: 'chrome111',
  sourcemap: true,
  logLevel: 'warning',
});
await copyFile(join(here, 'page', 'index.html'), join(dist, 'index.html'));
console.log('built', dist);
