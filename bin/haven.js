#!/usr/bin/env node
// Entry point of the `haven` bin. Haven runs its TypeScript sources directly, which needs Node 24.
const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  process.stderr.write(`haven: error: Node.js 24 or newer is required (this is ${process.version}); use \`npm run haven -- ...\` inside the project, which brings Node 24\n`);
  process.exit(1);
}
const { main } = await import('../src/cli/main.ts');
process.exitCode = await main(process.argv);
