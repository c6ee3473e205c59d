/**
 * haven key list | add | remove | passwd: several passwords for one encrypted repository
 * (engine/key-ring.ts). Every command opens the repository with a password it already has
 * (--password-file or HAVEN_REPO_PASSWORD_FILE); add and passwd read the new one from
 * --new-password-file, never from the command line.
 */
import type { Command } from 'commander';
import { addKey, changePassword, listKeys, removeKey } from '../../engine/key-ring.ts';
import { openRepository, readPasswordFile, type RepoOptions } from '../repo-access.ts';
import { out, repoCommand } from './engine-commands.ts';

export function registerKeyCommands(program: Command): void {
  const key = program.command('key').description('manage the passwords of an encrypted repository (several may open it, as with restic)');

  repoCommand(key, 'list', 'list the repository\'s keys (one per password); * marks the one the given password opened')
    .action(async (o: RepoOptions & { json?: boolean }) => {
      const keys = await listKeys(await openRepository(o));
      out(o.json, keys, keys.map((k) => `${k.current ? '*' : ' '} ${k.id.padEnd(16)}  ${k.createdAt ?? ''}${k.host ? `  ${k.host}` : ''}`).join('\n'));
    });

  repoCommand(key, 'add', 'add a password: the repository then opens with either')
    .requiredOption('--new-password-file <file>', 'file holding the new password (one trailing newline is dropped)')
    .action(async (o: RepoOptions & { newPasswordFile: string; json?: boolean }) => {
      const password = readPasswordFile(o.newPasswordFile);
      const id = await addKey(await openRepository(o), password);
      out(o.json, { id }, `added key ${id}`);
    });

  repoCommand(key, 'remove', 'remove a password (not the one given to open the repository, not the config\'s key)')
    .argument('<id>', 'the key\'s id (haven key list)')
    .action(async (id: string, o: RepoOptions & { json?: boolean }) => {
      await removeKey(await openRepository(o), id);
      out(o.json, { id, removed: true }, `removed key ${id}`);
    });

  repoCommand(key, 'passwd', 'change the password given (--password-file) to a new one')
    .requiredOption('--new-password-file <file>', 'file holding the new password (one trailing newline is dropped)')
    .action(async (o: RepoOptions & { newPasswordFile: string; json?: boolean }) => {
      const password = readPasswordFile(o.newPasswordFile);
      const id = await changePassword(await openRepository(o), password);
      out(o.json, { id, changed: true }, `changed the password of key ${id}`);
    });
}
