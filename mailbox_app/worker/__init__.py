"""The worker side of the mailbox (the reference's `MailboxWorker`, `spawn_execution` and friends).

`dispatch_signals` handles a doorbell (`handle_dispatch_signal_entry`); `execution` claims, takes the
thread lock, runs one attempt, renews its lease and drains the thread (`spawn_execution`,
`spawn_lease_renewal`); `attempt` holds the attempt's fenced start and finish transactions; `runtime`
is one activation and the `RunContext` the agent gets; `registry` knows the runs this process executes.

Nothing below `worker` imports it: the mailbox service reaches a local run through
`mailbox_app.realtime.live.find_local_run`, which `MailboxAppConfig.ready` points at the registry.
"""
