"""Callers and limits: who is calling (``identity``), what the policy lets them do (``policy``), and
their quotas, in memory or shared in Redis (``quota``, ``redis_quotas``)."""
