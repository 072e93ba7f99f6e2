"""What the broker and the workers share, and the client never loads: watching
their sockets' connections (:mod:`~rokv.server.monitor`), counting what a
worker answered (:mod:`~rokv.server.stats`) and publishing metrics
(:mod:`~rokv.server.metrics`)."""
