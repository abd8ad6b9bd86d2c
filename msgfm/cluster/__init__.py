"""Ray for every stage: joining the configured cluster or a loopback-only local instance (msgfm.cluster.connect),
Ray's log noise silenced in its workers (msgfm.cluster.quiet), and per-item work as ordered Ray tasks
(msgfm.cluster.tasks). Below the data stages and training alike, so both use one connection."""
