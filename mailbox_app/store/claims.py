"""Claims: a queued dispatch becomes the thread's one claimed dispatch, stamped with a fresh claim token
and a lease (spec §3.2-§3.3). Three entry points: `claim` (a thread's next, the reference's
`claim`), `claim_dispatch` (one dispatch by id, the inline path of a submit) and `claim_next_fair` (the
fairest head across threads, what a finishing attempt drains to). Who may be claimed next is
`conf.claim_policy()`: fairness between owners and concurrency limits, counted in the claim's own
condition under transaction-scoped advisory locks, so two workers can never exceed a limit.

Without limits a claim is a function in the database (claims.sql, beside this module: one definition,
which the fused submit and finish call too); with limits, the statements below. Token budgets
(budgets.sql, `budget_param`) ride in the same statements: NULL when none are configured, else the
head is admitted only while its owner's and agent's windows have tokens left, and the claim charges a
reservation in the same statement. Lock order everywhere:
the thread's epoch row, then the limit scopes' advisory locks in a fixed order. PostgreSQL enforces one
claimed dispatch per thread (a partial unique index, the backstop): a claim under limits that loses a
race surfaces as a unique violation, answered here as "nothing claimed".

Every claim also checks the pauses (`mailbox_pause`, store/pauses.py) in its own condition, after taking
their advisory lock in shared mode: a paused thread's or agent's head is not claimed.
"""

from __future__ import annotations

import json
import random
from typing import Any

from django.db import IntegrityError, connection, transaction

from mailbox_app.conf import claim_policy
from mailbox_app.contract.config import ClaimPolicy
from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.observability import metrics
from mailbox_app.store.budgets import blocking_budget, budget_param
from mailbox_app.store.fenced import supersede
from mailbox_app.store.rows import fetch_one, scalar

# The reference's `claim` of a thread's next dispatch, without limits (claims.sql)
CLAIM_THREAD = """
SELECT * FROM mailbox_claim_thread(
    %(thread_id)s, %(token)s, %(consumer_id)s, %(lease_until)s, %(now)s, false, %(budgets)s::jsonb)
"""

# A thread's claim under concurrency limits (mailbox_claim_thread's, plus the limits): the caller holds
# the thread's epoch row (LOCK_THREAD_HEAD) and the advisory lock of each limited scope
# (LOCK_LIMIT_SCOPES, taken in the statement before, so this statement's snapshot sees every claim
# committed before the lock was granted); the counts are part of the claim's condition. Only a head of
# the agent the scopes were locked for is claimed. With token budgets, the head's admission
# (budgets.sql, its scopes' locks after the limits') is part of the condition too, and the claim
# charges its reservation (`charge`).
CLAIM_WITHIN_LIMITS = """
WITH e AS (
    SELECT current_epoch FROM mailbox_thread_epoch WHERE thread_id = %(thread_id)s FOR UPDATE
), stale AS (
    UPDATE mailbox_dispatch
       SET status = 'superseded', dispatch_epoch = (SELECT current_epoch FROM e), completed_at = %(now)s,
           updated_at = %(now)s, last_error = 'queued dispatch superseded by newer dispatch epoch'
     WHERE (SELECT current_epoch FROM e) > 0 AND thread_id = %(thread_id)s AND status = 'queued'
       AND dispatch_epoch < (SELECT current_epoch FROM e)
), pick AS (
    SELECT dispatch_id FROM mailbox_dispatch
     WHERE thread_id = %(thread_id)s AND status = 'queued'
       AND dispatch_epoch >= (SELECT current_epoch FROM e) AND available_at <= %(now)s
       AND NOT EXISTS (SELECT 1 FROM mailbox_dispatch c
                        WHERE c.thread_id = %(thread_id)s AND c.status = 'claimed')
     ORDER BY priority, created_at, dispatch_id
     LIMIT 1
     FOR UPDATE SKIP LOCKED
), budget AS MATERIALIZED (
    SELECT mailbox_budget_admit(
               %(budgets)s::jsonb, %(owner_key)s, %(agent_key)s, %(now)s, NOT %(skip_locked)s) AS reservation
     WHERE %(budgets)s::jsonb IS NOT NULL AND EXISTS (SELECT 1 FROM pick)
), claimed AS (
    UPDATE mailbox_dispatch d
       SET status = 'claimed', claim_token = %(token)s, claimed_by = %(consumer_id)s,
           lease_until = %(lease_until)s, updated_at = %(now)s
      FROM pick
     WHERE d.dispatch_id = pick.dispatch_id AND d.agent_key = %(agent_key)s
       AND (%(global_limit)s::int IS NULL
            OR (SELECT count(*) FROM mailbox_dispatch c WHERE c.status = 'claimed') < %(global_limit)s::int)
       AND (%(agent_limit)s::int IS NULL
            OR (SELECT count(*) FROM mailbox_dispatch c
                 WHERE c.status = 'claimed' AND c.agent_key = %(agent_key)s)
               < %(agent_limit)s::int)
       AND (%(owner_limit)s::int IS NULL
            OR (SELECT count(*) FROM mailbox_dispatch c
                  JOIN mailbox_thread_epoch ce ON ce.thread_id = c.thread_id
                 WHERE c.status = 'claimed' AND ce.owner_key = %(owner_key)s) < %(owner_limit)s::int)
       AND (%(budgets)s::jsonb IS NULL OR (SELECT reservation FROM budget) IS NOT NULL)
       -- a pause of the thread, of the agent or of everything holds it (mailbox_app/store/pauses.py)
       AND NOT EXISTS (SELECT 1 FROM mailbox_pause p
                        WHERE p.scope = 'all' OR (p.scope = 'thread' AND p.key = d.thread_id)
                           OR (p.scope = 'agent' AND p.key = d.agent_key))
    RETURNING d.*
), charge AS (
    INSERT INTO mailbox_token_charge (scope, key, window_start, window_end, dispatch_id, claim_token,
                                      reserved, tokens, created_at)
    SELECT r ->> 'scope', r ->> 'key', (r ->> 'window_start')::bigint, (r ->> 'window_end')::bigint,
           c.dispatch_id, c.claim_token, (r ->> 'tokens')::bigint, (r ->> 'tokens')::bigint, %(now)s
      FROM claimed c, budget b, jsonb_array_elements(b.reservation) AS r
)
SELECT * FROM claimed
"""


