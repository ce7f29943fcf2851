-- Token budgets at admission (docs/replay-and-budgets.md), as functions the claims call
-- (mailbox_app/store/claims.sql, claims.py's statements under limits, the fused submit's and finish's
-- claims through those), installed by `manage.py migrate` (mailbox_app/store/install.py). Every claim
-- passes the budgets it was configured with (`p_budgets`, mailbox_app/store/budgets.py `budget_param`)
-- or NULL: with NULL, no claim calls any of these and the claim is what it was before budgets.
--
-- A budget is `tokens` per fixed window of `window_ms` (aligned to the Unix epoch) for one owner or one
-- agent: the admin's row (mailbox_token_budget) for that owner / agent, else the setting's default for
-- the scope, else none. A window's usage is the sum of its charges (mailbox_token_charge): each claim
-- admitted in it reserves an estimate, which the attempt's finish replaces with what it used. A claim is
-- admitted while its window's usage is below the budget; admissions of one scope serialize on an
-- advisory lock held until the claim commits, so concurrent runs overshoot a budget by at most one
-- reservation (plus what an attempt uses beyond its reservation, which no admission can know).

-- The budgets that apply to a head of this owner and agent, in lock order (agent, then owner).
CREATE OR REPLACE FUNCTION mailbox_budget_scopes(p_budgets jsonb, p_owner varchar, p_agent varchar)
RETURNS TABLE (scope varchar, key varchar, tokens bigint, window_ms bigint) LANGUAGE sql STABLE AS $$
    SELECT s.scope, s.key, COALESCE(b.tokens, (p_budgets -> s.scope ->> 'tokens')::bigint),
           COALESCE(b.window_s::bigint * 1000, (p_budgets -> s.scope ->> 'window_ms')::bigint)
      FROM (VALUES ('agent'::varchar, p_agent), ('owner'::varchar, p_owner)) AS s(scope, key)
      LEFT JOIN mailbox_token_budget b ON b.scope = s.scope AND b.key = s.key
     WHERE b.tokens IS NOT NULL OR (p_budgets -> s.scope ->> 'tokens') IS NOT NULL
     ORDER BY s.scope
$$;

