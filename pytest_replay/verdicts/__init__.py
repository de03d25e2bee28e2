"""Layer 6: judging. diff.py compares a replayed response with the recorded one (status, named
headers, decoded bodies; ignore rules and learned noise, rules.py); budgets.py parses and evaluates
k6-style latency and error budgets over an aggregate. Imports http and policy (redaction)."""
