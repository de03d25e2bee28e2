"""Layer 4: what may be sent and how: composable rules (rules.py, & | ~), the write policy
(writes.py), redaction of secrets and personal data (redact.py), request rewrites (rewrite.py),
filters and sampling (filters.py), the production guard (guard.py), and the request pipeline of
hooks and GoReplay middleware (pipeline.py, middleware.py, correlate.py) that the engine calls
through schedule.target.RequestPipeline. Imports http and schedule."""
