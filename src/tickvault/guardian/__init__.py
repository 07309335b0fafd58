"""The guardian: checks → policy (grace, cooldown, backoff, budget, escalation) → safe actions
→ alerts, every step journaled. See ``docs/guardian.md``.

The rules it is built around (incidents 000 and 001):

* health is judged from the components' own APIs, never from files or directory names;
* a resource is judged only after it is older than ``grace``, a finding must persist for
  ``for`` cycles, a recovered resource is left alone for ``cooldown``, recoveries back off
  exponentially, and a resource that keeps failing is escalated to a human instead of
  being recovered again;
* actions are allowlisted, idempotent and journaled before they run; none deletes or renames
  a database file, and any action aimed at a write-ahead-log or sequencer path is refused.
"""
