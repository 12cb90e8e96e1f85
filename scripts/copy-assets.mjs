// Part of `npm run build`: the dashboard page's files (src/ui/assets: plain HTML, JS and CSS, no
// build of their own) go next to the compiled server, where it reads them (dist/ui/assets).
import { cpSync, rmSync } from 'node:fs';

const from = new URL('../src/ui/assets/', import.meta.url);
const to = new URL('../dist/ui/assets/', import.meta.url);
rmSync(to, { recursive: true, force: true });
cpSync(from, to, { recursive: true });
