/**
 * Failed-login throttling, per process and in memory (like Keystone's lockout, without its flaw: a
 * per-user lockout lets anyone lock the admin out for as long as they keep guessing).
 *
 * Three counters of failed password logins, each with its own lock:
 *   - per (user, source address): 5 failures are free, then the pair is locked for 1 s, doubling with
 *     each further failure up to 5 min. This is the one a guesser meets first; it never affects the
 *     same user from another address, nor another user from this address.
 *   - per source address (any user names): 30 free, then the same exponential lock. Stops one
 *     address from spraying guesses over many user names.
 *   - per user (any address): 30 free, then the same exponential lock, which does NOT apply to
 *     addresses this user logged in from successfully in the last 24 h. Stops guessing one password
 *     from many addresses, while the user's own known addresses keep working.
 * Locks are short and bounded (5 min at most); an attempt refused while locked costs no password
 * check and extends nothing. An attempt that goes on to a password check counts as a failure from
 * the moment it starts (so that many at once cannot all slip past the count while their hashes
 * run); a success takes its count back, clears its (user, address) counter and remembers the
 * address for the user. A counter is forgotten 15 min after its last failure.
 *
 * Worked example: 8 wrong passwords for `admin` from 10.0.0.9: tries 1-5 answer 401, try 6 answers
 * 401 and locks (admin, 10.0.0.9) for 1 s, a try within that second answers 429 with Retry-After: 1,
 * try 7 (after it) locks for 2 s, try 8 for 4 s. admin from 10.0.0.7 is not affected at all.
 *
 * Several processes sharing a catalog each keep their own counters: N processes allow N times the
 * free failures. The clock is injected, so tests move time instead of sleeping.
 */
import type { Clock } from '../domain/clock.ts';

export interface LockRule {
  /** Failures allowed before the first lock. */
  freeFailures: number;
  /** The first lock; each further failure doubles it. */
  firstLockMs: number;
  maxLockMs: number;
}

export interface LoginLimits {
  pair: LockRule;
  address: LockRule;
  user: LockRule;
  /** A counter is dropped this long after its last failure. */
  forgetMs: number;
  /** Addresses a user logged in from are exempt from that user's lock for this long. */
  knownAddressMs: number;
}

export const LOGIN_LIMITS: LoginLimits = {
  pair: { freeFailures: 5, firstLockMs: 1_000, maxLockMs: 5 * 60_000 },
  address: { freeFailures: 30, firstLockMs: 1_000, maxLockMs: 5 * 60_000 },
  user: { freeFailures: 30, firstLockMs: 1_000, maxLockMs: 5 * 60_000 },
  forgetMs: 15 * 60_000,
  knownAddressMs: 24 * 3600_000,
};

interface Counter {
  failures: number;
  lastFailureAt: number;
  lockedUntil: number;
}

/** Bounds memory whatever the number of names and addresses tried. */
const MAX_ENTRIES = 50_000;
const MAX_KNOWN_ADDRESSES_PER_USER = 16;

class Counters {
  private readonly map = new Map<string, Counter>();
  private readonly rule: LockRule;
  private readonly forgetMs: number;

  constructor(rule: LockRule, forgetMs: number) {
    this.rule = rule;
    this.forgetMs = forgetMs;
  }

  lockedUntil(key: string, now: number): number {
    const c = this.live(key, now);
    return c && c.lockedUntil > now ? c.lockedUntil : 0;
  }

  /** Takes back one failure (an attempt counted when it started turned out a success). */
  forgive(key: string, now: number): void {
    const c = this.live(key, now);
    if (!c) return;
    c.failures = Math.max(0, c.failures - 1);
    if (c.failures <= this.rule.freeFailures) c.lockedUntil = 0;
  }

