"""The shared contract of the two apps: value types, statuses and their transitions, and errors.

The reference's `awaken_contract::contract` split: `lifecycle` (run status), `mailbox` (dispatch status,
record and live address), `message` (the thread log), `suspension` (tool calls waiting for a decision),
`storage` (run and thread records, store errors), `requests` (what a submit asks and the executor
gets), `ids`. No models, no queries, no I/O: both apps, and the agents, import from here.
"""
