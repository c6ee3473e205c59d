/**
 * Skips that hold only outside CI. A test that needs something of the machine (loop devices, a
 * pseudo-terminal through util-linux `script`, a mount) may skip on a developer's machine that
 * lacks it; under CI (CI=true), whose .ci/run installs and runs as root what these need, a missing
 * piece is a failure, never a silent skip.
 */
export function skipOutsideCi(reason: string | false): string | false {
  if (reason && process.env.CI === 'true') throw new Error(`${reason}: required under CI (CI=true)`);
  return reason;
}