  fail(key: string, now: number): void {
    const c = this.live(key, now) ?? { failures: 0, lastFailureAt: now, lockedUntil: 0 };
    c.failures++;
    c.lastFailureAt = now;
    const over = c.failures - this.rule.freeFailures;
    if (over > 0) c.lockedUntil = now + Math.min(this.rule.maxLockMs, this.rule.firstLockMs * 2 ** Math.min(over - 1, 30));
    this.map.delete(key); // re-insert: the map's order is least recently failed first
    this.map.set(key, c);
    if (this.map.size > MAX_ENTRIES) this.prune(now);
  }

  clear(key: string): void {
    this.map.delete(key);
  }

  private live(key: string, now: number): Counter | undefined {
    const c = this.map.get(key);
    if (c && c.lockedUntil <= now && now - c.lastFailureAt >= this.forgetMs) {
      this.map.delete(key);
      return undefined;
    }
    return c;
  }

  private prune(now: number): void {
    for (const [k, c] of this.map) {
      if (this.map.size <= MAX_ENTRIES * 0.9) break;
      // Oldest first; under a flood of fresh names, even live counters go (the lock is best effort).
      if (c.lockedUntil <= now || this.map.size > MAX_ENTRIES) this.map.delete(k);
    }
  }
}

export class LoginThrottle {
  private readonly clock: Clock;
  private readonly limits: LoginLimits;
  private readonly pairs: Counters;
  private readonly addresses: Counters;
  private readonly users: Counters;
  private readonly known = new Map<string, Map<string, number>>();

  constructor(clock: Clock, limits: LoginLimits = LOGIN_LIMITS) {
    this.clock = clock;
    this.limits = limits;
    this.pairs = new Counters(limits.pair, limits.forgetMs);
    this.addresses = new Counters(limits.address, limits.forgetMs);
    this.users = new Counters(limits.user, limits.forgetMs);
  }

  /** Milliseconds until anyone may try a password from `address` again (no user lookup needed). */
  addressRetryAfterMs(address: string): number {
    const now = this.clock.now();
    const until = this.addresses.lockedUntil(address, now);
    return until > now ? until - now : 0;
  }

  /**
   * Milliseconds until `user` may try a password from `address` again; 0 when it may now.
   * `user` is the user's id when it exists, else the name as given (unknown names are counted too,
   * so that the answers do not tell which names exist).
   */
  retryAfterMs(user: string, address: string): number {
    const now = this.clock.now();
    let until = Math.max(this.pairs.lockedUntil(pairKey(user, address), now), this.addresses.lockedUntil(address, now));
    if (!this.isKnown(user, address, now)) until = Math.max(until, this.users.lockedUntil(user, now));
    return until > now ? until - now : 0;
  }

  /** Counts an attempt that goes on to a password check as a failure, until recordSuccess takes it back. */
  recordAttempt(user: string, address: string): void {
    const now = this.clock.now();
    this.pairs.fail(pairKey(user, address), now);
    this.addresses.fail(address, now);
    this.users.fail(user, now);
  }

  /** Takes back an attempt that never reached a password check (hashing was saturated). */
  recordAbandoned(user: string, address: string): void {
    const now = this.clock.now();
    this.pairs.forgive(pairKey(user, address), now);
    this.addresses.forgive(address, now);
    this.users.forgive(user, now);
  }

  recordSuccess(user: string, address: string): void {
    const now = this.clock.now();
    this.pairs.clear(pairKey(user, address));
    this.addresses.forgive(address, now);
    this.users.forgive(user, now);
    let mine = this.known.get(user);
    if (!mine) {
      if (this.known.size >= MAX_ENTRIES) this.known.delete(this.known.keys().next().value!);
      mine = new Map();
      this.known.set(user, mine);
    }
    mine.delete(address);
    mine.set(address, now);
    if (mine.size > MAX_KNOWN_ADDRESSES_PER_USER) mine.delete(mine.keys().next().value!);
  }

  private isKnown(user: string, address: string, now: number): boolean {
    const at = this.known.get(user)?.get(address);
    return at !== undefined && now - at < this.limits.knownAddressMs;
  }
}

const pairKey = (user: string, address: string): string => `${user}\u0000${address}`;
