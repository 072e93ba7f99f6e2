"""rokv broker: ROUTER/DEALER forwarding between clients and workers."""
