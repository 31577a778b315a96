"""`make bench`: artifact-proxy side by side with MLflow, nginx and a raw sink; `run.py` is the entry point.

run.py parses the command line and runs the scenarios with one Context (context.py) that carries the run's state.
config.py: tool paths, workload sizes, Settings. transcript.py: progress log, commands for the report.
procs.py: start/stop one server. servers.py: each server's command line. rss.py: RSS sampling. data.py: payloads.
load.py: curl, hey, timed listing. scenarios.py: what is measured, in order. results.py: the figures' shape.
targets.py: the targets as a table. report.py: the markdown report. machine.py: the machine table.
Standalone helpers: sink.py (raw PUT sink), s3_direct.py (direct S3 client), profile.py (py-spy on the workers).
"""
