"""rokv-http: the seed service's HTTP API (``POST /get_value``) in front of the pool."""
