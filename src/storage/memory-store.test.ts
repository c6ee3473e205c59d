import { MemoryObjectStore } from './memory-store.ts';
import { describeObjectStore } from './store-conformance.ts';

describeObjectStore('memory', () => new MemoryObjectStore());
