"""The reliability suite: atomq under faults (killed workers, crashed or unreachable Redis,
failover, deploys, hostile jobs, a full Redis, a million scheduled posts).

Every scenario runs twice as big under ``scripts/reliability --full`` as in CI; see
``testkit.sizes``. Side effects go to a ledger (``reliability.ledger``) so each scenario
checks both "every job ran at least once" and "every effect happened at most once".
"""
