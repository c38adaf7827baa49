// Minimal static file server for dist/ (no dependencies).
//   node serve.mjs [port]        (or PORT=...; default 8080, binds 127.0.0.1)
// The test imports createStaticServer() to serve the page in-process.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

export function createStaticServer(root = join(here, 'dist')) {
  return createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const rel = normalize(path === '/' ? '/index.html' : path);
    const file = join(root, rel);
    if (!file.startsWith(root + sep)) {
      res.writeHead(403).end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, {
        'content-type': TYPES[extname(file)] || 'application/octet-stream',
        'cache-control': 'no-store',
      });
      res.end(body);
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === normalize(process.argv[1])) {
  const port = Number(process.argv[2] || process.env.PORT || 8080);
  createStaticServer().listen(port, '127.0.0.1', () => {
    console.log(`serving ${join(here, 'dist')} on http://127.0.0.1:${port}/`);
    console.log(`open http://127.0.0.1:${port}/?server=ws://127.0.0.1:3001&token=JWT (two tabs, two tokens)`);
  });
}
