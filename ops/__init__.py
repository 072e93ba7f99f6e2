"""Running a pool on hosts: the supervised programs of a host (``rokv-pool``),
deploys with rollback (``rokv deploy``), the honest status (``rokv status``),
the metrics exporter (``rokv-metrics``) and the live view (``rokv top``).
May use every other layer; none uses it."""
