"""Protocols and transport: HTTP routes and the fast path in front of them, request admission, the V1
and V2 protocols (JSON and binary), strict JSON and the OpenAPI description. Turns requests into the
core's checked batches and its answers into responses; the only layer that knows HTTP statuses.
"""