@metrics.timed(metrics.CLAIM, metrics.found)
def claim(thread_id: str, consumer_id: str, lease_ms: int, now: int, limit: int = 1) -> list[DispatchRecord]:
    """Claim the thread's next eligible dispatch (spec §3.2).

    Stale-epoch queued rows are superseded first; nothing is claimed while the thread has a claimed
    dispatch, or while its head's agent or owner is at a concurrency limit. PostgreSQL enforces one
    claimed dispatch per thread, so at most one row is returned whatever `limit` (>= 1) says.
    """
    if limit <= 0:
        return []
    policy = claim_policy()
    params = _claim_params(thread_id, consumer_id, lease_ms, now)
    try:
        if policy.has_limits:
            with transaction.atomic():
                claimed, _ = _claim_limited(params, policy, skip_locked=False)
            return [claimed] if claimed is not None else []
        # one statement; claims of a thread serialize on its epoch row, so it loses no race by a unique
        # violation and needs no savepoint inside the caller's transaction
        claimed = fetch_one(CLAIM_THREAD, params)
        return [claimed] if claimed is not None else []
    except IntegrityError:
        return []


def _claim_params(thread_id: str, consumer_id: str, lease_ms: int, now: int) -> dict[str, Any]:
    return {
        "thread_id": thread_id,
        "now": now,
        "token": uuid7(),
        "consumer_id": consumer_id,
        "lease_until": now + lease_ms,
        "budgets": budget_param(),
    }


def _limit_params(policy: ClaimPolicy, agent_key: str, owner_key: str) -> dict[str, Any]:
    return {
        "agent_key": agent_key,
        "owner_key": owner_key,
        "global_limit": policy.max_active_runs,
        "agent_limit": policy.agent_limit(agent_key),
        "owner_limit": policy.owner_max_active_runs,
    }


LOCK_LIMIT_SCOPES = """
SELECT pg_advisory_xact_lock(hashtextextended('awaken-limit:' || s, 0)) FROM unnest(%(scopes)s::text[]) s
"""


