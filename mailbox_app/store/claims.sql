-- The claims of mailbox_app/store/claims.py, as functions in the database: the claim of a thread's next
-- dispatch and the fair claim across threads. One definition each, called by claims.py and by the
-- attempt's and the submit's transitions (mailbox_app/store/runs_tables/*.sql), installed by
-- `manage.py migrate` (mailbox_app/store/install.py). No concurrency limits here: a claim under
-- limits is claims.py's (advisory locks per scope, counts in the claim's condition). Token budgets
-- (`p_budgets`, NULL when none are configured) are budgets.sql's: a head is admitted only while its
-- owner's and its agent's windows have tokens left, and its claim charges a reservation.
--
-- A claim locks the thread's epoch row first: claims and interrupts of one thread serialize on it, so
-- the "no claimed dispatch on this thread" check, made after the lock, sees every claim committed
-- before (PL/pgSQL takes a new snapshot per statement) and one-claimed-per-thread holds without relying
-- on the partial unique index (which stays as the backstop).

-- The reference's `claim` of a thread's next eligible dispatch (spec §3.2): stale-epoch queued rows
-- superseded first (skipped on a never-interrupted thread, so the cost does not grow with the backlog),
-- then the head by (priority, created_at, dispatch_id), available at `p_now`, in the current epoch,
-- unless a pause holds it (its thread, its agent or everything: mailbox_pause).
-- With `p_skip_locked` a thread whose epoch row another transaction holds is skipped, never waited for.
CREATE OR REPLACE FUNCTION mailbox_claim_thread(
    p_thread_id varchar, p_token varchar, p_consumer varchar, p_lease_until bigint, p_now bigint,
    p_skip_locked boolean DEFAULT false, p_budgets jsonb DEFAULT NULL
) RETURNS SETOF mailbox_dispatch LANGUAGE plpgsql AS $$
DECLARE
    v_epoch bigint;
    v_owner varchar;
    v_head record;
    v_reservation jsonb;
    v_claimed mailbox_dispatch;
BEGIN
    IF p_skip_locked THEN
        SELECT current_epoch INTO v_epoch FROM mailbox_thread_epoch
         WHERE thread_id = p_thread_id FOR UPDATE SKIP LOCKED;
    ELSE
        SELECT current_epoch INTO v_epoch FROM mailbox_thread_epoch WHERE thread_id = p_thread_id FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- Pauses (mailbox_pause, mailbox_app/store/pauses.py): a pause takes this lock exclusively before it
    -- inserts its row, so once it is held here the claim below sees every pause committed before.
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('awaken-pause', 0));
    IF v_epoch > 0 THEN
        UPDATE mailbox_dispatch
           SET status = 'superseded', dispatch_epoch = v_epoch, completed_at = p_now, updated_at = p_now,
               last_error = 'queued dispatch superseded by newer dispatch epoch'
         WHERE thread_id = p_thread_id AND status = 'queued' AND dispatch_epoch < v_epoch;
    END IF;
    IF EXISTS (SELECT 1 FROM mailbox_dispatch WHERE thread_id = p_thread_id AND status = 'claimed') THEN
        RETURN;
    END IF;
    IF p_budgets IS NOT NULL THEN
        -- token budgets (budgets.sql): the head, then its admission (the scopes' locks after the epoch
        -- row's, waiting only when the epoch row was waited for), then the claim and its reservation
        SELECT q.dispatch_id, q.agent_key INTO v_head FROM mailbox_dispatch q
         WHERE q.thread_id = p_thread_id AND q.status = 'queued' AND q.dispatch_epoch >= v_epoch
           AND q.available_at <= p_now
         ORDER BY q.priority, q.created_at, q.dispatch_id
         LIMIT 1
           FOR UPDATE SKIP LOCKED;
        IF v_head.dispatch_id IS NULL OR EXISTS (
               SELECT 1 FROM mailbox_pause p  -- a paused head waits, as below
                WHERE p.scope = 'all' OR (p.scope = 'thread' AND p.key = p_thread_id)
                   OR (p.scope = 'agent' AND p.key = v_head.agent_key)) THEN
            RETURN;
        END IF;
        SELECT owner_key INTO v_owner FROM mailbox_thread_epoch WHERE thread_id = p_thread_id;  -- (locked above)
        v_reservation := mailbox_budget_admit(p_budgets, v_owner, v_head.agent_key, p_now, NOT p_skip_locked);
        IF v_reservation IS NULL THEN
            RETURN;
        END IF;
        UPDATE mailbox_dispatch d
           SET status = 'claimed', claim_token = p_token, claimed_by = p_consumer, lease_until = p_lease_until,
               updated_at = p_now
         WHERE d.dispatch_id = v_head.dispatch_id
        RETURNING d.* INTO v_claimed;
        PERFORM mailbox_budget_reserve(v_claimed.dispatch_id, p_token, v_reservation, p_now);
        RETURN NEXT v_claimed;
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE mailbox_dispatch d
       SET status = 'claimed', claim_token = p_token, claimed_by = p_consumer, lease_until = p_lease_until,
           updated_at = p_now
     WHERE d.dispatch_id = (
           SELECT q.dispatch_id FROM mailbox_dispatch q
            WHERE q.thread_id = p_thread_id AND q.status = 'queued' AND q.dispatch_epoch >= v_epoch
              AND q.available_at <= p_now
            ORDER BY q.priority, q.created_at, q.dispatch_id
            LIMIT 1
              FOR UPDATE SKIP LOCKED)
       -- the head waits while a pause of its thread, of its agent or of everything exists
       AND NOT EXISTS (SELECT 1 FROM mailbox_pause p
                        WHERE p.scope = 'all' OR (p.scope = 'thread' AND p.key = d.thread_id)
                           OR (p.scope = 'agent' AND p.key = d.agent_key))
    RETURNING d.*;
END
$$;

-- The fair claim across threads (what a finishing attempt and an idle doorbell drain to; the
-- reference's worker drains its own thread, `dispatch_next_claim`, which AWAKEN_FAIRNESS=off gives
-- back): each thread's head — its next eligible queued row, or a claim a submit took inline that no
-- worker started since `p_unstarted_before` — ordered by when its owner was last served, then priority
-- and age; threads executing a dispatch, and paused heads, are skipped. The first owner's candidates
-- are tried in random order (workers finishing at the same moment read the same list and would
-- otherwise all race for its first thread), then the rest in fair order. A stuck inline claim is taken over with a new token (the
-- late hand-over finds its fence gone); a thread whose epoch row or head row another transaction holds
-- is skipped, never waited for. At most `p_limit` candidates are tried; the first claim wins.
CREATE OR REPLACE FUNCTION mailbox_claim_fair(
    p_token varchar, p_consumer varchar, p_lease_until bigint, p_now bigint, p_unstarted_before bigint,
    p_limit integer, p_budgets jsonb DEFAULT NULL
) RETURNS SETOF mailbox_dispatch LANGUAGE plpgsql AS $$
DECLARE
    v_head record;
    v_claimed mailbox_dispatch;
BEGIN
    IF p_budgets IS NOT NULL THEN  -- token budgets: the same claim, leaving spent owners out (budgets.sql)
        RETURN QUERY SELECT * FROM mailbox_claim_fair_within_budgets(
            p_token, p_consumer, p_lease_until, p_now, p_unstarted_before, p_limit, p_budgets);
        RETURN;
    END IF;
    FOR v_head IN
        WITH heads AS (
            SELECT DISTINCT ON (u.thread_id) u.* FROM (
                SELECT q.thread_id, q.dispatch_id, q.priority, q.created_at, q.claim_token, q.agent_key
                  FROM mailbox_dispatch q WHERE q.status = 'queued' AND q.available_at <= p_now
                UNION ALL
                SELECT q.thread_id, q.dispatch_id, q.priority, q.created_at, q.claim_token, q.agent_key
                  FROM mailbox_dispatch q
                 WHERE q.status = 'claimed' AND q.dispatch_instance_id IS NULL
                   AND q.updated_at <= p_unstarted_before
            ) u
             ORDER BY u.thread_id, u.claim_token NULLS LAST, u.priority, u.created_at, u.dispatch_id
        ), candidates AS (
            SELECT h.*, COALESCE(e.owner_key, '') AS owner_key, COALESCE(g.served_at, 0) AS served_at
              FROM heads h
              LEFT JOIN mailbox_thread_epoch e ON e.thread_id = h.thread_id
              LEFT JOIN mailbox_fair_group g ON g.owner_key = COALESCE(e.owner_key, '')
             WHERE (h.claim_token IS NOT NULL
                    OR NOT EXISTS (SELECT 1 FROM mailbox_dispatch c
                                    WHERE c.thread_id = h.thread_id AND c.status = 'claimed'))
               -- a paused head is no candidate (its claim checks again under the pauses' lock); while
               -- no pause exists the table is read once, not once per head
               AND (h.claim_token IS NOT NULL OR NOT EXISTS (SELECT 1 FROM mailbox_pause)
                    OR NOT EXISTS (SELECT 1 FROM mailbox_pause p
                                    WHERE p.scope = 'all' OR (p.scope = 'thread' AND p.key = h.thread_id)
                                       OR (p.scope = 'agent' AND p.key = h.agent_key)))
             ORDER BY COALESCE(g.served_at, 0), h.priority, h.created_at, h.dispatch_id
             LIMIT p_limit
        )
        SELECT * FROM (
            SELECT c.*, c.owner_key = first_value(c.owner_key) OVER (
                       ORDER BY c.served_at, c.priority, c.created_at, c.dispatch_id) AS first_owner
              FROM candidates c
        ) s
         ORDER BY s.first_owner DESC, CASE WHEN s.first_owner THEN random() END,
                  s.served_at, s.priority, s.created_at, s.dispatch_id
    LOOP
        IF v_head.claim_token IS NOT NULL THEN
            UPDATE mailbox_dispatch d
               SET claim_token = p_token, claimed_by = p_consumer, lease_until = p_lease_until,
                   updated_at = p_now
             WHERE d.dispatch_id = (
                   SELECT s.dispatch_id FROM mailbox_dispatch s
                    WHERE s.dispatch_id = v_head.dispatch_id AND s.status = 'claimed'
                      AND s.claim_token = v_head.claim_token AND s.dispatch_instance_id IS NULL
                      AND s.dispatch_epoch >= (SELECT current_epoch FROM mailbox_thread_epoch
                                                WHERE thread_id = v_head.thread_id)
                      FOR UPDATE SKIP LOCKED)
            RETURNING d.* INTO v_claimed;
        ELSE
            SELECT * INTO v_claimed
              FROM mailbox_claim_thread(v_head.thread_id, p_token, p_consumer, p_lease_until, p_now, true);
        END IF;
        IF v_claimed.dispatch_id IS NOT NULL THEN
            RETURN NEXT v_claimed;
            RETURN;
        END IF;
    END LOOP;
END
$$;
