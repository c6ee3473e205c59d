import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { backupTransitions, renderTransitionTable, statusesAllowing } from './backup-status.ts';

describe('backup state machine', () => {
  it('allows delete only from available, error and error_restoring', () => {
    assert.deepEqual(statusesAllowing('delete').sort(), ['available', 'error', 'error_restoring']);
  });
  it('allows restore only from available or error_restoring', () => {
    assert.deepEqual(statusesAllowing('restore').sort(), ['available', 'error_restoring']);
  });
  it('has no way out of deleting except a failed delete', () => {
    assert.deepEqual(Object.keys(backupTransitions.deleting), ['failDelete']);
  });
  it('is documented in docs/state-machines.md exactly as in the code', () => {
    const doc = readFileSync(new URL('../../docs/state-machines.md', import.meta.url), 'utf8');
    assert.ok(doc.includes(renderTransitionTable()), 'docs/state-machines.md is out of date: paste renderTransitionTable() into it');
  });
});
