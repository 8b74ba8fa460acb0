"""gRPC servicers: thin adapters that convert types and errors, nothing more."""
