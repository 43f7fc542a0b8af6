"""The Open Inference Protocol's gRPC binding: messages (from the checked-in descriptor set), the codec to and
from the JSON binding's checked request, the handlers, and the per-worker server. Imported only after a
worker forks (gRPC is not fork-safe): nothing here is imported by the app the master preloads."""
