-- A submit in one statement (the reference's `submit` / `submit_background`, spec §4.2-§4.3 and §4.9):
-- what services/mailbox.py's submit transaction does through the run-store port, fused for the
-- built-in run store (runs_app's tables) when no concurrency limit applies. Called by
-- mailbox_app/store/runs_tables/submit.py in autocommit: the function is the transaction, and anything
-- it refuses is raised, which rolls back everything it wrote.
--
-- In order (0: a duplicate of a keyed request in flight: AW423), under the thread's row lock (every
-- submit and every delete of a thread takes it first):
--   1. the thread ensured and locked; not the caller's thread: AW404 (nothing written);
--   2. an idempotency key already answered: its answer is returned, nothing else happens; else a submit
--      that defers to the thread's inbox policy, on a thread that has one: AW412 (nothing written);
--   3. the run the dispatch activates: the one asked for (continue_run_id / run_id_hint), else the
--      thread's resumable waiting run (the open run first, then the latest), else a new run that
--      inherits the latest run's agent and state; a run of another thread or not open: AW400;
--   4. the messages appended after the thread's last seq (ids already in the log skipped), the run
--      inserted or given its new input (the whole log), the thread's run pointers;
--   5. the dispatch inserted at the thread's current epoch (the epoch row ensured, the owner noted); a
--      foreground submit (`interrupt`) first moves the epoch on and supersedes the queued dispatches
--      (the reference's `interrupt`), unless the thread has a claim: AW409 'active' (rolls back 1-4),
--      and the caller interrupts through the port, which cancels the active run first;
--   6. a `reject` submit on a busy thread: AW409 'busy' (rolls back 1-5);
--   7. the inline claim: background — the thread's next dispatch (possibly an older one); foreground —
--      this very dispatch, or AW409 'conflict' when the thread still has a claim; delayed — none;
--      a paused dispatch (mailbox_pause) is not claimed: it stays queued;
--   8. the webhook subscription and the idempotency key's answer, in the same transaction.
-- Returns {"run_id", "dispatch_id", "thread_id", "status": "running"|"queued", "agent_id",
-- "available_at", "claimed": the claimed dispatch row or null, "replay": a stored answer or null}.
CREATE OR REPLACE FUNCTION awaken_submit(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_thread_id varchar := p ->> 'thread_id';
    v_owner integer := (p ->> 'owner_id')::integer;
    v_now bigint := (p ->> 'now')::bigint;
    v_base integer;
    v_thread_owner integer;
    v_open_run_id varchar;
    v_inbox jsonb;
    v_latest runs_run;
    v_existing runs_run;
    v_run_id varchar := NULLIF(btrim(COALESCE(p ->> 'continue_run_id', '')), '');
    v_hint varchar := NULLIF(btrim(COALESCE(p ->> 'run_id_hint', '')), '');
    v_continue boolean := NULLIF(btrim(COALESCE(p ->> 'continue_run_id', '')), '') IS NOT NULL;
    v_snapshot jsonb := p -> 'snapshot';
    v_agent varchar;
    v_state jsonb;
    v_messages jsonb;
    v_count integer;
    v_input jsonb;
    v_epoch bigint;
    v_dispatch mailbox_dispatch;
    v_claimed mailbox_dispatch;
    v_status text;
    v_key jsonb := NULLIF(p -> 'idempotency', 'null'::jsonb);
    v_answer jsonb;
    v_budget jsonb;
    v_interrupt boolean := COALESCE((p ->> 'interrupt')::boolean, false);
BEGIN
    -- 0. a request with the same idempotency key in flight (a transaction-scoped advisory lock, in the
    --    lock space of runs_app/api/idempotency.py's session-level one): refused at once
    IF v_key IS NOT NULL AND NOT pg_try_advisory_xact_lock((v_key ->> 'lock_id')::bigint) THEN
        RAISE EXCEPTION USING ERRCODE = 'AW423', MESSAGE = 'in_progress';
    END IF;

    -- 1. the thread, locked (created with the caller as its owner)
    INSERT INTO runs_thread AS th (id, owner_id, metadata, message_count, created_at, updated_at)
    VALUES (v_thread_id, v_owner, '{}'::jsonb, 0, v_now, v_now)
    ON CONFLICT (id) DO UPDATE SET updated_at = th.updated_at
    RETURNING th.message_count, th.owner_id, th.open_run_id, th.inbox
         INTO v_base, v_thread_owner, v_open_run_id, v_inbox;
    IF v_owner IS NOT NULL AND v_thread_owner IS DISTINCT FROM v_owner THEN
        RAISE EXCEPTION USING ERRCODE = 'AW404', MESSAGE = format('thread %s not found', v_thread_id);
    END IF;

    -- 2. an idempotency key answered before (a duplicate waited for the thread lock, then sees it)
    IF v_key IS NOT NULL THEN
        SELECT jsonb_build_object('status_code', k.status_code, 'response', k.response,
                                  'same_request', k.request_hash = v_key ->> 'fingerprint')
          INTO v_answer
          FROM runs_idempotency k
         WHERE k.user_id = (v_key ->> 'user_id')::integer AND k.key = v_key ->> 'key'
           AND k.created_at >= (v_key ->> 'not_before')::bigint;
        IF v_answer IS NOT NULL THEN
            RETURN jsonb_build_object('replay', v_answer);
        END IF;
    END IF;

    -- 2b. a submit that leaves the choice to the thread, on a thread with an inbox policy of its own: the
    --     inbox decides instead (mailbox_app/services/inbox.py); nothing is written here
    IF (p ->> 'defer_to_inbox')::boolean AND v_inbox IS NOT NULL AND v_inbox <> 'null'::jsonb THEN
        RAISE EXCEPTION USING ERRCODE = 'AW412', MESSAGE = 'inbox';
    END IF;

    -- 3. the run this dispatch activates
    SELECT * INTO v_latest FROM runs_run WHERE thread_id = v_thread_id
     ORDER BY updated_at DESC, created_at DESC, run_id DESC LIMIT 1;
    IF v_run_id IS NULL AND v_hint IS NULL AND (p ->> 'reuse_waiting')::boolean THEN
        IF v_open_run_id IS NOT NULL THEN
            SELECT r.run_id INTO v_run_id FROM runs_run r
             WHERE r.run_id = v_open_run_id AND r.thread_id = v_thread_id AND r.status = 'waiting'
               AND r.waiting IS NOT NULL AND r.waiting <> 'null'::jsonb;
        END IF;
        IF v_run_id IS NULL AND v_latest.status = 'waiting' AND v_latest.waiting IS NOT NULL
           AND v_latest.waiting <> 'null'::jsonb THEN
            v_run_id := v_latest.run_id;
        END IF;
        v_continue := v_run_id IS NOT NULL;
    END IF;
    v_run_id := COALESCE(v_run_id, v_hint);
    IF v_run_id IS NOT NULL THEN
        SELECT * INTO v_existing FROM runs_run WHERE run_id = v_run_id;
    END IF;
    IF v_existing.run_id IS NOT NULL THEN
        IF v_existing.thread_id <> v_thread_id THEN
            RAISE EXCEPTION USING ERRCODE = 'AW400', MESSAGE = format(
                'run_id ''%s'' belongs to thread ''%s'', not ''%s''', v_run_id, v_existing.thread_id, v_thread_id);
        END IF;
        IF v_existing.status <> 'created'
           AND NOT (v_existing.status = 'waiting' AND v_existing.waiting IS NOT NULL
                    AND v_existing.waiting <> 'null'::jsonb) THEN
            RAISE EXCEPTION USING ERRCODE = 'AW400',
                MESSAGE = format('run_id ''%s'' is not open for dispatch', v_run_id);
        END IF;
        v_agent := v_existing.agent_id;
    ELSE
        v_run_id := COALESCE(v_run_id, p ->> 'new_run_id');
        v_agent := NULLIF(p ->> 'agent_id', '');
        IF v_latest.run_id IS NOT NULL AND v_latest.status <> 'created' THEN
            v_agent := COALESCE(v_agent, NULLIF(btrim(v_latest.agent_id), ''));
            v_state := v_latest.state;
        END IF;
        v_agent := COALESCE(v_agent, 'default');
    END IF;
    -- the request as stored names the run it continues, or the run it was meant to create
    v_snapshot := jsonb_set(v_snapshot, '{request_extras}',
        COALESCE(NULLIF(v_snapshot -> 'request_extras', 'null'::jsonb), '{}'::jsonb)
        || CASE WHEN v_continue THEN jsonb_build_object('continue_run_id', v_run_id)
                ELSE jsonb_build_object('run_id_hint', v_run_id) END);

    -- 4. messages, run, pointers
    SELECT COALESCE(jsonb_agg(m.msg ORDER BY m.ord), '[]'::jsonb) INTO v_messages
      FROM (SELECT DISTINCT ON (x.msg ->> 'message_id') x.msg, x.ord
              FROM jsonb_array_elements(p -> 'messages') WITH ORDINALITY AS x(msg, ord)
             WHERE NOT EXISTS (SELECT 1 FROM runs_message e
                                WHERE e.thread_id = v_thread_id AND e.message_id = x.msg ->> 'message_id')
             ORDER BY x.msg ->> 'message_id', x.ord) m;
    v_count := jsonb_array_length(v_messages);
    INSERT INTO runs_message (thread_id, seq, message_id, role, content, tool_calls, tool_call_id, visibility,
                              run_id, step_index, metadata, created_at)
    SELECT v_thread_id, v_base + x.ord, x.msg ->> 'message_id', x.msg ->> 'role', x.msg -> 'content',
           NULLIF(x.msg -> 'tool_calls', 'null'::jsonb), x.msg ->> 'tool_call_id', x.msg ->> 'visibility',
           x.msg ->> 'run_id', (x.msg ->> 'step_index')::integer, NULLIF(x.msg -> 'metadata', 'null'::jsonb),
           v_now
      FROM jsonb_array_elements(v_messages) WITH ORDINALITY AS x(msg, ord);
    v_input := jsonb_build_object(
        'thread_id', v_thread_id,
        'range', CASE WHEN v_base + v_count > 0
                      THEN jsonb_build_object('from_seq', 1, 'to_seq', v_base + v_count) END,
        'trigger_message_ids', p -> 'trigger_message_ids',
        'selected_message_ids', '[]'::jsonb);
    IF v_existing.run_id IS NOT NULL THEN
        UPDATE runs_run SET request = v_snapshot, input = v_input, updated_at = v_now WHERE run_id = v_run_id;
    ELSE
        INSERT INTO runs_run
               (run_id, thread_id, agent_id, parent_run_id, request, input, status, transport_request_id,
                created_at, updated_at, steps, input_tokens, output_tokens, state, metadata, timeout_ms)
        VALUES (v_run_id, v_thread_id, v_agent, p ->> 'parent_run_id', v_snapshot, v_input, 'created',
                p ->> 'transport_request_id', v_now, v_now, 0, 0, 0, v_state,
                COALESCE(p -> 'metadata', '{}'::jsonb), (p ->> 'timeout_ms')::bigint);
    END IF;
    UPDATE runs_thread th
       SET latest_run_id = v_run_id,
           active_run_id = CASE WHEN th.active_run_id = v_run_id THEN NULL ELSE th.active_run_id END,
           open_run_id = v_run_id, updated_at = v_now, message_count = v_base + v_count,
           parent_thread_id = COALESCE(th.parent_thread_id, NULLIF(btrim(p ->> 'parent_thread_id'), ''))
     WHERE th.id = v_thread_id;

    -- 5. the dispatch, at the thread's current epoch (an interrupt's new one: the epoch row's lock is
    --    held from here, so no claim of the thread commits between the check and the supersede)
    INSERT INTO mailbox_thread_epoch AS ep (thread_id, current_epoch, owner_key)
    VALUES (v_thread_id, CASE WHEN v_interrupt THEN 1 ELSE 0 END, COALESCE(v_owner::text, ''))
    ON CONFLICT (thread_id) DO UPDATE
       SET owner_key = CASE WHEN EXCLUDED.owner_key <> '' THEN EXCLUDED.owner_key ELSE ep.owner_key END,
           current_epoch = ep.current_epoch + CASE WHEN v_interrupt THEN 1 ELSE 0 END
    RETURNING current_epoch INTO v_epoch;
    IF v_interrupt THEN
        IF EXISTS (SELECT 1 FROM mailbox_dispatch c WHERE c.thread_id = v_thread_id AND c.status = 'claimed') THEN
            RAISE EXCEPTION USING ERRCODE = 'AW409', MESSAGE = 'active';
        END IF;
        UPDATE mailbox_dispatch d  -- as mailbox_app/store/queue.py SUPERSEDE_QUEUED_BY_INTERRUPT
           SET status = 'superseded', last_error = 'queued dispatch superseded by interrupt',
               claim_token = NULL, claimed_by = NULL, lease_until = NULL, completed_at = v_now,
               updated_at = v_now
         WHERE d.thread_id = v_thread_id AND d.status = 'queued';
    END IF;
    INSERT INTO mailbox_dispatch AS d (
        dispatch_id, thread_id, run_id, priority, dedupe_key, dispatch_epoch, status, available_at,
        attempt_count, max_attempts, created_at, updated_at, request, agent_key)
    VALUES (p ->> 'dispatch_id', v_thread_id, v_run_id, (p ->> 'priority')::smallint, p ->> 'dedupe_key',
            v_epoch, 'queued', (p ->> 'available_at')::bigint, 0, (p ->> 'max_attempts')::integer, v_now, v_now,
            v_snapshot, v_agent)
    RETURNING d.* INTO v_dispatch;

    -- 6. a `reject` submit refuses a busy thread
    IF (p ->> 'reject_if_busy')::boolean AND EXISTS (
        SELECT 1 FROM mailbox_dispatch b
         WHERE b.thread_id = v_thread_id AND b.dispatch_id <> v_dispatch.dispatch_id
           AND (b.status = 'claimed' OR (b.status = 'queued' AND b.dispatch_epoch >= v_epoch))) THEN
        RAISE EXCEPTION USING ERRCODE = 'AW409', MESSAGE = 'busy';
    END IF;

    -- 7. the inline claim
    IF p ->> 'claim' = 'thread' THEN
        SELECT * INTO v_claimed FROM mailbox_claim_thread(
            v_thread_id, p ->> 'token', p ->> 'consumer_id', (p ->> 'lease_until')::bigint, v_now, false,
            NULLIF(p -> 'budgets', 'null'::jsonb));
    ELSIF p ->> 'claim' = 'dispatch' THEN
        -- the pauses' lock, shared (mailbox_app/store/pauses.py): a paused dispatch is not claimed
        PERFORM pg_advisory_xact_lock_shared(hashtextextended('awaken-pause', 0));
        -- with token budgets (budgets.sql), admitted first; a spent window is a conflict like a claim
        v_budget := CASE WHEN NULLIF(p -> 'budgets', 'null'::jsonb) IS NULL THEN '[]'::jsonb
                         ELSE mailbox_budget_admit(p -> 'budgets', COALESCE(v_owner::text, ''), v_agent, v_now, true)
                    END;
        UPDATE mailbox_dispatch d
           SET status = 'claimed', claim_token = p ->> 'token', claimed_by = p ->> 'consumer_id',
               lease_until = (p ->> 'lease_until')::bigint, updated_at = v_now
         WHERE d.dispatch_id = v_dispatch.dispatch_id AND d.status = 'queued' AND v_budget IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM mailbox_dispatch c WHERE c.thread_id = v_thread_id AND c.status = 'claimed')
           AND NOT EXISTS (SELECT 1 FROM mailbox_pause ps
                            WHERE ps.scope = 'all' OR (ps.scope = 'thread' AND ps.key = v_thread_id)
                               OR (ps.scope = 'agent' AND ps.key = d.agent_key))
        RETURNING d.* INTO v_claimed;
        IF v_claimed.dispatch_id IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'AW409', MESSAGE = 'conflict';
        END IF;
        PERFORM mailbox_budget_reserve(v_claimed.dispatch_id, p ->> 'token', v_budget, v_now);
    END IF;
    v_status := CASE WHEN v_claimed.dispatch_id IS NOT NULL AND (p ->> 'claim') <> 'none' THEN 'running'
                     ELSE 'queued' END;

    -- 8. what the caller's transaction writes with it
    IF p ->> 'webhook' IS NOT NULL THEN
        INSERT INTO mailbox_webhook_subscription (run_id, url, owner_id, created_at)
        VALUES (v_run_id, p ->> 'webhook', v_owner, v_now)
        ON CONFLICT (run_id) DO UPDATE
           SET url = EXCLUDED.url, owner_id = EXCLUDED.owner_id, created_at = EXCLUDED.created_at;
    END IF;
    IF v_key IS NOT NULL THEN
        DELETE FROM runs_idempotency
         WHERE user_id = (v_key ->> 'user_id')::integer AND key = v_key ->> 'key'
           AND created_at < (v_key ->> 'not_before')::bigint;
        INSERT INTO runs_idempotency (user_id, key, request_hash, status_code, response, created_at)
        VALUES ((v_key ->> 'user_id')::integer, v_key ->> 'key', v_key ->> 'fingerprint',
                (v_key ->> 'status_code')::integer,
                jsonb_build_object('dispatch_id', v_dispatch.dispatch_id, 'run_id', v_run_id,
                                   'thread_id', v_thread_id, 'status', v_status),
                v_now);
    END IF;
    RETURN jsonb_build_object(
        'run_id', v_run_id, 'dispatch_id', v_dispatch.dispatch_id, 'thread_id', v_thread_id,
        'status', v_status, 'agent_id', v_agent, 'available_at', v_dispatch.available_at,
        'claimed', CASE WHEN v_claimed.dispatch_id IS NOT NULL THEN to_jsonb(v_claimed) END);
END
$$;
