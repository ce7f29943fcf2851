"""A thread's status as a view, `runs_thread_status (thread_id, status)`, so that the statements that
list, search, delete and expire threads name it instead of each repeating (or splicing in) the rule.

First match wins:
  busy    - a dispatch of the thread is queued or claimed, or one of its runs is running;
  waiting - not busy, and one of its runs is waiting (for a decision or a background task);
  error   - neither, and its latest run (updated_at, created_at, run_id descending) ended with a
            termination of type `error` (failed, dead-lettered) or `timeout`;
  idle    - otherwise (no runs, or the latest ended any other way: natural end, cancelled, ...).
It reads the mailbox's dispatch table: with runs_app/store/mailbox_tables.py, the one place runs_app's
schema depends on mailbox_app's. A view is inlined by the planner, so a page of threads computes the
status of its own rows only."""

from django.db import migrations

THREAD_STATUS_VIEW = """
CREATE VIEW runs_thread_status AS
SELECT th.id AS thread_id,
       CASE
           WHEN EXISTS (SELECT 1 FROM mailbox_dispatch d
                         WHERE d.thread_id = th.id AND d.status IN ('queued', 'claimed'))
             OR EXISTS (SELECT 1 FROM runs_run r WHERE r.thread_id = th.id AND r.status = 'running')
           THEN 'busy'
           WHEN EXISTS (SELECT 1 FROM runs_run r WHERE r.thread_id = th.id AND r.status = 'waiting')
           THEN 'waiting'
           WHEN (SELECT r.status = 'done' AND r.termination_reason ->> 'type' IN ('error', 'timeout')
                   FROM runs_run r WHERE r.thread_id = th.id
                  ORDER BY r.updated_at DESC, r.created_at DESC, r.run_id DESC LIMIT 1)
           THEN 'error'
           ELSE 'idle'
       END AS status
  FROM runs_thread th
"""


class Migration(migrations.Migration):
    dependencies = [("runs_app", "0007_thread_metadata"), ("mailbox_app", "0005_fairness_limits")]

    operations = [migrations.RunSQL(THREAD_STATUS_VIEW, "DROP VIEW runs_thread_status")]
