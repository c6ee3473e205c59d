/**
 * Builds the web console (console/src, Preact + Pico CSS + uPlot) into dist/console with esbuild.
 * Run by `npm run build` and by `npm ci` (the `prepare` script), so `haven serve` finds it at
 * /console/ with no network at run time: every script, style and font is in the bundle.
 *
 *   node console/build.ts            build once (minified, with source maps)
 *   node console/build.ts --watch    rebuild on change (development)
 */
import { copyFile, mkdir, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
export const CONSOLE_OUT = join(here, '..', 'dist', 'console');

export async function buildConsole(opts: { watch?: boolean; quiet?: boolean } = {}): Promise<void> {
  // Built beside the served folder, then swapped in: a service running from this folder (an
  // upgrade's `npm ci`) never serves a half-written console.
  const out = opts.watch ? CONSOLE_OUT : `${CONSOLE_OUT}.new-${process.pid}`;
  await rm(out, { recursive: true, force: true });
  await mkdir(out, { recursive: true });
  const options: esbuild.BuildOptions = {
    entryPoints: { app: join(here, 'src', 'main.tsx') },
    bundle: true,
    outdir: out,
    format: 'esm',
    target: ['es2022'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    minify: !opts.watch,
    sourcemap: true,
    legalComments: 'linked',
    loader: { '.woff2': 'file', '.svg': 'file' },
    logLevel: opts.quiet ? 'warning' : 'info',
  };
  await copyFile(join(here, 'index.html'), join(out, 'index.html'));
  if (opts.watch) {
    const ctx = await esbuild.context(options);
    await ctx.watch();
    return;
  }
  try {
    await esbuild.build(options);
  } catch (err) {
    await rm(out, { recursive: true, force: true });
    throw err;
  }
  const old = `${CONSOLE_OUT}.old-${process.pid}`;
  await rename(CONSOLE_OUT, old).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  await rename(out, CONSOLE_OUT);
  await rm(old, { recursive: true, force: true });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await buildConsole({ watch: process.argv.includes('--watch') });
}
