"""Transport-neutral pieces of the wire protocols, shared by the front ends (HTTP and gRPC)."""
