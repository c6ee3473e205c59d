/**
 * The `haven` command line. Every command prints one clear line on stderr and exits non-zero on
 * error, never a stack trace; `--json` output is the contract scripts and tests use.
 */
import { Command } from 'commander';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { registerEngineCommands } from './commands/engine-commands.ts';
import { registerServiceCommands } from './commands/service-commands.ts';
import { registerScheduleCommands } from './commands/schedule-commands.ts';
import { registerAgentCommands } from './commands/agent-commands.ts';
import { registerNbdCommands } from './commands/nbd-commands.ts';
import { registerKeyCommands } from './commands/key-commands.ts';
import { describeSystemError } from '../domain/errno.ts';

export const EXIT_FAILURE = 1;

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('haven')
    .version('0.1.0')
    .description('Haven: deduplicated, compressed, encrypted backups of virtual machine disks')
    .exitOverride() // before the subcommands, so they inherit it
    .showSuggestionAfterError()
    // Usage errors are one line too: "haven: error: required option '--repo <dir>' not specified".
    .configureOutput({ outputError: (str, write) => write(`haven: ${str.trimEnd().split('\n')[0]}\n`) });
  registerEngineCommands(program);
  registerServiceCommands(program);
  registerScheduleCommands(program);
  registerAgentCommands(program);
  registerNbdCommands(program);
  registerKeyCommands(program);
  return program;
}

export function describeError(err: unknown): string {
  if (err instanceof AppError) return err.message;
  const e = err as NodeJS.ErrnoException;
  const system = describeSystemError(err);
  if (system) return system;
  if (e && typeof e.code === 'string' && typeof e.message === 'string') return e.message;
  if (e?.name === 'AbortError') return 'cancelled';
  return e instanceof Error ? e.message : String(err);
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return process.exitCode === undefined ? 0 : Number(process.exitCode);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (typeof code === 'string' && code.startsWith('commander.')) {
      // Commander already printed its message (usage errors, --help, --version).
      return code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help' ? 0 : 2;
    }
    process.stderr.write(`haven: error: ${describeError(err)}\n`);
    if (process.env.HAVEN_DEBUG) process.stderr.write(`${(err as Error)?.stack ?? ''}\n`);
    return err instanceof AppError && err.code === ErrorCode.Cancelled ? 130 : EXIT_FAILURE;
  }
}

if (import.meta.main) {
  process.exitCode = await main(process.argv);
}