def _lock_scopes(policy: ClaimPolicy, agent_key: str, owner_key: str) -> bool:
    """Take the advisory lock of every limited scope of this claim (after the thread's epoch row)."""
    scopes = policy.lock_scopes(agent_key, owner_key)
    if scopes:
        with connection.cursor() as cursor:
            cursor.execute(LOCK_LIMIT_SCOPES, {"scopes": scopes})
    return bool(scopes)


# Before a limited claim: the thread's epoch row locked, and the owner and the agent of its head; and the
# pauses' lock in shared mode (a pause takes it exclusively: the claim, a later statement, sees every
# pause committed before it; mailbox_app/store/pauses.py).
LOCK_THREAD_HEAD = """
SELECT e.owner_key,
       (SELECT q.agent_key FROM mailbox_dispatch q
         WHERE q.thread_id = e.thread_id AND q.status = 'queued' AND q.dispatch_epoch >= e.current_epoch
           AND q.available_at <= %(now)s
         ORDER BY q.priority, q.created_at, q.dispatch_id LIMIT 1),
       pg_advisory_xact_lock_shared(hashtextextended('awaken-pause', 0))
  FROM mailbox_thread_epoch e WHERE e.thread_id = %(thread_id)s
 FOR UPDATE OF e
"""

LOCK_THREAD_HEAD_SKIP_LOCKED = """
SELECT e.owner_key,
       (SELECT q.agent_key FROM mailbox_dispatch q
         WHERE q.thread_id = e.thread_id AND q.status = 'queued' AND q.dispatch_epoch >= e.current_epoch
           AND q.available_at <= %(now)s
         ORDER BY q.priority, q.created_at, q.dispatch_id LIMIT 1),
       pg_advisory_xact_lock_shared(hashtextextended('awaken-pause', 0))
  FROM mailbox_thread_epoch e WHERE e.thread_id = %(thread_id)s
 FOR UPDATE OF e SKIP LOCKED
"""


def _claim_limited(
    params: dict[str, Any],
    policy: ClaimPolicy,
    *,
    skip_locked: bool,
    within: frozenset[str] | None = None,
) -> tuple[DispatchRecord | None, frozenset[str]]:
    """A claim under limits, inside the caller's transaction: the epoch row, then the scopes' locks,
    then the claim with the counts in its condition. Returns the claim and the scopes it locked. With
    `within` (the scopes the transaction already holds), a head needing any other scope is not tried:
    taking a second set of scope locks while holding one could deadlock with a claimer doing the
    reverse."""
    with connection.cursor() as cursor:
        cursor.execute(
            LOCK_THREAD_HEAD_SKIP_LOCKED if skip_locked else LOCK_THREAD_HEAD,
            {"thread_id": params["thread_id"], "now": params["now"]},
        )
        row = cursor.fetchone()
    if row is None or row[1] is None:  # no epoch row, locked by someone else, or nothing eligible
        return None, frozenset()
    owner_key, agent_key, _ = row
    scopes = frozenset(policy.lock_scopes(agent_key, owner_key))
    if within is not None and not scopes <= within:
        return None, frozenset()
    _lock_scopes(policy, agent_key, owner_key)
    limits = _limit_params(policy, agent_key, owner_key) | {"skip_locked": skip_locked}
    claimed = fetch_one(CLAIM_WITHIN_LIMITS, params | limits)
    return claimed, scopes


# --- the fair claim across threads -------------------------------------------------------------------

FAIR_CANDIDATES = 16

# The fair claim across threads, without limits (claims.sql)
CLAIM_FAIR = """
SELECT * FROM mailbox_claim_fair(
    %(token)s, %(consumer_id)s, %(lease_until)s, %(now)s, %(unstarted_before)s, %(limit)s, %(budgets)s::jsonb)
"""

