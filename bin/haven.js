#!/usr/bin/env node
// Entry point of the `haven` bin. Haven runs its TypeScript sources directly, which needs Node 24.
const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  process.stderr.write(`haven: error: Node.js 24 or newer is required (this is ${process.version}); use \`npm run haven -- ...\` inside the project, which brings Node 24\n`);
  process.exit(1);
}
// Fresh memory is dear on the VMs Haven runs on: each 4 KiB page's first touch is a fault, which in
// a Firecracker guest took ~25 µs, so a fresh 32 MiB buffer cost ~200 ms, more than the work done
// in it (AES-GCM into a fresh 32 MiB buffer: 160 MB/s; with huge pages 1,000-1,700 MB/s). glibc's
// malloc can ask for transparent huge pages (glibc.malloc.hugetlb=1, glibc 2.35+), which the kernel
// grants in its default "madvise" mode; it measured 190,000 faults down to 60,000 and 7.0 s to 4.8 s
// for a 1 GiB backup to S3. The tunable is read only when a process starts, so a process started
// without it runs itself again once with it (process.execve keeps the PID, so signals, service
// managers and exit codes see one process). HAVEN_HUGEPAGES=false, or any glibc.malloc.hugetlb the
// user set in GLIBC_TUNABLES, leaves malloc as it is.
// HAVEN_HUGEPAGES_SET marks the process run again: where glibc drops the tunable (a node with file
// capabilities or setuid runs in secure mode), the run stops at one try instead of looping.
const rerun = process.env.HAVEN_HUGEPAGES_SET === '1';
delete process.env.HAVEN_HUGEPAGES_SET;
if (!rerun && process.platform === 'linux' && typeof process.execve === 'function' && process.env.HAVEN_HUGEPAGES !== 'false' && !/(^|:)glibc\.malloc\.hugetlb=/.test(process.env.GLIBC_TUNABLES ?? '')) {
  const { readFileSync } = await import('node:fs');
  let thp = '';
  try {
    thp = readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
  } catch {
    // no transparent huge pages in this kernel
  }
  if (/\[(always|madvise)\]/.test(thp)) {
    const glibc = /** @type {{ header?: { glibcVersionRuntime?: string } }} */ (process.report.getReport()).header?.glibcVersionRuntime ?? '';
    const [gMajor = 0, gMinor = 0] = glibc.split('.').map(Number);
    if (gMajor > 2 || (gMajor === 2 && gMinor >= 35)) {
      const tunables = [process.env.GLIBC_TUNABLES, 'glibc.malloc.hugetlb=1'].filter(Boolean).join(':');
      try {
        process.execve(process.execPath, [process.execPath, ...process.execArgv, ...process.argv.slice(1)], { ...process.env, GLIBC_TUNABLES: tunables, HAVEN_HUGEPAGES_SET: '1' });
      } catch {
        // not allowed here (Node's permission model, a seccomp filter, ...): go on without
      }
    }
  }
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
