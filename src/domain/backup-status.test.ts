import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { backupEvent, backupTransitions, renderTransitionTable, statusesAllowing, type BackupEvent } from './backup-status.ts';

describe('backup state machine', () => {
  it('allows delete only from available, error and error_restoring', () => {
    assert.deepEqual(statusesAllowing('delete').sort(), ['available', 'error', 'error_restoring']);
  });
  it('allows restore only from available or error_restoring', () => {
    assert.deepEqual(statusesAllowing('restore').sort(), ['available', 'error_restoring']);
  });
  it('has no way out of deleting except a failed delete and the cloud admin\'s force-delete and reset', () => {
    assert.deepEqual(Object.keys(backupTransitions.deleting).sort(), ['failDelete', 'resetAvailable', 'resetError', 'retryDelete']);
  });
  it('gives every event one target status, whatever the status it leaves', () => {
    for (const events of Object.values(backupTransitions)) for (const e of Object.keys(events)) assert.doesNotThrow(() => backupEvent(e as BackupEvent));
    assert.deepEqual(backupEvent('restoreFoundDamage'), { from: ['restoring'], to: 'error' });
    assert.deepEqual(backupEvent('delete', ['error']), { from: ['error'], to: 'deleting' });
  });
  it('is documented in docs/state-machines.md exactly as in the code', () => {
    const doc = readFileSync(new URL('../../docs/state-machines.md', import.meta.url), 'utf8');
    assert.ok(doc.includes(renderTransitionTable()), 'docs/state-machines.md is out of date: paste renderTransitionTable() into it');
  });
});