# The fair heads under limits: each thread's head (its next eligible queued row, or a claim a submit took
# inline that no worker started within the grace), ordered by when its owner was last served, then
# priority and age; threads executing a dispatch, heads whose agent or owner is at its limit or whose
# token budget is spent (budgets.sql), and paused heads are skipped (re-checked under the locks when
# claimed).
FAIR_HEADS_WITHIN_LIMITS = """
WITH heads AS (
    SELECT DISTINCT ON (u.thread_id) u.* FROM (
        SELECT q.thread_id, q.dispatch_id, q.agent_key, q.priority, q.created_at, q.claim_token
          FROM mailbox_dispatch q WHERE q.status = 'queued' AND q.available_at <= %(now)s
        UNION ALL
        SELECT q.thread_id, q.dispatch_id, q.agent_key, q.priority, q.created_at, q.claim_token
          FROM mailbox_dispatch q
         WHERE q.status = 'claimed' AND q.dispatch_instance_id IS NULL
           AND q.updated_at <= %(unstarted_before)s
    ) u
     ORDER BY u.thread_id, u.claim_token NULLS LAST, u.priority, u.created_at, u.dispatch_id
), busy_agents AS (
    SELECT agent_key, count(*) AS n FROM mailbox_dispatch WHERE status = 'claimed' GROUP BY agent_key
), busy_owners AS (
    SELECT ce.owner_key, count(*) AS n
      FROM mailbox_dispatch c JOIN mailbox_thread_epoch ce ON ce.thread_id = c.thread_id
     WHERE c.status = 'claimed' GROUP BY ce.owner_key
), spent AS MATERIALIZED (
    SELECT mailbox_budget_spent(%(budgets)s::jsonb, %(now)s) AS scopes WHERE %(budgets)s::jsonb IS NOT NULL
)
SELECT h.thread_id, h.dispatch_id, h.claim_token, h.agent_key, COALESCE(e.owner_key, '')
  FROM heads h
  LEFT JOIN mailbox_thread_epoch e ON e.thread_id = h.thread_id
  LEFT JOIN mailbox_fair_group g ON g.owner_key = COALESCE(e.owner_key, '')
 WHERE h.claim_token IS NOT NULL
    OR (NOT EXISTS (SELECT 1 FROM mailbox_dispatch c WHERE c.thread_id = h.thread_id AND c.status = 'claimed')
        AND (%(global_limit)s::int IS NULL
             OR COALESCE((SELECT sum(n) FROM busy_agents), 0) < %(global_limit)s::int)
        AND ((%(agent_limits)s::jsonb ->> h.agent_key) IS NULL
             OR COALESCE((SELECT n FROM busy_agents b WHERE b.agent_key = h.agent_key), 0)
                < (%(agent_limits)s::jsonb ->> h.agent_key)::int)
        AND (%(owner_limit)s::int IS NULL
             OR COALESCE((SELECT n FROM busy_owners o WHERE o.owner_key = COALESCE(e.owner_key, '')), 0)
                < %(owner_limit)s::int)
        -- a paused head is no candidate (its claim checks again); no pause: the table is read once
        AND (NOT EXISTS (SELECT 1 FROM mailbox_pause)
             OR NOT EXISTS (SELECT 1 FROM mailbox_pause p
                             WHERE p.scope = 'all' OR (p.scope = 'thread' AND p.key = h.thread_id)
                                OR (p.scope = 'agent' AND p.key = h.agent_key)))
        AND (%(budgets)s::jsonb IS NULL
             OR NOT ('owner:' || COALESCE(e.owner_key, '') = ANY ((SELECT scopes FROM spent)::text[])
                     OR 'agent:' || h.agent_key = ANY ((SELECT scopes FROM spent)::text[]))))
 ORDER BY COALESCE(g.served_at, 0), h.priority, h.created_at, h.dispatch_id
 LIMIT %(limit)s
"""

# Take over a claim a submit took inline that no worker has started (its hand-over is stuck behind
# other work): a new token, so the late hand-over finds its fence gone and leaves. Never waits: a row
# another transaction holds (its hand-over starting it, another worker taking it over) is skipped. The
# claim's token-budget charges (budgets.sql) move to the new token.
STEAL_UNSTARTED = """
WITH pick AS (
    SELECT dispatch_id FROM mailbox_dispatch
     WHERE dispatch_id = %(dispatch_id)s AND status = 'claimed' AND claim_token = %(old_token)s
       AND dispatch_instance_id IS NULL
       AND dispatch_epoch >= (SELECT current_epoch FROM mailbox_thread_epoch WHERE thread_id = %(thread_id)s)
     FOR UPDATE SKIP LOCKED
), stolen AS (
    UPDATE mailbox_dispatch d
       SET claim_token = %(token)s, claimed_by = %(consumer_id)s, lease_until = %(lease_until)s,
           updated_at = %(now)s
      FROM pick
     WHERE d.dispatch_id = pick.dispatch_id
    RETURNING d.*
), moved AS (
    UPDATE mailbox_token_charge c SET claim_token = %(token)s
      FROM stolen s WHERE c.dispatch_id = s.dispatch_id AND c.claim_token = %(old_token)s
)
SELECT * FROM stolen
"""


