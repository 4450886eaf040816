// Page weight of the built dashboard: gzipped JS + CSS, in total and what the first page
// (index.html's entry script, its static imports and CSS) needs. Run after `npm run build`.
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const dist = resolve(dirname(fileURLToPath(import.meta.url)), "../dist");
const assets = join(dist, "assets");
const gz = (f) => gzipSync(readFileSync(join(assets, f)), { level: 9 }).length;
const files = readdirSync(assets).filter((f) => /\.(js|css)$/.test(f));
const html = readFileSync(join(dist, "index.html"), "utf8");
const initial = new Set([...html.matchAll(/assets\/([^"]+\.(?:js|css))"/g)].map((m) => m[1]));
// Static imports of the entry chunk are loaded up front too.
for (const f of [...initial]) {
  if (!f.endsWith(".js")) continue;
  const src = readFileSync(join(assets, f), "utf8");
  for (const m of src.matchAll(/^import\s*(?:[^"']*from\s*)?["']\.\/([^"']+)["']/gm)) initial.add(m[1]);
}
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
let total = 0;
let first = 0;
for (const f of files.sort()) {
  const n = gz(f);
  total += n;
  if (initial.has(f)) first += n;
  console.log(`  ${f.padEnd(40)} ${kb(n).padStart(9)} gz${initial.has(f) ? "  (first page)" : ""}`);
}
console.log(`page weight: ${kb(total)} gzipped JS+CSS in all; ${kb(first)} for the first page`);
