"""Agents, the user's plug-in: `base` is the executor boundary (`RunExecutor`, `RunContext`, the errors
and their mailbox outcome), `registry` resolves `AWAKEN_AGENTS`, `echo` is the built-in scripted agent."""