@metrics.timed(metrics.CLAIM, metrics.found)
def claim_next_fair(consumer_id: str, lease_ms: int, now: int) -> DispatchRecord | None:
    """Claim the fairest next dispatch across all threads (the drain of a finishing attempt and an idle
    doorbell): the head of the thread whose owner was served longest ago, then priority and age; a
    claim a submit took inline that no worker started within the grace is taken over. Never waits for
    another thread's epoch row, and never takes a scope lock while holding another scope's. (The
    reference's worker drains its own thread, `dispatch_next_claim`; this is what `AWAKEN_FAIRNESS=off`
    gives back.)"""
    policy = claim_policy()
    params: dict[str, Any] = {
        "now": now,
        "unstarted_before": now - policy.unstarted_claim_grace_ms,
        "limit": FAIR_CANDIDATES,
    }
    if not policy.has_limits:
        return fetch_one(CLAIM_FAIR, params | _claim_params("", consumer_id, lease_ms, now))
    params |= {
        "global_limit": policy.max_active_runs,
        "agent_limits": json.dumps(policy.agent_limits),
        "owner_limit": policy.owner_max_active_runs,
        "budgets": budget_param(),
    }
    with connection.cursor() as cursor:
        cursor.execute(FAIR_HEADS_WITHIN_LIMITS, params)
        candidates = _spread(cursor.fetchall())
    # Scope locks are transaction-scoped: inside a finish transaction they outlive the savepoint below.
    # Once some are held, only heads needing no other scope are tried (a limited head whose agent is at
    # its limit must not keep the finishing worker from an unlimited head after it).
    held: frozenset[str] | None = frozenset() if connection.in_atomic_block else None
    for thread_id, dispatch_id, old_token, _agent_key, _owner_key in candidates:
        claim_params = _claim_params(thread_id, consumer_id, lease_ms, now)
        try:
            with transaction.atomic():
                if old_token is not None:
                    steal = {"dispatch_id": dispatch_id, "old_token": old_token}
                    claimed = fetch_one(STEAL_UNSTARTED, claim_params | steal)
                else:
                    claimed, scopes = _claim_limited(
                        claim_params, policy, skip_locked=True, within=held or None
                    )
                    if held is not None:
                        held |= scopes
        except IntegrityError:  # a concurrent claim of that thread won
            continue
        if claimed is not None:
            return claimed
    return None


