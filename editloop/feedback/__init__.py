"""Observe: the feedback log on Redis streams.

``events`` (the schema), ``log.open_feedback`` (what every process opens: privacy, then Redis or
the spool), ``store`` (streams, dedupe, consumer groups, retention), ``privacy``, ``spool``,
``redis_server`` (the embedded Redis), ``completions`` (a served completion as an event), ``cli``.
"""
