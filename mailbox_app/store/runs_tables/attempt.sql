-- An attempt's two transitions, each one statement (spec §4.12; the reference's
-- `record_dispatch_start` with the run's start, and `finish_execution`): mailbox_app/worker/attempt.py's
-- start and finish transactions fused for the built-in run store. Called by
-- mailbox_app/store/runs_tables/attempt.py in autocommit: the function is the transaction. Every write
-- follows the fenced dispatch update `(dispatch_id, claim_token, status = 'claimed', epoch current)`;
-- when it matches no row the function returns {"outcome": "lost"} having written nothing, and when a
-- later write finds the run no longer this attempt's it raises AW409, which undoes the fenced update
-- too. Why a fence failed is explained afterwards by store/fenced.py's explain_lost, as on the port path.

-- The fenced start: the dispatch names this attempt and its worker (and renews the lease), its owner is
-- marked served (fair claims), the run moves to Running for this dispatch and session, the thread points
-- at it, and what the agent reads is returned: the dispatch, the run and the activation's messages
-- (the dispatch's own input ids, else the run's input range). A run that cannot start (missing, on
-- another thread, already done) leaves the dispatch started and returns "not_startable" with the run as
-- it is: the worker settles it (done by another dispatch) or dead-letters it.
CREATE OR REPLACE FUNCTION awaken_start(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := (p ->> 'now')::bigint;
    v_dispatch mailbox_dispatch;
    v_run runs_run;
    v_snapshot jsonb;
    v_ids jsonb;
    v_messages jsonb;
BEGIN
    UPDATE mailbox_dispatch d
       SET dispatch_instance_id = p ->> 'instance_id', run_status = 'running', termination = NULL,
           run_response = NULL, run_error = NULL, completed_at = NULL, claimed_by = p ->> 'consumer_id',
           lease_until = (p ->> 'lease_until')::bigint, updated_at = v_now
      FROM mailbox_thread_epoch e
     WHERE d.dispatch_id = p ->> 'dispatch_id' AND d.status = 'claimed' AND d.claim_token = p ->> 'token'
       AND e.thread_id = d.thread_id AND d.dispatch_epoch >= e.current_epoch
       AND d.dispatch_instance_id IS NULL
    RETURNING d.* INTO v_dispatch;
    IF v_dispatch.dispatch_id IS NULL THEN
        RETURN jsonb_build_object('outcome', 'lost');
    END IF;
    INSERT INTO mailbox_fair_group AS g (owner_key, served_at)
    SELECT e.owner_key, v_now FROM mailbox_thread_epoch e WHERE e.thread_id = v_dispatch.thread_id
    ON CONFLICT (owner_key) DO UPDATE SET served_at = GREATEST(g.served_at, EXCLUDED.served_at);

    -- Startable: created, waiting, or running (a re-run after the previous attempt lost its lease).
    -- Never done: a finished run does not move back to Running. A second queued activation of a run
    -- that was waiting when both were enqueued finds it done (spec §7.7) and is "not_startable": the
    -- worker settles it as already done and delivers its own input messages as a new run on the thread
    -- (worker/attempt.py settle_already_done). A fresh time budget per activation; a re-run of a
    -- running run (a retry) keeps its deadline.
    UPDATE runs_run
       SET status = 'running', dispatch_id = v_dispatch.dispatch_id, session_id = p ->> 'instance_id',
           started_at = COALESCE(started_at, v_now), waiting = NULL, updated_at = v_now, finished_at = NULL,
           deadline_at = CASE WHEN status = 'running' AND deadline_at IS NOT NULL THEN deadline_at
                              ELSE v_now + timeout_ms END
     WHERE run_id = v_dispatch.run_id AND thread_id = v_dispatch.thread_id
       AND status IN ('created', 'waiting', 'running')
    RETURNING * INTO v_run;
    IF v_run.run_id IS NULL THEN
        SELECT * INTO v_run FROM runs_run WHERE run_id = v_dispatch.run_id;
        RETURN jsonb_build_object('outcome', 'not_startable', 'dispatch', to_jsonb(v_dispatch),
                                  'run', CASE WHEN v_run.run_id IS NOT NULL THEN to_jsonb(v_run) END);
    END IF;
    UPDATE runs_thread
       SET latest_run_id = v_run.run_id, active_run_id = v_run.run_id, open_run_id = v_run.run_id,
           updated_at = v_now
     WHERE id = v_run.thread_id;

    v_snapshot := COALESCE(v_dispatch.request, v_run.request);
    v_ids := COALESCE(v_snapshot -> 'input_message_ids', '[]'::jsonb);
    IF jsonb_array_length(v_ids) > 0 THEN
        SELECT COALESCE(jsonb_agg(to_jsonb(m) ORDER BY i.ord), '[]'::jsonb) INTO v_messages
          FROM jsonb_array_elements_text(v_ids) WITH ORDINALITY AS i(message_id, ord)
          JOIN runs_message m ON m.thread_id = v_run.thread_id AND m.message_id = i.message_id;
    ELSIF v_run.input -> 'range' IS NOT NULL AND v_run.input -> 'range' <> 'null'::jsonb THEN
        SELECT COALESCE(jsonb_agg(to_jsonb(m) ORDER BY m.seq), '[]'::jsonb) INTO v_messages
          FROM runs_message m
         WHERE m.thread_id = v_run.thread_id
           AND m.seq BETWEEN (v_run.input -> 'range' ->> 'from_seq')::integer
                         AND (v_run.input -> 'range' ->> 'to_seq')::integer;
    END IF;
    RETURN jsonb_build_object('outcome', 'started', 'dispatch', to_jsonb(v_dispatch), 'run', to_jsonb(v_run),
                              'messages', COALESCE(v_messages, '[]'::jsonb));
END
$$;

-- The fenced finish: the attempt's result recorded and its delivery settled (ack; nack with backoff,
-- or dead letter once attempts reach max_attempts, spec §3.7), the run's final record written with the
-- messages it produced (only while the run is Running under this dispatch and session) and its webhook
-- event put in the outbox, then the worker's next claim: the fairest head across threads ("fair"),
-- the same thread's next ("thread", as the reference drains), or none; with token budgets, the claim's
-- reservation is settled with what the attempt used (budgets.sql). A nack that requeues writes no
-- run (it stays Running under this dispatch until the retry starts it); a dead letter or an attempt
-- with live input left over is the port path's (worker/attempt.py).
CREATE OR REPLACE FUNCTION awaken_finish(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := (p ->> 'now')::bigint;
    v_outcome text := p ->> 'outcome';
    v_dispatch mailbox_dispatch;
    v_run runs_run;
    v_final jsonb := p -> 'run';
    v_messages jsonb;
    v_count integer;
    v_base integer;
    v_delivery varchar;
    v_next mailbox_dispatch;
    v_claim jsonb := p -> 'claim_next';
BEGIN
    WITH next AS (
        SELECT d.dispatch_id,
               CASE WHEN v_outcome = 'ack' THEN 'acked'
                    WHEN v_outcome = 'dead_letter' OR d.attempt_count + 1 >= d.max_attempts THEN 'dead_letter'
                    ELSE 'queued' END AS status
          FROM mailbox_dispatch d WHERE d.dispatch_id = p ->> 'dispatch_id'
    )
    UPDATE mailbox_dispatch d
       SET status = next.status,
           attempt_count = d.attempt_count + CASE WHEN v_outcome = 'nack' THEN 1 ELSE 0 END,
           last_error = CASE WHEN v_outcome = 'ack' THEN d.last_error ELSE p ->> 'error' END,
           available_at = CASE WHEN next.status = 'queued' THEN (p ->> 'retry_at')::bigint ELSE d.available_at END,
           completed_at = CASE WHEN next.status = 'queued' THEN NULL ELSE v_now END,
           dispatch_instance_id = CASE WHEN next.status = 'queued' THEN NULL ELSE p ->> 'instance_id' END,
           run_status = CASE WHEN next.status = 'queued' THEN NULL ELSE p ->> 'run_status' END,
           termination = CASE WHEN next.status = 'queued' THEN NULL ELSE NULLIF(p -> 'termination', 'null'::jsonb) END,
           run_response = CASE WHEN next.status = 'queued' THEN NULL ELSE p ->> 'response' END,
           run_error = CASE WHEN next.status = 'queued' THEN NULL ELSE p ->> 'run_error' END,
           claim_token = NULL, claimed_by = NULL, lease_until = NULL, updated_at = v_now
      FROM next, mailbox_thread_epoch e
     WHERE d.dispatch_id = next.dispatch_id AND d.status = 'claimed' AND d.claim_token = p ->> 'token'
       AND e.thread_id = d.thread_id AND d.dispatch_epoch >= e.current_epoch
    RETURNING d.* INTO v_dispatch;
    IF v_dispatch.dispatch_id IS NULL THEN
        RETURN jsonb_build_object('outcome', 'lost');
    END IF;
    -- token budgets (mailbox_app/store/budgets.sql): the claim's reservation becomes what the attempt
    -- used (sent only while budgets are configured)
    IF p ->> 'charge_tokens' IS NOT NULL THEN
        UPDATE mailbox_token_charge SET tokens = (p ->> 'charge_tokens')::bigint, settled_at = v_now
         WHERE dispatch_id = v_dispatch.dispatch_id AND claim_token = p ->> 'token' AND settled_at IS NULL;
    END IF;

    IF v_final IS NOT NULL AND v_final <> 'null'::jsonb THEN
        UPDATE runs_run
           SET status = v_final ->> 'status',
               termination_reason = NULLIF(v_final -> 'termination_reason', 'null'::jsonb),
               final_output = v_final ->> 'final_output',
               error_payload = NULLIF(v_final -> 'error_payload', 'null'::jsonb),
               waiting = NULLIF(v_final -> 'waiting', 'null'::jsonb),
               outcome = NULLIF(v_final -> 'outcome', 'null'::jsonb),
               output = NULLIF(v_final -> 'output', 'null'::jsonb),
               finished_at = (v_final ->> 'finished_at')::bigint, updated_at = (v_final ->> 'updated_at')::bigint,
               steps = (v_final ->> 'steps')::integer, input_tokens = (v_final ->> 'input_tokens')::bigint,
               output_tokens = (v_final ->> 'output_tokens')::bigint,
               cost = (v_final ->> 'cost')::double precision,
               usage_attempts = COALESCE(NULLIF(v_final -> 'usage_attempts', 'null'::jsonb), '[]'::jsonb),
               state = NULLIF(v_final -> 'state', 'null'::jsonb)
         WHERE run_id = v_dispatch.run_id AND thread_id = v_dispatch.thread_id AND status = 'running'
           AND dispatch_id = v_dispatch.dispatch_id AND session_id = p ->> 'instance_id'
        RETURNING * INTO v_run;
        IF v_run.run_id IS NULL THEN  -- the run moved on without this attempt: settle nothing
            RAISE EXCEPTION USING ERRCODE = 'AW409', MESSAGE = 'run not running under this attempt';
        END IF;
        SELECT COALESCE(jsonb_agg(m.msg ORDER BY m.ord), '[]'::jsonb) INTO v_messages
          FROM (SELECT DISTINCT ON (x.msg ->> 'message_id') x.msg, x.ord
                  FROM jsonb_array_elements(COALESCE(p -> 'messages', '[]'::jsonb)) WITH ORDINALITY AS x(msg, ord)
                 WHERE NOT EXISTS (SELECT 1 FROM runs_message e
                                    WHERE e.thread_id = v_run.thread_id AND e.message_id = x.msg ->> 'message_id')
                 ORDER BY x.msg ->> 'message_id', x.ord) m;
        v_count := jsonb_array_length(v_messages);
        UPDATE runs_thread th
           SET latest_run_id = v_run.run_id,
               active_run_id = CASE WHEN v_run.status = 'running' THEN v_run.run_id
                                    WHEN th.active_run_id = v_run.run_id THEN NULL ELSE th.active_run_id END,
               open_run_id = CASE WHEN v_run.status IN ('running', 'waiting', 'created') THEN v_run.run_id
                                  WHEN th.open_run_id = v_run.run_id THEN NULL ELSE th.open_run_id END,
               updated_at = v_now, message_count = th.message_count + v_count
         WHERE th.id = v_run.thread_id
        RETURNING th.message_count - v_count INTO v_base;
        INSERT INTO runs_message (thread_id, seq, message_id, role, content, tool_calls, tool_call_id,
                                  visibility, run_id, step_index, metadata, created_at)
        SELECT v_run.thread_id, v_base + x.ord, x.msg ->> 'message_id', x.msg ->> 'role', x.msg -> 'content',
               NULLIF(x.msg -> 'tool_calls', 'null'::jsonb), x.msg ->> 'tool_call_id', x.msg ->> 'visibility',
               x.msg ->> 'run_id', (x.msg ->> 'step_index')::integer,
               NULLIF(x.msg -> 'metadata', 'null'::jsonb), v_now
          FROM jsonb_array_elements(v_messages) WITH ORDINALITY AS x(msg, ord);
        -- the run's webhook event (mailbox_app/webhooks/outbox.py RECORD_EVENT): its own subscription,
        -- else the project's default URL, else no row at all
        IF v_run.status IN ('done', 'waiting') THEN
            INSERT INTO mailbox_webhook_outbox
                   (delivery_id, run_id, thread_id, event, url, owner_id, payload, status, attempts,
                    next_attempt_at, created_at, updated_at)
            SELECT p ->> 'delivery_id', v_run.run_id, v_run.thread_id,
                   CASE WHEN v_run.status = 'done' THEN 'run.finished' ELSE 'run.waiting' END,
                   target.url, target.owner_id, to_jsonb(v_run), 'pending', 0, v_now, v_now, v_now
              FROM (SELECT COALESCE(s.url, NULLIF(p ->> 'default_webhook_url', '')) AS url, s.owner_id
                      FROM (SELECT 1) AS one
                      LEFT JOIN mailbox_webhook_subscription s ON s.run_id = v_run.run_id) AS target
             WHERE target.url IS NOT NULL
            RETURNING delivery_id INTO v_delivery;
        END IF;
    END IF;

    IF v_claim ->> 'mode' = 'fair' THEN
        SELECT * INTO v_next FROM mailbox_claim_fair(
            v_claim ->> 'token', v_claim ->> 'consumer_id', (v_claim ->> 'lease_until')::bigint, v_now,
            (v_claim ->> 'unstarted_before')::bigint, (v_claim ->> 'limit')::integer,
            NULLIF(v_claim -> 'budgets', 'null'::jsonb));
    ELSIF v_claim ->> 'mode' = 'thread' THEN
        SELECT * INTO v_next FROM mailbox_claim_thread(
            v_dispatch.thread_id, v_claim ->> 'token', v_claim ->> 'consumer_id',
            (v_claim ->> 'lease_until')::bigint, v_now, false, NULLIF(v_claim -> 'budgets', 'null'::jsonb));
    END IF;
    RETURN jsonb_build_object(
        'outcome', 'settled', 'dispatch', to_jsonb(v_dispatch),
        'run', CASE WHEN v_run.run_id IS NOT NULL THEN to_jsonb(v_run) END,
        'delivery_id', v_delivery,
        'next', CASE WHEN v_next.dispatch_id IS NOT NULL THEN to_jsonb(v_next) END,
        -- the owner the attempt's usage is counted for (metrics), when it reported any
        'owner_key', CASE WHEN (p ->> 'with_owner')::boolean THEN
                              (SELECT e.owner_key FROM mailbox_thread_epoch e WHERE e.thread_id = v_dispatch.thread_id)
                          END);
END
$$;
