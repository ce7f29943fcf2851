"""Who may be claimed next across threads: fairness between owners and concurrency limits.

Within a thread the order is the reference's (priority, then created). Across threads, a worker that
finishes an attempt claims the head of the thread whose owner was served longest ago (round-robin by
owner, `mailbox_fair_group`), so one owner's backlog cannot delay every other owner's next run.

Limits count claimed dispatches in PostgreSQL at claim time: the claim transaction first takes a
transaction-scoped advisory lock per limited scope (global, the agent, the owner) and then claims with
the count in its condition, so two workers can never exceed a limit. Unlimited agents take no lock.
Lock order everywhere: the thread's epoch row, then the advisory locks in a fixed order.

Settings (environment):
  AWAKEN_FAIRNESS               `owner` (default) or `off` (a finished attempt drains its own thread)
  AWAKEN_MAX_ACTIVE_RUNS        global limit of executing dispatches (unset: none)
  AWAKEN_AGENT_LIMITS           JSON object {"agent_id": n}
  AWAKEN_OWNER_MAX_ACTIVE_RUNS  per-owner limit (unset: none)
  AWAKEN_UNSTARTED_CLAIM_GRACE_MS  how long a claim taken inline by a submit may wait for its worker
                                before a finishing worker takes it over (default 100)

The policy itself (`ClaimPolicy`, parsed from those variables) is a settings value in mailbox_app/config.py,
below every layer, so that mailbox_app/conf.py can default to it; it is re-exported here.
"""

from __future__ import annotations

from mailbox_app.conf import awaken_settings
from mailbox_app.config import ClaimPolicy

__all__ = ["DEFAULT_POLICY", "ClaimPolicy", "claim_policy"]


DEFAULT_POLICY = ClaimPolicy()


def claim_policy() -> ClaimPolicy:
    policy = awaken_settings.CLAIM_POLICY
    return policy if isinstance(policy, ClaimPolicy) else DEFAULT_POLICY