def _spread(candidates: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The first owner's candidates in random order (then the rest in fair order): workers finishing at
    the same moment read the same list, and would otherwise all race for its first thread. Fairness is
    across owners; a thread's own order is kept by the claim itself."""
    if not candidates:
        return candidates
    owner = candidates[0][4]
    first = [c for c in candidates if c[4] == owner]
    random.shuffle(first)
    return first + [c for c in candidates if c[4] != owner]


# --- the inline claim of one dispatch ----------------------------------------------------------------

# The thread's epoch row, and the pauses' lock in shared mode (as LOCK_THREAD_HEAD).
LOCK_EPOCH_OF_DISPATCH = """
SELECT current_epoch, pg_advisory_xact_lock_shared(hashtextextended('awaken-pause', 0))
  FROM mailbox_thread_epoch
 WHERE thread_id = (SELECT thread_id FROM mailbox_dispatch WHERE dispatch_id = %(dispatch_id)s)
 FOR UPDATE
"""

DISPATCH = "SELECT d.* FROM mailbox_dispatch d WHERE d.dispatch_id = %(dispatch_id)s"

CLAIM_BY_ID = """
UPDATE mailbox_dispatch d
   SET status = 'claimed', claim_token = %(token)s, claimed_by = %(consumer_id)s,
       lease_until = %(lease_until)s, updated_at = %(now)s
 WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'queued'
   AND NOT EXISTS (SELECT 1 FROM mailbox_dispatch c WHERE c.thread_id = d.thread_id AND c.status = 'claimed')
   -- a pause of the thread, of the agent or of everything holds it (mailbox_app/store/pauses.py)
   AND NOT EXISTS (SELECT 1 FROM mailbox_pause p
                    WHERE p.scope = 'all' OR (p.scope = 'thread' AND p.key = d.thread_id)
                       OR (p.scope = 'agent' AND p.key = d.agent_key))
RETURNING d.*
"""

# The inline claim of one dispatch under token budgets (budgets.sql): its admission (the scopes' locks,
# waited for: the caller holds only this thread's epoch row), the claim, its reservation.
CLAIM_BY_ID_WITHIN_BUDGETS = """
WITH budget AS MATERIALIZED (
    SELECT mailbox_budget_admit(%(budgets)s::jsonb, %(owner_key)s, %(agent_key)s, %(now)s, true)
           AS reservation
), claimed AS (
    UPDATE mailbox_dispatch d
       SET status = 'claimed', claim_token = %(token)s, claimed_by = %(consumer_id)s,
           lease_until = %(lease_until)s, updated_at = %(now)s
     WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'queued'
       AND NOT EXISTS (SELECT 1 FROM mailbox_dispatch c
                        WHERE c.thread_id = d.thread_id AND c.status = 'claimed')
       AND (SELECT reservation FROM budget) IS NOT NULL
    RETURNING d.*
), charge AS (
    INSERT INTO mailbox_token_charge (scope, key, window_start, window_end, dispatch_id, claim_token,
                                      reserved, tokens, created_at)
    SELECT r ->> 'scope', r ->> 'key', (r ->> 'window_start')::bigint, (r ->> 'window_end')::bigint,
           c.dispatch_id, c.claim_token, (r ->> 'tokens')::bigint, (r ->> 'tokens')::bigint, %(now)s
      FROM claimed c, budget b, jsonb_array_elements(b.reservation) AS r
)
SELECT * FROM claimed
"""

CLAIM_BY_ID_WITHIN_LIMITS = """
WITH budget AS MATERIALIZED (
    SELECT mailbox_budget_admit(%(budgets)s::jsonb, %(owner_key)s, %(agent_key)s, %(now)s, true)
           AS reservation
     WHERE %(budgets)s::jsonb IS NOT NULL
), claimed AS (
    UPDATE mailbox_dispatch d
       SET status = 'claimed', claim_token = %(token)s, claimed_by = %(consumer_id)s,
           lease_until = %(lease_until)s, updated_at = %(now)s
     WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'queued'
       AND NOT EXISTS (SELECT 1 FROM mailbox_dispatch c
                        WHERE c.thread_id = d.thread_id AND c.status = 'claimed')
       AND d.agent_key = %(agent_key)s
       AND (%(global_limit)s::int IS NULL
            OR (SELECT count(*) FROM mailbox_dispatch c WHERE c.status = 'claimed') < %(global_limit)s::int)
       AND (%(agent_limit)s::int IS NULL
            OR (SELECT count(*) FROM mailbox_dispatch c
                 WHERE c.status = 'claimed' AND c.agent_key = %(agent_key)s)
               < %(agent_limit)s::int)
       AND (%(owner_limit)s::int IS NULL
            OR (SELECT count(*) FROM mailbox_dispatch c
                  JOIN mailbox_thread_epoch ce ON ce.thread_id = c.thread_id
                 WHERE c.status = 'claimed' AND ce.owner_key = %(owner_key)s) < %(owner_limit)s::int)
       AND (%(budgets)s::jsonb IS NULL OR (SELECT reservation FROM budget) IS NOT NULL)
       -- a pause of the thread, of the agent or of everything holds it (mailbox_app/store/pauses.py)
       AND NOT EXISTS (SELECT 1 FROM mailbox_pause p
                        WHERE p.scope = 'all' OR (p.scope = 'thread' AND p.key = d.thread_id)
                           OR (p.scope = 'agent' AND p.key = d.agent_key))
    RETURNING d.*
), charge AS (
    INSERT INTO mailbox_token_charge (scope, key, window_start, window_end, dispatch_id, claim_token,
                                      reserved, tokens, created_at)
    SELECT r ->> 'scope', r ->> 'key', (r ->> 'window_start')::bigint, (r ->> 'window_end')::bigint,
           c.dispatch_id, c.claim_token, (r ->> 'tokens')::bigint, (r ->> 'tokens')::bigint, %(now)s
      FROM claimed c, budget b, jsonb_array_elements(b.reservation) AS r
)
SELECT * FROM claimed
"""


@metrics.timed(metrics.CLAIM_DISPATCH, metrics.found)
def claim_dispatch(dispatch_id: str, consumer_id: str, lease_ms: int, now: int) -> DispatchRecord | None:
    """Claim one queued dispatch by id, ignoring `available_at` (spec §3.3, the inline path); None when
    it is not claimable, or its agent or owner is at a concurrency limit (`blocking_limit` says which)."""
    policy = claim_policy()
    try:
        with transaction.atomic():
            epoch = scalar(LOCK_EPOCH_OF_DISPATCH, {"dispatch_id": dispatch_id}) or 0
            current = fetch_one(DISPATCH, {"dispatch_id": dispatch_id})
            if current is None or current.status is not DispatchStatus.QUEUED:
                return None
            if current.dispatch_epoch < epoch:
                supersede(current, epoch, now, "queued dispatch superseded by newer dispatch epoch")
                return None
            params = {
                "dispatch_id": dispatch_id,
                "now": now,
                "token": uuid7(),
                "consumer_id": consumer_id,
                "lease_until": now + lease_ms,
                "budgets": budget_param(),
            }
            if not policy.has_limits and params["budgets"] is None:
                return fetch_one(CLAIM_BY_ID, params)
            owner_key = thread_owner_key(current.thread_id)
            scoped = _limit_params(policy, current.agent_key, owner_key)
            if not policy.has_limits:
                return fetch_one(CLAIM_BY_ID_WITHIN_BUDGETS, params | scoped)
            _lock_scopes(policy, current.agent_key, owner_key)
            return fetch_one(CLAIM_BY_ID_WITHIN_LIMITS, params | scoped)
    except IntegrityError:
        return None


# --- what holds a claim back -------------------------------------------------------------------------

THREAD_OWNER = "SELECT owner_key FROM mailbox_thread_epoch WHERE thread_id = %(thread_id)s"


def thread_owner_key(thread_id: str) -> str:
    return str(scalar(THREAD_OWNER, {"thread_id": thread_id}) or "")


# Claimed dispatches counted per limited scope (the why-blocked view and the submit's answer).
CLAIMED_COUNTS = """
SELECT (SELECT count(*) FROM mailbox_dispatch WHERE status = 'claimed'),
       (SELECT count(*) FROM mailbox_dispatch WHERE status = 'claimed' AND agent_key = %(agent_key)s),
       (SELECT count(*) FROM mailbox_dispatch c JOIN mailbox_thread_epoch ce ON ce.thread_id = c.thread_id
         WHERE c.status = 'claimed' AND ce.owner_key = %(owner_key)s)
"""


def blocking_limit(agent_key: str, owner_key: str, now: int | None = None) -> str | None:
    """What holds a claim of this agent for this owner now: a concurrency limit, named by its setting,
    else a spent token budget (`token budget of owner 7: resets in 42 s …`); None when nothing does.
    The submit queues a head held so, and a doorbell for it does not poll (the slot's finish or the
    sweep claims it)."""
    policy = claim_policy()
    if not policy.has_limits:
        return _budget_block(agent_key, owner_key, now)
    with connection.cursor() as cursor:
        cursor.execute(CLAIMED_COUNTS, {"agent_key": agent_key, "owner_key": owner_key})
        row = cursor.fetchone()
    total, of_agent, of_owner = row if row is not None else (0, 0, 0)
    if policy.max_active_runs is not None and total >= policy.max_active_runs:
        return f"AWAKEN_MAX_ACTIVE_RUNS={policy.max_active_runs} ({total} running)"
    agent_limit = policy.agent_limit(agent_key)
    if agent_limit is not None and of_agent >= agent_limit:
        return f"AWAKEN_AGENT_LIMITS[{agent_key}]={agent_limit} ({of_agent} running)"
    if policy.owner_max_active_runs is not None and of_owner >= policy.owner_max_active_runs:
        return f"AWAKEN_OWNER_MAX_ACTIVE_RUNS={policy.owner_max_active_runs} ({of_owner} running)"
    return _budget_block(agent_key, owner_key, now)


def _budget_block(agent_key: str, owner_key: str, now: int | None) -> str | None:
    stamp = now_ms() if now is None else now
    spent = blocking_budget(owner_key, agent_key, stamp)
    return None if spent is None else spent.reason(stamp)
