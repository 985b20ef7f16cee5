// Builds the page into dist/, which the node embeds (node/src/web.rs). dist/ is checked in,
// so that building the node needs no npm; `--check` fails when it is not what the sources
// build, and `--test` runs the codec's tests against chat-proto's vectors.
//
//   node build.mjs           write dist/
//   node build.mjs --check   compare dist/ with a fresh build
//   node build.mjs --test    run test/*.test.ts

import { build } from "esbuild";
import { readFileSync, writeFileSync, mkdirSync, mkdtempSync, readdirSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";

const here = new URL(".", import.meta.url).pathname;
const mode = process.argv[2] ?? "--write";

async function bundle() {
  const result = await build({
    entryPoints: [join(here, "src/app.ts")],
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2022",
    write: false,
    legalComments: "none",
  });
  return {
    "app.js": result.outputFiles[0].text,
    "index.html": readFileSync(join(here, "src/index.html"), "utf8"),
  };
}

if (mode === "--test") {
  const out = mkdtempSync(join(tmpdir(), "chat-web-test-"));
  const tests = readdirSync(join(here, "test")).filter((f) => f.endsWith(".test.ts"));
  for (const test of tests) {
    await build({
      entryPoints: [join(here, "test", test)],
      bundle: true,
      platform: "node",
      format: "esm",
      outfile: join(out, test.replace(/\.ts$/, ".mjs")),
    });
  }
  execFileSync(process.execPath, ["--test", ...tests.map((t) => join(out, t.replace(/\.ts$/, ".mjs")))], {
    stdio: "inherit",
    cwd: here,
  });
} else {
  const files = await bundle();
  mkdirSync(join(here, "dist"), { recursive: true });
  for (const [name, text] of Object.entries(files)) {
    const path = join(here, "dist", name);
    if (mode === "--check") {
      let old = "";
      try { old = readFileSync(path, "utf8"); } catch {}
      if (old !== text) {
        console.error(`web/dist/${name} is not what web/src builds: run \`npm run build\` in web/ and commit dist/`);
        process.exit(1);
      }
    } else {
      writeFileSync(path, text);
    }
  }
}