-- Admission: NULL when a window of this owner or agent is spent (or, with `p_wait` false, when another
-- claim holds a scope's lock: the caller tries other work rather than wait); otherwise the reservation
-- the claim must charge (`mailbox_budget_reserve`), `[]` when no budget applies. The lock of each
-- budgeted scope is taken first and kept to the end of the transaction; the window's sum is read after
-- it (a new snapshot per statement), so it counts every charge committed before the lock was granted.
CREATE OR REPLACE FUNCTION mailbox_budget_admit(
    p_budgets jsonb, p_owner varchar, p_agent varchar, p_now bigint, p_wait boolean
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_scope record;
    v_start bigint;
    v_used bigint;
    v_reserve bigint := COALESCE((p_budgets -> 'reserve' ->> p_agent)::bigint,
                                 (p_budgets ->> 'default_reserve')::bigint, 0);
    v_out jsonb := '[]'::jsonb;
BEGIN
    FOR v_scope IN SELECT * FROM mailbox_budget_scopes(p_budgets, p_owner, p_agent) LOOP
        IF p_wait THEN
            PERFORM pg_advisory_xact_lock(
                hashtextextended('awaken-budget:' || v_scope.scope || ':' || v_scope.key, 0));
        ELSIF NOT pg_try_advisory_xact_lock(
                hashtextextended('awaken-budget:' || v_scope.scope || ':' || v_scope.key, 0)) THEN
            RETURN NULL;
        END IF;
        v_start := p_now - p_now % v_scope.window_ms;
        SELECT COALESCE(sum(c.tokens), 0) INTO v_used FROM mailbox_token_charge c
         WHERE c.scope = v_scope.scope AND c.key = v_scope.key AND c.window_start = v_start;
        IF v_used >= v_scope.tokens THEN
            RETURN NULL;
        END IF;
        v_out := v_out || jsonb_build_array(jsonb_build_object(
            'scope', v_scope.scope, 'key', v_scope.key, 'window_start', v_start,
            'window_end', v_start + v_scope.window_ms, 'tokens', v_reserve));
    END LOOP;
    RETURN v_out;
END
$$;

-- The claim's charges: one per budgeted scope, the reservation until its finish settles it.
CREATE OR REPLACE FUNCTION mailbox_budget_reserve(
    p_dispatch_id varchar, p_token varchar, p_reservation jsonb, p_now bigint
) RETURNS void LANGUAGE sql AS $$
    INSERT INTO mailbox_token_charge (scope, key, window_start, window_end, dispatch_id, claim_token, reserved,
                                      tokens, created_at)
    SELECT r ->> 'scope', r ->> 'key', (r ->> 'window_start')::bigint, (r ->> 'window_end')::bigint,
           p_dispatch_id, p_token, (r ->> 'tokens')::bigint, (r ->> 'tokens')::bigint, p_now
      FROM jsonb_array_elements(p_reservation) AS r;
$$;

-- The scopes ('owner:<key>', 'agent:<key>') whose window open at `p_now` is spent, or whose budget is
-- zero: the fair claim leaves their heads out of its candidates, so an owner over budget cannot fill
-- them and keep every other owner waiting (fairness holds among the owners that may run).
CREATE OR REPLACE FUNCTION mailbox_budget_spent(p_budgets jsonb, p_now bigint)
RETURNS text[] LANGUAGE sql STABLE AS $$
    SELECT COALESCE(array_agg(s.scope_key), '{}'::text[]) FROM (
        SELECT u.scope || ':' || u.key AS scope_key
          FROM (SELECT c.scope, c.key, sum(c.tokens) AS used FROM mailbox_token_charge c
                 WHERE c.window_end > p_now AND c.window_start <= p_now
                 GROUP BY c.scope, c.key) AS u
          LEFT JOIN mailbox_token_budget b ON b.scope = u.scope AND b.key = u.key
         WHERE u.used >= COALESCE(b.tokens, (p_budgets -> u.scope ->> 'tokens')::bigint)
        UNION
        SELECT b.scope || ':' || b.key FROM mailbox_token_budget b WHERE b.tokens = 0
    ) AS s
$$;

-- mailbox_claim_fair (claims.sql) under token budgets, which it hands over to when given budgets: the
-- same claim — the same heads, order, spreading and take-over of stuck inline claims — with two
-- differences: the heads of scopes whose window is spent (`mailbox_budget_spent`) are not candidates,
-- so an owner over budget cannot fill the candidates and keep every other owner waiting, and a taken-over
-- claim's charges move to its new token. Each queued head is claimed by mailbox_claim_thread with the
-- budgets (its admission under the scopes' locks, tried, never waited for). A kept copy, so that a claim
-- without budgets runs exactly the statements it ran before budgets existed: a change to either claim
-- is a change to both.
CREATE OR REPLACE FUNCTION mailbox_claim_fair_within_budgets(
    p_token varchar, p_consumer varchar, p_lease_until bigint, p_now bigint, p_unstarted_before bigint,
    p_limit integer, p_budgets jsonb
) RETURNS SETOF mailbox_dispatch LANGUAGE plpgsql AS $$
DECLARE
    v_head record;
    v_claimed mailbox_dispatch;
    v_spent text[] := mailbox_budget_spent(p_budgets, p_now);
BEGIN
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
             WHERE h.claim_token IS NOT NULL
                OR (NOT EXISTS (SELECT 1 FROM mailbox_dispatch c
                                 WHERE c.thread_id = h.thread_id AND c.status = 'claimed')
                    AND NOT ('owner:' || COALESCE(e.owner_key, '') = ANY (v_spent)
                             OR 'agent:' || h.agent_key = ANY (v_spent))
                    -- a paused head is no candidate (mailbox_claim_thread checks again), as in claims.sql
                    AND (NOT EXISTS (SELECT 1 FROM mailbox_pause)
                         OR NOT EXISTS (SELECT 1 FROM mailbox_pause p
                                         WHERE p.scope = 'all' OR (p.scope = 'thread' AND p.key = h.thread_id)
                                            OR (p.scope = 'agent' AND p.key = h.agent_key))))
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
            IF v_claimed.dispatch_id IS NOT NULL THEN  -- its charges move with it
                UPDATE mailbox_token_charge SET claim_token = p_token
                 WHERE dispatch_id = v_claimed.dispatch_id AND claim_token = v_head.claim_token;
            END IF;
        ELSE
            SELECT * INTO v_claimed FROM mailbox_claim_thread(
                v_head.thread_id, p_token, p_consumer, p_lease_until, p_now, true, p_budgets);
        END IF;
        IF v_claimed.dispatch_id IS NOT NULL THEN
            RETURN NEXT v_claimed;
            RETURN;
        END IF;
    END LOOP;
END
$$;
