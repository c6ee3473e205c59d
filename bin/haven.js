#!/usr/bin/env node
// Entry point of the `haven` bin. Haven runs its TypeScript sources directly, which needs Node 24.
const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  process.stderr.write(`haven: error: Node.js 24 or newer is required (this is ${process.version}); use \`npm run haven -- ...\` inside the project, which brings Node 24\n`);
  process.exit(1);
}
// Node's compile cache keeps the type-stripped and compiled modules between runs: a command starts
// in 0.07 s instead of 0.17 s, and its worker threads too. In a folder of the user's own (0700), not
// Node's default in the shared /tmp, where another user could plant code; skipped when unsure.
const { enableCompileCache } = await import('node:module');
const fs = await import('node:fs');
const os = await import('node:os');
const path = await import('node:path');
try {
  const dir = path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'haven', 'node-compile-cache');
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.statSync(dir);
  if (st.uid === process.getuid?.() && (st.mode & 0o077) === 0) {
    const cache = enableCompileCache?.(dir);
    if (cache?.directory) process.env.NODE_COMPILE_CACHE = cache.directory; // worker threads read it from here
  }
} catch {
  // no home folder, read-only file system, ...: run without the cache
}
const { main } = await import('../src/cli/main.ts');
process.exitCode = await main(process.argv);
