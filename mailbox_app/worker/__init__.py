"""The worker side of the mailbox (the reference's `MailboxWorker`, `spawn_execution` and friends).

`dispatch_signals` handles a doorbell (`handle_dispatch_signal_entry`); `execution` claims, takes the
thread lock, runs one attempt, renews its lease and drains the thread (`spawn_execution`,
`spawn_lease_renewal`); `attempt` holds the attempt's fenced start and finish transactions; `runtime`
is one activation and the `RunContext` the agent gets; `registry` knows the runs this process executes.

Nothing below `worker` imports it: the mailbox service reaches a local run through
`mailbox_app.realtime.live.find_local_run`, which `MailboxAppConfig.ready` points at the registry.

Where the reference runs its own loops, Celery plays the part:

- `start_lifecycle` / `start_lifecycle_internal` / `start_lifecycle_ready`: the Celery worker boots and
  `MailboxAppConfig.ready` hooks `worker_ready` to run startup recovery; `is_running` /
  `lifecycle_is_running` is the worker process being up (`celery inspect ping`).
- `run_dispatch_signal_loop`: Celery's consumer delivering `dispatch_thread` doorbells.
- `run_maintenance_loop`: django-celery-beat running `sweep`, `reconcile`, `gc` on their schedules.
- `get_or_create_worker` / `gc_idle_workers` / `new_with_executor`: there is no per-thread worker
  object; any Celery worker process claims any thread, and the executor is resolved per dispatch by
  `mailbox_app.agents`.
- `reconnect_sink`: a stream reader reconnects with `Last-Event-ID` (`mailbox_app.realtime.events`).
- `shutdown`: Celery's warm shutdown; a run still executing keeps its lease until its claim is handed
  back or the lease expires and `sweep` re-runs it.
"""
